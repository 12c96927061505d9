"""Uncertainty for the rank × seed study: intervals, paired comparisons, method-level intervals over seeds
and test examples, degenerate-model flags and the adapter measures of the LoRA paper (arXiv:2106.09685 §7).
Pure functions over numpy arrays, no I/O.

Every interval is two-sided at ``confidence`` (default 95 %) and says what it covers. *These models*:
percentile bootstraps over test examples with the trained models held fixed (``scipy.stats.bootstrap``,
seeded) — :func:`bootstrap_metric_ci`, :func:`paired_difference`. *The method*: new training seeds and new
test examples — :func:`method_mean`, :func:`method_difference` (variance components, Student-t). Across seeds
alone: :func:`across_seeds` (Student-t, ``scipy.stats.t``). A model is degenerate only when it predicts one
class or scores at or below the majority class (:func:`degenerate_reason`); trailing a reference is a
separate, weaker note (:func:`reference_note`). Results are frozen dataclasses whose ``to_dict()`` is
JSON-native.
"""

from .bootstrap import (MetricCI, PairedDifference, SeedSummary, across_seeds, bootstrap_metric_ci,
                        degenerate_reason, majority_macro_f1, paired_difference, reference_note, within_tolerance)
from .method import MethodInterval, method_difference, method_mean, needed_to_decide
from .spectra import delta_singular_values, effective_rank, subspace_similarity, subspace_similarity_grid

__all__ = [
    "MetricCI", "SeedSummary", "PairedDifference", "MethodInterval", "bootstrap_metric_ci", "across_seeds",
    "paired_difference", "method_mean", "method_difference", "needed_to_decide", "within_tolerance",
    "majority_macro_f1", "degenerate_reason", "reference_note", "delta_singular_values", "effective_rank",
    "subspace_similarity", "subspace_similarity_grid",
]
