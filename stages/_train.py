"""What the three train stages share; each ``stages/train_<variant>.py`` only names its variant."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import logging
import random
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lora_pipeline.checkpoint import DirCheckpointer, run_key
from lora_pipeline.config import Params, load_params
from lora_pipeline.data.loaders import EncodedSplit
from lora_pipeline.errors import PipelineError
from lora_pipeline.io import atomic_dir, atomic_file, read_json, sha256_file, write_json
from lora_pipeline.models import HEAD_MODULES, Variant, build_model
from lora_pipeline.pretrained import load_tokenizer
from lora_pipeline.tracking import open_tracker
from lora_pipeline.training import FitConfig, fit, peak_memory_mb, resolve_bf16, resolve_device
from stages._cli import run_stage

log = logging.getLogger(__name__)


def parse_args(argv: list[str] | None, variant: Variant) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=f"train_{variant}: train the {variant} variant")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--split", required=True, help="directory from the split stage")
    parser.add_argument("--out", required=True, help="model output directory")
    parser.add_argument("--metrics", required=True, help="metrics JSON file")
    parser.add_argument("--curve", required=True, help="per-epoch CSV for dvc plots")
    parser.add_argument("--checkpoints", required=True, help="resumable state (DVC persist out)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser.parse_args(argv)


def seed_everything(seed: int) -> None:
    """Seed every RNG and ask torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def fit_config(params: Params, variant: Variant, device: torch.device) -> FitConfig:
    section = getattr(params, variant)
    t = params.train
    return FitConfig(lr=section.lr, epochs=section.epochs, batch_size=t.batch_size,
                     eval_batch_size=t.eval_batch_size, weight_decay=t.weight_decay,
                     warmup_ratio=t.warmup_ratio, max_grad_norm=t.max_grad_norm, seed=t.seed,
                     checkpoint_every=t.checkpoint_every, bf16=resolve_bf16(t.precision, device),
                     fast_cpu_dropout=t.cpu_dropout == "fast", first_token_last_layer=t.first_token_last_layer)


def checkpoint_key(variant: Variant, sections: dict, device: torch.device, cfg: FitConfig, split: Path) -> str:
    """The run key of the checkpoint folder: params, data, and the *resolved* device type and precision.

    ``train.precision: auto`` means bf16 on one host and fp32 on another, so the key hashes what it resolved
    to; a checkpoint of another resolution is then ignored instead of resumed under other numerics.
    """
    resolved = {"device": device.type, "precision": "bf16" if cfg.bf16 else "fp32"}
    data = [sha256_file(split / f"{name}.parquet") for name in ("train", "val")]
    return run_key(variant, sections, resolved, *data)


def _save_model(model, tokenizer, variant: Variant, params: Params, out: str) -> None:
    with atomic_dir(out) as tmp:
        if variant == "lora":
            from lora_pipeline.lora import save_adapter

            save_adapter(model, tmp, base_model_name=params.model.name,
                         trainable_extra=HEAD_MODULES + tuple(params.lora.modules_to_save))
        else:
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)


def _write_curve(history: list[dict], path: str) -> None:
    with atomic_file(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)


def _train(args: argparse.Namespace, variant: Variant) -> None:
    params = load_params(args.params, sections=["model", "train", variant, "mlflow"])
    if params.train.num_threads:
        torch.set_num_threads(params.train.num_threads)
    seed_everything(params.train.seed)
    split = Path(args.split)
    missing = [n for n in ("labels.json", "train.parquet", "val.parquet") if not (split / n).is_file()]
    if missing:
        raise PipelineError(f"{split} lacks {', '.join(missing)}: run the split stage first (dvc repro split)")
    device = resolve_device(params.train.device)  # before any work: `cuda` on a CPU-only torch fails here
    cfg = fit_config(params, variant, device)
    sections = {"model": dataclasses.asdict(params.model), "train": dataclasses.asdict(params.train),
                variant: dataclasses.asdict(getattr(params, variant))}
    checkpointer = DirCheckpointer(args.checkpoints, checkpoint_key(variant, sections, device, cfg, split))
    with checkpointer.lock():  # a second process on this folder (an orphan of a killed `dvc repro`) stops here
        _fit_and_save(args, variant, params, cfg, device, sections, checkpointer)


def _fit_and_save(args: argparse.Namespace, variant: Variant, params: Params, cfg: FitConfig, device: torch.device,
                  sections: dict, checkpointer: DirCheckpointer) -> None:
    split = Path(args.split)
    labels = read_json(split / "labels.json")
    train = EncodedSplit.from_frame(pd.read_parquet(split / "train.parquet"))
    val = EncodedSplit.from_frame(pd.read_parquet(split / "val.parquet"))
    tokenizer = load_tokenizer(params.model)
    model = build_model(variant, params.model, labels, tokenizer, scratch=params.scratch, lora=params.lora)
    tags = {"stage": f"train_{variant}", "variant": variant, "seed": params.train.seed,
            "checkpoint_key": checkpointer.key}
    if variant == "lora":
        tags["lora_rank"] = params.lora.rank
    tracker = open_tracker(params.mlflow, f"train_{variant}", tags)
    tracker.log_params({**sections, "resolved": {"device": str(device), "precision": "bf16" if cfg.bf16 else "fp32"}})
    try:
        result = fit(model, train, val, cfg, pad_id=tokenizer.pad_token_id, device=device, tracker=tracker,
                     checkpointer=checkpointer if cfg.checkpoint_every else None, progress=not args.no_progress)
        _save_model(model, tokenizer, variant, params, args.out)
        metrics = _metrics(model, result, device, args.out, cfg)
        write_json(args.metrics, metrics)
        _write_curve(result.history, args.curve)
        checkpointer.clear()
        tracker.log_metrics(summary_for_tracking(metrics))
        tracker.set_tags({"resumed_from_step": result.resumed_from_step})
        for path in (args.metrics, args.curve):
            tracker.log_artifact(path)
    except BaseException:
        tracker.close(failed=True)
        raise
    tracker.close()


def summary_for_tracking(metrics: dict) -> dict:
    """The end-of-run metrics under names that no per-step curve uses (MLflow puts a step-less value at step 0).

    ``val_macro_f1`` is the per-epoch curve ``fit`` logs; the best epoch's value becomes ``best_val_macro_f1``.
    The DVC metrics file keeps its own keys.
    """
    return {("best_val_macro_f1" if key == "val_macro_f1" else key): value for key, value in metrics.items()}


def _metrics(model, result, device: torch.device, out: str, cfg: FitConfig) -> dict:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {
        "val_macro_f1": result.best_val_macro_f1,
        "best_epoch": result.best_epoch,
        "epochs": len(result.history),
        "steps": result.steps,
        "train_seconds": round(result.train_seconds, 2),
        "samples_per_second": round(result.samples_per_second, 2),
        "peak_memory_mb": round(peak_memory_mb(device), 1),
        "trainable_params": trainable,
        "total_params": total,
        "trainable_percent": round(100.0 * trainable / total, 4),
        "size_on_disk_mb": round(sum(f.stat().st_size for f in Path(out).rglob("*") if f.is_file()) / 2**20, 3),
        "device": device.type,
        "precision": "bf16" if cfg.bf16 else "fp32",
    }


def train_main(variant: Variant, argv: list[str] | None) -> int:
    """Entry point of ``stages/train_<variant>.py``."""
    args = parse_args(argv, variant)
    return run_stage(f"train_{variant}", lambda: _train(args, variant))
