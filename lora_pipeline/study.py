"""The rank × seed study: pick each method's learning rate on validation, summarise every (variant, rank)
across seeds with intervals, compare LoRA(r) with full fine-tuning, and phrase the answer.

Pure functions over the train stages' metrics records and test predictions; no I/O. The statistics
themselves live in :mod:`lora_pipeline.statistics`.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from .errors import PipelineError
from .statistics import (across_seeds, bootstrap_metric_ci, degenerate_reason, paired_difference,
                         within_tolerance)

__all__ = ["Group", "adapter_spectrum", "answer", "choose_learning_rates", "compact_metrics", "grid_runs", "rank_curve",
           "record_row", "row_name", "subspace_overlaps", "summarise"]

REFERENCE = "full"  # the method LoRA is compared with


@dataclass(frozen=True)
class Group:
    """One (variant, rank) cell of the study: its chosen learning rate and the records of every seed."""

    variant: str
    rank: Optional[int]
    lr: float
    records: tuple[Mapping[str, Any], ...]  # one train-metrics record per seed, sorted by seed
    val_by_lr: Mapping[float, float]  # mean validation macro-F1 of each learning rate of the grid

    @property
    def name(self) -> str:
        return row_name(self.variant, self.rank)


def row_name(variant: str, rank: Optional[int]) -> str:
    """``lora_r8`` for a LoRA rank, the variant's own name otherwise (the key in evaluate.json)."""
    return f"{variant}_r{rank}" if rank is not None else variant


def choose_learning_rates(records: Sequence[Mapping[str, Any]]) -> list[Group]:
    """Per (variant, rank), the learning rate with the best mean **validation** macro-F1 over its seeds.

    Ties go to the smaller learning rate. Only learning rates trained with every seed of the cell compete, so a
    grid point with a missing seed cannot win on fewer runs.

    Args:
        records: train-stage metrics, each with ``variant``, ``rank`` (None unless LoRA), ``seed``, ``lr`` and
            ``val_macro_f1``.
    """
    cells: dict[tuple, dict[float, list]] = defaultdict(lambda: defaultdict(list))
    for rec in records:
        cells[(rec["variant"], rec.get("rank"))][float(rec["lr"])].append(rec)
    groups = []
    for (variant, rank), by_lr in cells.items():
        seeds = set().union(*({r["seed"] for r in recs} for recs in by_lr.values()))
        complete = {lr: recs for lr, recs in by_lr.items() if {r["seed"] for r in recs} == seeds}
        if not complete:
            raise PipelineError(f"{row_name(variant, rank)}: no learning rate was trained with every seed "
                                f"{sorted(seeds)}; run `dvc repro` to train the missing instances")
        val = {lr: float(np.mean([r["val_macro_f1"] for r in recs])) for lr, recs in complete.items()}
        best = min(val, key=lambda lr: (-val[lr], lr))
        groups.append(Group(variant, rank, best, tuple(sorted(complete[best], key=lambda r: r["seed"])), val))
    order = {"scratch": 0, "full": 1, "lora": 2}
    return sorted(groups, key=lambda g: (order.get(g.variant, 9), g.rank or 0))


def _metric_summary(y_true: np.ndarray, preds: Sequence[np.ndarray], labels: Sequence[str], metric: str,
                    confidence: float, n_resamples: int, seed: int) -> dict:
    """Mean over seeds with a t-interval (≥ 2 seeds) or the test-set bootstrap interval (1 seed)."""
    per_seed = [bootstrap_metric_ci(y_true, p, labels, metric=metric, n_resamples=n_resamples,
                                    confidence=confidence, seed=seed) for p in preds]
    seeds = across_seeds([ci.value for ci in per_seed], confidence=confidence)
    if seeds.n >= 2:
        low, high, kind = seeds.low, seeds.high, f"t-interval across {seeds.n} seeds"
    else:
        low, high, kind = per_seed[0].low, per_seed[0].high, "bootstrap over test examples"
    return {"mean": seeds.mean, "std": seeds.std, "low": low, "high": high, "interval": kind,
            "per_seed": [ci.to_dict() for ci in per_seed]}


