"""Save and load LoRA adapters: small safetensors files bound to the exact base they were trained on.

An adapter directory holds ``adapter.safetensors`` (LoRA matrices, DoRA magnitudes, the trained head, the trained
biases) and
``adapter_config.json`` (hyper-parameters, the replaced module names, a fingerprint of every base parameter
the adapter does not replace and the base config's architecture fields, see :mod:`.fingerprint`). Loading
checks both, so an adapter is never silently applied to a different base (other embeddings, feed-forward
weights, dtype, activation or layer-norm epsilon included).
Tensors are read with safetensors only: no pickle.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..files import atomic_dir, write_json
from .errors import PEFT_POINTER
from .fingerprint import architecture_config, base_fingerprint, check_base, plain_name
from .layers import BiasMode, LoRALayer
from .surgery import apply_lora, bias_mode, lora_layers, mark_only_lora_as_trainable, module_under

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "FORMAT_VERSION",
    "adapter_factors",
    "adapter_settings",
    "check_kind",
    "head_state_dict",
    "load_adapter",
    "load_into",
    "lora_state_dict",
    "resolve_heads",
    "restored_on_error",
    "save_adapter",
    "trained_modules",
    "trained_tensors",
    "write_adapter_dir",
]

ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
# 3: the base's architecture config is recorded and checked too; 2: every base parameter the adapter does not
# replace (still loaded, with a warning); 1: targeted weights only (refused).
FORMAT_VERSION = 3
READABLE_VERSIONS = (2, FORMAT_VERSION)


def lora_state_dict(model: nn.Module, bias: Optional[BiasMode] = None) -> dict[str, torch.Tensor]:
    """The LoRA tensors of ``model`` (as loralib's ``lora_state_dict``; DoRA magnitudes too), keyed like
    ``model.state_dict()``.

    Args:
        bias: None (the mode given to ``apply_lora``) or that same mode; with ``"lora_only"`` the biases of
            LoRA-wrapped layers are included, with ``"all"`` every bias.

    Returns:
        Detached tensors sharing storage with the model.

    Raises:
        LoRAArgumentError: if ``bias`` differs from the mode the LoRA layers record.
    """
    bias = bias_mode(model, bias, "lora_state_dict")
    state: dict[str, torch.Tensor] = {}
    for name, layer in lora_layers(model):
        state.update({f"{name}.{attr}": param.detach() for attr, param in layer.adapter_parameters().items()})
        if bias == "lora_only" and layer.base.bias is not None:
            state[f"{name}.base.bias"] = layer.base.bias.detach()
    if bias == "all":
        state.update({n: p.detach() for n, p in model.named_parameters() if n.rpartition(".")[2] == "bias"})
    return state


def head_state_dict(model: nn.Module, modules: Iterable[str]) -> dict[str, torch.Tensor]:
    """Parameters of the modules selected by :func:`module_under` (the trained head), detached."""
    modules = tuple(modules)
    return {n: p.detach() for n, p in model.named_parameters() if module_under(n.rpartition(".")[0], modules)}


def _single(values: Iterable[Any], what: str) -> Any:
    distinct = set(values)
    if len(distinct) != 1:
        raise ValueError(f"LoRA layers disagree on {what} ({sorted(distinct)}); one adapter needs one setting")
    return distinct.pop()


def adapter_settings(model: nn.Module) -> dict[str, Any]:
    """The hyper-parameters shared by all LoRA layers; ranks/alphas that differ become exact-name patterns.

    Returns:
        ``rank``, ``alpha`` (the most common), ``rank_pattern``, ``alpha_pattern``, ``rslora``, ``dropout``,
        ``bias``, ``use_dora`` and ``target_modules`` (the wrapped module names).

    Raises:
        ValueError: if the model has no LoRA layer or the layers disagree on rslora, dropout, bias or use_dora.
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
        "use_dora": _single((layer.use_dora for _, layer in layers), "use_dora"),
        "target_modules": [name for name, _ in layers],
    }


