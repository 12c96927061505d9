"""The three variants as objects: how each one builds its model, writes it to a model directory, reads it back and
names the files that hold what was trained.

One instance per variant in :data:`MODEL_VARIANTS`, keyed by the name that dvc.yaml, params.yaml (the variant's
section) and the model card use; :func:`model_variant` looks one up. :mod:`lora_pipeline.models` is the public
face (``build_model``, ``save_trained``, ``load_trained``, ``weights_files``) and dispatches here.
"""

from __future__ import annotations

import abc
import contextlib
import copy
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import ClassVar, Optional

from torch import nn

from .config import DEFAULT_TARGET_SET, EMBEDDED_MODEL, EMBEDDED_MODEL_HUB_ID, LoraConfig, ModelConfig, ScratchConfig, Variant
from .errors import PipelineError
from .lora.surgery import HEAD_NAMES, module_under
from .pretrained import resolve_model_path
from .records import ModelCard

__all__ = ["ModelVariant", "Scratch", "Full", "Lora", "MODEL_VARIANTS", "model_variant", "pretrained_with_head",
           "peft_base_reference", "PEFT_DIR", "MERGED_DIR"]

log = logging.getLogger(__name__)

PEFT_DIR = "peft"  # inside a LoRA model directory: the peft-format export of the adapter
MERGED_DIR = "merged"  # inside a LoRA model directory (lora.save_merged): the adapter merged into a plain model


class ModelVariant(abc.ABC):
    """How one variant's model is built, saved into a model directory and loaded from it.

    Attributes:
        name: the variant's name in dvc.yaml (``train_<name>``), params.yaml (its section) and the model card.
        weight_names: the files of a model directory that hold what was trained (weights and their config; not
            the tokenizer, card or exports).
    """

    name: ClassVar[Variant]
    weight_names: ClassVar[tuple[str, ...]]

    @abc.abstractmethod
    def build(self, model_cfg: ModelConfig, labels: list[str], tokenizer, *, scratch: Optional[ScratchConfig] = None,
              lora: Optional[LoraConfig] = None, rank: Optional[int] = None,
              target_set: str = DEFAULT_TARGET_SET, adapter: str = "lora") -> nn.Module:
        """A freshly initialised model with its trainable parameters marked; the caller seeds torch first.

        ``scratch`` / ``lora`` are the variant's own params section; ``rank``, ``target_set`` and ``adapter`` are a
        LoRA run's (its run spec's: one of ``study.ranks``, a name of ``lora.target_sets``, lora or dora)."""

    @abc.abstractmethod
    def save(self, model: nn.Module, tokenizer, directory: Path, *, card: ModelCard,
             lora: Optional[LoraConfig] = None, save_merged: bool = False) -> None:
        """Write the trained weights (and any export) into ``directory``; the caller adds the tokenizer and card."""

    @abc.abstractmethod
    def load(self, directory: Path, model_cfg: ModelConfig, labels: list[str], tokenizer) -> nn.Module:
        """The model :meth:`save` wrote into ``directory``, ready for inference."""

    def weight_files(self, directory: str | Path) -> list[Path]:
        """Those of :attr:`weight_names` that ``directory`` holds."""
        directory = Path(directory)
        return [directory / n for n in self.weight_names if (directory / n).is_file()]


class _WholeModel(ModelVariant, abc.ABC):
    """A variant whose every weight trains: saved whole with ``save_pretrained``, so transformers alone loads it."""

    weight_names = ("model.safetensors", "config.json")

    def save(self, model: nn.Module, tokenizer, directory: Path, *, card: ModelCard,
             lora: Optional[LoraConfig] = None, save_merged: bool = False) -> None:
        model.save_pretrained(directory, safe_serialization=True)

    def load(self, directory: Path, model_cfg: ModelConfig, labels: list[str], tokenizer) -> nn.Module:
        import torch
        from transformers import AutoModelForSequenceClassification

        model = AutoModelForSequenceClassification.from_pretrained(directory, use_safetensors=True,
                                                                   dtype=torch.float32)
        model.config.pad_token_id = tokenizer.pad_token_id  # decoders find the last token by it
        return model


class Scratch(_WholeModel):
    """A small BERT initialised at random (section ``scratch``), with the pretrained model's tokenizer."""

    name = "scratch"

    def build(self, model_cfg: ModelConfig, labels: list[str], tokenizer, *, scratch: Optional[ScratchConfig] = None,
              lora: Optional[LoraConfig] = None, rank: Optional[int] = None,
              target_set: str = DEFAULT_TARGET_SET, adapter: str = "lora") -> nn.Module:
        if scratch is None:
            raise PipelineError("build_model('scratch') needs the scratch params section")
        from transformers import BertConfig, BertForSequenceClassification

        config = BertConfig(vocab_size=len(tokenizer), hidden_size=scratch.hidden_size,
                            num_hidden_layers=scratch.num_layers, num_attention_heads=scratch.num_heads,
                            intermediate_size=scratch.intermediate_size,
                            max_position_embeddings=max(512, model_cfg.max_length),
                            pad_token_id=tokenizer.pad_token_id, num_labels=len(labels),
                            id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)})
        return BertForSequenceClassification(config)


class Full(_WholeModel):
    """The pretrained encoder with a fresh head, every weight trained."""

    name = "full"

    def build(self, model_cfg: ModelConfig, labels: list[str], tokenizer, *, scratch: Optional[ScratchConfig] = None,
              lora: Optional[LoraConfig] = None, rank: Optional[int] = None,
              target_set: str = DEFAULT_TARGET_SET, adapter: str = "lora") -> nn.Module:
        return pretrained_with_head(model_cfg, labels, tokenizer.pad_token_id)