def summarise(groups: Sequence[Group], predictions: Mapping[str, Sequence[np.ndarray]], y_true: np.ndarray,
              labels: Sequence[str], tfidf_pred: np.ndarray, *, confidence: float = 0.95,
              n_resamples: int = 1000, seed: int = 0) -> dict[str, dict]:
    """One row per (variant, rank): test metrics with intervals, costs, degenerate flag and, for LoRA, the paired
    difference with full fine-tuning.

    Args:
        groups: from :func:`choose_learning_rates`.
        predictions: per group name, the test predictions of each seed (same order as ``group.records``).
        y_true: test labels (class ids).
        tfidf_pred: the TF-IDF reference's test predictions (a model not better than it is flagged).
    """
    rows: dict[str, dict] = {}
    reference = next((g for g in groups if g.variant == REFERENCE), None)
    for group in groups:
        preds = predictions[group.name]
        row: dict[str, Any] = {
            "variant": group.variant, "rank": group.rank, "lr": group.lr, "seeds": [r["seed"] for r in group.records],
            "val_macro_f1_by_lr": {f"{lr:g}": v for lr, v in sorted(group.val_by_lr.items())},
            "macro_f1": _metric_summary(y_true, preds, labels, "macro_f1", confidence, n_resamples, seed),
            "accuracy": _metric_summary(y_true, preds, labels, "accuracy", confidence, n_resamples, seed),
            "degenerate": [degenerate_reason(y_true, p, labels, tfidf_pred=tfidf_pred, seed=seed) for p in preds],
        }
        for key in ("trainable_params", "trainable_percent", "size_on_disk_mb", "total_params", "precision"):
            row[key] = group.records[0].get(key)
        for key in ("train_seconds", "peak_memory_mb", "steps", "epochs"):
            row[key] = float(np.mean([r[key] for r in group.records if r.get(key) is not None] or [np.nan]))
        row["stopped"] = [r.get("stop_reason") for r in group.records]
        if group.variant == "lora" and reference is not None:
            diff = paired_difference(y_true, list(preds), list(predictions[reference.name]), labels,
                                     n_resamples=n_resamples, confidence=confidence, seed=seed)
            row["vs_full"] = diff.to_dict()
        rows[group.name] = row
    return rows


def _ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return None if not a or not b else a / b


def _others(ok: Sequence[Mapping[str, Any]], lora: Sequence[Mapping[str, Any]]) -> str:
    """Which other trained ranks qualify too: larger ranks need not (a rank curve is not monotone)."""
    rest = [r["rank"] for r in ok[1:]]
    failed = [r["rank"] for r in lora if r not in ok and r["rank"] > ok[0]["rank"]]
    if not rest and not failed:
        return ""
    said = f" (also rank{'s' if len(rest) > 1 else ''} {', '.join(map(str, rest))}" if rest else " ("
    said += ("; " if rest else "") + f"not rank{'s' if len(failed) > 1 else ''} {', '.join(map(str, failed))}" \
        if failed else ""
    return said + ")"


