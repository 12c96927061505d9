"""Which modules LoRA wraps: ``target_modules`` matching, the head names, per-module rank and alpha.

Target matching follows peft so that configs mean the same thing in both: a list entry matches a module
whose full name equals it or ends with ``"." + entry``; a string is a regex that must match the full name;
``"all-linear"`` takes every ``nn.Linear``/``Conv1D`` outside the output head. Unlike peft, a list entry that
matches no module is refused (peft ignores it, so a typo silently trains fewer adapters); like peft, a target
that also matches modules other than ``nn.Linear``/``Conv1D`` is refused rather than narrowed to the linear ones.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Optional, Union

from torch import nn
from transformers.pytorch_utils import Conv1D

from .errors import LoRAArgumentError
from .layers import LoRALayer

__all__ = [
    "ALL_LINEAR",
    "DEFAULT_TARGET_MODULES",
    "HEAD_NAMES",
    "TargetModules",
    "check_ranks",
    "default_target_modules",
    "module_under",
    "pattern_value",
    "select_targets",
    "unmatched_entries",
]

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

_SHOWN = 8  # offending names an error message lists


def _excerpt(names: Sequence[str]) -> str:
    """``names`` as a list of at most :data:`_SHOWN`, with how many more there are."""
    more = f" … and {len(names) - _SHOWN} more" if len(names) > _SHOWN else ""
    return f"{list(names[:_SHOWN])}{more}"


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
        LoRAArgumentError: if the model type has no default (pass ``target_modules`` explicitly).
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


def _entry_matches(name: str, entry: str) -> bool:
    """peft's rule for a list entry: the full name, or a suffix of whole name parts."""
    return name == entry or name.endswith("." + entry)


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
    return lambda name: any(_entry_matches(name, t) for t in targets)


def _named_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Every module but the root by name; a LoRA layer's own children (``base``, ``dropout``) are skipped."""
    found: dict[str, nn.Module] = {}
    wrapped: list[str] = []
    for name, module in model.named_modules():
        if not name or any(name.startswith(w + ".") for w in wrapped):
            continue
        if isinstance(module, LoRALayer):
            wrapped.append(name)
        found[name] = module
    return found


def _is_linear(module: nn.Module) -> bool:
    """What LoRA can wrap (an existing LoRA layer counts, so that applying twice is reported as such)."""
    return isinstance(module, (nn.Linear, Conv1D, LoRALayer))


def unmatched_entries(model: nn.Module, target_modules: TargetModules) -> list[str]:
    """The entries of a ``target_modules`` list that match no module of ``model`` (none for a string or None)."""
    if target_modules is None or isinstance(target_modules, str):
        return []
    names = list(_named_modules(model))
    return [t for t in target_modules if not any(_entry_matches(name, t) for name in names)]


def _check_matches(model: nn.Module, target_modules: TargetModules, matched: Mapping[str, nn.Module],
                   full: Sequence[str]) -> None:
    """Refuse matches that are not Linear/Conv1D (outside the modules that train in full), and list entries that
    match no module."""
    if isinstance(target_modules, str) and target_modules.lower() == ALL_LINEAR:
        return
    other = [f"{name} ({type(module).__name__})" for name, module in matched.items()
             if not _is_linear(module) and not module_under(name, full)]
    if other:
        raise LoRAArgumentError("target_modules", f"target_modules={target_modules!r} matches modules that are "
                                f"not nn.Linear/Conv1D: {_excerpt(other)}; LoRA wraps only those: name the linear "
                                "layers (e.g. end a regex with (query|value)) or use 'all-linear'")
    unmatched = unmatched_entries(model, target_modules)
    if unmatched:
        suffixes = sorted({name.rsplit(".", 1)[-1] for name, module in _named_modules(model).items()
                           if _is_linear(module)})
        raise LoRAArgumentError("target_modules", f"target_modules entries {_excerpt(unmatched)} match no module "
                                f"of {type(model).__name__}; remove them or correct them to Linear/Conv1D names "
                                f"(suffixes: {suffixes[:40]})")


def select_targets(model: nn.Module, target_modules: TargetModules, modules_to_save: Sequence[str]
                   ) -> tuple[dict[str, nn.Module], list[str]]:
    """The modules to wrap, and the matched ones skipped because they train in full (head, modules_to_save).

    Raises:
        LoRAArgumentError: if nothing linear matches, a target matches non-linear modules, a list entry matches
            no module, or every match trains in full.
        ValueError: if a chosen module already has LoRA.
    """
    matches = _matcher(model, target_modules)
    matched = {name: module for name, module in _named_modules(model).items() if matches(name)}
    candidates = {name: module for name, module in _named_modules(model).items() if _is_linear(module)}
    names = [name for name in candidates if name in matched]
    full = HEAD_NAMES + tuple(modules_to_save)
    if names:
        _check_matches(model, target_modules, matched, full)
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


def pattern_value(name: str, pattern: Optional[Mapping[str, float]], default: float) -> float:
    """peft's rank_pattern/alpha_pattern lookup: the first key matching a name suffix (as a regex)."""
    for key, value in (pattern or {}).items():
        if re.match(rf"(.*\.)?({key})$", name):
            return value
    return default


def check_ranks(layers: Mapping[str, nn.Module], ranks: Mapping[str, int]) -> None:
    """Refuse a rank above min(in, out) of its layer before allocating (rank 1e9 would ask for 100s of GB)."""
    for name, module in layers.items():
        n_in, n_out = (module.in_features, module.out_features) if isinstance(module, nn.Linear) \
            else tuple(module.weight.shape)  # Conv1D stores (in, out)
        limit = min(n_in, n_out)
        if ranks[name] > limit:
            raise LoRAArgumentError("rank", f"rank {ranks[name]} exceeds min(in_features, out_features) = {limit} "
                                    f"of {name} ({n_in} -> {n_out}); use rank <= {limit}")
