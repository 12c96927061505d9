"""What the three train stages share; each ``stages/train_<variant>.py`` only names its variant."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import logging
import sys
from pathlib import Path
from typing import Any, NamedTuple

import torch

from lora_pipeline.checkpoint import DirCheckpointer, run_key
from lora_pipeline.config import DEFAULT_TARGET_SET, Params, load_params
from lora_pipeline.data.loaders import EncodedSplit
from lora_pipeline.distributed import (World, current_world, destroy_process_group, die_with_parent,
                                       init_process_group, mark_started, run_torchrun, torchrun_argv, torchrun_env,
                                       wants_launch)
from lora_pipeline.errors import PipelineError
from lora_pipeline.files import atomic_dir, atomic_file, read_split, split_digests, write_json
from lora_pipeline.lora import count_parameters, lora_layers
from lora_pipeline.records import ModelCard, RunSpec, TrainRecord
from lora_pipeline.models import Variant, build_model, model_digest, save_trained, weights_files
from lora_pipeline.pretrained import load_tokenizer
from lora_pipeline.runtime import peak_memory_mb, resolve_device, seed_everything
from lora_pipeline.tracking import NullTracker, log_split_inputs, open_tracker
from lora_pipeline.training import FitConfig, TrainResult, fit
from stages._cli import add_phase, phase, run_stage, timed_tracker

log = logging.getLogger(__name__)


def parse_args(argv: list[str] | None, variant: Variant) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=f"train_{variant}: train the {variant} variant")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--split", required=True, help="directory from the split stage")
    RunSpec.add_arguments(parser, variant)
    parser.add_argument("--out", required=True, help="model output directory")
    parser.add_argument("--metrics", required=True, help="metrics JSON file")
    parser.add_argument("--curve", required=True, help="folder for the per-step and per-validation curve CSVs")
    parser.add_argument("--predictions", required=True,
                        help="CSV of the best validation's predictions: row (in the val split), actual, predicted")
    parser.add_argument("--checkpoints", required=True, help="resumable state (git-ignored, not a DVC out)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser.parse_args(argv)


class Paths(NamedTuple):
    """What a train instance reads and writes (dvc.yaml's flags), and whether it shows a progress bar."""
    params: str
    split: str
    out: str
    metrics: str
    curve: str
    predictions: str
    checkpoints: str
    progress: bool

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "Paths":
        return cls(args.params, args.split, args.out, args.metrics, args.curve, args.predictions, args.checkpoints,
                   not args.no_progress)

    @property
    def tag(self) -> str:
        """The name of ``--out``: the instance's tag as dvc.yaml built it (what evaluate finds its files by).

        :attr:`RunSpec.tag <lora_pipeline.records.RunSpec.tag>` equals it for every float learning rate; the
        folder's own name is recorded, so a learning rate written as a YAML integer still finds its files."""
        return Path(self.out).name


#: how a run is launched, not what it computes: a checkpoint resumes under any of these (DDP shards global batches)
LAUNCH_KEYS = ("processes", "nnodes", "rdzv_endpoint", "dist_timeout_s", "dist_start_grace_s")


def checkpoint_key(variant: Variant, sections: dict, device: torch.device, cfg: FitConfig, split: Path) -> str:
    """The run key of the checkpoint folder: params, data, and the *resolved* device type and precision.

    ``train.precision: auto`` means bf16 on one host and fp32 on another, so the key hashes what it resolved
    to; a checkpoint of another resolution is then ignored instead of resumed under other numerics. The launch
    keys (:data:`LAUNCH_KEYS`) are left out: a run stopped with 2 processes continues with 1, or with 4.
    """
    resolved = {"device": device.type, "precision": "bf16" if cfg.bf16 else "fp32", "seed": cfg.seed, "lr": cfg.lr}
    sections = {**sections, "train": {k: v for k, v in sections["train"].items() if k not in LAUNCH_KEYS}}
    return run_key(variant, sections, resolved, *split_digests(split, ("train", "val")))


CURVE_FILES = {"steps": "steps.csv", "evals": "evals.csv"}  # per-step loss, per-validation scores


def _write_curves(result: TrainResult, folder: str) -> None:
    with atomic_dir(folder) as tmp:
        for rows, name in ((result.steps_log, CURVE_FILES["steps"]), (result.history, CURVE_FILES["evals"])):
            with open(tmp / name, "w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["step"])
                writer.writeheader()
                writer.writerows(rows)


def _write_predictions(actual: list[int], predicted: list[int], path: str) -> None:
    """One row per val example, in the split's order: ``row,actual,predicted`` (class ids)."""
    if len(predicted) != len(actual):
        raise PipelineError(f"the best validation holds {len(predicted)} predictions for {len(actual)} val rows")
    with atomic_file(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["row", "actual", "predicted"])
        writer.writerows(zip(range(len(actual)), actual, predicted))


def _train(spec: RunSpec, paths: Paths, argv: list[str]) -> None:
    variant = spec.variant
    params = load_params(paths.params, sections=["model", "train", variant, "mlflow"])
    if wants_launch(params.train):
        _launch(params, variant, argv, run_id=paths.tag)
        return
    if params.train.num_threads:
        torch.set_num_threads(params.train.num_threads)
    world = current_world()
    if world.distributed:
        die_with_parent()
        mark_started()
        if not world.is_main:  # rank 0 speaks for the launch; the others only warn
            logging.getLogger().setLevel(logging.WARNING)
    seed_everything(spec.seed)
    split = Path(paths.split)
    device = _device(params.train.device, world)  # before any work: `cuda` on a CPU-only torch fails here
    cfg = FitConfig.from_params(params, variant, device, lr=spec.lr, seed=spec.seed)
    sections = run_sections(params, spec)
    checkpointer = DirCheckpointer(paths.checkpoints, checkpoint_key(variant, sections, device, cfg, split))
    init_process_group(world, device, params.train.dist_timeout_s)
    try:
        if not world.is_main:  # rank 0 alone owns the checkpoint folder, the outputs and the MLflow run
            _fit(spec, paths, params, cfg, device, None, world)
            return
        with checkpointer.lock():  # a second process on this folder (an orphan of a killed `dvc repro`) stops here
            _fit_and_save(spec, paths, params, cfg, device, sections, checkpointer, world)
    finally:
        destroy_process_group()


def run_sections(params: Params, spec: RunSpec) -> dict:
    """The params sections a run depends on (``model``, ``train``, its variant's), as MLflow's params show them and
    the checkpoint key hashes them. A LoRA run's section holds its own grid point and modules: ``rank``,
    ``target_set`` with the ``target_modules`` that set names (None: the model's default) and ``adapter`` — not
    the other sets of ``lora.target_sets``, so defining another set changes neither its key nor its params."""
    own = dataclasses.asdict(getattr(params, spec.variant))
    if spec.variant == "lora":
        own.pop("target_sets")
        targets = params.lora.targets(spec.target_set)
        own = {"rank": spec.rank, "target_set": spec.target_set,
               "target_modules": list(targets) if isinstance(targets, tuple) else targets,
               "adapter": spec.adapter, **own}
    return {"model": dataclasses.asdict(params.model), "train": dataclasses.asdict(params.train), spec.variant: own}


def _launch(params: Params, variant: Variant, argv: list[str], run_id: str) -> None:
    """Run this stage as ``train.processes`` workers under torchrun and wait; rank 0 writes the outputs."""
    command = torchrun_argv(params.train, f"stages.train_{variant}", argv, run_id)
    log.info("launching %d training processes per machine under torchrun: %s", params.train.processes,
             " ".join(command))
    code = run_torchrun(command, params.train.dist_timeout_s, params.train.dist_start_grace_s,
                        torchrun_env(params.train))
    if code != 0:
        train = params.train
        raise PipelineError(f"torchrun ({train.processes} process(es) per machine x {train.nnodes} machine(s)) failed "
                            f"with exit code {code}: its error, or the failing rank's ('Root Cause'), is printed "
                            "above; set train.processes: 1 and train.nnodes: 1 to train in one process")


def _device(name: str, world: World) -> torch.device:
    """The resolved ``train.device``; on CUDA under torchrun, the GPU of this worker's local rank."""
    device = resolve_device(name)
    if world.distributed and device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    return device


class Fitted(NamedTuple):
    """What :func:`_fit` trained and what saving it needs."""
    model: torch.nn.Module
    tokenizer: Any
    labels: list[str]
    frames: dict[str, Any]  # part -> the split's pandas frame
    result: TrainResult


def _fit(spec: RunSpec, paths: Paths, params: Params, cfg: FitConfig, device: torch.device,
         checkpointer: DirCheckpointer | None, world: World, tracker=NullTracker()) -> Fitted:
    """Load the split, build the model and train it."""
    with phase("data"):
        labels, frames = read_split(paths.split, ("train", "val"))
        train, val = (EncodedSplit.from_frame(frames[part]) for part in ("train", "val"))
    with phase("model"):
        tokenizer = load_tokenizer(params.model)
        model = build_model(spec.variant, params.model, labels, tokenizer, scratch=params.scratch, lora=params.lora,
                            rank=spec.rank, target_set=spec.target_set or DEFAULT_TARGET_SET,
                            adapter=spec.adapter or "lora")
    timings: dict[str, float] = {}
    with phase("train"):
        result = fit(model, train, val, cfg, pad_id=tokenizer.pad_token_id, device=device, tracker=tracker,
                     checkpointer=checkpointer if cfg.checkpoint_every else None,
                     progress=paths.progress and world.is_main, world=world, timings=timings)
        add_phase("forward", timings["forward"])
        add_phase("save", timings["checkpoint"])
    return Fitted(model, tokenizer, labels, frames, result)


def _fit_and_save(spec: RunSpec, paths: Paths, params: Params, cfg: FitConfig, device: torch.device,
                  sections: dict, checkpointer: DirCheckpointer, world: World) -> None:
    variant = spec.variant
    run = {**spec.fields(), "tag": paths.tag}  # which grid point: evaluate finds the model and curves by the tag
    with phase("mlflow"):
        tracker = timed_tracker(open_tracker(params.mlflow, spec.stage,
                                             spec.tracking_tags(checkpoint_key=checkpointer.key)))
    with tracker:
        tracker.log_params({**sections, "run": {k: v for k, v in run.items() if v is not None},
                            "resolved": {"device": str(device), "precision": "bf16" if cfg.bf16 else "fp32"},
                            "world_size": world.size})
        model, tokenizer, labels, frames, result = _fit(spec, paths, params, cfg, device, checkpointer, world, tracker)
        log_split_inputs(tracker, paths.split, frames, {"train": "training", "val": "validation"})
        with phase("save"):
            card = ModelCard(variant=variant, labels=tuple(labels), max_length=params.model.max_length,
                             text_pair="text_pair" in frames["train"].columns, precision=params.train.precision,
                             base_model=params.model.name if variant == "lora" else None)
            save_trained(variant, model, tokenizer, paths.out, card=card, lora=params.lora,
                         save_merged=variant == "lora" and params.lora.save_merged)
            record = TrainRecord(**run, **_metrics(model, result, device, weights_files(variant, paths.out), cfg))
            write_json(paths.metrics, record.to_json())
            _write_curves(result, paths.curve)
            _write_predictions(frames["val"]["label_id"].astype(int).tolist(), result.best_predictions,
                               paths.predictions)
            checkpointer.clear()
        tracker.log_metrics(summary_for_tracking(record.metrics()))
        tracker.set_tags({"resumed_from_step": result.resumed_from_step, "stop_reason": result.stop_reason,
                          "stopped_by": result.stopped_by, "param_dtype": record.param_dtype})
        for path in (paths.metrics, paths.curve, paths.predictions):
            tracker.log_artifact(path)
        with phase("mlflow"):  # the digest is for MLflow's copy of the model
            digest = model_digest(weights_files(variant, paths.out))
        tracker.use("model", lambda mlflow: _log_model(mlflow, paths.out, digest, variant, record.tag))


def _log_model(mlflow, out: str, digest: str, variant: Variant, tag: str) -> str:
    from lora_pipeline import mlflow_model  # imports mlflow.pyfunc: only when tracking is on

    return mlflow_model.log_trained(mlflow, out, digest, mlflow_model.model_name(variant, tag))


def summary_for_tracking(metrics: dict) -> dict:
    """The end-of-run metrics under names that no per-step curve uses (MLflow puts a step-less value at step 0).

    ``val_macro_f1`` is the per-validation curve ``fit`` logs; the best validation's value becomes
    ``best_val_macro_f1``. Booleans become 0/1 (``converged``); the DVC metrics file keeps its own keys and values.
    """
    return {("best_val_macro_f1" if key == "val_macro_f1" else key): int(value) if isinstance(value, bool) else value
            for key, value in metrics.items()}


def _metrics(model, result, device: torch.device, weights: list[Path], cfg: FitConfig) -> dict:
    trainable, total = count_parameters(model)
    return {
        "val_macro_f1": result.best_val_macro_f1,
        "best_epoch": result.best_epoch,
        "best_step": result.best_step,
        "epochs": result.history[-1]["epoch"] if result.history else 0,
        "steps": result.steps,
        "planned_steps": result.planned_steps,
        "stop_reason": result.stop_reason,
        "stopped_by": result.stopped_by,
        "converged": result.converged,
        "validations": result.validations,
        "seconds_to_best": round(result.seconds_to_best, 2),
        "cpu_seconds_to_best": round(result.cpu_seconds_to_best, 2),
        "train_seconds": round(result.train_seconds, 2),
        "train_cpu_seconds": round(result.train_cpu_seconds, 2),
        "samples_per_second": round(result.samples_per_second, 2),
        "peak_memory_mb": round(peak_memory_mb(device), 1),
        "trainable_params": trainable,
        "adapter_params": adapter_params(model),
        "total_params": total,
        "trainable_percent": round(100.0 * trainable / total, 4),
        "size_on_disk_mb": round(sum(f.stat().st_size for f in weights) / 2**20, 3),  # weights + their config
        "device": device.type,
        "precision": "bf16" if cfg.bf16 else "fp32",  # the compute (autocast) dtype
        "param_dtype": trained_dtype(model),  # the dtype the trained parameters were held and updated in
    }


def adapter_params(model) -> int:
    """The parameters LoRA (or DoRA) layers add (A, B, magnitudes): the trainable count a study's equal-budget
    table compares, without the head and modules_to_save every configuration trains alike; 0 without adapters."""
    return sum(p.numel() for _, layer in lora_layers(model) for p in layer.adapter_parameters().values())


def trained_dtype(model) -> str:
    """The dtype(s) of the trainable parameters, e.g. ``float32`` (comma-joined if they differ)."""
    return ",".join(sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters() if p.requires_grad}))


def train_main(variant: Variant, argv: list[str] | None) -> int:
    """Entry point of ``stages/train_<variant>.py``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv, variant)
    return run_stage(f"train_{variant}", lambda: _train(RunSpec.from_args(args, variant), Paths.from_args(args), argv))
