"""Build the three variants: a small BERT from scratch, the full encoder, the encoder with LoRA."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

from torch import nn

from .config import (EMBEDDED_MODEL, EMBEDDED_MODEL_HUB_ID, VARIANTS, LoraConfig, ModelConfig,  # noqa: F401
                     ScratchConfig, Variant)
from .errors import PipelineError, excerpt
from .files import atomic_dir
from .records import ModelCard
from .lora.surgery import HEAD_NAMES, module_under
from .pretrained import resolve_model_path

__all__ = ["Variant", "VARIANTS", "HEAD_MODULES", "PEFT_DIR", "MERGED_DIR", "build_model", "save_trained",
           "load_trained", "model_digest", "peft_base_reference", "weights_files"]

log = logging.getLogger(__name__)

# Freshly initialised classification heads: one list for the whole project, owned by the LoRA package
# (kept under this name because stages import it from here).
HEAD_MODULES: tuple[str, ...] = HEAD_NAMES
PEFT_DIR = "peft"  # inside a LoRA model directory: the peft-format export of the adapter
MERGED_DIR = "merged"  # inside a LoRA model directory (lora.save_merged): the adapter merged into a plain model


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' load report table and "Loading weights" bar; :func:`_log_load` says it in one line."""
    from transformers.utils import logging as hf_logging

    verbosity, bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bar:
            hf_logging.enable_progress_bar()


def _modules_of(keys) -> list[str]:
    """Distinct module names of parameter keys, in order (``classifier.weight`` -> ``classifier``)."""
    return list(dict.fromkeys(str(key).rpartition(".")[0] or str(key) for key in keys))


def _log_load(name: str, info: dict) -> None:
    """One line per loading event instead of transformers' tables."""
    fresh = _modules_of(info.get("missing_keys", ())) + _modules_of(m[0] for m in info.get("mismatched_keys", ()))
    if fresh:
        log.info("model.name %s: newly initialised (not in the checkpoint, trained here): %s", name,
                 ", ".join(dict.fromkeys(fresh)))
    unused = _modules_of(info.get("unexpected_keys", ()))
    if unused:
        log.info("model.name %s: checkpoint weights not used by this model: %s", name,
                 ", ".join(unused[:5]) + (f" … and {len(unused) - 5} more" if len(unused) > 5 else ""))


def _pretrained(cfg: ModelConfig, labels: list[str], pad_token_id: int) -> nn.Module:
    """The pretrained encoder with a fresh head, in fp32 whatever dtype its checkpoint was saved in.

    transformers loads a checkpoint in its saved dtype by default; a bf16/fp16 hub checkpoint would then train its
    weights (and the head and adapters) in half precision, rounding small updates away, whatever
    ``train.precision`` says. fp32 parameters keep that choice to autocast (bf16 compute, fp32 weights).
    """
    import torch
    from transformers import AutoModelForSequenceClassification

    try:
        # a classifier checkpoint made for another label count has a head of another shape: that head is
        # replaced anyway, so size mismatches are allowed there (and only there, checked below)
        with _quiet_transformers():
            model, info = AutoModelForSequenceClassification.from_pretrained(
                resolve_model_path(cfg.name), num_labels=len(labels),
                id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)},
                trust_remote_code=cfg.trust_remote_code, use_safetensors=True, dtype=torch.float32,
                ignore_mismatched_sizes=True, output_loading_info=True)
    except (OSError, ValueError) as err:
        raise PipelineError(f"model.name '{cfg.name}': cannot load safetensors weights ({err}). "
                            "Only safetensors checkpoints are loaded (no pickle).") from err
    body = sorted(m[0] for m in info.get("mismatched_keys", ()) if not module_under(m[0], HEAD_NAMES))
    if body:
        raise PipelineError(f"model.name '{cfg.name}': weights of another shape than its config: {body[:5]}")
    _log_load(cfg.name, info)
    model.config.pad_token_id = pad_token_id  # decoders classify the last non-pad token
    return model


