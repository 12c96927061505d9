"""The vocabulary of the study file that evaluate writes and report reads: one home for the words and orders both
sides use (a verdict's phrase, which rows the per-class detail shows and in what order)."""

from __future__ import annotations

from typing import Optional

__all__ = ["VERDICT_PHRASES", "detail_rows"]

# a paired comparison's verdict (statistics.vs_reference) as the sentences and the report say it
VERDICT_PHRASES = {"better": "better than", "worse": "worse than", "indistinguishable": "indistinguishable from"}


def detail_rows(record_row: Optional[str]) -> tuple[str, ...]:
    """The rows with per-class F1 and a confusion matrix, in report order: scratch, full, the record LoRA row
    (when there is one), the TF-IDF reference."""
    return tuple(n for n in ("scratch", "full", record_row, "tfidf_logreg") if n)
