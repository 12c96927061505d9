"""A/B of ``train.cpu_dropout`` through the real training loop: fast vs aten dropout masks, per variant.

Runs ``fit`` (length-grouped batches, trimmed last layer, the precision ``params.yaml`` resolves to) for one
epoch on the first ``--rows`` training rows, alternating fast, torch, fast, torch, and prints the training
seconds of each run and, as the last line, one JSON object {variant: {"fast": [...], "torch": [...]}}.

    python benchmarks/cpu_dropout_fit.py [--split data/split] [--rows 2400] [--variants lora,full,scratch]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks._common import ROOT  # noqa: E402
from lora_pipeline.config import load_params  # noqa: E402
from lora_pipeline.data.loaders import EncodedSplit  # noqa: E402
from lora_pipeline.files import read_split  # noqa: E402
from lora_pipeline.models import build_model  # noqa: E402
from lora_pipeline.pretrained import load_tokenizer  # noqa: E402
from lora_pipeline.runtime import seed_everything  # noqa: E402
from lora_pipeline.training import FitConfig, fit  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", type=Path, default=ROOT / "data" / "split")
    parser.add_argument("--rows", type=int, default=2400, help="training rows (one epoch)")
    parser.add_argument("--variants", default="lora,full,scratch")
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)
    params = load_params(ROOT / "params.yaml")
    labels, frames = read_split(args.split, ("train", "val"))
    train = EncodedSplit.from_frame(frames["train"].iloc[: args.rows])
    val = EncodedSplit.from_frame(frames["val"].iloc[:64])
    tokenizer = load_tokenizer(params.model)
    device = torch.device("cpu")
    result: dict[str, dict[str, list[float]]] = {}
    for variant in args.variants.split(","):
        result[variant] = {"fast": [], "torch": []}
        for fast in (True, False, True, False):
            seed_everything(params.study.seeds[0])
            model = build_model(variant, params.model, labels, tokenizer, scratch=params.scratch, lora=params.lora)
            cfg = FitConfig.from_params(params, variant, device, lr=params.study.lrs(variant)[0],
                                        seed=params.study.seeds[0])
            # exactly one whole epoch: no min_steps floor, max_steps cap or early stop, so every run times
            # the same steps
            cfg = dataclasses.replace(cfg, epochs=1, min_steps=0, max_steps=0, patience=0, fast_cpu_dropout=fast,
                                      checkpoint_every=0)
            run = fit(model, train, val, cfg, pad_id=tokenizer.pad_token_id, device=device, progress=False)
            name = "fast" if fast else "torch"
            result[variant][name].append(round(run.train_seconds, 2))
            print(f"{variant} {name}: {run.train_seconds:.2f} s, {run.steps} steps", file=sys.stderr, flush=True)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
