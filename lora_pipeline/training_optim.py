"""One optimizer step of :func:`~lora_pipeline.training.fit`: AdamW (no decay on biases/LayerNorm), the linear
warm-up then decay schedule over the planned steps, and the step itself (bf16 autocast where asked, gradient
clipping)."""

from __future__ import annotations

import functools
from typing import Any, Callable

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from .training_plan import FitConfig

__all__ = ["linear_warmup_schedule", "make_optimizer", "train_step", "train_step_norm"]


def make_optimizer(model: nn.Module, cfg: FitConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters; no weight decay on biases and LayerNorm; fused on CUDA, single-tensor
    on CPU (the same floats as the multi-tensor kernel, ~3 % of a LoRA step faster there: BENCHMARKS.md).

    Returns:
        The optimizer (two param groups: with and without decay).
    """
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 or "LayerNorm" in name or "layer_norm" in name else decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = device.type == "cuda"
    return torch.optim.AdamW(groups, lr=cfg.lr, fused=fused or None, foreach=None if fused else False)


def train_step(forward: Callable[..., Any], batch: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
               scheduler: Any, params: list[torch.Tensor], max_grad_norm: float,
               device: torch.device, bf16: bool = False, weight: float = 1.0) -> torch.Tensor:
    """One optimiser step: forward (bf16 autocast if asked), backward, clipping, AdamW, schedule.

    Args:
        forward: the model (or a compiled version of it, as benchmarks/step_time.py times).
        batch: tensors already on ``device``, with ``labels``.
        params: the optimised parameters (clipped together).
        bf16: autocast the forward to bf16; weights, gradients and optimizer state stay fp32.
        weight: factor on the batch's mean loss (a data-parallel rank's share, :func:`~.distributed.shard`).

    Returns:
        The (weighted) loss, detached and left on the device (no host sync).
    """
    return train_step_norm(forward, batch, optimizer, scheduler, params, max_grad_norm, device, bf16, weight)[0]


def train_step_norm(forward: Callable[..., Any], batch: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
                    scheduler: Any, params: list[torch.Tensor], max_grad_norm: float, device: torch.device,
                    bf16: bool = False, weight: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`train_step`, returning ``(loss, grad_norm)``: the gradients' total norm before clipping, a 0-d
    tensor left on the device like the loss (no host sync)."""
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        loss = forward(**batch).loss
    if weight != 1.0:
        loss = loss * weight
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)  # the norm before clipping
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach(), grad_norm.detach()


def linear_warmup_schedule(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int) -> LambdaLR:
    """The learning rate rises linearly from 0 over ``warmup_steps``, then falls linearly to 0 at ``total_steps``.

    The formula and floats of transformers' ``get_linear_schedule_with_warmup`` (a ``LambdaLR`` of a partial),
    so checkpoints resume under either; importing that one loads transformers' trainer modules (and peft where
    installed), seconds of a train stage's start-up.
    """
    return LambdaLR(optimizer, functools.partial(_linear_warmup, warmup_steps=warmup_steps, total_steps=total_steps))


def _linear_warmup(step: int, *, warmup_steps: int, total_steps: int) -> float:
    if step < warmup_steps:
        return float(step) / float(max(1, warmup_steps))
    return max(0.0, float(total_steps - step) / float(max(1, total_steps - warmup_steps)))
