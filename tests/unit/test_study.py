"""The study's bookkeeping: learning-rate choice on validation, rows with intervals, the answer sentence."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from lora_pipeline.answer import answer
from lora_pipeline.config import StudyConfig
from lora_pipeline.errors import PipelineError
from lora_pipeline.study import choose_learning_rates, lr_search, summarise
from lora_pipeline.study_file import LrSearch, ReferenceScores
from tests.support.studies import study_row

LABELS = ["neg", "pos"]


def _rec(variant, rank, seed, lr, val, **extra):
    base = {"variant": variant, "rank": rank, "seed": seed, "lr": lr, "val_macro_f1": val,
            "trainable_params": 1000 if variant == "full" else 10 * (rank or 1), "trainable_percent": 1.0,
            "size_on_disk_mb": 80.0 if variant == "full" else 1.0, "train_seconds": 100.0, "peak_memory_mb": 1000.0,
            "steps": 50, "best_step": 40, "epochs": 2, "stop_reason": "budget"}
    return {**base, **extra}


def test_learning_rate_is_chosen_on_mean_validation_over_seeds():
    records = [_rec("lora", 8, s, lr, val) for s, lr, val in
               [(1, 1e-3, 0.70), (2, 1e-3, 0.80), (1, 2e-3, 0.76), (2, 2e-3, 0.76), (1, 4e-3, 0.74), (2, 4e-3, 0.70)]]
    (group,) = choose_learning_rates(records)
    assert group.lr == 2e-3 and [r["seed"] for r in group.records] == [1, 2]  # 0.76 beats 0.75 and 0.72
    assert group.val_by_lr == {1e-3: pytest.approx(0.75), 2e-3: pytest.approx(0.76), 4e-3: pytest.approx(0.72)}
    assert group.selection_seeds == (1, 2)


def test_rates_are_compared_on_the_seeds_every_rate_has_and_the_chosen_one_keeps_its_further_seeds():
    """Seeds 3-5 trained at 2e-3 only (more seeds where the rate was chosen) neither move the comparison nor are
    lost: the rates compete on seeds 1 and 2, and the chosen row holds all five."""
    grid = [(1, 1e-3, 0.70), (2, 1e-3, 0.80), (1, 2e-3, 0.76), (2, 2e-3, 0.76), (1, 4e-3, 0.74), (2, 4e-3, 0.70)]
    extra = [(3, 2e-3, 0.10), (4, 2e-3, 0.10), (5, 2e-3, 0.10)]  # low: they would sink 2e-3 if they were compared
    (group,) = choose_learning_rates([_rec("lora", 8, s, lr, v) for s, lr, v in grid + extra])
    assert group.lr == 2e-3 and [r["seed"] for r in group.records] == [1, 2, 3, 4, 5]
    assert group.val_by_lr[2e-3] == pytest.approx(0.76) and group.selection_seeds == (1, 2)
    assert lr_search(group) == LrSearch(grid=(1e-3, 2e-3, 4e-3), position="interior", searched=True, seeds=(1, 2))
    # further seeds at a rate that loses change nothing
    losing = [(3, 1e-3, 0.99), (4, 1e-3, 0.99)]
    (group,) = choose_learning_rates([_rec("lora", 8, s, lr, v) for s, lr, v in grid + losing])
    assert group.lr == 2e-3 and [r["seed"] for r in group.records] == [1, 2]
    assert group.val_by_lr[1e-3] == pytest.approx(0.75)


def test_a_rate_missing_a_seed_is_compared_on_the_seeds_it_shares():
    """A grid point without seed 2 is not left out of the search (that would misplace the search's ends): every rate
    is compared on seed 1, the seed all of them have."""
    records = [_rec("lora", 8, s, lr, val) for s, lr, val in
               [(1, 1e-3, 0.70), (2, 1e-3, 0.80), (1, 2e-3, 0.76), (2, 2e-3, 0.76), (1, 5e-3, 0.9)]]
    (group,) = choose_learning_rates(records)
    assert group.lr == 5e-3 and [r["seed"] for r in group.records] == [1] and group.selection_seeds == (1,)
    assert group.val_by_lr == {1e-3: pytest.approx(0.70), 2e-3: pytest.approx(0.76), 5e-3: pytest.approx(0.9)}


def test_ties_go_to_the_smaller_learning_rate_and_groups_are_ordered():
    records = [_rec("lora", 32, 1, 1e-3, 0.5), _rec("lora", 2, 1, 2e-3, 0.5), _rec("lora", 2, 1, 1e-3, 0.5),
               _rec("full", None, 1, 5e-5, 0.6), _rec("scratch", None, 1, 4e-4, 0.4)]
    groups = choose_learning_rates(records)
    assert [g.name for g in groups] == ["scratch", "full", "lora_r2", "lora_r32"]
    assert groups[2].lr == 1e-3


def test_a_cell_whose_rates_share_no_seed_is_a_clear_error():
    with pytest.raises(PipelineError, match="lora_r8: no seed was trained at every learning rate"):
        choose_learning_rates([_rec("lora", 8, 1, 1e-3, 0.5), _rec("lora", 8, 2, 2e-3, 0.5)])


def _study(lora_preds, full_preds, y, tolerance=0.01, n_seeds=1, tfidf=None, confidence=0.95):
    records = [_rec("full", None, s, 5e-5, 0.8) for s in range(n_seeds)]
    records += [_rec("lora", r, s, 2e-3, 0.8) for r in lora_preds for s in range(n_seeds)]
    groups = choose_learning_rates(records)
    preds = {"full": [full_preds] * n_seeds, **{f"lora_r{r}": [p] * n_seeds for r, p in lora_preds.items()}}
    if tfidf is None:
        tfidf = np.where(np.arange(y.size) % 3 == 0, 1 - y, y)  # 67 % right: both models beat it
    rows = summarise(groups, preds, y, LABELS, tfidf, n_resamples=300, tolerance=tolerance, confidence=confidence)
    return rows, answer(rows, tolerance, confidence)


def test_identical_lora_and_full_give_the_smallest_rank_within_tolerance():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 600)
    good = np.where(rng.random(600) < 0.9, y, 1 - y)
    bad = np.where(rng.random(600) < 0.6, y, 1 - y)
    rows, result = _study({2: bad, 8: good, 32: good}, good, y)
    assert result.rank == 8
    assert rows["lora_r8"].vs_full.difference == 0.0
    assert "smallest LoRA rank within 1 point of full fine-tuning is 8 (ranks 32, 8 pass; rank 2 is worse" \
        in result.sentence and "indistinguishable from full fine-tuning" in result.sentence
    assert rows["lora_r2"].vs_full.verdict == "worse"
    assert rows["full"].macro_f1.covers == "these models"  # one seed: no seed variance to speak of
    assert rows["full"].macro_f1.low < rows["full"].macro_f1.mean < rows["full"].macro_f1.high


def test_no_rank_within_tolerance_is_said_in_words_with_the_closest_rank_post_hoc():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 600)
    good = np.where(rng.random(600) < 0.95, y, 1 - y)
    bad = np.where(rng.random(600) < 0.75, y, 1 - y)
    worse = np.where(rng.random(600) < 0.70, y, 1 - y)
    rows, result = _study({2: worse, 8: bad}, good, y)
    assert result.rank is None
    assert result.sentence.startswith("No LoRA rank is shown within 1 point of full fine-tuning at 95 %: testing "
                                         "ranks from the largest down, rank 8 is worse")
    closest = max((2, 8), key=lambda r: rows[f"lora_r{r}"].vs_full.difference)
    assert f"the rank closest to full fine-tuning is {closest}" in result.sentence
    assert result.closest_rank == closest


def test_a_collapsed_model_is_flagged_and_cannot_be_the_answer():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 400)
    good = np.where(rng.random(400) < 0.9, y, 1 - y)
    rows, result = _study({4: np.zeros(400, dtype=int)}, good, y, tolerance=1.0)
    assert "collapsed" in rows["lora_r4"].degenerate[0]
    assert result.rank is None


def test_below_the_tfidf_reference_is_a_note_and_never_removes_a_rank_from_the_answer():
    """Every model below a strong TF-IDF reference, LoRA level with full: the answer still names the rank."""
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 800)
    model = np.where(rng.random(800) < 0.80, y, 1 - y)
    tfidf = np.where(rng.random(800) < 0.95, y, 1 - y)
    rows, result = _study({8: model}, model, y, tfidf=tfidf)
    assert rows["lora_r8"].degenerate == (None,) and rows["full"].degenerate == (None,)
    assert rows["lora_r8"].notes[0].startswith("not better than the TF-IDF reference")
    assert result.rank == 8


def test_confidence_reaches_every_check():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 800)
    model = np.where(rng.random(800) < 0.80, y, 1 - y)
    tfidf = np.where(rng.random(800) < 0.95, y, 1 - y)
    rows, result = _study({8: model}, model, y, tfidf=tfidf, confidence=0.80)
    assert "80% paired interval" in rows["lora_r8"].notes[0] or "80 % paired interval" in rows["lora_r8"].notes[0]
    assert rows["lora_r8"].vs_full.confidence == 0.80
    assert "at 80 %" in result.sentence


def test_several_seeds_give_a_method_level_interval_wider_than_the_fixed_model_one():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300)
    seeds = [np.where(rng.random(300) < p, y, 1 - y) for p in (0.85, 0.9)]
    records = [_rec("full", None, s, 5e-5, 0.8) for s in range(2)] + [_rec("lora", 8, s, 2e-3, 0.8) for s in range(2)]
    rows = summarise(choose_learning_rates(records), {"full": seeds, "lora_r8": seeds[::-1]}, y, LABELS, y,
                     n_resamples=300)
    m = rows["lora_r8"].macro_f1
    assert m.covers == "method" and rows["lora_r8"].seeds == (0, 1)
    d = rows["lora_r8"].vs_full
    assert d.covers == "method" and d.high - d.low > d.these_models.high - d.these_models.low


def test_grid_runs_keeps_the_current_grid_and_names_missing_instances():
    from lora_pipeline.study import grid_runs

    records = [_rec("scratch", None, 1, 4e-4, 0.5), _rec("full", None, 1, 5e-5, 0.8), _rec("lora", 8, 1, 0.002, 0.8),
               _rec("lora", 16, 1, 0.002, 0.8),
               _rec("lora", 8, 1, 0.001, 0.7)]  # rank 16 and lr 1e-3: removed from the lists, files left behind
    grid = StudyConfig(seeds=(1,), ranks=(8,), scratch_lrs=(4e-4,), full_lrs=(5.0e-5,), lora_lrs=(2.0e-3,))
    runs = grid_runs(records, grid)
    assert [(r["variant"], r["rank"], r["lr"]) for r in runs] == [("scratch", None, 4e-4), ("full", None, 5e-5),
                                                                  ("lora", 8, 0.002)]
    with pytest.raises(PipelineError, match=r"no trained model for scratch seed 2 lr 0\.0004, full seed 2 lr 5e-05, "
                                            r"lora r32 seed 1 lr 0\.002, lora r8 seed 2 lr 0\.002, lora r32 seed 2"):
        grid_runs(records, dataclasses.replace(grid, seeds=(1, 2), ranks=(8, 32)))


def test_record_row_prefers_the_param_then_the_answer_then_the_closest_then_the_largest_rank():
    from lora_pipeline.study import record_row

    rows = {n: study_row("lora", r) for n, r in (("lora_r2", 2), ("lora_r8", 8))} | {"full": study_row("full")}
    assert record_row(rows, answer_row="lora_r2", record_rank=8) == "lora_r8"
    assert record_row(rows, answer_row="lora_r2", record_rank=None) == "lora_r2"
    assert record_row(rows, answer_row=None, record_rank=None, closest_row="lora_r2") == "lora_r2"  # none qualified
    assert record_row(rows, answer_row=None, record_rank=None) == "lora_r8"
    assert record_row({"full": rows["full"]}, None, None) is None


def test_adapter_spectrum_and_subspace_overlaps_on_known_factors():
    from lora_pipeline.study import adapter_spectrum, subspace_overlaps

    rng = np.random.default_rng(0)
    a = rng.standard_normal((4, 16))
    b = np.zeros((12, 4))
    b[:, :2] = rng.standard_normal((12, 2))  # only two directions of A reach the output: ΔW has rank 2
    spec = adapter_spectrum({"q": (a, b, 2.0)}, energy=1.0)["q"]
    assert spec["effective_rank"] == 2 and len(spec["singular_values"]) == 4
    np.testing.assert_allclose(spec["singular_values"], np.linalg.svd(2.0 * b @ a, compute_uv=False)[:4], atol=1e-9)
    grid = subspace_overlaps({"q": (a, b, 1.0)}, {"q": (a, b, 1.0), "k": (a, b, 1.0)})
    assert list(grid) == ["q"] and np.allclose(np.diag(grid["q"]), 1.0)


TFIDF = ReferenceScores(macro_f1=0.6, macro_f1_low=0.55, macro_f1_high=0.65, accuracy=0.7, accuracy_low=0.65,
                        accuracy_high=0.75)


def _ranks_2_and_8():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 400)
    good = np.where(rng.random(400) < 0.9, y, 1 - y)
    return _study({2: good, 8: good}, good, y)


def test_rank_curve_and_compact_metrics_carry_the_numbers_dvc_compares():
    from lora_pipeline.study import compact_metrics, rank_curve, tracking_metrics

    rows, result = _ranks_2_and_8()
    curve = rank_curve(rows, tfidf_macro_f1=0.6)
    assert [c["rank"] for c in curve] == [2, 8] and [c["log2_rank"] for c in curve] == [1.0, 3.0]
    assert curve[0]["lora_macro_f1"] == pytest.approx(rows["lora_r2"].macro_f1.mean)
    assert curve[0]["full_low"] <= curve[0]["full_macro_f1"] <= curve[0]["full_high"]
    compact = compact_metrics(rows, TFIDF, result.rank)
    assert compact["lora_r8"]["vs_full"] == 0.0 and compact["lora_r8"]["vs_full_low"] == 0.0
    assert compact["answer_rank"] == 2 and "vs_full" not in compact["full"]
    assert compact["full"]["macro_f1_low"] == rows["full"].macro_f1.low
    # the MLflow run keeps every number of each row, the machine's clock included
    tracked = tracking_metrics(rows, TFIDF, result.rank)
    assert tracked["full"]["seeds"] == 1 and tracked["full"]["train_seconds"] == rows["full"].train_seconds
    assert tracked["tfidf_logreg"] == TFIDF.to_json() and tracked["answer_rank"] == 2


def test_dvc_metrics_hold_the_answer_and_quality_only():
    """metrics/evaluate.json is tracked in Git and is every column of ``dvc metrics diff`` / ``dvc exp show``: the
    answer's rank, each row's test macro-F1 with its interval, LoRA - full with its interval; nothing a machine
    changes (seconds, memory) and no detail (accuracy, lr, seeds, flags: study.json and MLflow hold them)."""
    from lora_pipeline.study import compact_metrics

    rows, result = _ranks_2_and_8()
    compact = compact_metrics(rows, TFIDF, result.rank)
    interval = {"macro_f1", "macro_f1_low", "macro_f1_high"}
    assert {name: set(row) for name, row in compact.items() if name != "answer_rank"} == {
        "full": interval, "tfidf_logreg": interval,
        **{f"lora_r{r}": interval | {"vs_full", "vs_full_low", "vs_full_high"} for r in (2, 8)}}
    assert compact["answer_rank"] == 2
    assert all(isinstance(v, float) for row in compact.values() if isinstance(row, dict) for v in row.values())


@pytest.mark.parametrize("vals, where", [
    ({1e-3: 0.70, 2e-3: 0.80, 4e-3: 0.75}, "interior"),
    ({1e-3: 0.70, 2e-3: 0.75, 4e-3: 0.80}, "highest"),
    ({1e-3: 0.80, 2e-3: 0.75, 4e-3: 0.70}, "lowest"),
    ({2e-3: 0.80}, "only"),
])
def test_where_the_chosen_rate_sits_in_its_grid_says_what_was_not_searched(vals, where):
    (group,) = choose_learning_rates([_rec("lora", 8, 1, lr, v) for lr, v in vals.items()])
    search = lr_search(group)
    assert search.position == where and list(search.grid) == sorted(vals)
    assert search.searched == (where == "interior")


def test_each_row_carries_its_grid_search():
    records = [_rec("lora", 8, 1, lr, v) for lr, v in {1e-3: 0.7, 2e-3: 0.8}.items()] + \
              [_rec("full", None, 1, 1e-4, 0.8)]
    y = np.array([0, 1] * 20)
    groups = choose_learning_rates(records)
    rows = summarise(groups, {g.name: [y] for g in groups}, y, LABELS, y, n_resamples=1000)
    assert rows["lora_r8"].lr_search == LrSearch(grid=(1e-3, 2e-3), position="highest", searched=False,
                                                 seeds=(1,))
    assert rows["full"].lr_search.position == "only"
