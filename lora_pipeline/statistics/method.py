"""Method-level intervals: over new training seeds *and* new test examples (variance components, Student-t with
Welch–Satterthwaite degrees of freedom), their Monte-Carlo error, and what data would decide an undecided one."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
from scipy import stats

from ..errors import PipelineError
from .bootstrap import (Covers, Metric, Verdict, _bootstrap, _check_confidence, _labels_array, _metric_point,
                        _verdict, bootstrap_metric_ci, paired_difference)

__all__ = ["MethodInterval", "method_difference", "method_mean", "needed_to_decide"]

@dataclass(frozen=True)
class MethodInterval:
    """A method-level interval (:func:`method_mean`, :func:`method_difference`) with its variance budget.

    ``covers`` is "method" (new seeds and new test examples) or "these models" (test examples only, when an
    arm has fewer than 2 seeds). ``se² = se_test² + se_seeds²``; ``df`` is inf when only the test component
    exists (None in ``to_dict``). ``mc_error`` is the Monte-Carlo sd of an interval end from the finite
    number of bootstrap resamples. ``verdict`` (of a relative to b, vs 0) is None for a single row.
    """

    metric: str
    estimate: float  # mean over seeds of whole-test-set scores; a difference: mean(a) − mean(b)
    low: float
    high: float
    confidence: float
    se: float
    se_test: float  # test examples, models fixed (paired bootstrap)
    se_seeds: float  # across seeds, test set fixed
    df: float
    n_examples: int
    seeds_a: int
    seeds_b: int  # 0 for a single row
    n_resamples: int
    mc_error: float
    covers: Covers
    method: str
    verdict: Verdict | None = None

    def to_dict(self) -> dict:
        return {**asdict(self), "df": self.df if math.isfinite(self.df) else None}


def _t_quantile(confidence: float, df: float) -> float:
    return float(stats.t.ppf((1 + confidence) / 2, df))  # df = inf gives the normal quantile


def _welch_df(total: float, parts: Sequence[float], df_parts: Sequence[float]) -> float:
    """Welch–Satterthwaite df of a variance sum ``total``: ``total² / Σ partᵢ²/dfᵢ`` over its estimated
    ``parts``; whatever else ``total`` holds counts with infinite df. inf when every part is 0."""
    denom = sum(p * p / d for p, d in zip(parts, df_parts))
    return total * total / denom if denom > 0 else math.inf


def _mc_error_percentile(distribution: np.ndarray, confidence: float) -> float:
    """Monte-Carlo sd of a percentile-bootstrap end: ``√(q(1−q)/B) / f(ξ_q)``, the sd of a sample quantile,
    with the density ``f(ξ_q) = φ(z_q) / sd`` from a normal fit to the bootstrap distribution."""
    q, sd = (1 - confidence) / 2, float(np.std(distribution, ddof=1))
    if sd == 0.0:
        return 0.0
    return math.sqrt(q * (1 - q) / distribution.size) * sd / float(stats.norm.pdf(stats.norm.ppf(q)))


def _mc_error_t(se_test: float, parts: Sequence[float], seed_df: Sequence[float], confidence: float,
                n_resamples: int) -> float:
    """Monte-Carlo sd of the end ``estimate ± t_ν·se`` when ``se_test²`` comes from ``n_resamples`` bootstrap
    draws: a sample variance has relative sd ``√(2/(B−1))``; propagated through ``se`` and the
    Satterthwaite ν by a central difference (delta method). Without ν's part this is
    ``t·se_test²/(se·√(2(B−1)))``, which overstates it by ~25 % at ν ≈ 30 (more test variance, more df)."""
    def half(test2: float) -> float:
        total = test2 + sum(parts)
        return _t_quantile(confidence, _welch_df(total, parts, seed_df)) * math.sqrt(total)

    var, step = se_test ** 2, se_test ** 2 * math.sqrt(2 / (n_resamples - 1))
    return abs(half(var + step) - half(max(var - step, 0.0))) / 2


def _outermost(candidates: Sequence[tuple[float, float, str]], lower: bool) -> tuple[float, float, str]:
    """The outermost ``(end, mc_error, source)``; the first candidate wins ties."""
    best = candidates[0]
    for c in candidates[1:]:
        if (c[0] < best[0]) if lower else (c[0] > best[0]):
            best = c
    return best


def _t_interval(estimate: float, se_test: float, parts: Sequence[float], sizes: Sequence[int], res,
                confidence: float, n_resamples: int) -> tuple[float, float, float, float, str]:
    """``(low, high, df, mc_error, method)`` of the variance-components t interval, spanning the across-seeds
    t interval on these test examples and the fixed-model percentile interval ``res``."""
    seed_df = [n - 1 for n in sizes]
    se_seeds2 = sum(parts)
    se = math.sqrt(se_test ** 2 + se_seeds2)
    df = _welch_df(se ** 2, parts, seed_df)
    t_q = _t_quantile(confidence, df)
    half_seeds = _t_quantile(confidence, _welch_df(se_seeds2, parts, seed_df)) * math.sqrt(se_seeds2)
    mc_t = _mc_error_t(se_test, parts, seed_df, confidence, n_resamples)
    mc_fixed = _mc_error_percentile(res.bootstrap_distribution, confidence)
    # The across-seeds and fixed-model intervals cover quantities with strictly less uncertainty, so the
    # method-level interval spans them. This also repairs the Satterthwaite df, which grows too fast at 2–4
    # seed df: one row of 3 seeds whose test component is 10–30 % of the seed one covers 92 % at a nominal
    # 95 % without the span, 95 % with it (normal-theory simulation).
    ci = res.confidence_interval
    low, mc_low, why_low = _outermost([(estimate - t_q * se, mc_t, ""), (estimate - half_seeds, 0.0, "across-seeds t"),
                                       (float(ci.low), mc_fixed, "fixed-model")], lower=True)
    high, mc_high, why_high = _outermost([(estimate + t_q * se, mc_t, ""),
                                          (estimate + half_seeds, 0.0, "across-seeds t"),
                                          (float(ci.high), mc_fixed, "fixed-model")], lower=False)
    widened = " and ".join(sorted({w for w in (why_low, why_high) if w}))
    seeds = " + ".join(map(str, sizes))
    method = (f"estimate ± t·se, t at {df:.1f} Welch–Satterthwaite df, se² = paired test-example bootstrap "
              f"({n_resamples} resamples) + across-seed variance ({seeds} seeds)"
              + (f"; spans the {widened} interval" if widened else ""))
    return low, high, df, max(mc_low, mc_high), method


def _method_interval(y_true: Sequence[int], arms: Sequence[Sequence[Sequence[int]]], labels: Sequence[str],
                     metric: Metric, n_resamples: int, confidence: float, seed: int) -> MethodInterval:
    """Shared body of :func:`method_mean` (one arm) and :func:`method_difference` (two arms, a − b)."""
    _check_confidence(confidence)
    if n_resamples < 2:
        raise PipelineError(f"statistics: a method-level interval needs n_resamples ≥ 2, got {n_resamples}")
    k = len(labels)
    t = _labels_array(y_true, k, "y_true")
    names = ("preds_a", "preds_b") if len(arms) == 2 else ("preds",)
    preds = []
    for name, arm in zip(names, arms):
        if len(arm) == 0:
            raise PipelineError(f"statistics: {name} needs at least one prediction array (one per seed)")
        preds.append([_labels_array(p, k, f"{name}[{i}]", t.size) for i, p in enumerate(arm)])
    sizes = [len(arm) for arm in preds]
    signs, ends = (1.0, -1.0)[:len(preds)], np.cumsum([0, *sizes])
    scores = [np.array([_metric_point(metric, t, p, k) for p in arm]) for arm in preds]  # whole test set
    estimate = float(sum(sg * sc.mean() for sg, sc in zip(signs, scores)))

    def combine(scores):  # (B, all seeds) → (B,): the estimate on each resample
        return sum(sg * scores[:, lo:hi].mean(axis=1) for sg, lo, hi in zip(signs, ends[:-1], ends[1:]))

    res = _bootstrap(metric, t, [p for arm in preds for p in arm], k, combine, n_resamples, confidence, seed)
    se_test = float(res.standard_error)
    common = dict(metric=metric, estimate=estimate, confidence=confidence, se_test=se_test,
                  n_examples=int(t.size), seeds_a=sizes[0], seeds_b=sizes[1] if len(sizes) == 2 else 0,
                  n_resamples=n_resamples)
    if min(sizes) < 2:  # no seed variance to estimate: say so instead of pretending to cover the method
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
        return MethodInterval(**common, low=low, high=high, se=se_test, se_seeds=0.0, df=math.inf,
                              mc_error=_mc_error_percentile(res.bootstrap_distribution, confidence),
                              covers="these models",
                              method=f"percentile bootstrap over test examples with the models fixed "
                                     f"({n_resamples} resamples; {' + '.join(map(str, sizes))} seeds: "
                                     "no seed variance)",
                              verdict=_verdict(low, high) if len(sizes) == 2 else None)
    parts = [float(sc.var(ddof=1)) / sc.size for sc in scores]  # seed variance of each arm's mean
    low, high, df, mc_error, method = _t_interval(estimate, se_test, parts, sizes, res, confidence, n_resamples)
    # a score lies in [0, 1], a difference of two in [-1, 1]: cutting the t interval there only adds coverage
    low, high = max(low, 0.0 if len(sizes) == 1 else -1.0), min(high, 1.0)
    return MethodInterval(**common, low=low, high=high, se=math.sqrt(se_test ** 2 + sum(parts)),
                          se_seeds=math.sqrt(sum(parts)), df=df, mc_error=mc_error, covers="method",
                          method=method, verdict=_verdict(low, high) if len(sizes) == 2 else None)


def method_mean(y_true: Sequence[int], preds: Sequence[Sequence[int]], labels: Sequence[str],
                metric: Metric = "macro_f1", n_resamples: int = 1000, confidence: float = 0.95,
                seed: int = 0) -> MethodInterval:
    """A method's expected ``metric`` over new training seeds and new test examples: one row of the study.

    ``preds`` holds one prediction array per seed on the same test examples. The estimate is the mean of
    the per-seed whole-test-set scores; the interval is that of :func:`method_difference` with one arm
    (``se_seeds² = s²/n``, df = Welch–Satterthwaite). With one seed it is the fixed-model percentile
    bootstrap of :func:`bootstrap_metric_ci` and ``covers`` says "these models".

    Raises:
        PipelineError: no predictions, lengths differ, ids outside the labels, n_resamples < 2.
    """
    return _method_interval(y_true, [preds], labels, metric, n_resamples, confidence, seed)


def method_difference(y_true: Sequence[int], preds_a: Sequence[Sequence[int]],
                      preds_b: Sequence[Sequence[int]], labels: Sequence[str], metric: Metric = "macro_f1",
                      n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0) -> MethodInterval:
    """Expected ``metric(a) − metric(b)`` over new training seeds and new test examples, with its interval.

    The estimate is mean over a's seeds − mean over b's seeds of whole-test-set scores. Its variance has two
    components (Bouthillier et al. 2021, "Accounting for Variance in Machine Learning Benchmarks", MLSys:
    data sampling and seeds): ``se_test²``, the variance of the paired bootstrap of the estimate over test
    examples with the models fixed (as :func:`paired_difference`, so example difficulty cancels), and
    ``se_seeds² = s_a²/n_a + s_b²/n_b`` from the ddof=1 variance of each arm's per-seed scores. The interval
    is ``estimate ± t_ν·se`` with ν from Welch–Satterthwaite (Satterthwaite 1946; Welch 1947) over the seed
    components, the test component counted with infinite df; it also spans the across-seeds Welch interval
    and the fixed-model interval, which cover quantities with strictly less uncertainty (this also repairs
    the Satterthwaite df's undercoverage at 2–4 seed df). ``s²`` measured on one test set also holds each
    seed's own test-set noise, which the bootstrap term counts once more, so the interval errs wide when
    seeds err on different examples (simulated coverage 0.94–0.99 at a nominal 0.95). A two-level percentile
    bootstrap (seeds, then examples; Saravanan et al. 2020) was not used: resampling n seeds understates
    their variance by (n−1)/n and has no t tail, so it undercovers (0.90 with 3 seeds per arm and the seed
    spread dominating, in the tests' simulation). Seeds are independent draws per arm (not paired by seed
    number). With fewer than 2 seeds in an arm there is no seed variance: the interval is
    the fixed-model percentile bootstrap of :func:`paired_difference` and ``covers`` says "these models".
    ``verdict`` is of a relative to b, as in :func:`paired_difference`.

    Raises:
        PipelineError: an arm without predictions, lengths differ, ids outside the labels, n_resamples < 2.
    """
    return _method_interval(y_true, [preds_a, preds_b], labels, metric, n_resamples, confidence, seed)


def _half_width(iv: MethodInterval, n_examples: float, seeds: float | None) -> float:
    """Planned half-width of ``iv`` with ``n_examples`` test examples (se_test² ∝ 1/n) and ``seeds`` per
    arm (se_seeds² ∝ 1/k, each arm's seed variance taken equal); ``seeds`` None keeps the current seeds."""
    test = iv.se_test ** 2 * iv.n_examples / n_examples
    arms = 2 if iv.seeds_b else 1
    if iv.covers != "method":
        return _t_quantile(iv.confidence, math.inf) * math.sqrt(test)
    if seeds is None:  # current seeds: the df denominator Σ partᵢ²/dfᵢ is se⁴/df and does not depend on n
        seed2, denom = iv.se_seeds ** 2, (iv.se ** 4 / iv.df if math.isfinite(iv.df) else 0.0)
    else:
        seed2 = iv.se_seeds ** 2 * arms / (seeds * sum(1 / n for n in (iv.seeds_a, iv.seeds_b) if n))
        denom = arms * (seed2 / arms) ** 2 / (seeds - 1)
    df = (test + seed2) ** 2 / denom if denom > 0 else math.inf
    df_seeds = seed2 ** 2 / denom if denom > 0 else math.inf
    return max(_t_quantile(iv.confidence, df) * math.sqrt(test + seed2),
               _t_quantile(iv.confidence, df_seeds) * math.sqrt(seed2))


def _smallest(fits, start: int, cap: int) -> int | None:
    """Smallest integer ≥ start with ``fits`` true (doubling, then bisection), None past ``cap``."""
    lo, hi = start - 1, start
    while not fits(hi):
        lo, hi = hi, hi * 2
        if hi > cap:
            return None
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if fits(mid) else (mid, hi)
    return hi


def needed_to_decide(interval: MethodInterval, threshold: float) -> dict:
    """Roughly what data would make ``interval`` stop straddling ``threshold``.

    Scales the test component as 1/n and the seed component as 1/k (seeds per arm, arms taken to have
    equal seed variance) and iterates the Student-t quantile with the Welch–Satterthwaite df (normal for a
    "these models" interval) until the half-width is below ``|estimate − threshold|``. A plan, not a
    promise: the estimate itself moves with new data.

    Returns:
        ``n_examples``: test examples needed with the seeds unchanged; ``seeds``: seeds per arm needed with
        the test set unchanged — each None when that alone cannot do it (or, for seeds, when there is no
        seed variance estimate); ``cause``: "test-set size" or "seed spread", the larger variance
        component; ``note``: why a value is None, else None. When the interval does not straddle the
        threshold the current sizes come back with a note.
    """
    iv, gap = interval, abs(interval.estimate - threshold)
    cause = "seed spread" if iv.se_seeds > iv.se_test else "test-set size"
    seeds_now = max(iv.seeds_a, iv.seeds_b) if iv.covers == "method" else None
    if not iv.low <= threshold <= iv.high:
        return {"n_examples": iv.n_examples, "seeds": seeds_now, "cause": cause,
                "note": "already decided: the interval does not straddle the threshold"}
    if gap == 0.0:
        return {"n_examples": None, "seeds": None, "cause": cause,
                "note": "the estimate equals the threshold: no amount of data decides it"}
    notes = []
    n_examples = _smallest(lambda n: _half_width(iv, n, None) < gap, iv.n_examples, 10 ** 12)
    if n_examples is None:
        notes.append("the seed spread alone is wider than the gap: more test data cannot decide it")
    seeds = None
    if iv.covers != "method":
        notes.append("no seed variance estimate (fewer than 2 seeds in an arm): train at least 2 per arm")
    else:
        seeds = _smallest(lambda k: _half_width(iv, iv.n_examples, k) < gap, 2, 10 ** 7)
        if seeds is None:
            notes.append("the test-set noise alone is wider than the gap: more seeds cannot decide it")
    return {"n_examples": n_examples, "seeds": seeds, "cause": cause, "note": "; ".join(notes) or None}
