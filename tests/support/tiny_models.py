"""Tiny random-weight Hugging Face classifiers and batches for them, shared by the LoRA and speed-up
tests (no hub downloads)."""

from __future__ import annotations

import copy

import torch
from torch import nn
from transformers import (
    AutoModelForSequenceClassification,
    BertConfig,
    DebertaV2Config,
    DistilBertConfig,
    ElectraConfig,
    GPT2Config,
    PretrainedConfig,
    RobertaConfig,
    XLMRobertaConfig,
)

VOCAB = 99
NUM_LABELS = 3
# Dropout off everywhere so that train-mode forwards are deterministic and comparable.
_ENCODER = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=NUM_LABELS)

CONFIGS: dict[str, PretrainedConfig] = {
    "bert": BertConfig(max_position_embeddings=64, **_ENCODER),
    "roberta": RobertaConfig(max_position_embeddings=66, pad_token_id=1, **_ENCODER),
    "deberta-v2": DebertaV2Config(max_position_embeddings=64, pooler_dropout=0.0, **_ENCODER),
    "distilbert": DistilBertConfig(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, hidden_dim=37,
                                   max_position_embeddings=64, dropout=0.0, attention_dropout=0.0,
                                   seq_classif_dropout=0.0, num_labels=NUM_LABELS),
    "gpt2": GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64, resid_pdrop=0.0,
                       embd_pdrop=0.0, attn_pdrop=0.0, pad_token_id=0, bos_token_id=2, eos_token_id=2,
                       num_labels=NUM_LABELS),
    # embedding_size != hidden_size gives ELECTRA its embeddings_project Linear, one more all-linear target
    "electra": ElectraConfig(max_position_embeddings=64, embedding_size=16, **_ENCODER),
    "xlm-roberta": XLMRobertaConfig(max_position_embeddings=66, pad_token_id=1, **_ENCODER),
}
ARCHS = tuple(CONFIGS)
# the architectures whose exact classes speedups.first_token_last_layer trims
FIRST_TOKEN_ARCHS = ("bert", "roberta", "electra", "xlm-roberta")


def tiny_model(arch: str, seed: int = 0) -> nn.Module:
    """A tiny random sequence classifier of ``arch`` in eval mode; the same seed gives the same weights."""
    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_config(copy.deepcopy(CONFIGS[arch])).eval()


def dropout_model(arch: str, attn: str | None = "sdpa", dropout: float = 0.1, seed: int = 0) -> nn.Module:
    """A tiny random classifier of ``arch`` in train mode with attention implementation ``attn``; on the
    FIRST_TOKEN_ARCHS, hidden dropout ``dropout`` and attention dropout twice that (the others keep none)."""
    config = copy.deepcopy(CONFIGS[arch])
    if arch in FIRST_TOKEN_ARCHS:
        config.hidden_dropout_prob = dropout
        config.attention_probs_dropout_prob = 2 * dropout
    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_config(config, attn_implementation=attn).train()


def padded_batch(arch: str, batch: int = 5, length: int = 11) -> dict[str, torch.Tensor]:
    """Random token ids of ``arch``'s vocabulary, rows right-padded to different lengths (pad id, mask 0); labels
    for a loss."""
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(3, CONFIGS[arch].vocab_size, (batch, length), generator=gen)
    mask = torch.ones(batch, length, dtype=torch.long)
    for row, keep in enumerate((11, 7, 4, 11, 2)[:batch]):  # right padding of different lengths
        mask[row, keep:] = 0
        ids[row, keep:] = CONFIGS[arch].pad_token_id or 0
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.randint(0, 3, (batch,), generator=gen)}


# Each head type, with the modules_to_save that make it train a module besides the final Linear.
HEAD_CASES: dict[str, tuple[str, ...]] = {
    "bert": ("pooler",),  # pooler.dense feeds BERT's classifier
    "roberta": (),  # classifier.dense + classifier.out_proj
    "distilbert": (),  # pre_classifier + classifier
    "gpt2": (),  # score
}


def tiny_batch(batch: int = 4, length: int = 8) -> dict[str, torch.Tensor]:
    """Random token ids (no pad/special ids) with an all-ones mask; labels for a loss."""
    gen = torch.Generator().manual_seed(1)
    return {
        "input_ids": torch.randint(3, VOCAB, (batch, length), generator=gen),
        "attention_mask": torch.ones(batch, length, dtype=torch.long),
        "labels": torch.randint(0, NUM_LABELS, (batch,), generator=gen),
    }


def logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits without labels, without autograd."""
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def randomize_lora(model: nn.Module) -> None:
    """Give every LoRA B a non-zero value, so the adapters actually change the output (and scale each DoRA
    magnitude by a random factor in [0.5, 1.5))."""
    from lora_pipeline.lora import lora_layers

    with torch.no_grad():
        for _, layer in lora_layers(model):
            layer.lora_b.normal_(0.0, 0.5)
            layer.lora_a.normal_(0.0, 0.5)
            if layer.use_dora:
                layer.lora_magnitude.mul_(torch.rand_like(layer.lora_magnitude) + 0.5)


def train_steps(model: nn.Module, batch: dict[str, torch.Tensor], steps: int = 3, lr: float = 1e-2) -> None:
    """A few AdamW steps on the trainable parameters (weight decay on, as in the real loop)."""
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    for _ in range(steps):
        optimizer.zero_grad()
        model(**batch).loss.backward()
        optimizer.step()
    model.eval()

