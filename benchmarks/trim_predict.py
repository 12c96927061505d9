"""Prediction with and without the trimmed last layer (``train.first_token_last_layer``), side by side.

    python benchmarks/trim_predict.py [--split data/split] [--part test] [--repeats 5] [--device auto] [--smoke]

What the pipeline's validation and evaluate stage run (``evaluation.predict``: length-sorted batches of
``train.eval_batch_size``, no grad, the params' precision) on every row of one split part, with the MiniLM
classifier built as ``train_full`` builds it, the two ways called round-robin (median of ``--repeats``). Prints
one JSON line: seconds per pass each way, their ratio, and how many predictions differ (expected: none; the
logits agree to float rounding). ``--smoke``: the same passes on a toy model and split
(``_common.smoke_fixture``), one repeat, in seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python benchmarks/x.py` puts benchmarks/ there

import torch  # noqa: E402

from benchmarks._common import (ROOT, interleaved_medians, load_bench_params, machine, pick_device,  # noqa: E402
                                ratio, smoke_fixture)
from lora_pipeline.data.loaders import EncodedSplit  # noqa: E402
from lora_pipeline.evaluation import predict  # noqa: E402
from lora_pipeline.files import read_split  # noqa: E402
from lora_pipeline.models import build_model  # noqa: E402
from lora_pipeline.pretrained import load_tokenizer  # noqa: E402
from lora_pipeline.runtime import resolve_bf16  # noqa: E402
from lora_pipeline.speedups import first_token_last_layer  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", type=Path, default=ROOT / "data" / "split", help="the split stage's output")
    parser.add_argument("--part", default="test", help="which part to predict (train, val, test)")
    parser.add_argument("--repeats", type=int, default=5, help="timed passes each way")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--smoke", action="store_true", help="toy model and split, one repeat")
    args = parser.parse_args(argv)
    if not args.smoke:
        print(json.dumps(measure(args.split, args.params, args.part, args.repeats, pick_device(args.device))))
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-smoke-") as tmp:
        fixture = smoke_fixture(Path(tmp))
        print(json.dumps(measure(fixture.split, fixture.params, args.part, 1, pick_device(args.device))))
    return 0


def measure(split: Path, params_path: Path, part: str, repeats: int, device: torch.device) -> dict:
    """Seconds per prediction pass over ``part`` with and without the trim, their ratio, predictions that differ."""
    params = load_bench_params(params_path)
    bf16 = resolve_bf16(params.train.precision, device)
    tokenizer = load_tokenizer(params.model)
    labels, frames = read_split(split, (part,))
    rows = EncodedSplit.from_frame(frames[part])
    torch.manual_seed(0)
    model = build_model("full", params.model, labels, tokenizer).to(device).eval()
    out: dict[str, object] = {}

    def run(trim: bool):
        def call():
            with first_token_last_layer(model, required=True) if trim else contextlib.nullcontext():
                out["trimmed" if trim else "full"] = predict(model, rows, params.train.eval_batch_size,
                                                             tokenizer.pad_token_id, device, bf16=bf16)
        return call

    seconds = interleaved_medians({"full": run(False), "trimmed": run(True)}, repeats, device, warmup=1)
    differ = int((out["full"] != out["trimmed"]).sum())
    return {**machine(device), "precision": "bf16" if bf16 else "fp32", "part": part,
            "rows": len(rows), "batch_size": params.train.eval_batch_size, "repeats": repeats,
            "seconds_full": round(seconds["full"], 4), "seconds_trimmed": round(seconds["trimmed"], 4),
            "trimmed_over_full": ratio(seconds["trimmed"], seconds["full"]),
            "predictions_that_differ": differ}


if __name__ == "__main__":
    raise SystemExit(main())