def trained_tensors(model: nn.Module, heads: Iterable[str], bias: BiasMode) -> dict[str, torch.Tensor]:
    """What an adapter file holds: the head modules ``heads``, the LoRA matrices and the biases of ``bias``."""
    return {**head_state_dict(model, heads), **lora_state_dict(model, bias=bias)}


def _unsaved(model: nn.Module, heads: Iterable[str], bias: BiasMode) -> list[str]:
    """Trainable parameters that an adapter with these ``heads`` and ``bias`` would not hold."""
    saved = set(trained_tensors(model, heads, bias))
    return [n for n, p in model.named_parameters() if p.requires_grad and n not in saved]


def _trains_entirely(model: nn.Module, name: str, trainable: set[str]) -> bool:
    """Whether every parameter of module ``name`` trains and it holds no LoRA layer."""
    module = model.get_submodule(name)
    params = [f"{name}.{n}" for n, _ in module.named_parameters()]
    return bool(params) and all(p in trainable for p in params) \
        and not any(isinstance(m, LoRALayer) for m in module.modules())


def trained_modules(model: nn.Module, bias: Optional[BiasMode] = None) -> list[str]:
    """Full names of the modules that train in full: what an adapter must save besides LoRA and its biases.

    ``bias`` is the bias mode (None: the one the LoRA layers record).

    Derived from ``requires_grad`` (the head, ``modules_to_save`` such as BERT's pooler). A module is widened
    to its parent while the parent trains entirely, so RoBERTa's head is ``classifier``, not its two Linears.

    Raises:
        ValueError: if a trained parameter sits on the root module (no module name can carry it).
    """
    bias = bias_mode(model, bias, "trained_modules")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    modules: list[str] = []
    for name in _unsaved(model, (), bias):
        owner = name.rpartition(".")[0]
        if not owner:
            raise ValueError(f"trained parameter {name!r} belongs to the root module; an adapter cannot hold it")
        while "." in owner and _trains_entirely(model, owner.rpartition(".")[0], trainable):
            owner = owner.rpartition(".")[0]
        if owner not in modules:
            modules.append(owner)
    return modules


def resolve_heads(model: nn.Module, heads: Optional[Iterable[str]], bias: BiasMode, what: str) -> list[str]:
    """``heads`` checked to cover every trained tensor, or :func:`trained_modules` when None.

    Raises:
        ValueError: naming trained tensors that ``heads`` would leave out (they would be lost silently).
    """
    if heads is None:
        return trained_modules(model, bias)
    heads = list(heads)
    lost = _unsaved(model, heads, bias)
    if lost:
        raise ValueError(f"{what}={heads} leaves out trained tensors {lost[:5]}"
                         f"{f' … and {len(lost) - 5} more' if len(lost) > 5 else ''}: add their modules to {what} "
                         f"(or leave it None to derive it), or freeze them before saving")
    return heads


def write_adapter_dir(directory: str | Path, weights_name: str, tensors: Mapping[str, torch.Tensor],
                      config: Mapping[str, Any]) -> Path:
    """Write ``tensors`` (safetensors) and ``adapter_config.json`` to ``directory``, replacing it atomically."""
    directory = Path(directory)
    with atomic_dir(directory) as tmp:
        # safetensors refuses shared or strided storage: give it its own contiguous CPU copies.
        save_file({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}, str(tmp / weights_name))
        write_json(tmp / ADAPTER_CONFIG, config)
    return directory


def _skip(tensors: Iterable[str], targets: Iterable[str]) -> set[str]:
    """Plain names of the base parameters that the adapter's tensors replace (left out of the fingerprint)."""
    wrapped = set(targets)
    return {plain_name(key, wrapped) for key in tensors}


