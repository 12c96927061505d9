"""Build the three variants: a small BERT from scratch, the full encoder, the encoder with LoRA."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal, Optional

from torch import nn

from .config import LoraConfig, ModelConfig, ScratchConfig
from .errors import PipelineError
from .pretrained import resolve_model_path

__all__ = ["Variant", "HEAD_MODULES", "build_model", "load_trained"]

log = logging.getLogger(__name__)

Variant = Literal["scratch", "full", "lora"]
# Names of freshly initialised classification heads across BERT/RoBERTa/DeBERTa/DistilBERT/GPT-2.
HEAD_MODULES = ("classifier", "pre_classifier", "score")


def _pretrained(cfg: ModelConfig, labels: list[str], pad_token_id: int) -> nn.Module:
    from transformers import AutoModelForSequenceClassification

    try:
        # a classifier checkpoint made for another label count has a head of another shape: that head is
        # replaced anyway, so size mismatches are allowed there (and only there, checked below)
        model, info = AutoModelForSequenceClassification.from_pretrained(
            resolve_model_path(cfg.name), num_labels=len(labels),
            id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)},
            trust_remote_code=cfg.trust_remote_code, use_safetensors=True,
            ignore_mismatched_sizes=True, output_loading_info=True)
    except (OSError, ValueError) as err:
        raise PipelineError(f"model.name '{cfg.name}': cannot load safetensors weights ({err}). "
                            "Only safetensors checkpoints are loaded (no pickle).") from err
    body = sorted(m[0] for m in info.get("mismatched_keys", ()) if not set(m[0].split(".")) & set(HEAD_MODULES))
    if body:
        raise PipelineError(f"model.name '{cfg.name}': weights of another shape than its config: {body[:5]}")
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
        PipelineError: unknown variant, missing section, or unloadable model.
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
        from .lora import apply_lora, mark_only_lora_as_trainable, trainable_summary
        from .lora.surgery import module_under

        apply_lora(model, target_modules=list(lora.target_modules) if lora.target_modules else None,
                   rank=lora.rank, alpha=lora.alpha, dropout=lora.dropout, rslora=lora.rslora, bias=lora.bias)
        extra = tuple(lora.modules_to_save)
        missing = [m for m in extra if not any(module_under(n, (m,)) for n, _ in model.named_modules())]
        if missing:  # e.g. the default [pooler] on RoBERTa/DistilBERT/GPT-2, whose heads have no pooler
            log.warning("lora.modules_to_save: %s has no module named %s; training without it",
                        type(model).__name__, ", ".join(missing))
        mark_only_lora_as_trainable(model, bias=lora.bias, also=HEAD_MODULES + extra)
        log.info("%s", trainable_summary(model))
    return model


def load_trained(variant: Variant, directory: str | Path, model_cfg: ModelConfig, labels: list[str],
                 tokenizer) -> nn.Module:
    """Load what a train stage saved; a LoRA adapter is put on a fresh base and merged for inference.

    Raises:
        PipelineError: the directory is missing or does not match the configured base model.
    """
    from transformers import AutoModelForSequenceClassification

    directory = Path(directory)
    if not directory.is_dir():
        raise PipelineError(f"no trained {variant} model in {directory}; run `dvc repro train_{variant}`")
    if variant != "lora":
        model = AutoModelForSequenceClassification.from_pretrained(directory, use_safetensors=True)
        model.config.pad_token_id = tokenizer.pad_token_id  # decoders find the last token by it
        return model
    from .lora import load_adapter, merge_and_unload

    model = _pretrained(model_cfg, labels, tokenizer.pad_token_id)
    load_adapter(model, directory)
    return merge_and_unload(model)
