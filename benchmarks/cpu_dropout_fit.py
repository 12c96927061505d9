"""A/B of ``train.cpu_dropout`` through the real training loop: fast vs aten dropout masks, per variant.

Runs ``fit`` (length-grouped batches, trimmed last layer, the precision ``params.yaml`` resolves to) for one
epoch on the first ``--rows`` training rows, alternating fast, torch, fast, torch, and prints the training
seconds of each run and, as the last line, one JSON object {variant: {"fast": [...], "torch": [...]}}.

    python benchmarks/cpu_dropout_fit.py [--split data/split] [--params params.yaml] [--rows 2400]
        [--variants lora,full,scratch] [--smoke]

``--smoke``: the same runs on a toy model and split (``_common.smoke_fixture``), one step each, in seconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks._common import BENCH_RANK, ROOT, smoke_fixture  # noqa: E402
from lora_pipeline.config import load_params  # noqa: E402
from lora_pipeline.data.loaders import EncodedSplit  # noqa: E402
from lora_pipeline.files import read_split  # noqa: E402
from lora_pipeline.models import build_model  # noqa: E402
from lora_pipeline.pretrained import load_tokenizer  # noqa: E402
from lora_pipeline.runtime import seed_everything  # noqa: E402
from lora_pipeline.training import FitConfig, fit  # noqa: E402


def measure(split: Path, params_path: Path, rows: int, variants: list[str]) -> dict[str, dict[str, list[float]]]:
    """Training seconds of one epoch on the first ``rows`` rows, per variant: fast, torch, fast, torch."""
    params = load_params(params_path)
    labels, frames = read_split(split, ("train", "val"))
    train = EncodedSplit.from_frame(frames["train"].iloc[:rows])
    val = EncodedSplit.from_frame(frames["val"].iloc[:64])
    tokenizer = load_tokenizer(params.model)
    device = torch.device("cpu")
    result: dict[str, dict[str, list[float]]] = {}
    for variant in variants:
        result[variant] = {"fast": [], "torch": []}
        for fast in (True, False, True, False):
            seed_everything(params.study.seeds[0])
            model = build_model(variant, params.model, labels, tokenizer, scratch=params.scratch, lora=params.lora,
                                rank=BENCH_RANK if variant == "lora" else None)
            cfg = FitConfig.from_params(params, variant, device, lr=params.study.lrs(variant)[0],
                                        seed=params.study.seeds[0])
            # exactly one whole epoch: no min_steps floor, max_steps cap or early stop, so every run times
            # the same steps
            cfg = dataclasses.replace(cfg, epochs=1, min_steps=0, max_steps=0, patience=0, fast_cpu_dropout=fast,
                                      checkpoint_every=0)
            run = fit(model, train, val, cfg, pad_id=tokenizer.pad_token_id, device=device, progress=False)
            name = "fast" if fast else "torch"
            result[variant][name].append(round(run.train_seconds, 3))
            print(f"{variant} {name}: {run.train_seconds:.2f} s, {run.steps} steps", file=sys.stderr, flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", type=Path, default=ROOT / "data" / "split")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--rows", type=int, default=2400, help="training rows (one epoch)")
    parser.add_argument("--variants", default="lora,full,scratch")
    parser.add_argument("--smoke", action="store_true", help="toy model and split, one 16-row step per run")
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)
    variants = args.variants.split(",")
    if args.smoke:
        with tempfile.TemporaryDirectory(prefix="bench-smoke-") as tmp:
            fixture = smoke_fixture(Path(tmp))
            result = measure(fixture.split, fixture.params, 16, variants)  # the fixture's train.batch_size: 16
    else:
        result = measure(args.split, args.params, args.rows, variants)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
