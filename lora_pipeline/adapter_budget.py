"""How many parameters a LoRA configuration adds to a model, read from the shapes of the layers the LoRA package's
own target selection picks (nothing applied or copied): the counts :mod:`lora_pipeline.budget` pairs by."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from torch import nn

from .budget import Configuration
from .config import ADAPTERS
from .lora.targets import TargetModules, check_ranks, select_targets

__all__ = ["adapter_parameters", "configurations"]


def _features(module: nn.Module) -> tuple[int, int]:
    """``(in, out)`` of an ``nn.Linear`` or a GPT-2 ``Conv1D`` (which stores its weight ``(in, out)``)."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    n_in, n_out = module.weight.shape
    return int(n_in), int(n_out)


def adapter_parameters(model: nn.Module, target_modules: TargetModules, rank: int, use_dora: bool = False,
                       modules_to_save: Sequence[str] = ()) -> int:
    """The number of parameters :func:`~lora_pipeline.lora.apply_lora` adds to ``model`` for these settings.

    Counted from the shapes of the layers the LoRA package's own target selection picks (nothing is applied or
    copied, so a model on the ``meta`` device works): ``rank·(in + out)`` per wrapped layer (A is ``(r, in)``,
    B is ``(out, r)``), plus ``out`` per layer with DoRA (its magnitude vector). The head, ``modules_to_save``
    and any trained biases are not adapter parameters and are not counted.

    Args:
        model: a model without LoRA layers.
        target_modules: as :func:`~lora_pipeline.lora.apply_lora` takes it (names/suffixes, a regex,
            ``"all-linear"``, or None for the model type's default).
        rank: the rank of every wrapped layer.
        use_dora: count DoRA's magnitude vectors too.
        modules_to_save: as :func:`~lora_pipeline.lora.apply_lora` (the pipeline passes ``lora.modules_to_save``,
            ``[pooler]`` by default, which keeps ``"all-linear"`` off BERT's pooler).

    Returns:
        The adapter parameter count.

    Raises:
        LoRAArgumentError: as :func:`~lora_pipeline.lora.apply_lora` would (nothing matches, a rank above
            ``min(in, out)`` of a layer, …).
        ValueError: a rank below 1, or a model that already has LoRA layers.
    """
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    chosen, _ = select_targets(model, target_modules, tuple(modules_to_save))
    check_ranks(chosen, {name: rank for name in chosen})
    total = 0
    for module in chosen.values():
        n_in, n_out = _features(module)
        total += rank * (n_in + n_out) + (n_out if use_dora else 0)
    return total


def configurations(model: nn.Module, target_sets: Mapping[str, TargetModules], ranks: Iterable[int],
                   adapters: Iterable[str] = ("lora",), modules_to_save: Sequence[str] = ()
                   ) -> list[Configuration]:
    """Every (adapter, target set, rank) of a grid with its adapter parameter count on ``model``.

    Returns:
        Configurations in the order adapter, target set, rank (each as given).

    Raises:
        ValueError: an unknown adapter; anything :func:`adapter_parameters` raises.
    """
    ranks = list(ranks)
    out = []
    for adapter in adapters:
        if adapter not in ADAPTERS:
            raise ValueError(f"unknown adapter {adapter!r}; expected one of {', '.join(ADAPTERS)}")
        for name, targets in target_sets.items():
            out += [Configuration(adapter, name, rank, adapter_parameters(
                model, targets, rank, use_dora=adapter == "dora", modules_to_save=modules_to_save))
                for rank in ranks]
    return out
