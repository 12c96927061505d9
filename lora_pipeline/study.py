"""The rank × seed study: pick each method's learning rate on validation, summarise every (variant, rank)
across seeds with method-level intervals and compare LoRA(r) with full fine-tuning.

Pure functions over the train stages' metrics records and predictions; no I/O. The statistics live in
:mod:`lora_pipeline.statistics`, the answer's procedure and sentences in :mod:`lora_pipeline.answer`, learning
curves and the equal-cost reading in :mod:`lora_pipeline.curves`.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from sklearn.metrics import accuracy_score, f1_score

from .config import ADAPTERS, DEFAULT_TARGET_SET, VARIANTS, StudyConfig
from .errors import PipelineError
from .records import RunSpec, study_row
from .statistics import (MethodInterval, degenerate_reason, method_difference, method_mean, needed_to_decide,
                         paired_difference, reference_note)
from .study_file import (FixedModels, LrSearch, MetricSummary, ReferenceScores, StudyRow, ToDecide, VsFull,
                         row_order)

__all__ = ["Group", "adapter_spectrum", "configuration", "choose_learning_rates", "compact_metrics", "explain_degenerate", "grid_runs",
           "lr_search", "rank_curve", "record_row", "subspace_overlaps", "summarise", "tracking_metrics",
           "vs_reference"]

REFERENCE = "full"  # the method LoRA is compared with
MAX_RESAMPLES = 20_000  # ceiling when resamples are raised for a verdict at its Monte-Carlo error


@dataclass(frozen=True)
class Group:
    """One cell of the study — a variant, or a LoRA configuration (adapter, target set, rank) — with its chosen
    learning rate and the records of every seed."""

    variant: str
    rank: Optional[int]
    lr: float
    records: tuple[Mapping[str, Any], ...]  # one train-metrics record per seed of the chosen rate, sorted by seed
    val_by_lr: Mapping[float, float]  # mean validation macro-F1 of each rate of the grid over the selection seeds
    target_set: Optional[str] = None  # lora: the target set; None for scratch/full
    adapter: Optional[str] = None  # lora: lora | dora; None for scratch/full
    selection_seeds: tuple[int, ...] = ()  # the seeds every rate was trained with: what the rates were compared on

    @property
    def name(self) -> str:
        return study_row(self.variant, self.rank, self.target_set, self.adapter)


def configuration(rec: Mapping[str, Any]) -> tuple[str, Optional[int], Optional[str], Optional[str]]:
    """``(variant, rank, target set, adapter)`` of a run record; a LoRA record from before the target-set and
    adapter axes (neither key) trained the default set with LoRA."""
    variant = rec["variant"]
    if variant != "lora":
        return variant, rec.get("rank"), None, None
    return variant, rec.get("rank"), rec.get("target_set") or DEFAULT_TARGET_SET, rec.get("adapter") or "lora"


def choose_learning_rates(records: Sequence[Mapping[str, Any]]) -> list[Group]:
    """Per variant and LoRA configuration (adapter, target set, rank), the learning rate with the best mean
    **validation** macro-F1 over the seeds every rate of the cell was trained with.

    Those shared seeds (the selection seeds) make the comparison fair whatever else was trained: a rate trained with
    further seeds (a study that adds seeds only where the rate was chosen) is compared on the shared ones, and a rate
    missing a seed still competes, on the seeds it shares, so the search's ends stay where the grid put them. The
    chosen rate's row then holds every seed it was trained with. Ties go to the smaller learning rate.
    Configurations never share a cell: two target sets (or adapters) at one rank are two groups.

    Args:
        records: train-stage metrics, each with ``variant``, ``rank`` (None unless LoRA), ``seed``, ``lr`` and
            ``val_macro_f1``; LoRA ones with ``target_set`` and ``adapter`` (missing: the default set, LoRA).

    Returns:
        Groups as scratch, full, then LoRA by (adapter in ADAPTERS order, default set first then target set by
        name, rank).

    Raises:
        PipelineError: the rates of a cell share no seed.
    """
    cells: dict[tuple, dict[float, list]] = defaultdict(lambda: defaultdict(list))
    for rec in records:
        cells[configuration(rec)][float(rec["lr"])].append(rec)
    groups = []
    for (variant, rank, target_set, adapter), by_lr in cells.items():
        shared = set.intersection(*({r["seed"] for r in recs} for recs in by_lr.values()))
        if not shared:
            trained = "; ".join(f"{lr:g}: seeds {sorted({r['seed'] for r in recs})}"
                                for lr, recs in sorted(by_lr.items()))
            raise PipelineError(f"{study_row(variant, rank, target_set, adapter)}: no seed was trained at every "
                                f"learning rate ({trained}), so the rates cannot be compared; train one seed at "
                                "every rate (`dvc repro`)")
        val = {lr: float(np.mean([r["val_macro_f1"] for r in recs if r["seed"] in shared]))
               for lr, recs in by_lr.items()}
        best = min(val, key=lambda lr: (-val[lr], lr))
        groups.append(Group(variant, rank, best, tuple(sorted(by_lr[best], key=lambda r: r["seed"])), val,
                            target_set, adapter, tuple(sorted(shared))))
    return sorted(groups, key=_group_order)


def _group_order(g: Group) -> tuple:
    variant = VARIANTS.index(g.variant) if g.variant in VARIANTS else len(VARIANTS)
    if g.variant != "lora":
        return variant, 0, 0, "", g.rank or 0
    return (variant, ADAPTERS.index(g.adapter) if g.adapter in ADAPTERS else len(ADAPTERS),
            g.target_set != DEFAULT_TARGET_SET, g.target_set, g.rank or 0)


def lr_search(group: Group) -> LrSearch:
    """Where the chosen learning rate sits in its grid: ``interior`` (a better rate outside the grid is unlikely),
    ``lowest``/``highest`` (the optimum may lie beyond that end: not searched) or ``only`` (one rate: no search)."""
    grid = sorted(group.val_by_lr)
    if len(grid) == 1:
        position = "only"
    else:
        position = {grid[0]: "lowest", grid[-1]: "highest"}.get(group.lr, "interior")
    return LrSearch(tuple(grid), position, position == "interior", group.selection_seeds)


def _metric_summary(y_true: np.ndarray, preds: Sequence[np.ndarray], labels: Sequence[str], metric: str,
                    confidence: float, n_resamples: int, seed: int) -> MetricSummary:
    """Mean over seeds with its method-level interval (seeds and test examples; one seed: these models only)."""
    iv = method_mean(y_true, list(preds), labels, metric=metric, n_resamples=n_resamples, confidence=confidence,
                     seed=seed)
    scores = [_score(metric, y_true, p, labels) for p in preds]
    return MetricSummary(mean=iv.estimate, std=float(np.std(scores, ddof=1)) if len(scores) > 1 else None,
                         low=iv.low, high=iv.high, interval=iv.method, covers=iv.covers, se=iv.se,
                         se_test=iv.se_test, se_seeds=iv.se_seeds, per_seed=tuple(scores))


def _score(metric: str, y_true: np.ndarray, pred: np.ndarray, labels: Sequence[str]) -> float:
    """One model's whole-test-set score (scikit-learn, as the intervals' point estimates)."""
    if metric == "accuracy":
        return float(accuracy_score(y_true, pred))
    return float(f1_score(y_true, pred, labels=list(range(len(labels))), average="macro", zero_division=0))


def _near(value: float, threshold: float, mc_error: float) -> bool:
    """Whether an interval end lies within two Monte-Carlo errors of a threshold (the verdict could flip)."""
    return abs(value - threshold) <= 2 * mc_error


def _deciding_ends_near(d: MethodInterval, tolerance: float) -> bool:
    """Whether either verdict (vs −tolerance, vs 0) rests on an end within Monte-Carlo error of its threshold."""
    return any(_near(end, thr, d.mc_error) for end in (d.low, d.high) for thr in (-tolerance, 0.0))


def vs_reference(y_true: np.ndarray, preds: Sequence[np.ndarray], ref: Sequence[np.ndarray], labels: Sequence[str],
                 *, tolerance: float, confidence: float, n_resamples: int, seed: int) -> VsFull:
    """LoRA − full with its method-level interval; resamples are raised (×10, up to ``MAX_RESAMPLES``) when a
    verdict rests on an end within Monte-Carlo error of its threshold, and ``mc_close`` says if it still does.
    When the interval straddles −tolerance, ``to_decide`` says roughly what data would decide it."""
    def run(n: int) -> MethodInterval:
        return method_difference(y_true, list(preds), list(ref), labels, n_resamples=n, confidence=confidence,
                                 seed=seed)

    d = run(n_resamples)
    if _deciding_ends_near(d, tolerance) and n_resamples < MAX_RESAMPLES:
        d = run(min(10 * n_resamples, MAX_RESAMPLES))
    fixed = paired_difference(y_true, list(preds), list(ref), labels, n_resamples=n_resamples,
                              confidence=confidence, seed=seed)
    return VsFull(**d.to_dict(), difference=d.estimate, mc_close=_deciding_ends_near(d, tolerance),
                  these_models=FixedModels(fixed.low, fixed.high, fixed.verdict),
                  to_decide=ToDecide(**needed_to_decide(d, -tolerance)) if d.low < -tolerance < d.high else None)


def _seed_flags(y_true: np.ndarray, preds: Sequence[np.ndarray], labels: Sequence[str]) -> list[Optional[str]]:
    return [degenerate_reason(y_true, p, labels) for p in preds]


def summarise(groups: Sequence[Group], predictions: Mapping[str, Sequence[np.ndarray]], y_true: np.ndarray,
              labels: Sequence[str], tfidf_pred: np.ndarray, *, tolerance: float = 0.01, confidence: float = 0.95,
              n_resamples: int = 1000, seed: int = 0,
              val: Optional[tuple[np.ndarray, Mapping[str, Sequence[np.ndarray]]]] = None) -> dict[str, StudyRow]:
    """One row per group (variant or LoRA configuration): test metrics with method-level intervals, costs, convergence, degenerate flags
    (test and validation, with why a degenerate row could not learn), the TF-IDF note and, for LoRA, the paired
    difference with full fine-tuning.

    Args:
        groups: from :func:`choose_learning_rates`.
        predictions: per group name, the test predictions of each seed (same order as ``group.records``).
        y_true: test labels (class ids).
        tfidf_pred: the TF-IDF reference's test predictions (a model not better than it gets a note, no flag).
        tolerance: the non-inferiority margin (resamples are raised when a verdict sits at its Monte-Carlo error).
        val: validation labels and, per group name, each seed's validation predictions (the checkpoint kept);
            picks (registry) use the validation flags.
    """
    rows: dict[str, StudyRow] = {}
    reference = next((g for g in groups if g.variant == REFERENCE), None)
    for group in groups:
        preds = predictions[group.name]
        compared = group.variant == "lora" and reference is not None
        row = StudyRow(
            variant=group.variant, rank=group.rank, lr=group.lr, seeds=tuple(r["seed"] for r in group.records),
            val_macro_f1_by_lr={f"{lr:g}": v for lr, v in sorted(group.val_by_lr.items())},
            val_macro_f1=group.val_by_lr[group.lr],
            lr_search=lr_search(group),
            macro_f1=_metric_summary(y_true, preds, labels, "macro_f1", confidence, n_resamples, seed),
            accuracy=_metric_summary(y_true, preds, labels, "accuracy", confidence, n_resamples, seed),
            degenerate=tuple(_seed_flags(y_true, preds, labels)),
            degenerate_val=tuple(_seed_flags(val[0], val[1][group.name], labels)) if val else None,
            degenerate_why=None,
            notes=tuple(reference_note(y_true, p, labels, tfidf_pred, n_resamples=n_resamples, confidence=confidence,
                                       seed=seed) for p in preds),
            **_costs(group.records),
            vs_full=vs_reference(y_true, preds, predictions[reference.name], labels, tolerance=tolerance,
                                 confidence=confidence, n_resamples=n_resamples, seed=seed) if compared else None,
            target_set=group.target_set, adapter=group.adapter, adapter_params=_adapter_params(group.records))
        rows[group.name] = dataclasses.replace(row, degenerate_why=explain_degenerate(row))
    return rows


def _costs(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Sizes (first seed), means over seeds of the costs, and each seed's stop: converged, why, where."""
    out: dict[str, Any] = {k: records[0].get(k) for k in
                           ("trainable_params", "trainable_percent", "size_on_disk_mb", "total_params", "precision")}
    for key in ("train_seconds", "train_cpu_seconds", "seconds_to_best", "cpu_seconds_to_best", "peak_memory_mb",
                "steps", "planned_steps", "epochs", "best_step"):
        values = [r[key] for r in records if r.get(key) is not None]
        out[key] = float(np.mean(values)) if values else None
    out["stopped"] = tuple(r.get("stop_reason") for r in records)
    out["stopped_by"] = tuple(r.get("stopped_by") for r in records)
    out["converged"] = tuple(r.get("converged") for r in records)
    return out


