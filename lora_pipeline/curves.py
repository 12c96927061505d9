"""Learning curves of the study and the equal-cost reading: where each method stood at the same training cost.

A run's curve is its validations (``evals.csv`` of a train instance): step, cumulative training seconds (wall and
process CPU) and validation macro-F1. Curves are read as **best so far** — the score of the checkpoint a run
would keep if stopped at that cost (early stopping keeps the best validation) — so they are monotone, and a run
that stopped early carries its best to the right. Seeds of one (variant, rank) are averaged point-wise with the
min–max over seeds as the band.

The clock of the equal-cost reading is process CPU time (``cpu_seconds``): on a shared machine wall time moves
with whatever else runs on the cores, while the CPU time a process spends training is steadier. Pure functions,
no I/O; the test split is never read here (validation only).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from .records import row_rank

__all__ = ["CLOCK", "best_so_far", "curve_from_rows", "equal_cost", "mean_curve"]

CLOCK = "cpu_seconds"  # the steadier clock (see the module docstring)
CLOCK_WORDS = {"cpu_seconds": "CPU-seconds, the process CPU time spent training",
               "seconds": "wall-clock seconds of training", "step": "optimizer steps"}


def curve_from_rows(rows: Sequence[Mapping[str, Any]], seed: int) -> dict[str, Any]:
    """One run's curve (``evals.csv`` rows) as columns: ``seed`` and lists ``step``, ``seconds``,
    ``cpu_seconds``, ``val_macro_f1`` (a column the file lacks is all None)."""
    keys = ("step", "seconds", "cpu_seconds", "val_macro_f1")
    out: dict[str, Any] = {"seed": seed}
    for key in keys:
        out[key] = [None if r.get(key) is None or _nan(r.get(key)) else float(r[key]) for r in rows]
    return out


def _nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def best_so_far(curve: Mapping[str, Any], x_key: str, x: float) -> Optional[float]:
    """The best validation macro-F1 a run had reached by cost ``x`` (in ``x_key`` units); None before its first
    validation or when the curve lacks that clock."""
    xs, ys = curve.get(x_key) or [], curve.get("val_macro_f1") or []
    seen = [y for cx, y in zip(xs, ys) if cx is not None and y is not None and cx <= x]
    return max(seen) if seen else None


def _grid(curves: Sequence[Mapping[str, Any]], x_key: str) -> list[float]:
    return sorted({float(x) for c in curves for x in (c.get(x_key) or []) if x is not None})


def mean_curve(curves: Sequence[Mapping[str, Any]], x_key: str) -> list[dict[str, float]]:
    """Best-so-far validation macro-F1 against ``x_key``, averaged over seeds on the union of their validation
    points; ``low``/``high`` are the min and max over seeds. A point is kept once every seed has a value there."""
    out = []
    for x in _grid(curves, x_key):
        values = [best_so_far(c, x_key, x) for c in curves]
        if any(v is None for v in values):
            continue
        out.append({x_key: x, "val_macro_f1": float(np.mean(values)), "low": float(min(values)),
                    "high": float(max(values)), "seeds": len(values)})
    return out


def _cost_to_best(curve: Mapping[str, Any], clock: str) -> Optional[float]:
    """The cost at which a run reached its best validation (the first time it reached that score)."""
    xs, ys = curve.get(clock) or [], curve.get("val_macro_f1") or []
    pairs = [(x, y) for x, y in zip(xs, ys) if x is not None and y is not None]
    if not pairs:
        return None
    best = max(y for _, y in pairs)
    return next(x for x, y in pairs if y == best)


def _first_within(curves: Sequence[Mapping[str, Any]], clock: str, target: float) -> Optional[float]:
    """The first cost at which the seeds' mean best-so-far reaches ``target``; None if it never does."""
    return next((p[clock] for p in mean_curve(curves, clock) if p["val_macro_f1"] >= target), None)


def equal_cost(curves: Mapping[str, Sequence[Mapping[str, Any]]], configs: Mapping[str, str], tolerance: float,
               chosen: Optional[str], clock: str = CLOCK) -> Optional[dict[str, Any]]:
    """Where each LoRA configuration stood on validation when full fine-tuning reached its best, at equal ``clock``
    cost.

    Args:
        curves: per row name (``full``, ``lora_r8``…), one curve per seed (:func:`curve_from_rows`).
        configs: the LoRA rows of the study, in the order the sentence lists them, each with how the sentence names
            it (``rank 8``; ``DoRA on all_linear at rank 2`` in a study of several adapters or target sets).
        tolerance: "within" = mean best-so-far ≥ full's mean best − tolerance (validation, point estimates).
        chosen: the row whose time to come within the tolerance is reported (the answer's row, else the row
            closest at equal cost: ties to the smaller rank).

    Returns:
        None when full fine-tuning has no curve on this clock; else ``budget`` (full's mean cost to its best),
        ``full_best`` (its mean best validation macro-F1), ``at_budget`` per row name, ``row`` and its ``rank``,
        its ``time_within`` (None: never within the tolerance) and ``ratio`` (time_within / budget), and
        ``sentence``.
    """
    full = curves.get("full") or []
    costs = [_cost_to_best(c, clock) for c in full]
    if not full or any(c is None for c in costs):
        return None
    budget = float(np.mean(costs))
    full_best = float(np.mean([max(y for y in c["val_macro_f1"] if y is not None) for c in full]))
    at_budget = {}
    for name in configs:
        seeds = curves.get(name) or []
        values = [best_so_far(c, clock, budget) for c in seeds]
        at_budget[name] = None if not seeds or any(v is None for v in values) else float(np.mean(values))
    known = {n: v for n, v in at_budget.items() if v is not None}
    if chosen not in known:
        chosen = max(known, key=lambda n: (known[n], -(row_rank(n) or 0))) if known else None
    within = None if chosen is None else _first_within(curves.get(chosen) or [], clock, full_best - tolerance)
    result = {"clock": clock, "budget": budget, "full_best": full_best, "at_budget": at_budget,
              "rank": row_rank(chosen) if chosen else None, "row": chosen, "time_within": within,
              "ratio": None if within is None else within / budget}
    result["sentence"] = _sentence(result, configs, tolerance)
    return result


def _sentence(res: Mapping[str, Any], configs: Mapping[str, str], tolerance: float) -> str:
    unit = "CPU-seconds" if res["clock"] == "cpu_seconds" else "seconds" if res["clock"] == "seconds" else "steps"
    stood = ", ".join(f"{configs[n]} at {v:.3f}" if v is not None else f"{configs[n]} not yet validated"
                      for n, v in res["at_budget"].items())
    said = (f"At equal cost (validation, means over seeds; clock: {CLOCK_WORDS[res['clock']]}): by the "
            f"{res['budget']:,.0f} {unit} full fine-tuning needed to reach its best ({res['full_best']:.3f}), "
            f"{stood}.")
    if res["row"] is None:
        return said
    pts = f"{100 * tolerance:g} point{'s' if tolerance != 0.01 else ''}"
    who = configs[res["row"]]
    who = who[:1].upper() + who[1:]
    if res["time_within"] is None:
        return said + f" {who} never came within {pts} of that best."
    return said + (f" {who} came within {pts} of it after {res['time_within']:,.0f} {unit} "
                   f"({res['ratio']:.2f}× full fine-tuning's).")