def save_adapter(model: nn.Module, directory: str | Path, *, base_model_name: str,
                 trainable_extra: Optional[Iterable[str]] = None,
                 metadata: Optional[Mapping[str, Any]] = None) -> Path:
    """Write the adapter of ``model`` to ``directory`` (replaced whole, atomically).

    Args:
        model: a model with unmerged LoRA layers.
        directory: output directory.
        base_model_name: what the adapter was trained on (HF id or path), recorded for people.
        trainable_extra: fully trained modules to include (the head, modules_to_save), matched by
            :func:`module_under`; None derives them from what trains (:func:`trained_modules`).
        metadata: JSON-able extra information stored under ``"metadata"``.

    Returns:
        The directory.

    Raises:
        ValueError: if the model has no LoRA layer, a layer is merged, the layers disagree on settings, or
            ``trainable_extra`` leaves out a trained tensor.
    """
    settings = adapter_settings(model)
    heads = resolve_heads(model, trainable_extra, settings["bias"], "trainable_extra")
    tensors = trained_tensors(model, heads, settings["bias"])
    config = {
        "peft_type": PEFT_POINTER,  # peft reads this key first: its KeyError then says where peft's files are
        "format_version": FORMAT_VERSION,
        **settings,
        "trainable_extra": heads,
        "base_model_name": base_model_name,
        "base_fingerprint": base_fingerprint(model, _skip(tensors, settings["target_modules"])),
        "base_architecture": architecture_config(model),
        "metadata": dict(metadata or {}),
    }
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


@contextmanager
def restored_on_error(model: nn.Module) -> Iterator[None]:
    """If the block raises, unwrap the LoRA layers it added to ``model`` and restore every ``requires_grad``.

    For loaders that apply LoRA and then find that the tensors do not fit: a refused load leaves the model's
    module tree and parameters as they were (tensor values are copied only once every check has passed).
    """
    present = {name for name, _ in lora_layers(model)}
    flags = [(param, param.requires_grad) for param in model.parameters()]
    try:
        yield
    except BaseException:
        for name, layer in lora_layers(model):
            if name not in present:
                model.set_submodule(name, layer.base)
        for param, flag in flags:
            param.requires_grad_(flag)
        raise


def _read_config(directory: Path) -> dict[str, Any]:
    path = directory / ADAPTER_CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"no {ADAPTER_CONFIG} in {directory}; is it an adapter saved by save_adapter()?")
    config = json.loads(path.read_text(encoding="utf-8"))
    version = config.get("format_version")
    if version == 1:
        raise ValueError(f"{path}: format_version 1 fingerprints only the targeted weights and cannot be checked "
                         f"against the whole base; retrain (dvc repro train_lora) or save it again with this version")
    if version not in READABLE_VERSIONS:
        raise ValueError(f"{path}: format_version {version!r} is not one of {list(READABLE_VERSIONS)}")
    return config


def adapter_factors(directory: str | Path) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    """Each targeted module's ``(A (r, in), B (out, r), scaling)`` as saved in an adapter directory, without a model.

    ``ΔW = scaling · B · A`` with scaling α/r (α/√r for rsLoRA), per-module rank/alpha patterns applied: what an
    analysis of the learned updates (their singular values, subspaces) needs. For a DoRA adapter
    (``use_dora`` in its config) this is the direction update only: the merged weight also rescales each output
    row by its magnitude (``<module>.lora_magnitude`` in the file), which these factors leave out.

    Raises:
        FileNotFoundError / ValueError: not an adapter directory of this format, or a target without both factors.
    """
    directory = Path(directory)
    config = _read_config(directory)
    tensors = load_file(str(directory / ADAPTER_WEIGHTS))
    out = {}
    for name in config["target_modules"]:
        a, b = tensors.get(f"{name}.lora_a"), tensors.get(f"{name}.lora_b")
        if a is None or b is None:
            raise ValueError(f"{directory}: adapter has no {name}.lora_a/.lora_b although it targets {name}")
        rank = config.get("rank_pattern", {}).get(name, config["rank"])
        alpha = float(config.get("alpha_pattern", {}).get(name, config["alpha"]))
        out[name] = (a, b, alpha / math.sqrt(rank) if config["rslora"] else alpha / rank)
    return out


def _setting_differences(layer: LoRALayer, name: str, config: Mapping[str, Any]) -> list[str]:
    """How ``layer`` differs from what ``config`` records for module ``name`` (empty if it matches)."""
    want = {"rank": config.get("rank_pattern", {}).get(name, config["rank"]),
            "alpha": float(config.get("alpha_pattern", {}).get(name, config["alpha"])),
            "rslora": config["rslora"], "bias": config["bias"], "dropout": config["dropout"]}
    have = {"rank": layer.rank, "alpha": layer.alpha, "rslora": layer.rslora, "bias": layer.bias_mode,
            "dropout": layer.dropout_p}
    return [f"{key} {have[key]!r} (adapter {want[key]!r})" for key in want if have[key] != want[key]]