def _scratch(cfg: ScratchConfig, model_cfg: ModelConfig, labels: list[str], tokenizer) -> nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=len(tokenizer), hidden_size=cfg.hidden_size,
                        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
                        intermediate_size=cfg.intermediate_size,
                        max_position_embeddings=max(512, model_cfg.max_length),
                        pad_token_id=tokenizer.pad_token_id, num_labels=len(labels),
                        id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)})
    return BertForSequenceClassification(config)


def build_model(variant: Variant, model_cfg: ModelConfig, labels: list[str], tokenizer, *,
                scratch: Optional[ScratchConfig] = None, lora: Optional[LoraConfig] = None) -> nn.Module:
    """Build one variant; the caller seeds torch first so initialisation is reproducible.

    Args:
        variant: "scratch" (random small BERT, same tokenizer), "full" (all weights train),
            or "lora" (frozen encoder + adapters + head).
        model_cfg: the pretrained encoder.
        labels: class names; index = class id.
        tokenizer: from :func:`lora_pipeline.pretrained.load_tokenizer`.
        scratch, lora: the variant's own section.

    Raises:
        PipelineError: unknown variant, missing section, unloadable model, or LoRA settings the model refuses
            (the message starts with the `lora.*` key).
    """
    if variant == "scratch":
        if scratch is None:
            raise PipelineError("build_model('scratch') needs the scratch params section")
        return _scratch(scratch, model_cfg, labels, tokenizer)
    if variant not in ("full", "lora"):
        raise PipelineError(f"unknown variant {variant!r}; expected scratch, full or lora")
    model = _pretrained(model_cfg, labels, tokenizer.pad_token_id)
    if variant == "lora":
        if lora is None:
            raise PipelineError("build_model('lora') needs the lora params section")
        _add_lora(model, lora)
    return model


def _add_lora(model: nn.Module, lora: LoraConfig) -> None:
    """Apply LoRA as ``lora`` says and freeze all but adapters, head and modules_to_save.

    Raises:
        PipelineError: one line naming the ``lora.*`` key when the LoRA package refuses the settings.
    """
    from .lora import LoRAArgumentError, apply_lora, mark_only_lora_as_trainable, trainable_summary

    # a string is a regex or "all-linear" and must stay one; a YAML list (a tuple here) is names/suffixes
    targets = lora.target_modules
    if targets is not None and not isinstance(targets, str):
        targets = list(targets)
    extra = tuple(lora.modules_to_save)
    try:
        apply_lora(model, target_modules=targets, rank=lora.rank, alpha=lora.alpha, dropout=lora.dropout,
                   rslora=lora.rslora, use_dora=lora.use_dora, bias=lora.bias, modules_to_save=extra)
    except LoRAArgumentError as err:
        raise PipelineError(f"lora.{err.argument}: {err}") from err
    except ValueError as err:
        raise PipelineError(f"lora: {err}") from err
    missing = [m for m in extra if not any(module_under(n, (m,)) for n, _ in model.named_modules())]
    if missing:  # e.g. the default [pooler] on RoBERTa/DistilBERT/GPT-2, whose heads have no pooler
        log.warning("lora.modules_to_save: %s has no module named %s; training without it",
                    type(model).__name__, ", ".join(missing))
    mark_only_lora_as_trainable(model, bias=lora.bias, also=HEAD_MODULES + extra)
    log.info("%s", trainable_summary(model))


def peft_base_reference(name: str) -> str:
    """``base_model_name_or_path`` for the peft export: what a user without this project can load.

    The embedded ``package:`` model is the hub's ``sentence-transformers/all-MiniLM-L6-v2`` (so its package
    metadata says); any other name (HF id or directory) is itself.
    """
    return EMBEDDED_MODEL_HUB_ID if name == EMBEDDED_MODEL else name


