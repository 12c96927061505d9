"""The vocabulary of the study file that evaluate writes and report reads: one home for the words and orders both
sides use (a verdict's phrase, which rows the per-class detail shows and in what order)."""

from __future__ import annotations

from typing import Any, Mapping, Optional

__all__ = ["VERDICT_PHRASES", "ANSWER_TAG_CHARS", "answer_tags", "detail_rows"]

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
