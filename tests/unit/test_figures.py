"""What the report's figures show: the rank curve's y axis scaled to the compared rows with far references as
notes, and every validation of every run in the learning curves."""

from __future__ import annotations

import numpy as np
import pytest

from lora_pipeline.figures import curves_figure, rank_curve_figure
from lora_pipeline.study_file import StudyFile
from tests.support.studies import CURVE_STEPS, make_study, make_study_json, typed


def _far_scratch_study() -> StudyFile:
    """LoRA 0.85–0.875 and full 0.88 with their intervals; a collapsed scratch model at 0.22."""
    study = make_study_json(ranks=[2, 8, 32], seeds=[42, 43, 44], bad={"scratch": [42, 43, 44]})
    study["rows"]["scratch"]["macro_f1"].update(mean=0.22, low=0.20, high=0.24)
    return typed(study)


def _notes(ax) -> list[str]:
    return [t.get_text() for t in ax.texts]


def test_rank_curve_y_axis_covers_lora_and_full_intervals_and_excludes_a_far_scratch_row():
    study = _far_scratch_study()
    quality = rank_curve_figure(study).axes[0]
    low, high = quality.get_ylim()
    compared = [study.rows[n].macro_f1 for n in ("full", "lora_r2", "lora_r8", "lora_r32")]
    assert low < min(m.low for m in compared) and high > max(m.high for m in compared)
    assert low > 0.22 + 0.5 and high - low < 0.15  # the comparison fills the height, not scratch's distance
    assert not any(line.get_label().startswith("BERT from scratch") for line in quality.lines)


def test_rank_curve_notes_an_off_axis_reference_with_its_value_and_names_a_degenerate_scratch_model():
    quality = rank_curve_figure(_far_scratch_study()).axes[0]
    assert "↓ BERT from scratch (degenerate): 0.220 (below the axis)" in _notes(quality)
    assert "↓ TF-IDF + logistic regression: 0.810 (below the axis)" in _notes(quality)
    top = rank_curve_figure(make_study(tfidf=0.95)).axes[0]
    assert "↑ TF-IDF + logistic regression: 0.950 (above the axis)" in _notes(top)
    assert top.get_ylim()[1] < 0.95


def test_rank_curve_draws_a_reference_inside_the_compared_range_as_a_dashed_line():
    quality = rank_curve_figure(make_study(tfidf=0.86)).axes[0]
    (tfidf,) = [line for line in quality.lines if line.get_label() == "TF-IDF + logistic regression"]
    assert tfidf.get_ydata()[0] == pytest.approx(0.86) and tfidf.get_linestyle() == "--"
    assert not any("TF-IDF" in note for note in _notes(quality))


def test_rank_curve_without_compared_rows_scales_to_the_references():
    study = make_study_json(ranks=[])
    del study["rows"]["full"]
    quality = rank_curve_figure(typed(study)).axes[0]
    low, high = quality.get_ylim()
    assert low <= 0.70 and high >= 0.81 and not _notes(quality)


def test_validation_panel_draws_every_validation_of_every_run():
    study = make_study(ranks=[2, 32], seeds=[42, 43])
    runs_ax = curves_figure(study).axes[0]
    runs = list(runs_ax.lines)
    assert len(runs) == len(study.rows) * 2  # one line per (row, seed)
    for line in runs:
        np.testing.assert_allclose(line.get_xdata(), CURVE_STEPS)
    seed_curves = study.validation_curves["full"]
    np.testing.assert_allclose(runs[2].get_ydata(), seed_curves[0].val_macro_f1)  # the raw scores, dips kept
    assert runs[2].get_ydata()[-1] < max(runs[2].get_ydata())
    assert [line.get_label() for line in runs if not line.get_label().startswith("_")] == \
        ["BERT from scratch", "full fine-tuning", "LoRA r=2 (ours)", "LoRA r=32 (ours)"]  # each row named once
    assert runs_ax.get_ylabel() == "validation macro-F1" and runs_ax.get_xlabel() == "optimizer steps"


def test_learning_curves_without_per_run_curves_show_the_seed_mean_best_so_far_against_steps():
    study = make_study_json()
    study["validation_curves"] = {}  # a study without per-run curves
    steps_ax = curves_figure(typed(study)).axes[0]
    assert len(steps_ax.lines) == len(study["rows"]) and len(steps_ax.collections) == len(study["rows"])
    np.testing.assert_allclose(steps_ax.lines[1].get_ydata(),
                               [0.87 - 0.2 * (1 - s / 200) for s in CURVE_STEPS[:5]] + [0.87])