class Lora(ModelVariant):
    """The frozen pretrained encoder with LoRA adapters (section ``lora``); adapters, head and ``modules_to_save``
    train. Saved as the adapter alone: loading puts it on a fresh base and merges it."""

    name = "lora"
    weight_names = ("adapter.safetensors", "adapter_config.json")

    def build(self, model_cfg: ModelConfig, labels: list[str], tokenizer, *, scratch: Optional[ScratchConfig] = None,
              lora: Optional[LoraConfig] = None, rank: Optional[int] = None,
              target_set: str = DEFAULT_TARGET_SET, adapter: str = "lora") -> nn.Module:
        model = pretrained_with_head(model_cfg, labels, tokenizer.pad_token_id)
        if lora is None:
            raise PipelineError("build_model('lora') needs the lora params section")
        if rank is None:
            raise PipelineError("build_model('lora') needs the LoRA rank (a run spec's, one of study.ranks)")
        _add_lora(model, lora, rank, target_set, adapter)
        return model

    def save(self, model: nn.Module, tokenizer, directory: Path, *, card: ModelCard,
             lora: Optional[LoraConfig] = None, save_merged: bool = False) -> None:
        from .lora import export_peft, merge_and_unload, save_adapter

        if lora is None or card.base_model is None:
            raise PipelineError("save_trained('lora') needs the lora params section and the base model name")
        extra = HEAD_NAMES + tuple(lora.modules_to_save)
        save_adapter(model, directory, base_model_name=card.base_model, trainable_extra=extra)
        export_peft(model, directory / PEFT_DIR, base_model_name=peft_base_reference(card.base_model))
        if save_merged:
            merged = merge_and_unload(copy.deepcopy(model))
            merged.save_pretrained(directory / MERGED_DIR, safe_serialization=True)
            tokenizer.save_pretrained(directory / MERGED_DIR)

    def load(self, directory: Path, model_cfg: ModelConfig, labels: list[str], tokenizer) -> nn.Module:
        from .lora import load_adapter, merge_and_unload

        model = pretrained_with_head(model_cfg, labels, tokenizer.pad_token_id)
        try:
            load_adapter(model, directory)
            return merge_and_unload(model)
        except (OSError, ValueError) as err:  # other base, broken or non-finite adapter: one line, exit 2
            raise PipelineError(f"{directory}: cannot use this LoRA adapter: {err}") from err


#: every variant, in stage order (that of ``config.VARIANTS``)
MODEL_VARIANTS: Mapping[str, ModelVariant] = MappingProxyType({v.name: v for v in (Scratch(), Full(), Lora())})


def model_variant(name: str) -> ModelVariant:
    """The object of the variant called ``name``.

    Raises:
        PipelineError: an unknown name (one line naming the known ones).
    """
    try:
        return MODEL_VARIANTS[name]
    except KeyError:
        *first, last = MODEL_VARIANTS
        raise PipelineError(f"unknown variant {name!r}; expected {', '.join(first)} or {last}") from None


def peft_base_reference(name: str) -> str:
    """``base_model_name_or_path`` for the peft export: what a user without this project can load.

    The embedded ``package:`` model is the hub's ``sentence-transformers/all-MiniLM-L6-v2`` (so its package
    metadata says); any other name (HF id or directory) is itself.
    """
    return EMBEDDED_MODEL_HUB_ID if name == EMBEDDED_MODEL else name


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


def pretrained_with_head(cfg: ModelConfig, labels: list[str], pad_token_id: int) -> nn.Module:
    """The pretrained encoder with a fresh head, in fp32 whatever dtype its checkpoint was saved in.

    transformers loads a checkpoint in its saved dtype by default; a bf16/fp16 hub checkpoint would then train its
    weights (and the head and adapters) in half precision, rounding small updates away, whatever
    ``train.precision`` says. fp32 parameters keep that choice to autocast (bf16 compute, fp32 weights).

    Raises:
        PipelineError: no safetensors weights, or body weights of another shape than the model's config.
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


def _add_lora(model: nn.Module, lora: LoraConfig, rank: int, target_set: str, adapter: str) -> None:
    """Apply LoRA (or DoRA: ``adapter``) of rank ``rank`` to the modules of ``lora.target_sets[target_set]``, as
    ``lora`` says, and freeze all but adapters, head and modules_to_save.

    Raises:
        PipelineError: one line naming the ``lora.*`` key when the LoRA package refuses the settings.
    """
    from .lora import LoRAArgumentError, apply_lora, mark_only_lora_as_trainable, trainable_summary

    # a string is a regex or "all-linear" and must stay one; a YAML list (a tuple here) is names/suffixes
    targets = lora.targets(target_set)
    if targets is not None and not isinstance(targets, str):
        targets = list(targets)
    extra = tuple(lora.modules_to_save)
    try:
        apply_lora(model, target_modules=targets, rank=rank, alpha=lora.alpha, dropout=lora.dropout,
                   rslora=lora.rslora, use_dora=adapter == "dora", bias=lora.bias, modules_to_save=extra)
    except LoRAArgumentError as err:
        key = f"target_sets.{target_set}" if err.argument == "target_modules" else err.argument
        raise PipelineError(f"lora.{key}: {err}") from err
    except ValueError as err:
        raise PipelineError(f"lora: {err}") from err
    missing = [m for m in extra if not any(module_under(n, (m,)) for n, _ in model.named_modules())]
    if missing:  # e.g. the default [pooler] on RoBERTa/DistilBERT/GPT-2, whose heads have no pooler
        log.warning("lora.modules_to_save: %s has no module named %s; training without it",
                    type(model).__name__, ", ".join(missing))
    mark_only_lora_as_trainable(model, bias=lora.bias, also=HEAD_NAMES + extra)
    log.info("%s", trainable_summary(model))
