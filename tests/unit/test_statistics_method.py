"""statistics, method level: intervals over new seeds and new test examples cover the method's expected
score at their stated rate where the fixed-model interval does not, never come out narrower than the
intervals they contain, fall back to "these models" with one seed, report their Monte-Carlo error, and
say what data would decide a straddled threshold."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import accuracy_score

from lora_pipeline.errors import PipelineError
from lora_pipeline.statistics import (
    MethodInterval, across_seeds, bootstrap_metric_ci, method_difference, method_mean, needed_to_decide,
    paired_difference,
)

LABELS = ["fresh", "rotten", "plot"]
BETA = 1.0  # weight of an example's difficulty


def simulate(rng: np.random.Generator, n: int, seeds: int, qualities: tuple[float, ...], seed_sd: float,
             noise_sd: float, rho: float = 0.9) -> tuple[np.ndarray, list[list[np.ndarray]]]:
    """A fresh test sample of ``n`` examples and ``seeds`` freshly trained models per method.

    Example x has a shared difficulty z_x ~ N(0, 1); method m sees ``z_mx = ρ·z_x + √(1−ρ²)·ξ_mx`` (methods
    find mostly the same examples hard). Seed j of method m draws a quality offset ``u_mj ~ N(0, seed_sd)``
    and gets x right iff ``q_m + u_mj − β·z_mx + e_mjx > 0`` with ``e_mjx ~ N(0, noise_sd)``, so a seed's
    offset moves both its score and which examples it gets right. Wrong answers are one of the other classes.
    """
    y = rng.integers(0, 3, n)
    z = rng.normal(size=n)
    arms = []
    for q in qualities:
        z_m = rho * z + math.sqrt(1 - rho ** 2) * rng.normal(size=n)
        right = [q + rng.normal(0, seed_sd) - BETA * z_m + rng.normal(0, noise_sd, n) > 0 for _ in range(seeds)]
        arms.append([np.where(r, y, (y + rng.integers(1, 3, n)) % 3) for r in right])
    return y, arms


def expected_accuracy(quality: float, seed_sd: float, noise_sd: float) -> float:
    """The method's accuracy in expectation over seeds and the test population, in closed form:
    P(q + u − β·z + e > 0) with u, z, e independent normals is Φ(q / √(β² + seed_sd² + noise_sd²))."""
    return float(stats.norm.cdf(quality / math.sqrt(BETA ** 2 + seed_sd ** 2 + noise_sd ** 2)))


def coverage(n_studies: int, seeds: int, seed_sd: float, noise_sd: float, seed: int) -> dict[str, float]:
    """Share of simulated studies whose accuracy-difference intervals contain the true method difference,
    with the mean variance components."""
    qualities = (1.0, 0.9)
    truth = expected_accuracy(qualities[0], seed_sd, noise_sd) - expected_accuracy(qualities[1], seed_sd, noise_sd)
    rng = np.random.default_rng(seed)
    hits = {"method": 0, "fixed": 0}
    se_test, se_seeds = [], []
    for rep in range(n_studies):
        y, (a, b) = simulate(rng, 500, seeds, qualities, seed_sd, noise_sd)
        m = method_difference(y, a, b, LABELS, metric="accuracy", n_resamples=300, seed=rep)
        f = paired_difference(y, a, b, LABELS, metric="accuracy", n_resamples=300, seed=rep)
        hits["method"] += m.low <= truth <= m.high
        hits["fixed"] += f.low <= truth <= f.high
        se_test.append(m.se_test)
        se_seeds.append(m.se_seeds)
    return {"method": hits["method"] / n_studies, "fixed": hits["fixed"] / n_studies,
            "se_test": float(np.mean(se_test)), "se_seeds": float(np.mean(se_seeds))}


# --- coverage of the method-level difference -------------------------------------------------------------

@pytest.mark.slow
def test_method_difference_covers_the_method_and_the_fixed_model_interval_does_not():
    # 5 seeds per arm, seed spread larger than test-set noise (per-seed accuracy sd ≈ 0.036)
    got = coverage(200, seeds=5, seed_sd=0.15, noise_sd=0.5, seed=1)
    assert got["se_seeds"] > 1.5 * got["se_test"], got
    # nominal 95 %: Binomial(200, 0.95) has sd 0.015; these seeds give 0.94 (se_seeds ≈ 0.024, se_test ≈ 0.012)
    assert 0.90 <= got["method"] <= 0.995, got
    # the fixed-model interval (paired_difference) leaves the seed spread out: these seeds give 0.595
    assert got["fixed"] < 0.85, got


@pytest.mark.slow
def test_method_difference_covers_the_method_with_three_seeds_per_arm():
    # 3 seeds per arm (2 df each), seed spread comparable to test-set noise
    got = coverage(200, seeds=3, seed_sd=0.08, noise_sd=0.5, seed=2)
    assert 0.5 < got["se_seeds"] / got["se_test"] < 2, got
    assert 0.90 <= got["method"] <= 0.995, got  # these seeds give 0.96 (the fixed-model interval 0.815)


# --- one row -------------------------------------------------------------------------------------------

def fixed_model_interval_of_the_mean(y: np.ndarray, preds: list[np.ndarray], n_resamples: int, seed: int):
    """Percentile bootstrap of the mean accuracy over ``preds`` with the models fixed, straight from scipy."""
    def mean_accuracy(i, axis):  # (B, n) resampled indices
        return np.mean([(p[i] == y[i]).mean(axis=-1) for p in preds], axis=0)

    return stats.bootstrap((np.arange(y.size),), mean_accuracy, n_resamples=n_resamples, vectorized=True,
                           axis=-1, method="percentile", rng=np.random.default_rng(seed))


@pytest.mark.parametrize("seed_sd, noise_sd", [(0.0, 0.5), (0.02, 0.5), (0.3, 0.5), (0.1, 1.0)])
def test_a_row_interval_spans_the_across_seeds_and_the_fixed_model_interval_of_its_mean(seed_sd, noise_sd):
    rng = np.random.default_rng(3)
    y, (preds,) = simulate(rng, 600, 5, (1.0,), seed_sd, noise_sd)
    row = method_mean(y, preds, LABELS, metric="accuracy", n_resamples=1000, seed=4)
    seeds = across_seeds([accuracy_score(y, p) for p in preds])
    fixed = fixed_model_interval_of_the_mean(y, preds, 1000, seed=4)
    assert row.covers == "method" and row.estimate == pytest.approx(seeds.mean, abs=1e-15)
    assert row.low <= seeds.low and row.high >= seeds.high
    assert row.low <= fixed.confidence_interval.low and row.high >= fixed.confidence_interval.high
    assert row.se_test == pytest.approx(fixed.standard_error, rel=1e-12)


@pytest.mark.parametrize("seed_sd", [0.1, 0.3])
def test_a_row_interval_is_wider_than_each_models_when_seeds_share_most_errors(seed_sd):
    # seeds fine-tuned from one pretrained model get mostly the same examples wrong (small noise_sd); then the
    # row carries every model's test-set noise plus the seed spread
    rng = np.random.default_rng(3)
    y, (preds,) = simulate(rng, 600, 5, (1.0,), seed_sd, 0.3)
    row = method_mean(y, preds, LABELS, n_resamples=1000)
    per_seed = [bootstrap_metric_ci(y, p, LABELS, n_resamples=1000, seed=s) for s, p in enumerate(preds)]
    assert row.high - row.low >= max(ci.high - ci.low for ci in per_seed)
    assert row.se == pytest.approx(math.hypot(row.se_test, row.se_seeds))
    assert row.se_seeds == pytest.approx(np.std([ci.value for ci in per_seed], ddof=1) / math.sqrt(5))


@pytest.mark.slow
def test_a_row_can_be_narrower_than_one_model_when_seeds_err_independently_and_still_covers():
    # no seed quality offset and much per-example seed noise: the mean of 5 models has less test-set noise
    # than one model (as an ensemble does), so its interval is rightly narrower than a single model's
    rng = np.random.default_rng(4)
    truth = expected_accuracy(1.0, 0.0, 1.0)
    hits = narrower = 0
    for rep in range(200):
        y, (preds,) = simulate(rng, 500, 5, (1.0,), 0.0, 1.0)
        row = method_mean(y, preds, LABELS, metric="accuracy", n_resamples=300, seed=rep)
        one = bootstrap_metric_ci(y, preds[0], LABELS, metric="accuracy", n_resamples=300, seed=rep)
        hits += row.low <= truth <= row.high
        narrower += row.high - row.low < one.high - one.low
    assert narrower > 150 and 0.90 <= hits / 200 <= 0.995, (narrower, hits)  # these seeds: 196, 0.97


def test_method_mean_components_match_a_hand_computation():
    rng = np.random.default_rng(5)
    y, (preds,) = simulate(rng, 400, 4, (1.0,), 0.2, 0.5)
    row = method_mean(y, preds, LABELS, metric="accuracy", n_resamples=500, seed=9)
    scores = np.array([accuracy_score(y, p) for p in preds])
    assert row.estimate == pytest.approx(scores.mean(), abs=1e-15)
    assert row.se_seeds == pytest.approx(scores.std(ddof=1) / 2)
    res = stats.bootstrap((np.arange(400),), lambda i, axis: np.mean([(p[i] == y[i]).mean(axis=-1) for p in preds],
                                                                    axis=0),
                          n_resamples=500, vectorized=True, axis=-1, method="percentile", rng=np.random.default_rng(9))
    assert row.se_test == pytest.approx(res.standard_error, rel=1e-12)
    assert row.df == pytest.approx(row.se ** 4 / (row.se_seeds ** 4 / 3))  # Welch–Satterthwaite, one seed part
    half = stats.t.ppf(0.975, row.df) * row.se
    assert (row.low, row.high) == (pytest.approx(row.estimate - half), pytest.approx(row.estimate + half))
    assert (row.seeds_a, row.seeds_b, row.n_examples, row.verdict) == (4, 0, 400, None)


# --- fewer than 2 seeds: these models only ---------------------------------------------------------------

def test_one_seed_covers_these_models_and_equals_the_fixed_model_bootstrap():
    rng = np.random.default_rng(6)
    y, (a, b) = simulate(rng, 500, 3, (1.0, 0.8), 0.1, 0.5)
    row = method_mean(y, a[:1], LABELS, n_resamples=400, seed=2)
    ci = bootstrap_metric_ci(y, a[0], LABELS, n_resamples=400, seed=2)
    assert (row.estimate, row.low, row.high) == (ci.value, ci.low, ci.high)
    assert (row.covers, row.se_seeds, row.df, row.seeds_a, row.seeds_b) == ("these models", 0.0, math.inf, 1, 0)
    assert row.se == row.se_test > 0 and row.to_dict()["df"] is None
    diff = method_difference(y, a[:1], b, LABELS, n_resamples=400, seed=2)
    fixed = paired_difference(y, a[:1], b, LABELS, n_resamples=400, seed=2)
    assert (diff.estimate, diff.low, diff.high, diff.verdict) == (fixed.difference, fixed.low, fixed.high,
                                                                  fixed.verdict)
    assert diff.covers == "these models" and "no seed variance" in diff.method


# --- differences: identical arms, verdicts, JSON ---------------------------------------------------------

def test_identical_predictions_in_both_arms_give_exactly_zero():
    rng = np.random.default_rng(7)
    y, (a,) = simulate(rng, 500, 3, (1.0,), 0.1, 0.5)
    same = method_difference(y, [a[0]] * 3, [a[0]] * 3, LABELS)
    assert (same.estimate, same.low, same.high, same.se, same.verdict) == (0.0, 0.0, 0.0, 0.0, "indistinguishable")
    json.dumps(same.to_dict(), allow_nan=False)
    # three different seeds listed in both arms: no test-set noise in the difference, but each arm is a
    # separate draw of seeds, so the interval keeps the seed spread
    listed_twice = method_difference(y, a, a, LABELS)
    assert (listed_twice.estimate, listed_twice.se_test, listed_twice.verdict) == (0.0, 0.0, "indistinguishable")
    assert listed_twice.low == pytest.approx(-listed_twice.high) and listed_twice.high > 0
    assert json.loads(json.dumps(listed_twice.to_dict(), allow_nan=False))["covers"] == "method"


def test_a_clear_method_difference_is_better_and_the_reverse_worse():
    rng = np.random.default_rng(8)
    y, (a, b) = simulate(rng, 500, 4, (1.5, 0.5), 0.1, 0.5)
    d = method_difference(y, a, b, LABELS)
    assert d.verdict == "better" and 0 < d.low < d.estimate < d.high and (d.seeds_a, d.seeds_b) == (4, 4)
    r = method_difference(y, b, a, LABELS)
    assert r.verdict == "worse" and (r.low, r.high) == (pytest.approx(-d.high), pytest.approx(-d.low))
    out = json.loads(json.dumps(d.to_dict(), allow_nan=False))
    assert set(out) == {f.name for f in MethodInterval.__dataclass_fields__.values()}
    assert out["df"] == pytest.approx(d.df) and out["verdict"] == "better"


@pytest.mark.parametrize("kwargs, match", [
    ({"n_resamples": 1}, "n_resamples ≥ 2"),
    ({"confidence": 1.0}, "strictly between 0 and 1"),
])
def test_bad_arguments_are_one_line_errors(kwargs, match):
    with pytest.raises(PipelineError, match=match):
        method_mean([0, 1, 2], [[0, 1, 2], [0, 1, 1]], LABELS, **kwargs)
    with pytest.raises(PipelineError, match="preds_b needs at least one prediction array"):
        method_difference([0, 1, 2], [[0, 1, 2]], [], LABELS)


# --- Monte-Carlo error of an interval end ----------------------------------------------------------------

@pytest.mark.parametrize("seeds", [1, 4])
def test_mc_error_is_the_spread_of_an_end_over_bootstrap_seeds(seeds):
    # seeds=1: a percentile end, √(q(1−q)/B)/f; seeds=4: a t end, from se_test²'s relative sd √(2/(B−1))
    rng = np.random.default_rng(9)
    y, (a, b) = simulate(rng, 500, seeds, (1.0, 0.8), 0.08, 0.5)
    runs = [method_difference(y, a, b, LABELS, n_resamples=200, seed=s) for s in range(24)]
    assert all("spans" not in r.method for r in runs)  # every end comes from the formula under test
    spread = np.std([r.high for r in runs], ddof=1)
    mc = np.mean([r.mc_error for r in runs])
    assert 0.5 < spread / mc < 2, (spread, mc)  # 24 runs: the spread itself is known to ±15 %


# --- what would decide it --------------------------------------------------------------------------------

def constructed(estimate: float, se_test: float, se_seeds: float, seeds: int = 5, n: int = 1000) -> MethodInterval:
    """A method-level interval with these components (equal seed variance in both arms)."""
    se = math.hypot(se_test, se_seeds)
    df = se ** 4 / (2 * (se_seeds ** 2 / 2) ** 2 / (seeds - 1))
    half = stats.t.ppf(0.975, df) * se
    return MethodInterval("macro_f1", estimate, estimate - half, estimate + half, 0.95, se, se_test, se_seeds, df,
                          n, seeds, seeds, 1000, 0.0, "method", "constructed", "indistinguishable")


def test_a_test_dominated_interval_needs_more_examples_not_more_seeds():
    iv = constructed(0.015, se_test=0.01, se_seeds=0.002)
    assert iv.low < 0 < iv.high
    plan = needed_to_decide(iv, 0.0)
    # df ≈ 5,400, so the normal quantile plans it: n·se_test²/((gap/z)² − se_seeds²)
    z = stats.norm.ppf(0.975)
    want = 1000 * 0.01 ** 2 / ((0.015 / z) ** 2 - 0.002 ** 2)  # 1,832.8
    assert plan["cause"] == "test-set size" and plan["n_examples"] == pytest.approx(want, rel=0.01)
    assert plan["seeds"] is None and "more seeds cannot" in plan["note"]  # z·se_test = 0.0196 > 0.015


def test_a_seed_dominated_interval_needs_more_seeds_not_more_examples():
    iv = constructed(0.015, se_test=0.002, se_seeds=0.01)
    plan = needed_to_decide(iv, 0.0)
    assert plan["cause"] == "seed spread" and plan["n_examples"] is None and "more test data cannot" in plan["note"]

    def half(k: int) -> float:  # t half-width with k seeds per arm (Welch–Satterthwaite), or the seeds-only one
        seed2 = 0.01 ** 2 * 5 / k
        denom = 2 * (seed2 / 2) ** 2 / (k - 1)
        return max(stats.t.ppf(0.975, (0.002 ** 2 + seed2) ** 2 / denom) * math.sqrt(0.002 ** 2 + seed2),
                   stats.t.ppf(0.975, seed2 ** 2 / denom) * math.sqrt(seed2))

    k = plan["seeds"]
    assert half(k) < 0.015 <= half(k - 1) and k == 11


def test_needed_to_decide_none_cases():
    plan = needed_to_decide(constructed(0.0, 0.01, 0.01), 0.0)
    assert (plan["n_examples"], plan["seeds"]) == (None, None) and "equals the threshold" in plan["note"]
    decided = needed_to_decide(constructed(0.1, 0.01, 0.01), 0.0)
    assert (decided["n_examples"], decided["seeds"]) == (1000, 5) and "already decided" in decided["note"]
    rng = np.random.default_rng(13)
    y, (a, b) = simulate(rng, 300, 2, (1.0, 0.95), 0.05, 0.5)
    one_seed = method_difference(y, a[:1], b, LABELS, metric="accuracy")
    plan = needed_to_decide(one_seed, 0.0)
    assert one_seed.low < 0 < one_seed.high and plan["seeds"] is None and "fewer than 2 seeds" in plan["note"]
    assert plan["n_examples"] > 300 and plan["cause"] == "test-set size"


def test_an_interval_never_leaves_the_metrics_range():
    """Two seeds far apart give a t interval with one degree of freedom: wide, but a macro-F1 lies in [0, 1] and a
    difference of two in [-1, 1], so the ends are cut there (which can only raise coverage)."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 400)
    good, poor = y.copy(), np.where(rng.random(400) < 0.5, y, (y + 1) % 3)
    row = method_mean(y, [good, poor], LABELS, n_resamples=1000)
    assert row.covers == "method" and 0.0 <= row.low and row.high == 1.0
    diff = method_difference(y, [good, poor], [poor, poor], LABELS, n_resamples=1000)
    assert -1.0 <= diff.low and diff.high <= 1.0
