"""The files stages hand each other, and their vocabulary: the model card every train stage writes beside its
weights (``classifier.json``, read by evaluate, predict, serving and MLflow), and the words and orders that the
study file's writer (evaluate) and readers (report, figures) share (a verdict's phrase, the detail rows' order,
the answer's MLflow tags)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

from .config import Variant
from .errors import PipelineError, excerpt

__all__ = ["CARD", "ModelCard", "read_card", "VERDICT_PHRASES", "ANSWER_TAG_CHARS", "answer_tags", "detail_rows"]

CARD = "classifier.json"
_FORMAT = "lora-pipeline-classifier"


@dataclass(frozen=True)
class ModelCard:
    """What a trained model directory is and how to feed it (``classifier.json``)."""

    variant: Variant
    labels: tuple[str, ...]
    max_length: int
    text_pair: bool  # trained on sentence pairs: inputs need ``text`` and ``text_pair``
    precision: str  # train.precision it was trained with: auto | fp32 | bf16
    base_model: Optional[str] = None  # LoRA: model.name of the base (HF id, directory or package:<pkg>/<dir>)
    format: str = _FORMAT
    version: int = 1

    def write(self, directory: str | Path) -> None:
        data = dataclasses.asdict(self)
        data["labels"] = list(self.labels)
        (Path(directory) / CARD).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def read_card(directory: str | Path) -> ModelCard:
    """The card of a model directory.

    Raises:
        PipelineError: not a directory, no ``classifier.json`` (not written by a train stage), or a card
            without its label map.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise PipelineError(f"model {excerpt(str(directory))}: no such directory. Give a models/<variant>/<tag> "
                            "directory written by a train stage, or an MLflow model URI (models:/name@alias)")
    path = directory / CARD
    if not path.is_file():
        raise PipelineError(f"model {excerpt(str(directory))}: no {CARD}, so not a model directory written by a "
                            "lora-pipeline train stage (rerun it with this version: `dvc repro -f train_<variant>`)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise PipelineError(f"{path}: unreadable ({excerpt(str(err), quote=False)})") from None
    if data.get("format") != _FORMAT or not data.get("labels"):
        raise PipelineError(f"{path}: not a lora-pipeline classifier card, or its label map is missing")
    if data.get("version", 1) != ModelCard.version:
        raise PipelineError(f"{path}: card version {excerpt(data.get('version'))}, but this lora-pipeline reads "
                            f"version {ModelCard.version}; use the lora-pipeline that wrote it, or retrain "
                            "(`dvc repro -f train_<variant>`)")
    known = {f.name for f in dataclasses.fields(ModelCard)}
    return ModelCard(**{k: (tuple(v) if k == "labels" else v) for k, v in data.items() if k in known})



# a paired comparison's verdict (statistics.vs_reference) as the sentences and the report say it
VERDICT_PHRASES = {"better": "better than", "worse": "worse than", "indistinguishable": "indistinguishable from"}


def detail_rows(record_row: Optional[str]) -> tuple[str, ...]:
    """The rows with per-class F1 and a confusion matrix, in report order: scratch, full, the record LoRA row
    (when there is one), the TF-IDF reference."""
    return tuple(n for n in ("scratch", "full", record_row, "tfidf_logreg") if n)


ANSWER_TAG_CHARS = 100  # the ``answer`` tag, a column of the runs table; the run's description holds it whole


def answer_tags(answer: Mapping[str, Any]) -> dict:
    """The run's ``answer`` tag (cut at a word, with "…"), ``answer_rank``, and its description (the
    ``mlflow.note.content`` tag, Markdown in the UI's Overview): the whole answer and its equal-cost reading."""
    sentence = answer["sentence"]
    short = sentence if len(sentence) <= ANSWER_TAG_CHARS else \
        sentence[:ANSWER_TAG_CHARS - 1].rsplit(" ", 1)[0].rstrip(" ,;:") + "…"
    note = "\n\n".join(text for text in (sentence, answer.get("equal_cost")) if text)
    return {"answer": short, "answer_rank": answer["rank"], "mlflow.note.content": note}
