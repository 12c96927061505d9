"""ONE training loop for all three variants (scratch, full, LoRA).

AdamW (no decay on biases/LayerNorm), linear warm-up then decay, gradient clipping, evaluation
on the validation split after every epoch, best epoch kept by validation macro-F1, length-grouped
dynamically padded batches. The loop does no file I/O: it reports through a tracker and an
optional checkpointer, so stage scripts decide what lands on disk.

A run is resumable: the checkpoint holds the trainable weights, optimizer, scheduler, RNG state
and position; batch order is a pure function of (seed, epoch), so on CPU a resumed run ends with
exactly the metrics of an uninterrupted one.

Device, precision and seeding are resolved in :mod:`lora_pipeline.runtime`; the speed tricks the loop switches on
(:mod:`lora_pipeline.speedups`) live apart from it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Optional, Union

import torch
from torch import nn
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm
from transformers import get_linear_schedule_with_warmup

from .checkpoint import Checkpointer
from .config import Params, TrainConfig
from .data.loaders import EncodedSplit, iterate, train_batches
from .evaluation import macro_f1, predict
from .runtime import resolve_bf16
from .speedups import fast_cpu_dropout, first_token_last_layer
from .tracking import NullTracker, Tracker

__all__ = ["FitConfig", "TrainResult", "fit", "make_optimizer", "train_step"]

log = logging.getLogger(__name__)

_TRAIN = TrainConfig()  # the defaults of the fields FitConfig shares with params.yaml's train section


@dataclass(frozen=True)
class FitConfig:
    """Hyper-parameters of one run: ``train`` + the variant's section, resolved (see :meth:`from_params`).

    Fields named as in :class:`~lora_pipeline.config.TrainConfig` take its defaults, so one source holds them.
    """

    lr: float
    epochs: int
    batch_size: int = _TRAIN.batch_size
    eval_batch_size: int = _TRAIN.eval_batch_size
    weight_decay: float = _TRAIN.weight_decay
    warmup_ratio: float = _TRAIN.warmup_ratio
    max_grad_norm: float = _TRAIN.max_grad_norm
    seed: int = _TRAIN.seed
    checkpoint_every: int = _TRAIN.checkpoint_every
    # last encoder layer computes only the token the head reads: "auto" where exact, True required, False off
    first_token_last_layer: Union[Literal["auto"], bool] = _TRAIN.first_token_last_layer
    log_every: int = 20
    bf16: bool = False  # bf16 autocast for forward passes (fp32 weights, gradients and optimizer state)
    # on CPU, dropout masks from speedups.fast_cpu_dropout (same p, other units): train.cpu_dropout: fast
    fast_cpu_dropout: bool = _TRAIN.cpu_dropout == "fast"

    @classmethod
    def from_params(cls, params: Params, variant: str, device: torch.device) -> "FitConfig":
        """The run of ``variant``: lr/epochs from its section, the rest from ``train``; precision and
        ``cpu_dropout`` resolved for ``device``."""
        section, train = getattr(params, variant), params.train
        shared = {f.name: getattr(train, f.name) for f in dataclasses.fields(cls) if hasattr(train, f.name)}
        return cls(lr=section.lr, epochs=section.epochs, bf16=resolve_bf16(train.precision, device),
                   fast_cpu_dropout=train.cpu_dropout == "fast", **shared)


@dataclass
class TrainResult:
    """What a run produced: the model holds the best epoch's weights when ``fit`` returns."""

    best_epoch: int
    best_val_macro_f1: float
    history: list[dict[str, float]]
    train_seconds: float
    samples_per_second: float
    steps: int
    resumed_from_step: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def make_optimizer(model: nn.Module, cfg: FitConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters; no weight decay on biases and LayerNorm; fused on CUDA.

    Returns:
        The optimizer (two param groups: with and without decay).
    """
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 or "LayerNorm" in name or "layer_norm" in name else decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = device.type == "cuda"
    return torch.optim.AdamW(groups, lr=cfg.lr, fused=fused or None, foreach=None if fused else True)


def train_step(forward: Callable[..., Any], batch: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
               scheduler: Any, params: list[torch.Tensor], max_grad_norm: float,
               device: torch.device, bf16: bool = False) -> torch.Tensor:
    """One optimiser step: forward (bf16 autocast if asked), backward, clipping, AdamW, schedule.

    Args:
        forward: the model (or a compiled version of it, as benchmarks/step_time.py times).
        batch: tensors already on ``device``, with ``labels``.
        params: the optimised parameters (clipped together).
        bf16: autocast the forward to bf16; weights, gradients and optimizer state stay fp32.

    Returns:
        The loss, detached and left on the device (no host sync).
    """
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        loss = forward(**batch).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def _trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _rng_state(device: torch.device) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _evaluate(model, val: EncodedSplit, cfg: FitConfig, pad_id: int, device: torch.device) -> float:
    """Validation macro-F1 over the model's declared classes (``config.num_labels``), as the evaluate stage scores."""
    preds = predict(model, val, cfg.eval_batch_size, pad_id, device, bf16=cfg.bf16)
    return macro_f1(val.labels, preds, model.config.num_labels)


def _console_logging_to_tqdm(progress: bool) -> contextlib.AbstractContextManager:
    """Route console log records through ``tqdm.write`` while a bar is shown, so a line never lands on the bar."""
    console = any(isinstance(h, logging.StreamHandler) and h.stream in (sys.stdout, sys.stderr)
                  for h in logging.getLogger().handlers)
    return logging_redirect_tqdm(tqdm_class=tqdm) if progress and console else contextlib.nullcontext()


def fit(model: nn.Module, train: EncodedSplit, val: EncodedSplit, cfg: FitConfig, *, pad_id: int,
        device: torch.device, tracker: Tracker = NullTracker(),
        checkpointer: Optional[Checkpointer] = None, progress: bool = True) -> TrainResult:
    """Train ``model`` in place and leave it holding the best epoch's weights.

    Args:
        model: any HF sequence classifier; only parameters with ``requires_grad`` are optimised.
        train, val: tokenised splits.
        cfg: hyper-parameters.
        pad_id: the tokenizer's pad token id.
        device: where to train (``cfg.bf16``: bf16 autocast, fp32 master weights).
        tracker: receives per-step loss/lr and per-epoch metrics.
        checkpointer: when given, state is saved every ``cfg.checkpoint_every`` steps and at every
            epoch end, and a saved state is resumed from.
        progress: show a tqdm progress bar.

    Returns:
        TrainResult with per-epoch history (train_loss, val_macro_f1) and throughput.
    """
    model.to(device).train()
    total_steps = -(-len(train) // cfg.batch_size) * cfg.epochs
    optimizer = make_optimizer(model, cfg, device)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total_steps), total_steps)
    st = _resume(checkpointer, model, optimizer, scheduler, device)
    resumed = st["global_step"]

    def checkpoint() -> None:
        if checkpointer is not None:
            checkpointer.save({"model": _trainable_state(model), "optimizer": optimizer.state_dict(),
                               "scheduler": scheduler.state_dict(), "rng": _rng_state(device), "loop": st})

    lengths = train.lengths()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    bar = tqdm(total=total_steps, initial=st["global_step"], disable=not progress, mininterval=5,
               desc="train", unit="step", file=sys.stderr)
    trim = first_token_last_layer(model, required=cfg.first_token_last_layer is True) \
        if cfg.first_token_last_layer else contextlib.nullcontext()
    with _console_logging_to_tqdm(progress), trim, fast_cpu_dropout(cfg.fast_cpu_dropout and device.type == "cpu"):
        while st["epoch"] < cfg.epochs:
            batches = train_batches(lengths, cfg.batch_size, cfg.seed, st["epoch"])
            loss_acc = torch.zeros((), device=device)  # summed on device: no host sync per step
            t0 = time.perf_counter()
            for rows, batch in iterate(train, batches, pad_id, skip=st["step_in_epoch"]):
                batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
                loss = train_step(model, batch, optimizer, scheduler, params, cfg.max_grad_norm, device, cfg.bf16)
                loss_acc += loss
                st["step_in_epoch"] += 1
                st["global_step"] += 1
                st["samples"] += len(rows)
                bar.update(1)
                if st["global_step"] % cfg.log_every == 0:
                    tracker.log_metrics({"train_loss": loss.item(), "lr": scheduler.get_last_lr()[0]},
                                        step=st["global_step"])
                if cfg.checkpoint_every and st["global_step"] % cfg.checkpoint_every == 0 \
                        and st["step_in_epoch"] < len(batches):
                    st["loss_sum"] += loss_acc.item()
                    loss_acc.zero_()
                    st["seconds"] += time.perf_counter() - t0
                    t0 = time.perf_counter()
                    checkpoint()
            st["seconds"] += time.perf_counter() - t0
            st["loss_sum"] += loss_acc.item()
            _end_epoch(model, val, cfg, pad_id, device, st, len(batches), tracker)
            checkpoint()
    bar.close()
    model.load_state_dict(st["best_state"], strict=False)
    return TrainResult(best_epoch=st["best_epoch"], best_val_macro_f1=st["best_f1"], history=st["history"],
                       train_seconds=st["seconds"], samples_per_second=st["samples"] / max(st["seconds"], 1e-9),
                       steps=st["global_step"], resumed_from_step=resumed)


