"""Read and write peft's LoRA adapter format (``adapter_config.json`` + ``adapter_model.safetensors``).

The key layout is peft 0.21's ``save_pretrained`` output: ``base_model.model.<module>.lora_A.weight``
(``(r, in)``) and ``.lora_B.weight`` (``(out, r)``) for every LoRA layer — the same for ``Conv1D``, whose
transposition peft handles with ``fan_in_fan_out`` —, ``.lora_magnitude_vector`` (``(out,)``, no ``.weight``: peft
keeps its older file format) for DoRA's magnitude (``use_dora``), ``.base_layer.bias`` for trained biases of wrapped layers, and plain
``base_model.model.<name>`` keys for ``modules_to_save`` (the head). peft itself is not imported:
these functions only read and write files, so peft stays a test/dev dependency.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors.torch import load_file
from torch import nn

from .adapter_io import (ADAPTER_CONFIG, adapter_settings, load_into, resolve_heads, restored_on_error, trained_tensors,
                         write_adapter_dir)
from .layers import LoRAConv1D
from .surgery import apply_lora, lora_layers, mark_only_lora_as_trainable
from .targets import unmatched_entries

__all__ = ["PEFT_CONFIG", "PEFT_WEIGHTS", "export_peft", "import_peft"]

log = logging.getLogger(__name__)

PEFT_CONFIG = ADAPTER_CONFIG  # both formats name their config file alike
PEFT_WEIGHTS = "adapter_model.safetensors"
_PREFIX = "base_model.model."
# The heads peft's task models add to modules_to_save (all within surgery.HEAD_NAMES, which we never wrap).
_TASK_HEADS: dict[str, tuple[str, ...]] = {"SEQ_CLS": ("classifier", "score"), "TOKEN_CLS": ("classifier", "score"),
                                            "QUESTION_ANS": ("qa_outputs",)}
# peft features our layers do not implement: importing such an adapter would silently compute something else.
_UNSUPPORTED = ("lora_bias", "layers_to_transform", "layers_pattern", "exclude_modules",
                "target_parameters", "trainable_token_indices", "layer_replication", "use_qalora",
                "alora_invocation_tokens")


def _peft_key_names(model: nn.Module) -> dict[str, str]:
    """Our state-dict key -> peft's key (without prefix) for the tensors of every LoRA layer."""
    names: dict[str, str] = {}
    for name, _ in lora_layers(model):
        names[f"{name}.lora_a"] = f"{name}.lora_A.weight"
        names[f"{name}.lora_b"] = f"{name}.lora_B.weight"
        names[f"{name}.lora_magnitude"] = f"{name}.lora_magnitude_vector"
        names[f"{name}.base.bias"] = f"{name}.base_layer.bias"
    return names


def _peft_config(model: nn.Module, settings: Mapping[str, Any], modules_to_save: list[str], task_type: str,
                 base_model_name: str) -> dict[str, Any]:
    """peft's ``adapter_config.json`` for our ``settings`` (:func:`~.adapter_io.adapter_settings`)."""
    return {
        "peft_type": "LORA",
        "task_type": task_type,
        "base_model_name_or_path": base_model_name,
        "r": settings["rank"],
        "lora_alpha": settings["alpha"],
        "lora_dropout": settings["dropout"],
        "use_rslora": settings["rslora"],
        "use_dora": settings["use_dora"],
        "bias": settings["bias"],
        "target_modules": settings["target_modules"],
        "rank_pattern": settings["rank_pattern"],
        "alpha_pattern": settings["alpha_pattern"],
        "modules_to_save": modules_to_save,
        # peft turns this on per Conv1D layer anyway; saying so avoids its warning.
        "fan_in_fan_out": any(isinstance(layer, LoRAConv1D) for _, layer in lora_layers(model)),
        "init_lora_weights": True,
        "inference_mode": True,
    }


def export_peft(model: nn.Module, directory: str | Path, *, base_model_name: str, task_type: str = "SEQ_CLS",
                modules_to_save: Optional[Iterable[str]] = None) -> Path:
    """Write the adapter of ``model`` so that ``peft.PeftModel.from_pretrained(base, directory)`` loads it.

    Every tensor that trains is written: the LoRA matrices (and DoRA magnitudes, with ``use_dora: true``), the
    biases of the bias mode, and the modules trained in full (head, ``modules_to_save`` such as BERT's pooler) —
    derived from ``requires_grad`` unless given. peft loads a missing module silently from the base, which would
    give other logits.

    Only the LoRA factors, the trained biases and the trained modules are written, never a base weight, so a
    model whose LoRA layers are merged (:func:`~lora_pipeline.lora.merge_lora`) exports the same files.

    Args:
        model: a model with LoRA layers, merged or not.
        directory: output directory (replaced whole, atomically).
        base_model_name: recorded as ``base_model_name_or_path``.
        task_type: peft's task type; with ``"SEQ_CLS"`` (and ``"TOKEN_CLS"``) peft adds ``classifier`` and
            ``score`` to modules_to_save, with ``"QUESTION_ANS"`` ``qa_outputs``.
        modules_to_save: fully trained modules, matched by name suffix as peft does, to which the task's heads
            are added as peft adds them (``["pooler"]`` is written ``["pooler", "classifier", "score"]``, as
            peft's ``save_pretrained`` writes it); None derives them
            (:func:`~lora_pipeline.lora.adapter_io.trained_modules`).

    Returns:
        The directory.

    Raises:
        ValueError: if the model has no LoRA layer, the layers disagree on settings, or ``modules_to_save``
            leaves out a trained tensor.
    """
    settings = adapter_settings(model)
    if modules_to_save is not None:
        modules_to_save = _with_task_heads(modules_to_save, task_type)
    modules_to_save = resolve_heads(model, modules_to_save, settings["bias"], "modules_to_save")
    config = _peft_config(model, settings, modules_to_save, task_type, base_model_name)
    keys = _peft_key_names(model)
    tensors = trained_tensors(model, modules_to_save, settings["bias"])
    return write_adapter_dir(directory, PEFT_WEIGHTS, {_PREFIX + keys.get(k, k): v for k, v in tensors.items()},
                             config)


