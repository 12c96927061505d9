"""A train stage against HF Trainer: our ``train_lora`` stage for one epoch vs HF ``Trainer`` + peft
(``trainer_peft.py``), wall clock.

Both run as subprocesses from the repository root, with the same params file (the repository's
``params.yaml``, or the one given, with ``lora.epochs: 1``, the parent's torch thread count and MLflow off, since
the Trainer reports to nothing either), the same split and the same device. Wall time counts everything a user waits
for: interpreter start, imports, model load, (tokenisation for the Trainer), training, the validation pass.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from lora_pipeline.files import read_split, write_split

from ._common import BENCH_RANK, ROOT, ratio


# the LoRA rank of both runs: the stage's --rank, and the Trainer's (benchmarks/trainer_peft.py)
RANK = BENCH_RANK


def write_params(directory: Path, threads: int, device: str, precision: str, base: Path = ROOT / "params.yaml") -> Path:
    """``base`` with one LoRA epoch, a fixed thread count and MLflow off."""
    raw = yaml.safe_load(base.read_text(encoding="utf-8"))
    raw["lora"]["epochs"] = 1
    raw["train"].update(min_steps=0, max_steps=0)  # one whole epoch, as the Trainer runs it
    raw["train"]["num_threads"] = threads
    raw["train"]["device"] = device
    raw["train"]["precision"] = precision
    raw.setdefault("mlflow", {})["enabled"] = False
    path = directory / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


def subset_split(split: Path, directory: Path, train_rows: int, val_rows: int, seed: int = 0) -> Path:
    """A smaller copy of ``split`` (random rows, same columns) for ``--quick``."""
    out = directory / "split"
    out.mkdir(parents=True)
    labels, frames = read_split(split, ("train", "val"))
    sizes = {"train": train_rows, "val": val_rows}
    write_split(out, labels, {name: df.sample(n=min(sizes[name], len(df)), random_state=seed)
                              for name, df in frames.items()})
    return out


def _timed(cmd: list[str], what: str) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return seconds


def run_stage(params: Path, split: Path, work: Path) -> dict:
    """``python -m stages.train_lora`` as dvc.yaml runs it, into ``work``."""
    raw = yaml.safe_load(params.read_text(encoding="utf-8"))
    study = raw["study"]
    cmd = [sys.executable, "-m", "stages.train_lora", "--params", str(params), "--split", str(split),
           "--rank", str(RANK), "--seed", str(study["seeds"][0]), "--lr", str(study["lora_lrs"][0]),
           "--out", str(work / "model"), "--metrics", str(work / "metrics.json"), "--curve",
           str(work / "curve"), "--predictions", str(work / "val_predictions.csv"), "--checkpoints",
           str(work / "checkpoints"), "--no-progress"]
    wall = _timed(cmd, "stages.train_lora")
    metrics = json.loads((work / "metrics.json").read_text())
    return {"wall_seconds": round(wall, 2), "val_macro_f1": round(metrics["val_macro_f1"], 4),
            "train_seconds": metrics["train_seconds"], "steps": metrics["steps"],
            "peak_memory_mb": metrics["peak_memory_mb"]}


def run_trainer(params: Path, split: Path, work: Path, threads: int, group_by_length: bool = False) -> dict:
    """``benchmarks/trainer_peft.py`` into ``work``."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / "trainer_peft.py"), "--params", str(params), "--split",
           str(split), "--out", str(work / "out"), "--metrics", str(work / "metrics.json"),
           "--threads", str(threads)] + (["--group-by-length"] if group_by_length else [])
    wall = _timed(cmd, "benchmarks/trainer_peft.py")
    metrics = json.loads((work / "metrics.json").read_text())
    return {"wall_seconds": round(wall, 2), "val_macro_f1": round(metrics["val_macro_f1"], 4),
            "train_seconds": metrics["train_seconds"], "steps": metrics["steps"]}


def measure(split: Path, device: torch.device, quick: bool, grouped_trainer: bool, precision: str = "auto",
            params: Path = ROOT / "params.yaml") -> dict:
    """Run both (and, when asked, the Trainer with ``group_by_length``) on ``params``; ratios of wall time."""
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
        tmp = Path(tmp)
        params = write_params(tmp, threads, device.type, precision, params)
        if quick:
            split = subset_split(split, tmp, train_rows=960, val_rows=400)
        dirs = {name: tmp / name for name in ("stage", "trainer", "trainer_grouped")}
        for d in dirs.values():
            d.mkdir()
        _, frames = read_split(split, ("train", "val"), columns=["label_id"])
        rows = {"train_rows": len(frames["train"]), "val_rows": len(frames["val"]), "threads": threads}
        ours = run_stage(params, split, dirs["stage"])
        trainer = run_trainer(params, split, dirs["trainer"], threads)
        result = {**rows, "stage": ours, "trainer_peft": trainer,
                  "stage_over_trainer_epoch": ratio(ours["wall_seconds"], trainer["wall_seconds"]),
                  "f1_stage_minus_trainer": round(ours["val_macro_f1"] - trainer["val_macro_f1"], 4)}
        if grouped_trainer:
            grouped = run_trainer(params, split, dirs["trainer_grouped"], threads, group_by_length=True)
            result["trainer_peft_group_by_length"] = grouped
            result["stage_over_grouped_trainer_epoch"] = ratio(ours["wall_seconds"], grouped["wall_seconds"])
    return result
