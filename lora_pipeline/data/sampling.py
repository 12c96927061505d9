"""A seeded, stratified subsample of the ingested rows, so a large dataset can be tried quickly first."""

from __future__ import annotations

from typing import Any, Sequence, Union

import numpy as np
import pandas as pd

__all__ = ["stratified_subsample"]

NULL_STRATUM = "<null>"


def stratified_subsample(df: pd.DataFrame, size: Union[int, float], seed: int,
                         strata: Sequence[str] = ("label",)) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Keep ``size`` rows (an int) or that fraction of them (a float in (0, 1)), each stratum in proportion.

    Quotas are rounded by largest remainder, so the total is exact and every stratum's share moves by less
    than one row; rows keep their original order. Null labels form a stratum of their own.

    Returns:
        The subsample (fresh index) and a summary for the manifest: requested size, seed, rows before and after,
        rows per label before and after.
    """
    total = len(df)
    target = min(total, size if isinstance(size, int) else int(round(size * total)))
    keys = df[list(strata)].astype(object).where(df[list(strata)].notna(), NULL_STRATUM).astype(str)
    key = keys.agg("\x1f".join, axis=1) if len(keys) else pd.Series([], dtype=str)
    counts = key.value_counts().sort_index()
    exact = counts * (target / total) if total else counts * 0.0
    quota = np.floor(exact).astype(int)
    short = target - int(quota.sum())
    order = (exact - quota).sort_values(ascending=False, kind="stable").index[:short]
    quota[order] += 1
    rng = np.random.default_rng(seed)
    keep = []
    for stratum, n in quota.items():
        rows = np.flatnonzero(key.to_numpy() == stratum)
        keep.extend(rng.choice(rows, size=int(n), replace=False).tolist())
    out = df.iloc[sorted(keep)].reset_index(drop=True)
    summary = {"requested": size, "seed": seed, "rows_before": total, "rows_after": len(out),
               "rows_per_label_before": _per_label(df), "rows_per_label_after": _per_label(out)}
    return out, summary


def _per_label(df: pd.DataFrame) -> dict[str, int]:
    labels = df["label"].astype(object).where(df["label"].notna(), NULL_STRATUM).astype(str)
    return {str(k): int(v) for k, v in sorted(labels.value_counts().items())}
