"""The report's figures draw on every shape of study (one rank, one seed, no scratch row, only degenerate rows, no
LoRA row, no learning curves, a seed capped while improving): the rank curve on a log2 axis against full
fine-tuning and the references, the spectra with a subspace row only with several ranks, and the learning curves
against steps and CPU seconds."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from lora_pipeline.figures import curves_figure, rank_curve_figure, save_figures, spectra_figure
from tests.support.studies import CURVE_STEPS, LAYERS, PNG_MAGIC, make_study


EDGE_CASES = {
    "2 ranks x 2 seeds": {},
    "1 rank x 1 seed": {"ranks": [8], "seeds": [42]},
    "no scratch row": {"scratch": False},
    "all degenerate": {"bad": {n: [42, 43] for n in ("scratch", "full", "lora_r2", "lora_r32")}},
    "no LoRA row": {"ranks": []},
    "no learning curves": {"curves": False},
    "a seed capped while improving": {"capped": {"full": [43], "lora_r2": [42]}},
}
CURVE_PANELS_EMPTY = ["validation curves against optimizer steps: none in the study",
                      "validation curves against CPU seconds of training: none in the study"]


def _pixels_vary(path: Path) -> bool:
    import matplotlib.image

    image = matplotlib.image.imread(path)
    return float(image[..., :3].std()) > 0.05


@pytest.mark.parametrize("case", EDGE_CASES)
def test_every_figure_draws_on_every_shape_of_study(tmp_path, case):
    study = make_study(**EDGE_CASES[case])
    paths = save_figures(study, tmp_path)
    assert sorted(p.name for p in paths.values()) == ["confusion.png", "curves.png", "rank_curve.png", "spectra.png"]
    message_only = ({"spectra.png"} if case == "no LoRA row" else set()) | \
        ({"curves.png"} if case == "no learning curves" else set())  # nothing to draw: the panel says so
    for path in paths.values():
        data = path.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > (3_000 if path.name in message_only else 10_000), path.name
        assert path.name in message_only or _pixels_vary(path), path.name
    if "spectra.png" in message_only:
        assert [t.get_text() for t in spectra_figure(study).axes[0].texts] == ["no LoRA adapter in the study"]
    curves = curves_figure(study)
    if "curves.png" in message_only:
        assert [t.get_text() for ax in curves.axes for t in ax.texts] == CURVE_PANELS_EMPTY
    else:
        runs, cost = curves.axes
        assert len(runs.lines) == sum(len(r.seeds) for r in study.rows.values())  # a line per run
        assert len(cost.collections) == len(study.rows)  # a band per row


def test_rank_curve_plots_the_means_on_a_log2_axis_against_full_and_the_references():
    study = make_study(ranks=[2, 8, 32])
    quality, cost, time_ax = rank_curve_figure(study).axes
    assert quality.get_xscale() == "log" and cost.get_xscale() == "log"
    assert list(quality.get_xticks()) == [2, 8, 32] and [t.get_text() for t in quality.get_xticklabels()] == \
        ["2", "8", "32"]
    means = quality.lines[0]  # the error bar's data line
    np.testing.assert_allclose(means.get_ydata(), [0.85, 0.87, 0.875])
    flat = {line.get_label(): line for line in quality.lines if not line.get_label().startswith("_")}
    assert sorted(flat) == ["full fine-tuning"] and flat["full fine-tuning"].get_ydata()[0] == pytest.approx(0.88)
    assert [t.get_text() for t in quality.texts] == [  # references off the compared range: notes, not lines
        "↓ BERT from scratch (degenerate): 0.700 (below the axis)",
        "↓ TF-IDF + logistic regression: 0.810 (below the axis)"]
    band = quality.patches[0].get_extents()  # full fine-tuning's interval as a band across the axes
    assert band.height > 0
    assert cost.get_yscale() == "log"
    np.testing.assert_allclose(cost.lines[0].get_ydata(), [2 * 27_648 + 150_000, 8 * 27_648 + 150_000,
                                                          32 * 27_648 + 150_000])
    assert cost.lines[1].get_ydata()[0] == 22_714_371 and time_ax.lines[1].get_ydata()[0] == 520.0


def test_spectra_have_a_subspace_row_only_with_several_ranks():
    two = spectra_figure(make_study(ranks=[2, 32]))
    panels = [ax for ax in two.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == [
        "r=2 (seed 42): effective rank 1.7 (1–2)", "r=32 (seed 42): effective rank 2.0 (1–3)",
        "φ(r=2, r=32), mean over 3 layers, seed 42"]
    assert panels[0].get_yscale() == "log" and len(panels[0].lines) == len(LAYERS)
    assert panels[0].lines[0].get_ydata()[0] == pytest.approx(1.0)  # normalised by the largest singular value
    assert "holding 90 % of its energy" in two.get_suptitle()
    grid = panels[2].images[0].get_array()
    assert grid.shape == (2, 32) and 0 <= grid.min() and grid.max() <= 1
    one = spectra_figure(make_study(ranks=[8], seeds=[42]))
    assert [ax.get_title() for ax in one.axes if ax.get_title()] == ["r=8 (seed 42): effective rank 2.0 (1–3)"]
    assert not any(ax.images for ax in one.axes)


def test_learning_curves_plot_every_run_against_steps_and_the_seed_mean_best_so_far_against_cpu_seconds():
    study = make_study()
    runs_ax, cpu_ax = curves_figure(study).axes
    titles = ["BERT from scratch", "full fine-tuning", "LoRA r=2 (ours)", "LoRA r=32 (ours)"]
    assert [line.get_label() for line in runs_ax.lines if not line.get_label().startswith("_")] == titles
    assert [line.get_label() for line in cpu_ax.lines[:4]] == titles
    assert runs_ax.get_xlabel() == "optimizer steps" and cpu_ax.get_xlabel() == "CPU seconds of training"
    full_run, full_cpu = runs_ax.lines[2], cpu_ax.lines[1]  # full's first seed; full's seed mean
    np.testing.assert_allclose(full_run.get_xdata(), CURVE_STEPS)
    np.testing.assert_allclose(full_cpu.get_xdata(), [2.0 * s for s in CURVE_STEPS])  # 2 CPU-s per step
    # the mean over seeds of the best validation so far: rising to 0.87 at step 200, then held (never dips)
    np.testing.assert_allclose(full_cpu.get_ydata(), [0.87 - 0.2 * (1 - s / 200) for s in CURVE_STEPS[:5]] + [0.87])
    band = cpu_ax.collections[1].get_paths()[0].vertices[:, 1]  # the min–max over seeds
    assert band.min() == pytest.approx(0.87 - 0.2 * 0.8 - 0.001) and band.max() == pytest.approx(0.871)
    budget = cpu_ax.lines[-1]  # where the equal-cost reading is taken
    assert list(budget.get_xdata()) == [pytest.approx(400.0)] * 2 and budget.get_linestyle() == ":"
    assert not any(line.get_linestyle() == ":" for line in runs_ax.lines)
    no_cost = dataclasses.replace(study, equal_cost=None)
    assert len(curves_figure(no_cost).axes[1].lines) == 4  # no reading: no dotted line
