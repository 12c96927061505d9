"""Prediction with and without the trimmed last layer (``train.first_token_last_layer``), side by side.

    python -m benchmarks.trim_predict [--split data/split] [--part test] [--repeats 5] [--device auto]

What the pipeline's validation and evaluate stage run (``evaluation.predict``: length-sorted batches of
``train.eval_batch_size``, no grad, the params' precision) on every row of one split part, with the MiniLM
classifier built as ``train_full`` builds it, the two ways called round-robin (median of ``--repeats``). Prints
one JSON line: seconds per pass each way, their ratio, and how many predictions differ (expected: none; the
logits agree to float rounding).
"""

from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path

import torch

from benchmarks._common import ROOT, interleaved_medians, load_bench_params, machine, pick_device, ratio
from lora_pipeline.data.loaders import EncodedSplit
from lora_pipeline.evaluation import predict
from lora_pipeline.files import read_split
from lora_pipeline.models import build_model
from lora_pipeline.pretrained import load_tokenizer
from lora_pipeline.runtime import resolve_bf16
from lora_pipeline.speedups import first_token_last_layer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", type=Path, default=ROOT / "data" / "split", help="the split stage's output")
    parser.add_argument("--part", default="test", help="which part to predict (train, val, test)")
    parser.add_argument("--repeats", type=int, default=5, help="timed passes each way")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    args = parser.parse_args(argv)
    params = load_bench_params(args.params)
    device = pick_device(args.device)
    bf16 = resolve_bf16(params.train.precision, device)
    tokenizer = load_tokenizer(params.model)
    labels, frames = read_split(args.split, (args.part,))
    rows = EncodedSplit.from_frame(frames[args.part])
    torch.manual_seed(0)
    model = build_model("full", params.model, labels, tokenizer).to(device).eval()
    out: dict[str, object] = {}

    def run(trim: bool):
        def call():
            with first_token_last_layer(model, required=True) if trim else contextlib.nullcontext():
                out["trimmed" if trim else "full"] = predict(model, rows, params.train.eval_batch_size,
                                                             tokenizer.pad_token_id, device, bf16=bf16)
        return call

    seconds = interleaved_medians({"full": run(False), "trimmed": run(True)}, args.repeats, device, warmup=1)
    differ = int((out["full"] != out["trimmed"]).sum())
    print(json.dumps({**machine(device), "precision": "bf16" if bf16 else "fp32", "part": args.part,
                      "rows": len(rows), "batch_size": params.train.eval_batch_size, "repeats": args.repeats,
                      "seconds_full": round(seconds["full"], 2), "seconds_trimmed": round(seconds["trimmed"], 2),
                      "trimmed_over_full": ratio(seconds["trimmed"], seconds["full"]),
                      "predictions_that_differ": differ}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