def save_trained(variant: Variant, model: nn.Module, tokenizer, directory: str | Path, *, card: ModelCard,
                 lora: Optional[LoraConfig] = None, save_merged: bool = False) -> None:
    """Write a self-contained model directory, atomically: everything :func:`lora_pipeline.inference.load_classifier`
    needs, with the label names (``classifier.json``, and ``id2label`` in every ``config.json``).

    - scratch / full: ``model.safetensors`` + ``config.json`` + the tokenizer (``transformers.pipeline`` loads it).
    - lora: our adapter (``adapter.safetensors`` + ``adapter_config.json``: adapters, head, ``modules_to_save``,
      a fingerprint of the base), the tokenizer, ``peft/`` (``PeftModel.from_pretrained(base, dir/peft)``), and
      with ``save_merged`` ``merged/``: a plain model with the adapter merged in (a full model's size).

    Args:
        card: the variant, labels, tokenisation and (LoRA) base model reference.
        lora: the ``lora`` section the model was built with (required for the lora variant).
    """
    with atomic_dir(directory) as tmp:
        if variant == "lora":
            from .lora import export_peft, merge_and_unload, save_adapter

            if lora is None or card.base_model is None:
                raise PipelineError("save_trained('lora') needs the lora params section and the base model name")
            extra = HEAD_MODULES + tuple(lora.modules_to_save)
            save_adapter(model, tmp, base_model_name=card.base_model, trainable_extra=extra)
            export_peft(model, tmp / PEFT_DIR, base_model_name=peft_base_reference(card.base_model))
            if save_merged:
                merged = merge_and_unload(copy.deepcopy(model))
                merged.save_pretrained(tmp / MERGED_DIR, safe_serialization=True)
                tokenizer.save_pretrained(tmp / MERGED_DIR)
        else:
            model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        card.write(tmp)


def weights_files(variant: Variant, directory: str | Path) -> list[Path]:
    """The files that hold what was trained (weights + their config; not the tokenizer, card or exports):
    what ``size_on_disk_mb`` counts and what identifies the model in the MLflow registry."""
    directory = Path(directory)
    names = ("adapter.safetensors", "adapter_config.json") if variant == "lora" else ("model.safetensors", "config.json")
    return [directory / n for n in names if (directory / n).is_file()]


def model_digest(files: list[Path]) -> str:
    """sha256 over the weights files of a model directory (names and bytes): the same trained model, the same
    digest, whichever run or clone produced the directory."""
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def load_trained(variant: Variant, directory: str | Path, model_cfg: ModelConfig, labels: list[str],
                 tokenizer) -> nn.Module:
    """Load what a train stage saved; a LoRA adapter is put on a fresh base and merged for inference.

    Raises:
        PipelineError: the directory is missing, its weights are truncated or corrupt, it does not match the
            configured base model, or its merged weights would not be finite.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise PipelineError(f"no trained {variant} model in {directory}; run `dvc repro train_{variant}`")
    from safetensors import SafetensorError

    try:
        return _load_trained(variant, directory, model_cfg, labels, tokenizer)
    except SafetensorError as err:  # a truncated or corrupt copy: one line that names the files and the fix
        files = sorted(str(p.relative_to(directory)) for p in directory.rglob("*.safetensors"))
        raise PipelineError(f"model {excerpt(str(directory))}: its weights ({', '.join(files) or 'safetensors'}) "
                            f"are truncated or corrupt ({excerpt(str(err), 120, quote=False)}); copy the directory "
                            f"again, or rerun its train stage (`dvc repro -f train_{variant}`)") from None


def _load_trained(variant: Variant, directory: Path, model_cfg: ModelConfig, labels: list[str],
                  tokenizer) -> nn.Module:
    import torch
    from transformers import AutoModelForSequenceClassification

    if variant != "lora":
        model = AutoModelForSequenceClassification.from_pretrained(directory, use_safetensors=True,
                                                                   dtype=torch.float32)
        model.config.pad_token_id = tokenizer.pad_token_id  # decoders find the last token by it
        return model
    from .lora import load_adapter, merge_and_unload

    model = _pretrained(model_cfg, labels, tokenizer.pad_token_id)
    try:
        load_adapter(model, directory)
        return merge_and_unload(model)
    except (OSError, ValueError) as err:  # other base, broken or non-finite adapter: one line, exit 2
        raise PipelineError(f"{directory}: cannot use this LoRA adapter: {err}") from err