def _resume(checkpointer: Optional[Checkpointer], model: nn.Module, optimizer: torch.optim.Optimizer,
            scheduler: Any, device: torch.device) -> dict[str, Any]:
    """The loop state to start from: a fresh one, or the checkpoint's (model, optimizer, schedule and RNG restored)."""
    saved = checkpointer.load() if checkpointer is not None else None
    if saved is None:
        return {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "seconds": 0.0, "samples": 0,
                "loss_sum": 0.0, "history": [], "best_f1": -1.0, "best_epoch": -1, "best_state": None}
    model.load_state_dict(saved["model"], strict=False)
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    _set_rng_state(saved["rng"], device)
    st = saved["loop"]
    log.info("resuming from checkpoint at step %d (epoch %d)", st["global_step"], st["epoch"] + 1)
    return st


def _end_epoch(model, val, cfg, pad_id, device, st: dict, n_batches: int, tracker: Tracker) -> None:
    f1 = _evaluate(model, val, cfg, pad_id, device)
    epoch = st["epoch"] + 1
    row = {"epoch": epoch, "train_loss": st["loss_sum"] / n_batches, "val_macro_f1": f1}
    st["history"].append(row)
    tracker.log_metrics({"epoch_train_loss": row["train_loss"], "val_macro_f1": f1}, step=st["global_step"])
    log.info("epoch %d: train_loss %.4f  val_macro_f1 %.4f", epoch, row["train_loss"], f1)
    if f1 > st["best_f1"]:
        st["best_f1"], st["best_epoch"], st["best_state"] = f1, epoch, _trainable_state(model)
    st["epoch"], st["step_in_epoch"], st["loss_sum"] = epoch, 0, 0.0
