"""Save and load LoRA adapters: small safetensors files bound to the exact base weights they were trained on.

An adapter directory holds ``adapter.safetensors`` (LoRA matrices, the trained head, the trained biases) and
``adapter_config.json`` (hyper-parameters, the replaced module names and a fingerprint of the frozen base
weights). Loading checks the fingerprint, so an adapter is never silently applied to a different base.
Tensors are read with safetensors only: no pickle.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..io import atomic_dir, write_json
from .layers import BiasMode, LoRALayer, check_bias_mode
from .surgery import apply_lora, lora_layers, module_under

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "FORMAT_VERSION",
    "adapter_settings",
    "base_fingerprint",
    "head_state_dict",
    "load_adapter",
    "load_into",
    "lora_state_dict",
    "save_adapter",
    "trained_tensors",
    "write_adapter_dir",
]

ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
FORMAT_VERSION = 1


def lora_state_dict(model: nn.Module, bias: BiasMode = "none") -> dict[str, torch.Tensor]:
    """The LoRA tensors of ``model`` (as loralib's ``lora_state_dict``), keyed like ``model.state_dict()``.

    Args:
        bias: also include ``"lora_only"``: biases of LoRA-wrapped layers; ``"all"``: every bias.

    Returns:
        Detached tensors sharing storage with the model.
    """
    check_bias_mode(bias)
    state: dict[str, torch.Tensor] = {}
    for name, layer in lora_layers(model):
        state[f"{name}.lora_a"] = layer.lora_a.detach()
        state[f"{name}.lora_b"] = layer.lora_b.detach()
        if bias == "lora_only" and layer.base.bias is not None:
            state[f"{name}.base.bias"] = layer.base.bias.detach()
    if bias == "all":
        state.update({n: p.detach() for n, p in model.named_parameters() if n.rpartition(".")[2] == "bias"})
    return state


def head_state_dict(model: nn.Module, modules: Iterable[str]) -> dict[str, torch.Tensor]:
    """Parameters of the modules selected by :func:`module_under` (the trained head), detached."""
    modules = tuple(modules)
    return {n: p.detach() for n, p in model.named_parameters() if module_under(n.rpartition(".")[0], modules)}


def _base_weight(model: nn.Module, name: str) -> torch.Tensor:
    try:
        module = model.get_submodule(name)
    except AttributeError as err:
        raise ValueError(f"the model has no module {name!r} that the adapter targets") from err
    if isinstance(module, LoRALayer):
        if module.merged:
            raise ValueError(f"LoRA layer {name!r} is merged; unmerge_lora(model) first")
        module = module.base
    return module.weight


def base_fingerprint(model: nn.Module, names: Iterable[str]) -> str:
    """sha256 over name, dtype, shape and bytes of the frozen base weight of each named module.

    The same on a plain model and on one with (unmerged) LoRA layers at ``names``, so it can be checked
    before LoRA is applied. Biases are left out: ``bias="lora_only"``/``"all"`` trains them.

    Raises:
        ValueError: if a module is missing or merged.
    """
    digest = hashlib.sha256()
    for name in sorted(names):
        weight = _base_weight(model, name).detach().cpu().contiguous()
        digest.update(f"{name}.weight|{weight.dtype}|{tuple(weight.shape)}|".encode())
        digest.update(weight.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _single(values: Iterable[Any], what: str) -> Any:
    distinct = set(values)
    if len(distinct) != 1:
        raise ValueError(f"LoRA layers disagree on {what} ({sorted(distinct)}); one adapter needs one setting")
    return distinct.pop()


def adapter_settings(model: nn.Module) -> dict[str, Any]:
    """The hyper-parameters shared by all LoRA layers; ranks/alphas that differ become exact-name patterns.

    Returns:
        ``rank``, ``alpha`` (the most common), ``rank_pattern``, ``alpha_pattern``, ``rslora``, ``dropout``,
        ``bias`` and ``target_modules`` (the wrapped module names).

    Raises:
        ValueError: if the model has no LoRA layer or the layers disagree on rslora, dropout or bias.
    """
    layers = lora_layers(model)
    if not layers:
        raise ValueError("model has no LoRA layers; call apply_lora() first")
    rank = Counter(layer.rank for _, layer in layers).most_common(1)[0][0]
    alpha = Counter(layer.alpha for _, layer in layers).most_common(1)[0][0]
    return {
        "rank": rank,
        "alpha": alpha,
        "rank_pattern": {name: layer.rank for name, layer in layers if layer.rank != rank},
        "alpha_pattern": {name: layer.alpha for name, layer in layers if layer.alpha != alpha},
        "rslora": _single((layer.rslora for _, layer in layers), "rslora"),
        "dropout": _single((layer.dropout_p for _, layer in layers), "dropout"),
        "bias": _single((layer.bias_mode for _, layer in layers), "bias"),
        "target_modules": [name for name, _ in layers],
    }


def trained_tensors(model: nn.Module, heads: Iterable[str], bias: BiasMode) -> dict[str, torch.Tensor]:
    """What an adapter file holds: the head modules ``heads``, the LoRA matrices and the biases of ``bias``."""
    return {**head_state_dict(model, heads), **lora_state_dict(model, bias=bias)}


def write_adapter_dir(directory: str | Path, weights_name: str, tensors: Mapping[str, torch.Tensor],
                      config: Mapping[str, Any]) -> Path:
    """Write ``tensors`` (safetensors) and ``adapter_config.json`` to ``directory``, replacing it atomically."""
    directory = Path(directory)
    with atomic_dir(directory) as tmp:
        # safetensors refuses shared or strided storage: give it its own contiguous CPU copies.
        save_file({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}, str(tmp / weights_name))
        write_json(tmp / ADAPTER_CONFIG, config)
    return directory


def save_adapter(model: nn.Module, directory: str | Path, *, base_model_name: str,
                 trainable_extra: Iterable[str] = ("classifier", "score"),
                 metadata: Optional[Mapping[str, Any]] = None) -> Path:
    """Write the adapter of ``model`` to ``directory`` (replaced whole, atomically).

    Args:
        model: a model with unmerged LoRA layers.
        directory: output directory.
        base_model_name: what the adapter was trained on (HF id or path), recorded for people.
        trainable_extra: fully trained modules to include (the head), matched by :func:`module_under`.
        metadata: JSON-able extra information stored under ``"metadata"``.

    Returns:
        The directory.

    Raises:
        ValueError: if the model has no LoRA layer, a layer is merged, or the layers disagree on settings.
    """
    settings = adapter_settings(model)
    trainable_extra = list(trainable_extra)
    config = {
        "format_version": FORMAT_VERSION,
        **settings,
        "trainable_extra": trainable_extra,
        "base_model_name": base_model_name,
        "base_fingerprint": base_fingerprint(model, settings["target_modules"]),
        "metadata": dict(metadata or {}),
    }
    tensors = trained_tensors(model, trainable_extra, settings["bias"])
    return write_adapter_dir(directory, ADAPTER_WEIGHTS, tensors, config)


def load_into(model: nn.Module, tensors: Mapping[str, torch.Tensor], source: str) -> None:
    """Copy ``tensors`` into ``model``, requiring every key to exist and every LoRA matrix to be given.

    Raises:
        ValueError: naming unknown keys, missing LoRA keys or shape mismatches.
    """
    own = model.state_dict()
    unknown = sorted(set(tensors) - set(own))
    missing = sorted(set(lora_state_dict(model)) - set(tensors))
    if unknown or missing:
        raise ValueError(f"{source} does not fit this model: unknown keys {unknown[:8]}, missing LoRA keys "
                         f"{missing[:8]}")
    bad = [f"{k}: {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in tensors.items() if v.shape != own[k].shape]
    if bad:
        raise ValueError(f"{source} has tensors of the wrong shape (file vs model): {bad[:8]}")
    model.load_state_dict(dict(tensors), strict=False)


def _read_config(directory: Path) -> dict[str, Any]:
    path = directory / ADAPTER_CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"no {ADAPTER_CONFIG} in {directory}; is it an adapter saved by save_adapter()?")
    config = json.loads(path.read_text(encoding="utf-8"))
    if config.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {config.get('format_version')!r} is not {FORMAT_VERSION}")
    return config


def _ensure_lora(model: nn.Module, config: Mapping[str, Any]) -> None:
    """Apply LoRA as recorded in ``config`` unless the model already has exactly those layers."""
    targets = list(config["target_modules"])
    present = [name for name, _ in lora_layers(model)]
    if present:
        if sorted(present) != sorted(targets):
            raise ValueError(f"model already has LoRA on {present}, but the adapter targets {targets}")
        return
    # Escaped full names: a recorded name must match itself only, never a deeper module ending like it.
    apply_lora(model, "|".join(re.escape(t) for t in targets), rank=config["rank"], alpha=config["alpha"],
               dropout=config["dropout"], rslora=config["rslora"], bias=config["bias"],
               rank_pattern={re.escape(k): v for k, v in config.get("rank_pattern", {}).items()},
               alpha_pattern={re.escape(k): v for k, v in config.get("alpha_pattern", {}).items()})


def load_adapter(model: nn.Module, directory: str | Path) -> dict[str, Any]:
    """Load an adapter written by :func:`save_adapter` into ``model`` (LoRA is applied if not yet there).

    Args:
        model: the same base model the adapter was trained on (plain, or with the same LoRA layers).
        directory: the adapter directory.

    Returns:
        The adapter config dict.

    Raises:
        FileNotFoundError: if the directory holds no adapter.
        ValueError: if the base weights differ from the ones the adapter was trained on (the message names
            expected and actual fingerprints), or the tensors do not fit.
    """
    directory = Path(directory)
    config = _read_config(directory)
    actual = base_fingerprint(model, config["target_modules"])
    if actual != config["base_fingerprint"]:
        raise ValueError(f"adapter {directory} was trained on base {config['base_model_name']!r} with weight "
                         f"fingerprint {config['base_fingerprint']}, but this model's weights give {actual}: "
                         f"load the same base model (same checkpoint and dtype)")
    _ensure_lora(model, config)
    load_into(model, load_file(str(directory / ADAPTER_WEIGHTS)), str(directory / ADAPTER_WEIGHTS))
    return config