def answer(rows: Mapping[str, Mapping[str, Any]], tolerance: float, confidence: float = 0.95) -> dict:
    """The smallest rank whose macro-F1 is within ``tolerance`` of full fine-tuning, its costs, and one sentence.

    "Within tolerance" is non-inferiority: the lower end of the paired interval of LoRA − full is ≥ −tolerance
    (:func:`lora_pipeline.statistics.within_tolerance`), so a rank only qualifies when the data rule out a larger
    loss, not when its point estimate happens to be close.
    """
    full = rows.get(REFERENCE)
    lora = sorted((r for r in rows.values() if r["variant"] == "lora"), key=lambda r: r["rank"])
    pts, conf = f"{100 * tolerance:g} point{'s' if tolerance != 0.01 else ''}", f"{100 * confidence:g} %"
    if full is None or not lora:
        return {"rank": None, "sentence": "The study needs full fine-tuning and at least one LoRA rank."}
    if any(full["degenerate"]):
        return {"rank": None, "sentence": f"Full fine-tuning is degenerate ({next(d for d in full['degenerate'] if d)}"
                                          "), so it is no reference: no comparison is stated."}
    ok = [r for r in lora if within_tolerance((r["vs_full"]["low"], r["vs_full"]["high"]), tolerance)
          and not any(r["degenerate"])]
    f = full["macro_f1"]
    if not ok:
        best = max(lora, key=lambda r: r["vs_full"]["low"])
        d = best["vs_full"]
        return {"rank": None, "closest_rank": best["rank"], "sentence": (
            f"No trained LoRA rank ({', '.join(str(r['rank']) for r in lora)}) is within {pts} of full fine-tuning "
            f"at {conf}: the closest, rank {best['rank']}, differs by {100 * d['difference']:+.1f} points "
            f"({conf} paired interval [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}]) from full fine-tuning's "
            f"{f['mean']:.3f} [{f['low']:.3f}, {f['high']:.3f}].")}
    r = ok[0]
    d, m = r["vs_full"], r["macro_f1"]
    costs = {"trainable_params": _ratio(r["trainable_params"], full["trainable_params"]),
             "train_seconds": _ratio(r["train_seconds"], full["train_seconds"]),
             "peak_memory_mb": _ratio(r["peak_memory_mb"], full["peak_memory_mb"]),
             "size_on_disk_mb": _ratio(r["size_on_disk_mb"], full["size_on_disk_mb"])}
    verdict = {"better": "better than", "worse": "worse than", "indistinguishable": "indistinguishable from"}
    sentence = (
        f"The smallest LoRA rank within {pts} of full fine-tuning is {r['rank']}{_others(ok, lora)}: test macro-F1 "
        f"{m['mean']:.3f} "
        f"[{m['low']:.3f}, {m['high']:.3f}] vs {f['mean']:.3f} [{f['low']:.3f}, {f['high']:.3f}], a difference of "
        f"{100 * d['difference']:+.1f} points ({conf} paired interval [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}]; "
        f"{verdict[d['verdict']]} full fine-tuning at {conf}), training {r['trainable_percent']:.2f} % of the "
        f"parameters ({r['trainable_params']:,} vs {full['trainable_params']:,}), in "
        f"{costs['train_seconds']:.2f}× the train time and {costs['peak_memory_mb']:.2f}× the peak memory, "
        f"with {r['size_on_disk_mb']:.2f} MB on disk vs {full['size_on_disk_mb']:.1f} MB.")
    return {"rank": r["rank"], "sentence": sentence, "cost_ratios": costs, "difference": d}


