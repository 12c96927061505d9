"""statistics: intervals cover known values at their stated rate, paired verdicts follow the interval,
degenerate models are named (and trailing a reference is a separate note), and the adapter measures match
direct linear algebra. Method-level intervals: test_statistics_method.py."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

from lora_pipeline.errors import PipelineError
from lora_pipeline.lora.layers import LoRALinear
from lora_pipeline.statistics.bootstrap import _scorer
from lora_pipeline.statistics import (
    across_seeds, bootstrap_metric_ci, degenerate_reason, delta_singular_values, effective_rank,
    majority_macro_f1, paired_difference, reference_note, subspace_similarity, subspace_similarity_grid,
    within_tolerance,
)

LABELS = ["fresh", "rotten", "plot"]


def noisy_predictions(rng: np.random.Generator, y_true: np.ndarray, p_correct: float, k: int = 3) -> np.ndarray:
    """Right with probability ``p_correct``, else a uniformly random class (possibly right by chance)."""
    return np.where(rng.random(y_true.size) < p_correct, y_true, rng.integers(0, k, y_true.size))


# --- the batched metric is scikit-learn's ------------------------------------------------------------

@pytest.mark.parametrize("k", [2, 3, 5])
def test_resampled_scores_equal_scikit_learn_on_the_resampled_arrays_exactly(k):
    rng = np.random.default_rng(k)
    # three models on 25 examples, 40 resamples, some with classes absent from y_true or a model's
    # predictions (zero_division=0 path)
    y_true = rng.integers(0, k, 25)
    y_true[:12] = 0
    preds = [rng.integers(0, k, 25), np.full(25, k - 1), rng.integers(0, k, 25)]
    idx = rng.integers(0, 25, (40, 25))
    idx[:5] = rng.integers(0, 12, (5, 25))  # only examples of class 0
    got = _scorer("macro_f1", y_true, preds, k)(idx)  # (B, m)
    want = [[f1_score(y_true[i], p[i], labels=list(range(k)), average="macro", zero_division=0)
             for p in preds] for i in idx]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-15)
    got = _scorer("accuracy", y_true, preds, k)(idx)
    np.testing.assert_allclose(got, [[np.mean(y_true[i] == p[i]) for p in preds] for i in idx], rtol=0, atol=1e-15)


# --- bootstrap over test examples ---------------------------------------------------------------------

def test_accuracy_interval_covers_the_true_accuracy_at_the_stated_rate():
    # population accuracy is exactly 0.8: right w.p. 0.8 by construction (never right by chance: k=1 shift)
    rng = np.random.default_rng(1)
    hits = 0
    for rep in range(200):
        y_true = rng.integers(0, 3, 300)
        y_pred = np.where(rng.random(300) < 0.8, y_true, (y_true + 1) % 3)
        ci = bootstrap_metric_ci(y_true, y_pred, LABELS, metric="accuracy", seed=rep)
        hits += ci.low <= 0.8 <= ci.high
    # Binomial(200, 0.95): mean 190, sd 3.1, so [181, 198] is ±3 sd (a correct 95 % interval fails < 0.5 % of
    # seeds; these seeds give 191). It bounds the coverage: an 80 % interval (mean 160) fails, 93 % could pass.
    assert 181 <= hits <= 198, hits


def test_macro_f1_interval_covers_the_population_macro_f1_at_the_stated_rate():
    prior = np.array([0.5, 0.3, 0.2])
    confusion = np.array([[0.8, 0.15, 0.05], [0.2, 0.7, 0.1], [0.1, 0.1, 0.8]])  # P(pred | true)
    joint = prior[:, None] * confusion  # P(true, pred)
    truth = np.mean(2 * np.diag(joint) / (joint.sum(1) + joint.sum(0)))  # population per-class F1, averaged
    rng = np.random.default_rng(2)
    hits = 0
    for rep in range(200):
        y_true = rng.choice(3, 600, p=prior)
        y_pred = (rng.random((600, 1)) > confusion[y_true].cumsum(axis=1)).sum(axis=1)  # inverse CDF
        ci = bootstrap_metric_ci(y_true, y_pred, LABELS, seed=rep)
        hits += ci.low <= truth <= ci.high
    assert 181 <= hits <= 198, hits  # same binomial tolerance as above; these seeds give 190


def test_bootstrap_point_is_scikit_learn_and_the_interval_is_seeded():
    rng = np.random.default_rng(3)
    y_true = rng.integers(0, 3, 500)
    y_pred = noisy_predictions(rng, y_true, 0.7)
    ci = bootstrap_metric_ci(y_true, y_pred, LABELS, seed=5)
    assert ci.value == f1_score(y_true, y_pred, labels=[0, 1, 2], average="macro", zero_division=0)
    assert ci.low < ci.value < ci.high and ci.high - ci.low < 0.15
    assert ci == bootstrap_metric_ci(y_true, y_pred, LABELS, seed=5)
    assert ci != bootstrap_metric_ci(y_true, y_pred, LABELS, seed=6)
    wide = bootstrap_metric_ci(y_true, y_pred, LABELS, seed=5, confidence=0.99)
    assert wide.low < ci.low and wide.high > ci.high
    assert json.loads(json.dumps(ci.to_dict()))["n_examples"] == 500


@pytest.mark.parametrize("y_pred, match", [
    ([0, 1], "has 2 entries but y_true has 3"),
    ([0, 1, 3], "class id 3 outside 0..2"),
    ([0.0, 1.0, 2.0], "integer class ids"),
])
def test_bad_predictions_are_one_line_errors(y_pred, match):
    with pytest.raises(PipelineError, match=match):
        bootstrap_metric_ci([0, 1, 2], y_pred, LABELS)


# --- across seeds ------------------------------------------------------------------------------------

def test_t_interval_matches_a_hand_computed_value():
    s = across_seeds([0.80, 0.82, 0.84])
    # mean 0.82, std 0.02; t(0.975, df=2) = 4.3027 (printed tables) → half-width 4.3027·0.02/√3 = 0.049683
    assert (s.mean, s.std, s.n) == (pytest.approx(0.82), pytest.approx(0.02), 3)
    assert (s.low, s.high) == (pytest.approx(0.82 - 0.049683, abs=1e-5), pytest.approx(0.82 + 0.049683, abs=1e-5))


def test_one_seed_has_no_across_seed_interval_and_equal_seeds_a_zero_width_one():
    one = across_seeds([0.87])
    assert (one.mean, one.std, one.n, one.low, one.high) == (0.87, None, 1, None, None)
    assert json.loads(json.dumps(one.to_dict()))["low"] is None
    same = across_seeds([0.5, 0.5, 0.5])
    assert (same.std, same.low, same.high) == (0.0, 0.5, 0.5)
    with pytest.raises(PipelineError, match="non-empty list of finite numbers"):
        across_seeds([])


# --- paired comparison --------------------------------------------------------------------------------

def test_identical_predictions_differ_by_exactly_zero():
    rng = np.random.default_rng(4)
    y_true = rng.integers(0, 3, 800)
    preds = [noisy_predictions(rng, y_true, 0.7) for _ in range(3)]
    d = paired_difference(y_true, preds, preds, LABELS)
    assert (d.difference, d.low, d.high, d.verdict) == (0.0, 0.0, 0.0, "indistinguishable")
    assert within_tolerance(d.interval, 0.0)


def test_clearly_better_predictions_are_better_and_the_reverse_worse():
    rng = np.random.default_rng(5)
    y_true = rng.integers(0, 3, 600)
    good = [noisy_predictions(rng, y_true, 0.9) for _ in range(2)]
    bad = [noisy_predictions(rng, y_true, 0.6) for _ in range(3)]
    d = paired_difference(y_true, good, bad, LABELS)
    f1 = lambda p: f1_score(y_true, p, labels=[0, 1, 2], average="macro", zero_division=0)  # noqa: E731
    assert d.difference == pytest.approx(np.mean([f1(p) for p in good]) - np.mean([f1(p) for p in bad]))
    assert d.verdict == "better" and 0 < d.low < d.difference < d.high
    assert (d.seeds_a, d.seeds_b, d.n_examples) == (2, 3, 600)
    r = paired_difference(y_true, bad, good, LABELS)
    assert r.verdict == "worse" and r.high < 0


def test_a_small_difference_is_indistinguishable_not_a_win():
    rng = np.random.default_rng(6)
    y_true = rng.integers(0, 3, 300)
    a = noisy_predictions(rng, y_true, 0.80)
    b = a.copy()
    b[:3] = (y_true[:3] + 1) % 3  # b is wrong on 3 more examples: a is ahead by ~1 point
    d = paired_difference(y_true, [a], [b], LABELS)
    assert d.difference > 0 and d.low <= 0 <= d.high and d.verdict == "indistinguishable"


def test_within_tolerance_uses_the_lower_end_of_the_interval():
    assert within_tolerance((-0.008, 0.004), 0.01)
    assert within_tolerance((-0.01, 0.0), 0.01)
    # point estimate −0.005 is inside the tolerance, but the data do not rule out a 1.2-point deficit
    assert not within_tolerance((-0.012, 0.002), 0.01)
    with pytest.raises(PipelineError, match="tolerance ≥ 0"):
        within_tolerance((-0.01, 0.0), -0.01)


# --- degenerate models ---------------------------------------------------------------------------------

def test_majority_macro_f1_matches_scikit_learn_and_the_closed_form():
    y_true = np.array([1] * 6 + [0] * 3 + [2])
    assert majority_macro_f1(y_true, 3) == pytest.approx(2 * 0.6 / 1.6 / 3)
    assert majority_macro_f1(y_true, 3) == f1_score(y_true, np.ones(10, int), labels=[0, 1, 2],
                                                    average="macro", zero_division=0)


def test_degenerate_reasons():
    rng = np.random.default_rng(7)
    y_true = rng.integers(0, 3, 400)
    good = noisy_predictions(rng, y_true, 0.9)
    assert "predicts only 'rotten' for all 400" in degenerate_reason(y_true, np.ones(400, int), LABELS)
    always_wrong = (y_true + 1) % 3  # three classes predicted, macro-F1 0
    assert "at or below" in degenerate_reason(y_true, always_wrong, LABELS)
    assert degenerate_reason(y_true, good, LABELS) is None


def test_a_model_below_the_reference_but_above_the_majority_class_is_not_degenerate():
    rng = np.random.default_rng(7)
    y_true = rng.integers(0, 3, 400)
    reference, weaker = noisy_predictions(rng, y_true, 0.9), noisy_predictions(rng, y_true, 0.6)
    assert paired_difference(y_true, [weaker], [reference], LABELS).verdict == "worse"
    assert degenerate_reason(y_true, weaker, LABELS) is None  # macro-F1 0.75 vs the majority class's 0.18
    with pytest.raises(TypeError):  # a reference cannot make a model degenerate
        degenerate_reason(y_true, weaker, LABELS, tfidf_pred=reference)
    note = reference_note(y_true, weaker, LABELS, reference)
    assert note.startswith("not better than the TF-IDF reference: macro-F1 difference -") and "(worse)" in note


def test_reference_note_is_none_when_better_and_says_indistinguishable_when_equal():
    rng = np.random.default_rng(7)
    y_true = rng.integers(0, 3, 400)
    good = noisy_predictions(rng, y_true, 0.9)
    assert reference_note(y_true, good, LABELS, noisy_predictions(rng, y_true, 0.5)) is None
    same = reference_note(y_true, good, LABELS, good, reference_name="majority baseline")
    assert same == ("not better than the majority baseline: macro-F1 difference +0.0000, 95 % paired interval "
                    "[+0.0000, +0.0000] (indistinguishable)")


def test_reference_note_prints_the_interval_at_its_confidence_and_resamples():
    rng = np.random.default_rng(11)
    y_true = rng.integers(0, 3, 300)
    a, b = noisy_predictions(rng, y_true, 0.8), noisy_predictions(rng, y_true, 0.8)  # equally good
    notes = {}
    for confidence, n_resamples in [(0.95, 1000), (0.80, 1000), (0.80, 200)]:
        d = paired_difference(y_true, [a], [b], LABELS, n_resamples=n_resamples, confidence=confidence, seed=3)
        assert d.verdict == "indistinguishable"
        notes[confidence, n_resamples] = reference_note(y_true, a, LABELS, b, n_resamples=n_resamples,
                                                        confidence=confidence, seed=3)
        printed = f"{confidence * 100:g} % paired interval [{d.low:+.4f}, {d.high:+.4f}]"
        assert printed in notes[confidence, n_resamples], (printed, notes)
    assert len(set(notes.values())) == 3  # the 80 % interval is narrower; 200 resamples move its ends


# --- adapter analysis -----------------------------------------------------------------------------------

@pytest.mark.parametrize("r, out, inp", [(8, 16, 32), (8, 4, 32), (4, 64, 3)])
def test_delta_singular_values_equal_a_direct_svd(r, out, inp):
    rng = np.random.default_rng(r * out + inp)
    a, b = rng.normal(size=(r, inp)), rng.normal(size=(out, r))
    got = delta_singular_values(a, b, scaling=2.0)
    want = np.linalg.svd(2.0 * b @ a, compute_uv=False)[:min(r, out, inp)]
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)
    np.testing.assert_array_equal(delta_singular_values(a, np.zeros((out, r)), 2.0), 0.0)


def test_delta_singular_values_of_a_lora_layer_match_its_delta_weight():
    torch.manual_seed(0)
    layer = LoRALinear(torch.nn.Linear(32, 16), rank=4, alpha=8.0)
    torch.nn.init.normal_(layer.lora_b)  # B starts at zero; give it a trained-looking value
    as_np = lambda t: t.detach().float().cpu().numpy()  # noqa: E731
    got = delta_singular_values(as_np(layer.lora_a), as_np(layer.lora_b), layer.scaling)
    want = torch.linalg.svdvals(layer.delta_weight().detach().double())[:4].numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5)  # the layer's weights are float32


def test_effective_rank_of_known_spectra():
    rng = np.random.default_rng(8)
    rank3 = rng.normal(size=(20, 3)) @ rng.normal(size=(3, 30))  # exactly rank 3
    sv = np.linalg.svd(rank3, compute_uv=False)
    assert effective_rank(sv, energy=0.999) == 3 and effective_rank(sv, energy=1.0) == 3
    assert effective_rank(np.array([10.0, 0.1, 0.1, 0.1]), 0.9) == 1  # one dominant direction
    # squares 9, 4, 1 of 14: cumulative 0.643, 0.929, 1
    assert [effective_rank(np.array([1.0, 3.0, 2.0]), e) for e in (0.6, 0.9, 0.95)] == [1, 2, 3]
    assert effective_rank(np.zeros(8)) == 0
    assert effective_rank(np.array([3.0, 2.0, 1.0, 1e-7]), energy=1.0) == 3  # 1e-14 / 14 of the energy: noise


def test_subspace_similarity_known_values():
    rng = np.random.default_rng(9)
    a = rng.normal(size=(4, 16))
    np.testing.assert_allclose(subspace_similarity_grid(a, a), 1.0, atol=1e-12)  # a subspace with itself
    e = np.eye(16)
    orthogonal = subspace_similarity_grid(2 * e[:4], rng.normal(size=(8, 8)) @ e[4:12])
    np.testing.assert_allclose(orthogonal, 0.0, atol=1e-12)
    # top directions e1 (σ=2), e2 (σ=1) against e1 (σ=2), e3 (σ=1)
    small, large = np.stack([2 * e[0], e[1]]), np.stack([2 * e[0], e[2]])
    assert [subspace_similarity(small, large, i, j) for i, j in [(1, 1), (1, 2), (2, 1), (2, 2)]] == \
        pytest.approx([1.0, 1.0, 1.0, 0.5])
    theta = 0.3  # one direction at angle θ to e1: φ = cos²θ
    assert subspace_similarity(np.cos(theta) * e[:1] + np.sin(theta) * e[1:2], e[:1], 1, 1) == \
        pytest.approx(np.cos(theta) ** 2)
    grid = subspace_similarity_grid(rng.normal(size=(2, 16)), rng.normal(size=(8, 16)))
    assert grid.shape == (2, 8) and (grid > 0).all() and (grid < 1).all()  # random subspaces: strictly between
    with pytest.raises(PipelineError, match=r"1 ≤ i ≤ 2"):
        subspace_similarity(small, large, 3, 1)
