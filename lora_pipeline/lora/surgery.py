"""Model surgery: put LoRA layers into a model, choose what trains, merge and unload.

Which modules a ``target_modules`` value selects is decided in :mod:`.targets` (peft's matching rules).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Optional, Union

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from .dora import DoRAConv1D, DoRALinear
from .errors import LoRAArgumentError
from .layers import BiasMode, LoRAConv1D, LoRALayer, LoRALinear, check_bias_mode
from .targets import (
    ALL_LINEAR,
    DEFAULT_TARGET_MODULES,
    HEAD_NAMES,
    TargetModules,
    check_ranks,
    default_target_modules,
    module_under,
    pattern_value,
    select_targets,
)

__all__ = [
    "ALL_LINEAR",
    "DEFAULT_TARGET_MODULES",
    "HEAD_NAMES",
    "TargetModules",
    "apply_lora",
    "bias_mode",
    "count_parameters",
    "default_target_modules",
    "lora_layers",
    "mark_only_lora_as_trainable",
    "merge_and_unload",
    "merge_lora",
    "module_under",
    "trainable_summary",
    "unmerge_lora",
]

log = logging.getLogger(__name__)


def wrap_layer(base: Union[nn.Linear, Conv1D], rank: int = 8, alpha: float = 16.0, dropout: float = 0.0,
               rslora: bool = False, bias: BiasMode = "none", use_dora: bool = False) -> LoRALayer:
    """Wrap ``base`` in the LoRA class for its type (its DoRA variant with ``use_dora``).

    Returns:
        A :class:`LoRALinear` or :class:`LoRAConv1D` (with ``use_dora``: a :class:`~.dora.DoRALinear` or
        :class:`~.dora.DoRAConv1D`) owning ``base``.

    Raises:
        TypeError: if ``base`` is neither ``nn.Linear`` nor ``Conv1D``.
    """
    if isinstance(base, nn.Linear):
        return (DoRALinear if use_dora else LoRALinear)(base, rank, alpha, dropout, rslora, bias)
    if isinstance(base, Conv1D):
        return (DoRAConv1D if use_dora else LoRAConv1D)(base, rank, alpha, dropout, rslora, bias)
    raise TypeError(f"LoRA supports nn.Linear and transformers Conv1D, got {type(base).__name__}")


def lora_layers(model: nn.Module) -> list[tuple[str, LoRALayer]]:
    """All LoRA layers of ``model`` with their module names, found by type (never by name)."""
    return [(name, module) for name, module in model.named_modules() if isinstance(module, LoRALayer)]


def apply_lora(model: nn.Module, target_modules: TargetModules = None, rank: int = 8, alpha: float = 16.0,
               dropout: float = 0.0, rslora: bool = False, bias: BiasMode = "none",
               rank_pattern: Optional[Mapping[str, int]] = None,
               alpha_pattern: Optional[Mapping[str, float]] = None,
               modules_to_save: Sequence[str] = (), use_dora: bool = False) -> list[str]:
    """Replace the targeted ``nn.Linear``/``Conv1D`` modules of ``model`` by LoRA (or DoRA) layers, in place.

    As peft, a target that lies under a classification head (:data:`HEAD_NAMES`) or under a
    ``modules_to_save`` entry is never wrapped: that module trains in full, and an adapter on it would make its
    "frozen" weight train too. Such skips are logged.

    Args:
        model: any module; a Hugging Face model also gets per-architecture defaults.
        target_modules: names or name suffixes (each must match a module), a full-match regex string,
            ``"all-linear"``, or None for the default of ``model.config.model_type`` (see
            :data:`DEFAULT_TARGET_MODULES`); everything matched must be ``nn.Linear``/``Conv1D`` (see
            :mod:`.targets`).
        rank, alpha, dropout, rslora, bias: see :class:`~lora_pipeline.lora.layers.LoRALayer`.
        rank_pattern, alpha_pattern: per-module overrides keyed by a name suffix or regex (as peft).
        modules_to_save: name suffixes of modules trained in full besides the head (e.g. ``["pooler"]``).
        use_dora: wrap in DoRA layers (:mod:`.dora`, arXiv:2402.09353): LoRA plus a trained magnitude per
            output unit, as peft's ``use_dora``.

    Returns:
        The full names of the replaced modules, in model order.

    Raises:
        LoRAArgumentError: (a ValueError naming the argument) if nothing matches (the message lists candidate
            names), a target also matches modules other than ``nn.Linear``/``Conv1D``, a list entry matches no
            module, the model type has no default targets, or a rank exceeds ``min(in, out)`` of its layer.
        ValueError: if a matched module already has LoRA.
    """
    check_bias_mode(bias)
    chosen, skipped = select_targets(model, target_modules, tuple(modules_to_save))
    ranks = {name: int(pattern_value(name, rank_pattern, rank)) for name in chosen}
    check_ranks(chosen, ranks)
    if skipped:
        more = f" … and {len(skipped) - 8} more" if len(skipped) > 8 else ""
        log.info("LoRA: not wrapping %d targeted module(s) that train in full (head/modules_to_save): %s%s",
                 len(skipped), ", ".join(skipped[:8]), more)
    for name, module in chosen.items():
        layer = wrap_layer(module, rank=ranks[name], alpha=pattern_value(name, alpha_pattern, alpha),
                           dropout=dropout, rslora=rslora, bias=bias, use_dora=use_dora)
        model.set_submodule(name, layer)
    return list(chosen)


def bias_mode(model: nn.Module, bias: Optional[BiasMode] = None, caller: str = "bias_mode") -> BiasMode:
    """The bias mode given to :func:`apply_lora`, as its LoRA layers record it: one fact for training and saving.

    Args:
        bias: None, or a mode that must equal the recorded one (``"none"`` for a model without LoRA layers).
        caller: the function named in the error.

    Raises:
        LoRAArgumentError: if ``bias`` is not a mode, or contradicts the layers' mode (argument ``"bias"``).
        ValueError: if the LoRA layers disagree among themselves.
    """
    if bias is not None:
        check_bias_mode(bias)
    modes = sorted({layer.bias_mode for _, layer in lora_layers(model)})
    if len(modes) > 1:
        raise ValueError(f"LoRA layers disagree on the bias mode ({modes}); one adapter needs one mode")
    recorded = modes[0] if modes else (bias or "none")
    if bias is not None and bias != recorded:
        raise LoRAArgumentError("bias", f"{caller}(bias={bias!r}) contradicts bias={recorded!r} given to apply_lora "
                                f"(recorded on the LoRA layers): drop the bias argument, or apply LoRA to a fresh "
                                f"model with bias={bias!r}")
    return recorded


def mark_only_lora_as_trainable(model: nn.Module, bias: Optional[BiasMode] = None,
                                also: Iterable[str] = HEAD_NAMES) -> None:
    """Freeze everything except the LoRA matrices (and DoRA magnitudes), the biases of the bias mode and the
    modules named in ``also``.

    The base weight of a LoRA layer never trains, even under ``also`` (its bias only per the bias mode, as
    peft): otherwise the saved "frozen" base would differ from the pristine one.

    Args:
        model: a model with LoRA layers.
        bias: None (the mode given to :func:`apply_lora`), or that same mode spelled out: ``"none"``: no bias
            trains; ``"lora_only"``: biases of LoRA-wrapped layers; ``"all"``: every bias.
        also: modules kept fully trainable (the head, modules_to_save), matched by :func:`module_under`.

    Raises:
        LoRAArgumentError: if ``bias`` is not a mode or differs from the one the LoRA layers record.
        ValueError: if ``model`` has no LoRA layer.
    """
    layers = lora_layers(model)
    if not layers:
        raise ValueError("model has no LoRA layers; call apply_lora() first")
    bias = bias_mode(model, bias, "mark_only_lora_as_trainable")
    also = tuple(also)
    for name, param in model.named_parameters():
        owner, _, leaf = name.rpartition(".")
        param.requires_grad_((bias == "all" and leaf == "bias") or module_under(owner, also))
    for _, layer in layers:
        for param in layer.adapter_parameters().values():
            param.requires_grad_(True)
        layer.base.weight.requires_grad_(False)
        if layer.base.bias is not None:
            layer.base.bias.requires_grad_(bias != "none")


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """Count parameters (shared ones once).

    Returns:
        ``(trainable, total)``.
    """
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def trainable_summary(model: nn.Module) -> str:
    """One line like peft's ``print_trainable_parameters``.

    Returns:
        ``"trainable params: X || all params: Y || trainable%: Z"``.
    """
    trainable, total = count_parameters(model)
    share = 100 * trainable / total if total else 0.0
    return f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {share:.4f}"


def merge_lora(model: nn.Module, safe: bool = True) -> list[str]:
    """Merge every unmerged LoRA layer of ``model``; :func:`unmerge_lora` restores ``W0`` bit for bit.

    Args:
        safe: refuse non-finite merged weights; then no layer stays merged by this call.

    Returns:
        The names of the layers merged by this call.

    Raises:
        ValueError: with ``safe=True``, if a merged weight would not be finite.
    """
    done: list[tuple[str, LoRALayer]] = []
    try:
        for name, layer in lora_layers(model):
            if not layer.merged:
                layer.merge(safe=safe)
                done.append((name, layer))
    except ValueError:
        for _, layer in done:  # all or nothing, so a refused merge leaves the model as it was
            layer.unmerge()
        raise
    return [name for name, _ in done]


def unmerge_lora(model: nn.Module) -> list[str]:
    """Unmerge every merged LoRA layer of ``model``.

    Returns:
        The names of the layers unmerged.
    """
    done = []
    for name, layer in lora_layers(model):
        if layer.merged:
            layer.unmerge()
            done.append(name)
    return done


@torch.no_grad()
def _non_finite_merges(layers: Sequence[tuple[str, LoRALayer]]) -> list[str]:
    """Names of unmerged layers whose merged weight would hold NaN/inf (one layer's temporary at a time)."""
    return [name for name, layer in layers if not layer.merged and not torch.isfinite(layer.merged_weight()).all()]


def merge_and_unload(model: nn.Module, safe: bool = True) -> nn.Module:
    """Merge all adapters and put the original ``nn.Linear``/``Conv1D`` modules back: zero added latency.

    The base weights stay frozen (``requires_grad=False``) as LoRA left them. No copy of ``W0`` is kept (the
    adapters are gone afterwards), so peak memory grows by one layer's weight only.

    Args:
        model: a model with LoRA layers (modified in place).
        safe: refuse (before changing anything) if a merged weight would hold NaN/inf.

    Returns:
        ``model``, now free of LoRA layers.

    Raises:
        ValueError: with ``safe=True``, if a merged weight would not be finite (nothing is changed).
    """
    layers = lora_layers(model)
    bad = _non_finite_merges(layers) if safe else []
    if bad:
        raise ValueError(f"merge_and_unload refused: W0 + ΔW is not finite (NaN/inf) in {len(bad)} layer(s), e.g. "
                         f"{bad[:3]}; the adapter is broken (diverged training?); pass safe=False to merge anyway")
    for name, layer in layers:
        if not layer.merged:
            layer.merge(safe=False, keep_original=False)
        layer.original_weight = None
        model.set_submodule(name, layer.base)
    return model
