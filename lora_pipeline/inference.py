"""Use a trained model: load any variant's directory by itself and classify texts (or sentence pairs).

Every train stage writes ``classifier.json`` beside its weights (:class:`~lora_pipeline.records.ModelCard`): the
variant, the label names, how texts were tokenised (``max_length``, pairs or not), the training precision and, for
LoRA, the base model reference.
:func:`load_classifier` needs nothing else: a LoRA adapter is put on its base and merged in memory, so
inference costs what the base model costs. Tokenisation and batching are those of the evaluate stage, so the
labels equal its test predictions.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

import numpy as np
import torch

from .config import ModelConfig
from .data.loaders import EncodedSplit, eval_batches, iterate
from .errors import PipelineError, excerpt
from .records import ModelCard, read_card
from .runtime import resolve_bf16, resolve_device

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Classifier", "load_classifier", "input_columns", "predict_frame"]

log = logging.getLogger(__name__)

class Classifier:
    """A loaded model with its tokenizer and card: ``predict_proba(texts)`` → (N, C) probabilities."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, card: ModelCard, device: torch.device, bf16: bool):
        self.model, self.tokenizer, self.card, self.device, self.bf16 = model.eval(), tokenizer, card, device, bf16

    @property
    def labels(self) -> list[str]:
        return list(self.card.labels)

    def encode(self, texts: Sequence[str], pairs: Optional[Sequence[str]] = None) -> EncodedSplit:
        """Token ids exactly as the split stage makes them (truncation to ``max_length``, no padding)."""
        if self.card.text_pair and pairs is None:
            raise PipelineError("this model was trained on sentence pairs: give the second text too "
                                "(--pair-column, or a text_pair column)")
        if not self.card.text_pair and pairs is not None:
            raise PipelineError("this model was trained on single texts: leave out the second text")
        enc = self.tokenizer(list(texts), list(pairs) if pairs is not None else None, truncation=True,
                             max_length=self.card.max_length, padding=False, return_attention_mask=False,
                             return_token_type_ids=pairs is not None)
        tt = enc["token_type_ids"] if pairs is not None and "token_type_ids" in enc else None
        return EncodedSplit(enc["input_ids"], [0] * len(texts), tt)

    @torch.inference_mode()
    def predict_proba(self, texts: Sequence[str], pairs: Optional[Sequence[str]] = None, *, batch_size: int = 64,
                      on_batch: Optional[Callable[[int], None]] = None) -> np.ndarray:
        """Class probabilities (softmax of the logits), one row per text in input order: (N, C).

        Batches group texts of similar length (as the evaluate stage does); ``on_batch(n)`` is called after
        each batch of ``n`` texts (progress bars).
        """
        split = self.encode(texts, pairs)
        out = np.empty((len(split), len(self.card.labels)), dtype=np.float32)
        pad_id = self.tokenizer.pad_token_id
        for rows, batch in iterate(split, eval_batches(split.lengths(), batch_size), pad_id):
            batch.pop("labels")
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                logits = self.model(**{k: v.to(self.device) for k, v in batch.items()}).logits  # (B, C)
            out[rows] = torch.softmax(logits.float(), dim=-1).cpu().numpy()
            if on_batch is not None:
                on_batch(len(rows))
        return out


def load_classifier(directory: str | Path, *, device: str = "auto", precision: Optional[str] = None) -> Classifier:
    """Load the model a train stage saved in ``directory`` (any variant), ready for inference.

    Args:
        device: auto | cpu | cuda[:N].
        precision: auto | fp32 | bf16; None uses the training precision recorded in the card (what the
            evaluate stage used).

    Raises:
        PipelineError: not a model directory, unreadable weights, or a LoRA base that cannot be resolved.
    """
    from transformers import AutoTokenizer

    directory = Path(directory)
    card = read_card(directory)
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory)
    except (OSError, ValueError) as err:
        raise PipelineError(f"model {excerpt(str(directory))}: cannot load its tokenizer "
                            f"({excerpt(str(err), 200, quote=False)})") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # as pretrained.load_tokenizer did for training
    base = ModelConfig(name=card.base_model or str(directory), max_length=card.max_length)
    from .models import load_trained

    model = load_trained(card.variant, directory, base, list(card.labels), tokenizer)
    torch_device = resolve_device(device)
    bf16 = resolve_bf16(precision or card.precision, torch_device)
    return Classifier(model.to(torch_device), tokenizer, card, torch_device, bf16)


def input_columns(card: ModelCard, frame: "pd.DataFrame", text_column: str = "text",
                  pair_column: Optional[str] = None) -> list[str]:
    """The columns of ``frame`` a model with ``card`` reads: the text column, and the pair column (default
    ``text_pair``) for a model trained on pairs, each checked to hold only non-empty strings. Cheap: call it
    before loading the model.

    Raises:
        PipelineError: a column is missing, or holds an empty text or a value that is not a string (row numbers
            are 1-based, as in the input file).
    """
    if pair_column is None and card.text_pair:
        pair_column = "text_pair"
    columns = [text_column] + ([pair_column] if pair_column else [])
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise PipelineError(f"input has no column {excerpt(missing[0])} (columns: "
                            f"{excerpt(', '.join(map(str, frame.columns)), 200, quote=False)}); choose the text "
                            "column with --text-column (and --pair-column for sentence pairs)")
    for column in columns:
        _check_texts(column, frame[column].tolist())
    return columns


def _check_texts(column: str, values: list) -> None:
    """Every value a non-empty string, as the ingest and validate stages require of training texts."""
    def rows(found: list[int]) -> str:
        return ", ".join(str(i + 1) for i in found[:5]) + (f" … and {len(found) - 5} more" if len(found) > 5 else "")

    empty = [i for i, v in enumerate(values) if v is None or (isinstance(v, float) and np.isnan(v))
             or (isinstance(v, str) and not v.strip())]
    if empty:
        raise PipelineError(f"column {excerpt(column)}: empty text in row {rows(empty)}; remove those rows or fill them")
    other = [i for i, v in enumerate(values) if not isinstance(v, str)]
    if other:
        first = values[other[0]]
        raise PipelineError(f"column {excerpt(column)}: row {rows(other)} holds {type(first).__name__} values, not "
                            f"text (e.g. {excerpt(first, 40)}); give texts as strings (quote them in JSON)")


def predict_frame(classifier: Classifier, frame: "pd.DataFrame", *, text_column: str = "text",
                  pair_column: Optional[str] = None, batch_size: int = 64,
                  on_batch: Optional[Callable[[int], None]] = None) -> "pd.DataFrame":
    """Labels and per-class probabilities for the texts of ``frame``: columns ``label``, ``prob_<label>``…

    ``pair_column`` defaults to ``text_pair`` for a model trained on pairs.

    Raises:
        PipelineError: a missing column, an empty text or a value that is not a string (row numbers are
            1-based, as in the input file).
    """
    import pandas as pd

    columns = input_columns(classifier.card, frame, text_column, pair_column)
    texts = {c: frame[c].tolist() for c in columns}
    probs = classifier.predict_proba(texts[columns[0]], texts[columns[1]] if len(columns) > 1 else None,
                                     batch_size=batch_size, on_batch=on_batch)
    labels = classifier.labels
    out = pd.DataFrame({"label": [labels[i] for i in probs.argmax(axis=1)]})
    for j, name in enumerate(labels):
        out[f"prob_{name}"] = probs[:, j].astype(np.float64)
    return out
