"""Data-parallel training on this CPU: 2 processes x 1 thread (torchrun, gloo) against 1 process x 2 threads.

Runs the real train stage (``python -m stages.train_<variant>``) on the default split for a fixed number of
optimizer steps at the same global batch, once per layout, and prints the training time (``train_seconds``:
validation and saving excluded), samples/s, the wall time of the whole stage and the ratio, side by side.

Usage (repository root, the project's environment on PATH; the split from `dvc repro` or benchmarks/_common.py):
    python benchmarks/ddp_cpu.py [--split data/split] [--params params.yaml] [--steps 40] [--variants lora full]
        [--smoke]

Each run takes the seed and learning rate of the study grid's first point (LoRA: rank 8). ``--smoke``: the same
stage runs (torchrun included) on a toy model and split (``_common.smoke_fixture``), 2 steps of LoRA only.
Prints a Markdown table and, as the last line, one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python benchmarks/ddp_cpu.py` puts benchmarks/, not the repo, on sys.path
    sys.path.insert(0, str(ROOT))
LAYOUTS = {"1 process x 2 threads": {"processes": 1, "num_threads": 2},
           "2 processes x 1 thread": {"processes": 2, "num_threads": 1}}
VARIANTS = ("full", "lora", "scratch")
RANK = 8


def _run(variant: str, layout: dict, steps: int, split: Path, base: Path, work: Path) -> dict:
    params = yaml.safe_load(base.read_text())
    params["train"].update(min_steps=steps, max_steps=steps, patience=0, checkpoint_every=0, **layout)
    params["mlflow"]["enabled"] = False
    study = params["study"]
    work.mkdir(parents=True)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    cmd = [sys.executable, "-m", f"stages.train_{variant}", "--params", str(work / "params.yaml"), "--split",
           str(split), "--seed", str(study["seeds"][0]), "--lr", str(study[f"{variant}_lrs"][0]), "--out",
           str(work / "model"), "--metrics", str(work / "metrics.json"), "--curve", str(work / "curve"),
           "--predictions", str(work / "val_predictions.csv"), "--checkpoints", str(work / "ck"),
           "--no-progress", *(["--rank", str(RANK)] if variant == "lora" else [])]
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    metrics = json.loads((work / "metrics.json").read_text())
    return {"train_seconds": metrics["train_seconds"], "samples_per_second": metrics["samples_per_second"],
            "wall_seconds": round(time.perf_counter() - t0, 1), "steps": metrics["steps"]}


def measure(split: Path, params: Path, steps: int, variants: list[str]) -> dict:
    """Both layouts per variant: a Markdown row each (printed as they finish) and every figure."""
    results: dict = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                     "torch": torch.__version__, "steps": steps}
    print("| variant | layout | train s | samples/s | stage wall s |\n|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for variant in variants:
            for name, layout in LAYOUTS.items():
                row = _run(variant, layout, steps, split.resolve(), params.resolve(),
                           Path(tmp) / variant / name.replace(" ", "_"))
                results[f"{variant}/{name}"] = row
                print(f"| {variant} | {name} | {row['train_seconds']} | {row['samples_per_second']} | "
                      f"{row['wall_seconds']} |", flush=True)
            one, two = (results[f"{variant}/{n}"]["train_seconds"] for n in LAYOUTS)
            results[f"{variant}/ratio_2proc_over_1proc"] = round(two / one, 3)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", type=Path, default=ROOT / "data" / "split")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml", help="base params (train.* overridden)")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--variants", nargs="+", default=["lora", "full"], choices=VARIANTS)
    parser.add_argument("--smoke", action="store_true", help="toy model and split, 2 steps, LoRA only")
    args = parser.parse_args(argv)
    if args.smoke:
        from benchmarks._common import smoke_fixture

        with tempfile.TemporaryDirectory(prefix="bench-smoke-") as tmp:
            fixture = smoke_fixture(Path(tmp))
            results = measure(fixture.split, fixture.params, 2, ["lora"])
    else:
        results = measure(args.split, args.params, args.steps, args.variants)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