def check_kind(model: nn.Module, use_dora: bool, source: str) -> None:
    """Refuse an adapter of the other kind (DoRA vs LoRA) than the model's adapter layers.

    Raises:
        ValueError: naming both kinds, if a layer of ``model`` is of the other kind.
    """
    other = [name for name, layer in lora_layers(model) if layer.use_dora != use_dora]
    kind = {True: "DoRA", False: "LoRA"}
    if other:
        raise ValueError(f"{source} is a {kind[use_dora]} adapter (use_dora={use_dora}), but the model has "
                         f"{kind[not use_dora]} layers ({other[:3]}): the two compute different functions; "
                         f"load it into a model without adapters (it applies the right kind) or apply_lora(..., "
                         f"use_dora={use_dora})")


def _ensure_lora(model: nn.Module, config: Mapping[str, Any], source: str) -> None:
    """Apply LoRA as recorded in ``config`` unless the model already has exactly those layers and settings.

    An adapter config without ``use_dora`` (saved before DoRA existed) is a LoRA adapter.
    """
    targets = list(config["target_modules"])
    layers = lora_layers(model)
    if layers:
        check_kind(model, bool(config.get("use_dora", False)), source)
        present = [name for name, _ in layers]
        if sorted(present) != sorted(targets):
            raise ValueError(f"model already has LoRA on {present[:8]}, but the adapter targets {targets[:8]}")
        bad = [f"{name}: {', '.join(diff)}" for name, layer in layers
               if (diff := _setting_differences(layer, name, config))]
        if bad:  # e.g. alpha 32 + rsLoRA layers would scale an alpha-8 adapter wrongly
            raise ValueError(f"model already has LoRA layers whose settings differ from {source}: {bad[:3]}; load "
                             "into a model without LoRA (load_adapter applies it) or apply_lora with these settings")
        return
    # Escaped full names: a recorded name must match itself only, never a deeper module ending like it.
    apply_lora(model, "|".join(re.escape(t) for t in targets), rank=config["rank"], alpha=config["alpha"],
               dropout=config["dropout"], rslora=config["rslora"], bias=config["bias"],
               use_dora=bool(config.get("use_dora", False)),
               rank_pattern={re.escape(k): v for k, v in config.get("rank_pattern", {}).items()},
               alpha_pattern={re.escape(k): v for k, v in config.get("alpha_pattern", {}).items()})


def load_adapter(model: nn.Module, directory: str | Path) -> dict[str, Any]:
    """Load an adapter written by :func:`save_adapter` into ``model`` (LoRA is applied if not yet there).

    Afterwards exactly what trained when it was saved is trainable (LoRA, its head modules, its biases), so
    the model can be trained on or exported (:func:`~lora_pipeline.lora.export_peft`) as it was.

    Args:
        model: the same base model the adapter was trained on (plain, or with the same LoRA layers).
        directory: the adapter directory.

    Returns:
        The adapter config dict.

    Raises:
        FileNotFoundError: if the directory holds no adapter.
        ValueError: (the model is left as it was) if an architecture field of the base config
            (:data:`~.fingerprint.ARCHITECTURE_FIELDS`) or any base parameter differs from the base the adapter
            was trained on (the message names the fields, or expected and actual fingerprints), existing LoRA
            layers are of the other kind (DoRA vs LoRA) or have other settings, or the tensors do not fit.
    """
    directory = Path(directory)
    config = _read_config(directory)
    weights = str(directory / ADAPTER_WEIGHTS)
    tensors = load_file(weights)
    check_base(model, config, _skip(tensors, config["target_modules"]), str(directory))
    with restored_on_error(model):
        _ensure_lora(model, config, str(directory))
        load_into(model, tensors, weights)
        mark_only_lora_as_trainable(model, bias=config["bias"], also=config["trainable_extra"])
    return config
