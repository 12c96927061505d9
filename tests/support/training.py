"""What the training and model tests share: a tracker that records every metric, the tiny BERT loaded with a
fixed seed, a snapshot of a model's parameters, and a LoRA model whose adapters change its output."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification

from tests.support.builders import LABELS


class RecordingTracker:
    """Keeps every ``log_metrics`` call."""

    def __init__(self) -> None:
        self.metrics: list[tuple[int | None, dict]] = []

    def log_params(self, params): pass
    def set_tags(self, tags): pass
    def log_artifact(self, path): pass
    def close(self, failed: bool = False): pass

    def log_metrics(self, metrics, step=None):
        self.metrics.append((step, dict(metrics)))

    def steps_with(self, key: str) -> list[int | None]:
        """The steps at which ``key`` was logged."""
        return [step for step, m in self.metrics if key in m]


def pretrained_classifier(model_dir: Path, seed: int = 0):
    """The classifier saved in ``model_dir``, loaded after ``torch.manual_seed(seed)`` (its new weights, if any,
    and the dropout masks that follow depend on it)."""
    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_pretrained(model_dir, use_safetensors=True)


def parameter_state(model) -> dict[str, torch.Tensor]:
    """A detached copy of every named parameter."""
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def nonzero_lora_model(tiny_model_dir: Path, tiny_tokenizer, *, pairs: bool = False):
    """A LoRA model on the tiny base with non-zero adapters (B is zero at init: nothing to tell apart).

    Returns:
        (model, its LoraConfig, its ModelCard).
    """
    from lora_pipeline.config import LoraConfig, ModelConfig
    from lora_pipeline.records import ModelCard
    from lora_pipeline.lora import lora_layers
    from lora_pipeline.models import build_model

    lora = LoraConfig(alpha=8.0)
    model = build_model("lora", ModelConfig(name=str(tiny_model_dir)), LABELS, tiny_tokenizer, lora=lora, rank=4)
    torch.manual_seed(1)
    for _, layer in lora_layers(model):
        torch.nn.init.normal_(layer.lora_b, std=0.5)
    card = ModelCard(variant="lora", labels=tuple(LABELS), max_length=32, text_pair=pairs, precision="fp32",
                     base_model=str(tiny_model_dir))
    return model, lora, card