def _read_peft_config(directory: Path) -> dict[str, Any]:
    path = directory / PEFT_CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"no {PEFT_CONFIG} in {directory}; is it a peft adapter directory?")
    config = json.loads(path.read_text(encoding="utf-8"))
    if config.get("peft_type") != "LORA":
        raise ValueError(f"{path}: peft_type {config.get('peft_type')!r} is not 'LORA'")
    used = [key for key in _UNSUPPORTED if config.get(key) not in (None, False, {}, [], "")]
    if used:
        raise ValueError(f"{path}: peft options {used} are not supported by lora_pipeline's LoRA layers")
    if not (directory / PEFT_WEIGHTS).is_file():
        raise FileNotFoundError(f"no {PEFT_WEIGHTS} in {directory} (pickled adapter_model.bin is not read)")
    return config


def _from_peft_keys(model: nn.Module, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """peft checkpoint keys -> our keys (a DoRA magnitude also from its in-memory name, with ``.weight``).

    peft stores a modules_to_save head under its plain name; with ``bias="all"`` it also saves the head's
    biases again as ``.modules_to_save.<bias>`` and ``.original_module.<bias>``: those copies are dropped.
    """
    ours = {peft: own for own, peft in _peft_key_names(model).items()}
    out: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        key = key.removeprefix(_PREFIX).removesuffix(".weight" if key.endswith("_magnitude_vector.weight") else "")
        if ".original_module." not in key and ".modules_to_save." not in key:
            out[ours.get(key, key)] = value
    return out


def import_peft(model: nn.Module, directory: str | Path) -> dict[str, Any]:
    """Load a LoRA adapter saved by peft's ``save_pretrained`` into ``model`` with our LoRA layers (DoRA
    layers if its config says ``use_dora``).

    Args:
        model: the base model, without LoRA layers (they are applied here from the peft config).
        directory: a peft adapter directory with ``adapter_model.safetensors``.

    Returns:
        The peft config dict.

    Raises:
        FileNotFoundError: if the config or the safetensors file is missing.
        ValueError: (the model is left as it was) if the model already has LoRA layers, the adapter uses
            unsupported peft options, or the tensors do not fit the model.
    """
    directory = Path(directory)
    config = _read_peft_config(directory)
    if lora_layers(model):
        raise ValueError("import_peft needs a model without LoRA layers; it applies them from the peft config")
    # peft records the target list from before it excluded modules_to_save and the task's heads (all-linear
    # gives bare suffixes such as "dense"): exclude them here too, as peft does when it loads.
    full = _modules_to_save(config)
    bias = config.get("bias", "none")
    targets = _matched_targets(model, config["target_modules"])
    with restored_on_error(model):
        apply_lora(model, targets, rank=config["r"], alpha=config["lora_alpha"],
                   dropout=config.get("lora_dropout", 0.0), rslora=config.get("use_rslora", False), bias=bias,
                   use_dora=bool(config.get("use_dora", False)),
                   rank_pattern=config.get("rank_pattern"), alpha_pattern=config.get("alpha_pattern"),
                   modules_to_save=full)
        tensors = _from_peft_keys(model, load_file(str(directory / PEFT_WEIGHTS)))
        load_into(model, tensors, str(directory / PEFT_WEIGHTS))
        mark_only_lora_as_trainable(model, bias=bias, also=full)  # trainable as peft trained it
    return config


def _matched_targets(model: nn.Module, targets: Any) -> Any:
    """peft's target list without the entries that match no module of ``model``: peft ignored them in training,
    and apply_lora would refuse them. Unchanged when nothing would be left (apply_lora then says why)."""
    unmatched = unmatched_entries(model, targets)
    kept = [t for t in targets if t not in unmatched] if unmatched else targets
    if unmatched and kept:
        log.info("import_peft: target_modules entries %s match no module of %s; peft ignored them too",
                 unmatched[:8], type(model).__name__)
        return kept
    return targets


def _with_task_heads(modules: Iterable[str], task_type: Optional[str]) -> list[str]:
    """``modules`` plus the heads peft's task model for ``task_type`` adds to modules_to_save."""
    heads = list(modules)
    return heads + [h for h in _TASK_HEADS.get(task_type, ()) if h not in heads]


def _modules_to_save(config: Mapping[str, Any]) -> list[str]:
    """peft's effective modules_to_save: the config's list plus the heads its task type adds."""
    return _with_task_heads(config.get("modules_to_save") or [], config.get("task_type"))
