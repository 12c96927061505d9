"""Model surgery: put LoRA layers into a model, choose what trains, merge and unload.

Target matching follows peft so that configs mean the same thing in both: a list entry matches a module
whose full name equals it or ends with ``"." + entry``; a string is a regex that must match the full name;
``"all-linear"`` takes every ``nn.Linear``/``Conv1D`` outside the output head.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Optional, Union

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from .errors import LoRAArgumentError
from .layers import BiasMode, LoRALayer, check_bias_mode, wrap_layer

__all__ = [
    "ALL_LINEAR",
    "DEFAULT_TARGET_MODULES",
    "HEAD_NAMES",
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

ALL_LINEAR = "all-linear"

# Attention projections the LoRA paper adapts (W_q, W_v), per Hugging Face model_type.
DEFAULT_TARGET_MODULES: dict[str, tuple[str, ...]] = {
    "bert": ("query", "value"),
    "roberta": ("query", "value"),
    "deberta-v2": ("query_proj", "value_proj"),
    "distilbert": ("q_lin", "v_lin"),
    "electra": ("query", "value"),
    "gpt2": ("c_attn",),
    "xlm-roberta": ("query", "value"),
}

# THE list of head module names (everything else derives from it: models.HEAD_MODULES, the default of
# mark_only_lora_as_trainable/save_adapter, peft export). Classification heads are new, randomly initialised
# layers: trained in full, never given an adapter. Matched by module_under (plain name suffix, as peft's
# modules_to_save), so "classifier" also covers DistilBERT's "pre_classifier" and RoBERTa's "classifier.dense".
HEAD_NAMES: tuple[str, ...] = ("classifier", "score", "qa_outputs")

TargetModules = Union[str, Sequence[str], None]


def lora_layers(model: nn.Module) -> list[tuple[str, LoRALayer]]:
    """All LoRA layers of ``model`` with their module names, found by type (never by name)."""
    return [(name, module) for name, module in model.named_modules() if isinstance(module, LoRALayer)]


def module_under(name: str, suffixes: Iterable[str]) -> bool:
    """Whether module ``name`` or one of its ancestors has a name ending with one of ``suffixes``.

    This is peft's ``modules_to_save`` rule extended to children, so ``"classifier"`` selects
    ``classifier.dense`` of a RoBERTa head as well as a plain ``classifier`` Linear.
    """
    suffixes = tuple(suffixes)
    parts = name.split(".")
    return any(".".join(parts[:i]).endswith(suffixes) for i in range(1, len(parts) + 1)) if suffixes else False


def default_target_modules(model: nn.Module) -> tuple[str, ...]:
    """The default ``target_modules`` for ``model.config.model_type``.

    Raises:
        ValueError: if the model type has no default (pass ``target_modules`` explicitly).
    """
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in DEFAULT_TARGET_MODULES:
        raise LoRAArgumentError("target_modules", f"no default LoRA target_modules for model_type {model_type!r} "
                                f"(known: {sorted(DEFAULT_TARGET_MODULES)}); pass target_modules explicitly")
    return DEFAULT_TARGET_MODULES[model_type]


def _head_module_names(model: nn.Module) -> set[str]:
    """Names of output layers that "all-linear" must skip: LM heads and classification heads."""
    heads = {name for name, _ in model.named_modules() if name and module_under(name, HEAD_NAMES)}
    get_output = getattr(model, "get_output_embeddings", None)
    output = get_output() if callable(get_output) else None
    if output is not None:
        heads |= {name for name, module in model.named_modules() if module is output}
    return heads


def _matcher(model: nn.Module, target_modules: TargetModules) -> Callable[[str], bool]:
    """A predicate on full module names implementing peft's target_modules semantics."""
    if target_modules is None:
        target_modules = default_target_modules(model)
    if isinstance(target_modules, str):
        if target_modules.lower() == ALL_LINEAR:
            heads = _head_module_names(model)
            return lambda name: name not in heads
        pattern = re.compile(target_modules)
        return lambda name: pattern.fullmatch(name) is not None
    targets = tuple(target_modules)
    if not targets:
        raise LoRAArgumentError("target_modules", "target_modules is empty; name at least one module, a regex or "
                                "'all-linear'")
    return lambda name: any(name == t or name.endswith("." + t) for t in targets)


def _linear_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Linear/Conv1D modules and existing LoRA layers by name; a LoRA layer's own children are skipped."""
    found: dict[str, nn.Module] = {}
    wrapped: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(w + ".") for w in wrapped):
            continue
        if isinstance(module, LoRALayer):
            wrapped.append(name)
            found[name] = module
        elif isinstance(module, (nn.Linear, Conv1D)):
            found[name] = module
    return found


def _pattern_value(name: str, pattern: Optional[Mapping[str, float]], default: float) -> float:
    """peft's rank_pattern/alpha_pattern lookup: the first key matching a name suffix (as a regex)."""
    for key, value in (pattern or {}).items():
        if re.match(rf"(.*\.)?({key})$", name):
            return value
    return default


