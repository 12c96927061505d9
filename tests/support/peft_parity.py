"""Ours and peft's LoRA side by side on one tiny base: a matched pair with the same adapter values, peft's names
mapped onto ours, and the parity check of logits and gradients. peft is a dev dependency: a test module that
imports this one is skipped without it."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lora_pipeline.lora import HEAD_NAMES, apply_lora, lora_layers, mark_only_lora_as_trainable
from tests.support.tiny_models import logits, randomize_lora, tiny_batch, tiny_model

peft = pytest.importorskip("peft")
from peft.tuners.lora import LoraLayer as PeftLoraLayer  # noqa: E402

__all__ = ["TIGHT", "peft_lora", "peft_wrapped", "copy_adapters_to_peft", "peft_name_to_ours", "grads",
           "matched_pair", "assert_same_logits_and_grads"]

# Power-of-two scalings (alpha / r = 2 or 4) multiply exactly, so ours and peft agree to the last bits.
TIGHT = {"atol": 1e-6, "rtol": 1e-6}


def peft_lora(model: nn.Module, targets, **kwargs) -> nn.Module:
    """peft's LoRA on ``model`` with the same hyper-parameters as ours (rank 4, alpha 8 by default)."""
    config = peft.LoraConfig(r=kwargs.pop("r", 4), lora_alpha=kwargs.pop("lora_alpha", 8), target_modules=targets,
                             task_type="SEQ_CLS", lora_dropout=kwargs.pop("lora_dropout", 0.0), **kwargs)
    return peft.get_peft_model(model, config)


def peft_wrapped(model: nn.Module) -> set[str]:
    return {n.removeprefix("base_model.model.") for n, m in model.named_modules() if isinstance(m, PeftLoraLayer)}


def copy_adapters_to_peft(ours: nn.Module, theirs: nn.Module) -> None:
    inner = theirs.base_model.model
    with torch.no_grad():
        for name, layer in lora_layers(ours):
            target = inner.get_submodule(name)
            target.lora_A["default"].weight.copy_(layer.lora_a)
            target.lora_B["default"].weight.copy_(layer.lora_b)
            if layer.use_dora:
                target.lora_magnitude_vector["default"].weight.copy_(layer.lora_magnitude)


def peft_name_to_ours(name: str) -> str:
    """Map a peft parameter name onto ours: this is the format we claim to mirror."""
    name = name.removeprefix("base_model.model.")
    for peft_part, our_part in ((".lora_A.default.weight", ".lora_a"), (".lora_B.default.weight", ".lora_b"),
                                (".lora_magnitude_vector.default.weight", ".lora_magnitude"),
                                (".modules_to_save.default.", "."), (".base_layer.", ".base.")):
        name = name.replace(peft_part, our_part)
    return name


def grads(model: nn.Module, batch: dict[str, torch.Tensor], rename=lambda n: n) -> dict[str, torch.Tensor]:
    model.zero_grad()
    model(**batch).loss.backward()
    return {rename(n): p.grad for n, p in model.named_parameters() if p.requires_grad}


def matched_pair(arch: str, targets, *, rank: int = 4, alpha: float = 8, dropout: float = 0.0, rslora: bool = False,
                 bias: str = "none", modules_to_save: tuple[str, ...] = (), rank_pattern=None,
                 alpha_pattern=None, use_dora: bool = False) -> tuple[nn.Module, nn.Module]:
    """Ours and peft's LoRA (DoRA with ``use_dora``) on the same tiny base, same settings, same (random) adapter
    values.

    Asserts that both wrapped the same modules: the targeting rules (head, modules_to_save, all-linear) agree.
    """
    base = tiny_model(arch)
    ours = copy.deepcopy(base)
    apply_lora(ours, targets, rank=rank, alpha=alpha, dropout=dropout, rslora=rslora, bias=bias,
               modules_to_save=modules_to_save, rank_pattern=rank_pattern, alpha_pattern=alpha_pattern,
               use_dora=use_dora)
    mark_only_lora_as_trainable(ours, bias=bias, also=HEAD_NAMES + modules_to_save)
    randomize_lora(ours)
    theirs = peft_lora(copy.deepcopy(base), targets, r=rank, lora_alpha=alpha, lora_dropout=dropout,
                       use_rslora=rslora, bias=bias, modules_to_save=list(modules_to_save) or None,
                       rank_pattern=rank_pattern or {}, alpha_pattern=alpha_pattern or {},
                       use_dora=use_dora).eval()
    assert peft_wrapped(theirs) == {name for name, _ in lora_layers(ours)}
    copy_adapters_to_peft(ours, theirs)
    return ours, theirs


def assert_same_logits_and_grads(ours: nn.Module, theirs: nn.Module, **tol) -> None:
    batch = tiny_batch()
    torch.testing.assert_close(logits(ours, batch), logits(theirs, batch), **tol)
    our_grads, their_grads = grads(ours, batch), grads(theirs, batch, peft_name_to_ours)
    assert set(our_grads) == set(their_grads)
    for name, grad in our_grads.items():
        torch.testing.assert_close(grad, their_grads[name], **tol, msg=lambda m: f"{name}: {m}")