def _adapter_params(records: Sequence[Mapping[str, Any]]) -> Optional[int]:
    """The parameters the adapter layers add, as every seed's record states it; None when a record lacks it (a run
    from before the count) or the seeds disagree."""
    values = {r.get("adapter_params") for r in records}
    return values.pop() if len(values) == 1 else None


def explain_degenerate(row: StudyRow) -> Optional[str]:
    """Why a degenerate row could not learn, from how its runs stopped (None when no seed is degenerate)."""
    if not row.is_degenerate:
        return None
    if not row.all_converged:
        return (f"it was still improving when it hit its cap of {row.planned_steps:,.0f} steps at lr {row.lr:g}: it "
                "needs more steps (train.max_steps or the variant's epochs)")
    return (f"it stopped on a validation plateau (best at step {row.best_step:,.0f} of {row.steps or 0:,.0f}) "
            f"without learning beyond the majority class at lr {row.lr:g}; try other learning rates in the study's "
            "grid, more warm-up, or a smaller model for this little data")


def grid_runs(records: Sequence[Mapping[str, Any]], study: StudyConfig) -> list[Mapping[str, Any]]:
    """The train-stage records of the current grid, one per (variant, rank, target set, adapter, seed, lr); stale
    ones are ignored.

    A train instance whose value was removed from a study list leaves its files on disk; they are not part of the
    answer. Learning rates compare with a relative tolerance (YAML ``2.0e-3`` and the CLI's ``0.002`` agree).

    Args:
        records: every train-stage metrics record found (``variant``, ``rank``, ``seed``, ``lr``; LoRA ones with
            ``target_set`` and ``adapter``, missing: the default set and LoRA).
        study: the grid (:meth:`RunSpec.grid <lora_pipeline.records.RunSpec.grid>`).

    Raises:
        PipelineError: a grid point has no record (its instance has not run), naming the missing instances.
    """
    def key(config: tuple, seed: int, lr: float) -> tuple:
        return *config, seed, float(f"{lr:.6g}")

    found = {key(configuration(r), r["seed"], r["lr"]): r for r in records}
    def order(s: RunSpec) -> tuple:  # the record's order: variant, lr, seed, rank, target set, adapter
        lora = (-1, -1, -1) if s.rank is None else (study.ranks.index(s.rank), study.target_sets.index(s.target_set),
                                                    study.adapters.index(s.adapter))
        return (VARIANTS.index(s.variant), study.lrs(s.variant).index(s.lr), study.seeds.index(s.seed), *lora)

    wanted = [key(configuration(s.fields()), s.seed, s.lr) for s in sorted(RunSpec.grid(study), key=order)]
    missing = [w for w in wanted if w not in found]
    if missing:
        shown = ", ".join(f"{_instance(v, r, t, a)} seed {s} lr {lr:g}" for v, r, t, a, s, lr in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise PipelineError(f"evaluate: no trained model for {shown}{more}; run `dvc repro` so every instance of "
                            "the study grid trains")
    return [found[w] for w in wanted]


def _instance(variant: str, rank: Optional[int], target_set: Optional[str], adapter: Optional[str]) -> str:
    """``lora r8``, ``dora all_linear r8``, ``full``: a train instance in a message."""
    if rank is None:
        return variant
    unusual = [v for v, usual in ((adapter, "lora"), (target_set, DEFAULT_TARGET_SET)) if v != usual]
    return " ".join([adapter if adapter != "lora" else variant, *unusual[1 if adapter != "lora" else 0:], f"r{rank}"])


def record_row(rows: Mapping[str, StudyRow], answer_row: Optional[str], record_rank: Optional[int],
               closest_row: Optional[str] = None) -> Optional[str]:
    """The LoRA row shown in detail: the row of ``record_rank`` if set (in the answer's (adapter, target set) when
    it has that rank, else the first in report order), else the answer's row, else (none within the tolerance) the
    closest one the answer names, else the largest rank (the last such in report order)."""
    lora = sorted((r for r in rows.values() if r.variant == "lora"), key=row_order)
    if not lora:
        return None
    names = [r.name for r in lora]
    if record_rank is not None:
        family = rows[answer_row].family if answer_row in rows else None
        at = [r for r in lora if r.rank == record_rank]
        pick = next((r for r in at if r.family == family), at[0] if at else None)
        if pick is not None:
            return pick.name
    found = next((n for n in (answer_row, closest_row) if n in names), None)
    return found or max(lora, key=lambda r: (r.rank, -names.index(r.name))).name


def adapter_spectrum(factors: Mapping[str, tuple[np.ndarray, np.ndarray, float]], energy: float = 0.9) -> dict:
    """Per targeted layer: singular values of ΔW = scaling·B·A (descending) and its effective rank."""
    from .statistics import delta_singular_values, effective_rank

    out = {}
    for name, (a, b, scaling) in factors.items():
        sv = delta_singular_values(a, b, scaling)
        out[name] = {"singular_values": [float(v) for v in sv], "effective_rank": effective_rank(sv, energy)}
    return out


def subspace_overlaps(small: Mapping[str, tuple], large: Mapping[str, tuple]) -> dict[str, list[list[float]]]:
    """Per layer both adapters target: the LoRA paper's φ(A_small, A_large, i, j) grid (Figure 3, §7.2)."""
    from .statistics import subspace_similarity_grid

    return {name: subspace_similarity_grid(small[name][0], large[name][0]).round(4).tolist()
            for name in small if name in large}


def rank_curve(rows: Mapping[str, StudyRow], tfidf_macro_f1: float) -> list[dict]:
    """One row per LoRA rank for ``dvc plots``: test macro-F1 mean and interval, costs, and the reference lines.
    A study of several (adapter, target set) has one series per pair: its rows lead with ``adapter`` and
    ``target_set`` columns, by pair then rank."""
    full, scratch = rows.get(REFERENCE), rows.get("scratch")
    lora = sorted((r for r in rows.values() if r.variant == "lora"), key=row_order)
    several = len({r.family for r in lora}) > 1
    out = []
    for r in lora:
        m = r.macro_f1
        which = dict(zip(("adapter", "target_set"), r.family)) if several else {}
        out.append({**which, "rank": r.rank, "log2_rank": float(np.log2(r.rank)), "lora_macro_f1": m.mean,
                    "lora_low": m.low, "lora_high": m.high,
                    "full_macro_f1": full.macro_f1.mean if full else None,
                    "full_low": full.macro_f1.low if full else None,
                    "full_high": full.macro_f1.high if full else None,
                    "scratch_macro_f1": scratch.macro_f1.mean if scratch else None,
                    "tfidf_macro_f1": tfidf_macro_f1, "trainable_params": r.trainable_params,
                    "train_seconds": r.train_seconds, "cpu_seconds_to_best": r.cpu_seconds_to_best,
                    "peak_memory_mb": r.peak_memory_mb, "size_on_disk_mb": r.size_on_disk_mb})
    return out


def compact_metrics(rows: Mapping[str, StudyRow], tfidf: ReferenceScores, answer_rank: Optional[int]) -> dict:
    """The DVC metrics (evaluate's ``--metrics`` file, tracked in Git): what ``dvc metrics diff`` / ``dvc exp show``
    compare across commits and experiments.

    The answer's rank (0: none within the tolerance), each row's test macro-F1 with its interval, and each LoRA
    rank's difference from full fine-tuning with its interval. Quality only: no figure that depends on the machine
    (seconds, memory), so a reproduction elsewhere leaves the file unchanged. Everything else of a row is in
    study.json and the MLflow run (:func:`tracking_metrics`).
    """
    out: dict[str, Any] = {"answer_rank": answer_rank if answer_rank is not None else 0}
    for name, r in rows.items():
        m = r.macro_f1
        out[name] = {"macro_f1": m.mean, "macro_f1_low": m.low, "macro_f1_high": m.high}
        if r.vs_full is not None:
            d = r.vs_full
            out[name].update(vs_full=d.difference, vs_full_low=d.low, vs_full_high=d.high)
    out["tfidf_logreg"] = {"macro_f1": tfidf.macro_f1, "macro_f1_low": tfidf.macro_f1_low,
                           "macro_f1_high": tfidf.macro_f1_high}
    return out


def tracking_metrics(rows: Mapping[str, StudyRow], tfidf: ReferenceScores, answer_rank: Optional[int]) -> dict:
    """Every number of each row for the evaluate stage's MLflow run: :func:`compact_metrics` plus accuracy, the
    chosen learning rate, seeds, flags, validation macro-F1 and the costs (seconds of this machine included)."""
    out = compact_metrics(rows, tfidf, answer_rank)
    for name, r in rows.items():
        a = r.accuracy
        out[name].update({"accuracy": a.mean, "accuracy_low": a.low, "accuracy_high": a.high,
                          "macro_f1_std": r.macro_f1.std, "lr": r.lr, "seeds": len(r.seeds),
                          "degenerate": r.is_degenerate, "converged": r.all_converged,
                          "val_macro_f1": r.val_macro_f1, "trainable_params": r.trainable_params,
                          "train_seconds": r.train_seconds, "cpu_seconds_to_best": r.cpu_seconds_to_best})
    out["tfidf_logreg"] = tfidf.to_json()
    return out