def _check_ranks(layers: Mapping[str, nn.Module], ranks: Mapping[str, int]) -> None:
    """Refuse a rank above min(in, out) of its layer before allocating (rank 1e9 would ask for 100s of GB)."""
    for name, module in layers.items():
        n_in, n_out = (module.in_features, module.out_features) if isinstance(module, nn.Linear) \
            else tuple(module.weight.shape)  # Conv1D stores (in, out)
        limit = min(n_in, n_out)
        if ranks[name] > limit:
            raise LoRAArgumentError("rank", f"rank {ranks[name]} exceeds min(in_features, out_features) = {limit} "
                                    f"of {name} ({n_in} -> {n_out}); use rank <= {limit}")


def _select(model: nn.Module, target_modules: TargetModules, modules_to_save: Sequence[str]
            ) -> tuple[dict[str, nn.Module], list[str]]:
    """The modules to wrap, and the matched ones skipped because they train in full (head, modules_to_save)."""
    matches = _matcher(model, target_modules)
    candidates = _linear_modules(model)
    names = [name for name in candidates if matches(name)]
    full = HEAD_NAMES + tuple(modules_to_save)
    skipped = [name for name in names if module_under(name, full)]
    chosen = {name: candidates[name] for name in names if name not in skipped}
    if not chosen:
        suffixes = sorted({name.rsplit(".", 1)[-1] for name in candidates})
        why = f" (matched only {skipped}, which train in full as head/modules_to_save)" if skipped else ""
        raise LoRAArgumentError("target_modules", f"target_modules={target_modules!r} matched no nn.Linear/Conv1D "
                                f"module{why}; candidate names (suffixes): {suffixes[:40]}; e.g. "
                                f"{list(candidates)[:6]}")
    already = [name for name, module in chosen.items() if isinstance(module, LoRALayer)]
    if already:
        raise ValueError(f"LoRA is already applied to {already[:8]}; use a fresh model or merge_and_unload() first")
    return chosen, skipped


def apply_lora(model: nn.Module, target_modules: TargetModules = None, rank: int = 8, alpha: float = 16.0,
               dropout: float = 0.0, rslora: bool = False, bias: BiasMode = "none",
               rank_pattern: Optional[Mapping[str, int]] = None,
               alpha_pattern: Optional[Mapping[str, float]] = None,
               modules_to_save: Sequence[str] = ()) -> list[str]:
    """Replace the targeted ``nn.Linear``/``Conv1D`` modules of ``model`` by LoRA layers, in place.

    As peft, a target that lies under a classification head (:data:`HEAD_NAMES`) or under a
    ``modules_to_save`` entry is never wrapped: that module trains in full, and an adapter on it would make its
    "frozen" weight train too. Such skips are logged.

    Args:
        model: any module; a Hugging Face model also gets per-architecture defaults.
        target_modules: names or name suffixes, a full-match regex string, ``"all-linear"``, or None for the
            default of ``model.config.model_type`` (see :data:`DEFAULT_TARGET_MODULES`).
        rank, alpha, dropout, rslora, bias: see :class:`~lora_pipeline.lora.layers.LoRALayer`.
        rank_pattern, alpha_pattern: per-module overrides keyed by a name suffix or regex (as peft).
        modules_to_save: name suffixes of modules trained in full besides the head (e.g. ``["pooler"]``).

    Returns:
        The full names of the replaced modules, in model order.

    Raises:
        LoRAArgumentError: (a ValueError naming the argument) if nothing matches (the message lists candidate
            names), the model type has no default targets, or a rank exceeds ``min(in, out)`` of its layer.
        ValueError: if a matched module already has LoRA.
    """
    check_bias_mode(bias)
    chosen, skipped = _select(model, target_modules, tuple(modules_to_save))
    ranks = {name: int(_pattern_value(name, rank_pattern, rank)) for name in chosen}
    _check_ranks(chosen, ranks)
    if skipped:
        more = f" … and {len(skipped) - 8} more" if len(skipped) > 8 else ""
        log.info("LoRA: not wrapping %d targeted module(s) that train in full (head/modules_to_save): %s%s",
                 len(skipped), ", ".join(skipped[:8]), more)
    for name, module in chosen.items():
        layer = wrap_layer(module, rank=ranks[name], alpha=_pattern_value(name, alpha_pattern, alpha),
                           dropout=dropout, rslora=rslora, bias=bias)
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
    """Freeze everything except the LoRA matrices, the biases of the bias mode and the modules named in ``also``.

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
        layer.lora_a.requires_grad_(True)
        layer.lora_b.requires_grad_(True)
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
    """Names of unmerged layers whose ``W0 + ΔW`` would hold NaN/inf (one layer's temporary at a time)."""
    return [name for name, layer in layers
            if not layer.merged and not torch.isfinite(layer.base.weight + layer.delta_weight()).all()]


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