def grid_runs(records: Sequence[Mapping[str, Any]], seeds: Sequence[int], lrs: Mapping[str, Sequence[float]],
              ranks: Sequence[int]) -> list[Mapping[str, Any]]:
    """The train-stage records of the current grid, one per (variant, rank, seed, lr); stale ones are ignored.

    A train instance whose value was removed from a study list leaves its files on disk; they are not part of the
    answer. Learning rates compare with a relative tolerance (YAML ``2.0e-3`` and the CLI's ``0.002`` agree).

    Args:
        records: every train-stage metrics record found (``variant``, ``rank``, ``seed``, ``lr``).
        lrs: each variant's learning-rate grid.

    Raises:
        PipelineError: a grid point has no record (its instance has not run), naming the missing instances.
    """
    def key(variant: str, rank: Optional[int], seed: int, lr: float) -> tuple:
        return variant, rank, seed, float(f"{lr:.6g}")

    found = {key(r["variant"], r.get("rank"), r["seed"], r["lr"]): r for r in records}
    wanted = [key(v, rank, seed, lr) for v, grid in lrs.items() for lr in grid for seed in seeds
              for rank in (ranks if v == "lora" else [None])]
    missing = [w for w in wanted if w not in found]
    if missing:
        shown = ", ".join(f"{v}{'' if r is None else f' r{r}'} seed {s} lr {lr:g}" for v, r, s, lr in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise PipelineError(f"evaluate: no trained model for {shown}{more}; run `dvc repro` so every instance of "
                            "the study grid trains")
    return [found[w] for w in wanted]


def record_row(rows: Mapping[str, Mapping[str, Any]], answer_rank: Optional[int],
               record_rank: Optional[int], closest_rank: Optional[int] = None) -> Optional[str]:
    """The LoRA row shown in detail: ``record_rank`` if set, else the answer's rank, else (no rank within the
    tolerance) the closest one the answer names, else the largest rank."""
    ranks = sorted(r["rank"] for r in rows.values() if r["variant"] == "lora")
    if not ranks:
        return None
    rank = next((r for r in (record_rank, answer_rank, closest_rank) if r in ranks), ranks[-1])
    return row_name("lora", rank)


def registry_pick(rows: Mapping[str, Mapping[str, Any]], answer_rank: Optional[int]) -> tuple[Optional[str], str]:
    """The row whose model the Model Registry gets, and why: the answer's LoRA rank, else (no rank within
    tolerance) the non-degenerate row with the best mean test macro-F1 — a deployment pick, not a claim that it
    beats the others. None when every row is degenerate."""
    if answer_rank is not None and row_name("lora", answer_rank) in rows:
        return row_name("lora", answer_rank), "the study's answer: smallest LoRA rank within tolerance of full"
    usable = [(name, r) for name, r in rows.items() if not any(r["degenerate"])]
    if not usable:
        return None, "every trained model is degenerate"
    name = max(usable, key=lambda item: item[1]["macro_f1"]["mean"])[0]
    return name, "best mean test macro-F1 (no LoRA rank within tolerance; not a significance claim)"


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


def rank_curve(rows: Mapping[str, Mapping[str, Any]], tfidf_macro_f1: float) -> list[dict]:
    """One row per LoRA rank for ``dvc plots``: test macro-F1 mean and interval, costs, and the reference lines."""
    full, scratch = rows.get(REFERENCE), rows.get("scratch")
    out = []
    for r in sorted((r for r in rows.values() if r["variant"] == "lora"), key=lambda r: r["rank"]):
        m = r["macro_f1"]
        out.append({"rank": r["rank"], "log2_rank": float(np.log2(r["rank"])), "lora_macro_f1": m["mean"],
                    "lora_low": m["low"], "lora_high": m["high"],
                    "full_macro_f1": full["macro_f1"]["mean"] if full else None,
                    "full_low": full["macro_f1"]["low"] if full else None,
                    "full_high": full["macro_f1"]["high"] if full else None,
                    "scratch_macro_f1": scratch["macro_f1"]["mean"] if scratch else None,
                    "tfidf_macro_f1": tfidf_macro_f1, "trainable_params": r["trainable_params"],
                    "train_seconds": r["train_seconds"], "peak_memory_mb": r["peak_memory_mb"],
                    "size_on_disk_mb": r["size_on_disk_mb"]})
    return out


def compact_metrics(rows: Mapping[str, Mapping[str, Any]], tfidf: Mapping[str, float],
                    answer_rank: Optional[int]) -> dict:
    """What ``dvc metrics diff`` / ``dvc exp show`` compare: per row the test means with intervals (numbers only)."""
    out: dict[str, Any] = {}
    for name, r in rows.items():
        m, a = r["macro_f1"], r["accuracy"]
        row = {"macro_f1": m["mean"], "macro_f1_low": m["low"], "macro_f1_high": m["high"], "macro_f1_std": m["std"],
               "accuracy": a["mean"], "accuracy_low": a["low"], "accuracy_high": a["high"], "lr": r["lr"],
               "seeds": len(r["seeds"]), "degenerate": any(r["degenerate"]),
               "trainable_params": r["trainable_params"], "train_seconds": r["train_seconds"]}
        if "vs_full" in r:
            d = r["vs_full"]
            row.update(vs_full=d["difference"], vs_full_low=d["low"], vs_full_high=d["high"])
        out[name] = row
    out["tfidf_logreg"] = dict(tfidf)
    out["answer_rank"] = answer_rank if answer_rank is not None else 0  # 0: no rank within the tolerance
    return out
