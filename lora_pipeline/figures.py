"""The report's figures, drawn from the study file (``metrics/study.json``) with matplotlib's object API (no pyplot
state): the rank curve, the adapters' spectra, learning curves (steps and CPU seconds) and confusion matrices.

Every figure draws something sensible for one rank, one seed, a missing scratch row or only degenerate rows.
"""

from __future__ import annotations

import math
import os
import re
import textwrap
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, MaxNLocator, NullLocator

from .config import DEFAULT_TARGET_SET
from .curves import CLOCK
from .records import row_configuration
from .files import atomic_dir, atomic_file
from .report_configurations import ADAPTER_TITLES
from .reporting import render_report, row_title
from .study_file import Detail, SeedCurve, Spectrum, StudyFile, StudyRow

__all__ = ["FIGURE_FILES", "confusion_figure", "curves_figure", "rank_curve_figure", "report_markdown",
           "save_figures", "spectra_figure", "write_report"]

FIGURE_FILES = {"rank_curve": "rank_curve.png", "spectra": "spectra.png", "curves": "curves.png",
                "confusion": "confusion.png"}
DPI = 110
MAX_LEGEND_LAYERS = 12  # more targeted layers than this: colour by depth, no per-layer legend


def _finite(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _empty(ax: Axes, message: str) -> None:
    """A panel that says why it is empty instead of an empty frame."""
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, wrap=True)
    ax.set_axis_off()


def _rank_axis(ax: Axes, ranks: Sequence[int]) -> None:
    """A log2 x axis with a tick at each trained rank (and room around a single one)."""
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(list(ranks)))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([str(r) for r in ranks])
    ax.set_xlim(min(ranks) / 1.5, max(ranks) * 1.5)
    ax.set_xlabel("LoRA rank r")


# ------------------------------------------------------------------------------------------------ rank curve


def rank_curve_figure(study: StudyFile) -> Figure:
    """Left: test macro-F1 against rank with full fine-tuning as a band and the references as dashed lines.
    Right: trainable parameters (log) and train time (twin axis) against rank, full fine-tuning's as flat lines."""
    fig = Figure(figsize=(12, 4.5), layout="constrained")
    quality, cost = fig.subplots(1, 2)
    lora = study.lora_rows()
    _quality_panel(quality, study, lora)
    if lora:
        _cost_panel(cost, study.rows.get("full"), lora)
    else:
        _empty(cost, "no LoRA rank in the study")
    return fig


def _quality_panel(ax: Axes, study: StudyFile, lora: Sequence[StudyRow]) -> None:
    """LoRA's means with intervals against rank and full fine-tuning's band, the y axis scaled to those two; a
    reference (scratch, TF-IDF) outside that range is an arrow at the edge with its value, not a stretched axis."""
    if lora:
        _lora_points(ax, lora)
        _rank_axis(ax, sorted({r.rank for r in lora}))
    else:
        ax.set_xticks([])
    full, scratch = study.rows.get("full"), study.rows.get("scratch")
    if full:
        m = full.macro_f1
        if _finite(m.low) and _finite(m.high):
            ax.axhspan(m.low, m.high, color="C1", alpha=0.2, label="full fine-tuning interval")
        ax.axhline(m.mean, color="C1", label=_ref_label("full fine-tuning", full))
    refs = []
    if scratch:
        refs.append((_ref_label("BERT from scratch", scratch), scratch.macro_f1.mean, "C2"))
    refs.append(("TF-IDF + logistic regression", study.tfidf_logreg.macro_f1, "C3"))
    _references(ax, refs, _compared_limits([*lora, *([full] if full else [])]))
    ax.set(ylabel="test macro-F1", title="test macro-F1 against LoRA rank" if lora else "no LoRA rank in the study")
    ax.legend(fontsize=8, loc="best")


def _compared_limits(rows: Sequence[StudyRow], margin: float = 0.15) -> Optional[tuple[float, float]]:
    """The y range of the compared rows' means and intervals, widened by ``margin`` of its span (at least 0.01)."""
    values = [v for r in rows for v in (r.macro_f1.mean, r.macro_f1.low, r.macro_f1.high) if _finite(v)]
    if not values:
        return None
    pad = max(margin * (max(values) - min(values)), 0.01)
    return min(values) - pad, max(values) + pad


def _references(ax: Axes, refs: Sequence[tuple[str, float, str]],
                limits: Optional[tuple[float, float]]) -> None:
    """A dashed line per reference inside ``limits``; one outside is a note at that edge with its value and an
    arrow pointing off the axis (the axis grows by a strip per note, so a note never covers a point)."""
    side_of = {label: None if limits is None or limits[0] <= value <= limits[1] else
               "below" if value < limits[0] else "above" for label, value, _ in refs}
    if limits is not None:
        strip = 0.1 * (limits[1] - limits[0])
        n = {side: sum(s == side for s in side_of.values()) for side in ("below", "above")}
        ax.set_ylim(limits[0] - strip * n["below"], limits[1] + strip * n["above"])
    stacked = {"below": 0, "above": 0}
    for label, value, colour in refs:
        side = side_of[label]
        if side is None:
            ax.axhline(value, color=colour, ls="--", label=label)
            continue
        y = 0.04 + 0.08 * stacked[side]
        stacked[side] += 1
        ax.text(0.98, y if side == "below" else 1 - y, f"{'↓' if side == 'below' else '↑'} {label}: {value:.3f} "
                f"({side} the axis)", transform=ax.transAxes, ha="right", va="center", fontsize=8, color=colour)


SERIES_COLOURS = ("C0", "C4", "C5", "C6", "C7", "C8", "C9")  # C1–C3 are the references'


def _families(lora: Sequence[StudyRow]) -> list[tuple[str, str, list[StudyRow]]]:
    """The LoRA rows by (adapter, target set): ``(label, colour, rows)``; one series labelled as before in a study
    of ranks only."""
    kinds = list(dict.fromkeys(r.family for r in lora))
    if len(kinds) == 1:
        return [("LoRA (ours)", "C0", list(lora))]
    return [(f"{ADAPTER_TITLES.get(k[0], k[0])} on {k[1]}", SERIES_COLOURS[i % len(SERIES_COLOURS)],
             [r for r in lora if r.family == k]) for i, k in enumerate(kinds)]


def _lora_points(ax: Axes, lora: Sequence[StudyRow]) -> None:
    for label, colour, rows in _families(lora):
        _series_points(ax, rows, f"{label}, mean [interval]", colour)
    bad = [(r.rank, r.macro_f1.mean) for r in lora if r.is_degenerate]
    if bad:
        ax.scatter(*zip(*bad), marker="x", s=90, color="red", zorder=3, label="degenerate (not a result)")


def _series_points(ax: Axes, lora: Sequence[StudyRow], label: str, colour: str) -> None:
    ranks = [r.rank for r in lora]
    mean = np.array([r.macro_f1.mean for r in lora], dtype=float)
    low = np.array([r.macro_f1.low if _finite(r.macro_f1.low) else np.nan for r in lora], dtype=float)
    high = np.array([r.macro_f1.high if _finite(r.macro_f1.high) else np.nan for r in lora], dtype=float)
    yerr = np.nan_to_num(np.vstack([mean - low, high - mean]))  # no interval: a bare point
    ax.errorbar(ranks, mean, yerr=yerr, marker="o", capsize=4, color=colour, label=label)


def _ref_label(title: str, row: StudyRow) -> str:
    return title + (" (degenerate)" if row.is_degenerate else "")


def _cost_panel(ax: Axes, full: Optional[StudyRow], lora: Sequence[StudyRow]) -> None:
    families = _families(lora)
    time_ax = ax.twinx()
    params = []
    for label, colour, rows in families:
        which = "" if len(families) == 1 else f"{label}: "
        ranks = [r.rank for r in rows]
        values = [r.trainable_params if _finite(r.trainable_params) else np.nan for r in rows]
        seconds = [r.train_seconds if _finite(r.train_seconds) else np.nan for r in rows]
        params += values
        ax.plot(ranks, values, marker="o", color=colour, label=f"{which}trainable parameters")
        time_ax.plot(ranks, seconds, marker="s", color="C4" if len(families) == 1 else colour, ls="-" if len(
            families) == 1 else "--", label=f"{which}train time (s)")
    if full and _finite(full.trainable_params):
        ax.axhline(full.trainable_params, color="C0", ls=":", label="full fine-tuning: parameters")
    if full and _finite(full.train_seconds):
        time_ax.axhline(full.train_seconds, color="C4", ls=":", label="full fine-tuning: train time")
    if any(_finite(p) and p > 0 for p in params):
        ax.set_yscale("log")
    _rank_axis(ax, sorted({r.rank for r in lora}))
    ax.set(ylabel="trainable parameters (log)", title="what each rank costs")
    time_ax.set_ylabel("train time (s)")
    time_ax.set_ylim(bottom=0)
    handles = [h for a in (ax, time_ax) for h in a.get_legend_handles_labels()[0]]
    ax.legend(handles=handles, fontsize=8, loc="center right")


# --------------------------------------------------------------------------------------------------- spectra


def _short_layer(name: str) -> str:
    """``bert.encoder.layer.3.attention.self.query`` → ``L3 query`` (the legend has little room)."""
    match = re.search(r"\.(?:layer|layers|h|block|blocks)\.(\d+)\.", name)
    leaf = name.rsplit(".", 1)[-1]
    return f"L{match.group(1)} {leaf}" if match else ".".join(name.split(".")[-2:])


def _first_seed_spectra(study: StudyFile) -> list[Spectrum]:
    """One spectrum per LoRA row (each rank of each (adapter, target set)): the first seed's, in report order."""
    first: dict[str, Spectrum] = {}
    for spec in sorted(study.spectra, key=lambda s: (s.rank, s.seed)):
        first.setdefault(spec.row or f"lora_r{spec.rank}", spec)
    order = {name: i for i, (name, _) in enumerate(study.ordered_rows())}
    return [first[r] for r in sorted(first, key=lambda n: (order.get(n, len(order)), first[n].rank))]


def _mean_grids(study: StudyFile) -> list[tuple[str, int, int, int, np.ndarray, int]]:
    """Per (adapter, target set) and smaller rank (first seed): ``(family, small, large, seed, φ grid averaged over
    layers, layers)``; grids pair two ranks of one (adapter, target set) only."""
    cells: dict[tuple[str, int, int], list] = {}
    seed_of: dict[tuple[str, int, int], int] = {}
    for item in sorted(study.subspace, key=lambda s: s.seed):
        key = (item.family or "", item.small_rank, item.large_rank)
        seed_of.setdefault(key, item.seed)
        if item.seed == seed_of[key]:
            cells.setdefault(key, []).append(np.asarray(item.grid, dtype=float))
    return [(*k, seed_of[k], np.mean(np.stack(g), axis=0), len(g)) for k, g in sorted(cells.items())]


def spectra_figure(study: StudyFile) -> Figure:
    """Top row: normalised singular values of ΔW per targeted layer, one panel per rank (first seed). Bottom row
    (when the study has several ranks): the subspace similarity φ of each smaller rank with the largest."""
    spectra, grids = _first_seed_spectra(study), _mean_grids(study)
    cols = max(1, len(spectra), len(grids))
    fig = Figure(figsize=(4.2 * cols, 3.8 * (2 if grids else 1)), layout="constrained")
    axes = fig.subplots(2 if grids else 1, cols, squeeze=False)
    if not spectra:
        _empty(axes[0][0], "no LoRA adapter in the study")
    for ax, spec in zip(axes[0], spectra):
        _spectrum_panel(ax, spec)
    if spectra:
        fig.suptitle(f"singular values of each update ΔW (one line per targeted layer); effective rank: those holding "
                     f"{100 * study.energy:g} % of its energy", fontsize=10)
    for ax, grid in zip(axes[1] if grids else [], grids):
        _subspace_panel(fig, ax, *grid)
    for ax in [*axes[0][max(1, len(spectra)):], *(axes[1][len(grids):] if grids else [])]:
        ax.set_axis_off()  # fewer panels in this row than columns
    return fig


def _spectrum_panel(ax: Axes, spec: Spectrum) -> None:
    layers = spec.layers
    ranks = [v.effective_rank for v in layers.values()]
    colours = [f"C{i % 10}" for i in range(len(layers))] if len(layers) <= MAX_LEGEND_LAYERS else \
        [(0.1 + 0.8 * i / max(1, len(layers) - 1), 0.3, 0.9 - 0.8 * i / max(1, len(layers) - 1))
         for i in range(len(layers))]
    for colour, (name, values) in zip(colours, layers.items()):
        sv = np.asarray(values.singular_values, dtype=float)
        if sv.size == 0 or sv[0] <= 0:
            continue  # an update that never left zero has no spectrum to draw
        ax.plot(np.arange(1, sv.size + 1), np.maximum(sv / sv[0], 1e-12), marker=".", color=colour,
                label=f"{_short_layer(name)} (eff. {values.effective_rank})")
    if not ax.lines:
        _empty(ax, f"rank {spec.rank}: every update is zero")
        return
    config = row_configuration(spec.row) if spec.row else None
    which = "" if config is None or config[:2] == ("lora", DEFAULT_TARGET_SET) else f"{config[0]} {config[1]}, "
    ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    mean = sum(ranks) / len(ranks)
    ax.set(xlabel="singular value index", ylabel="σ / σ₁ (log)")
    ax.set_title(f"{which}r={spec.rank} (seed {spec.seed}): effective rank {mean:.1f} ({min(ranks)}–{max(ranks)})",
                 fontsize=10)
    if len(layers) <= MAX_LEGEND_LAYERS:
        ax.legend(fontsize=6, ncol=2)


def _subspace_panel(fig: Figure, ax: Axes, family: str, small: int, large: int, seed: int, grid: np.ndarray,
                    layers: int) -> None:
    image = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto", interpolation="nearest",
                      extent=(0.5, grid.shape[1] + 0.5, grid.shape[0] + 0.5, 0.5))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel=f"j (top-j directions of r={large})", ylabel=f"i (top-i directions of r={small})")
    which = f"{family}: " if family else ""
    ax.set_title(f"{which}φ(r={small}, r={large}), mean over {layers} layers, seed {seed}", fontsize=10)
    fig.colorbar(image, ax=ax, shrink=0.8)


# ---------------------------------------------------------------------------------------------------- curves


def curves_figure(study: StudyFile) -> Figure:
    """Left: each run's validation macro-F1 at every validation against optimizer steps (one line per seed of each
    chosen (variant, rank); a study without per-run curves shows the seed-mean best so far instead). Right: the
    best validation macro-F1 so far against CPU seconds of training, mean over seeds with the min–max band; full
    fine-tuning's cost to its best is the dotted vertical line of the equal-cost reading."""
    fig = Figure(figsize=(12, 4.5), layout="constrained")
    runs_ax, cost_ax = fig.subplots(1, 2)
    names = [n for n, _ in study.ordered_rows()]
    if study.validation_curves:
        _run_lines(runs_ax, study.validation_curves, names)
        title = "validation macro-F1 of each run at every validation"
    else:
        _mean_lines(runs_ax, study.learning_curves, names, "step")
        title = "best validation macro-F1 so far vs optimizer steps"
    _mean_lines(cost_ax, study.learning_curves, names, CLOCK)
    for ax, label, title in ((runs_ax, "optimizer steps", title),
                             (cost_ax, "CPU seconds of training", "best validation macro-F1 so far vs CPU seconds")):
        if not ax.lines:
            _empty(ax, f"validation curves against {label}: none in the study")
            continue
        ax.set(title=title, xlabel=label, ylabel="validation macro-F1")
        ax.legend(fontsize=8)
    cost = study.equal_cost
    if cost and cost.budget and cost_ax.lines:
        cost_ax.axvline(cost.budget, color="grey", ls=":", lw=1)
    return fig


def _run_lines(ax: Axes, curves: Mapping[str, Sequence[SeedCurve]], names: Sequence[str]) -> None:
    """One line per seed, a colour per row, the row named once in the legend; every validation is a point."""
    for i, name in enumerate(names):
        for j, curve in enumerate(curves.get(name, ())):  # keyed by row: a row without curves has none
            points = [(x, y) for x, y in zip(curve.step, curve.val_macro_f1) if x is not None and y is not None]
            if points:
                ax.plot(*zip(*points), color=f"C{i % 10}", marker=".", lw=1, alpha=0.85,
                        label=row_title(name) if j == 0 else f"_{row_title(name)}")


def _mean_lines(ax: Axes, curves: Mapping[str, Mapping[str, Sequence[Mapping[str, float]]]], names: Sequence[str],
                clock: str) -> None:
    """Per row, the seed-mean best so far against ``clock`` with its min–max band over seeds (the points are keyed
    by their clock: open-ended)."""
    for i, name in enumerate(names):
        points = curves.get(name, {}).get(clock, ())
        if not points:
            continue
        x = [p[clock] for p in points]
        ax.plot(x, [p["val_macro_f1"] for p in points], color=f"C{i % 10}", marker=".", label=row_title(name))
        ax.fill_between(x, [p["low"] for p in points], [p["high"] for p in points], color=f"C{i % 10}",
                        alpha=0.15, lw=0)


# ------------------------------------------------------------------------------------------------- confusion


def _tick_label(label: str, width: int = 14) -> str:
    """A long class name wrapped on word boundaries (at most 3 lines, then cut) so ticks never overlap."""
    lines = textwrap.wrap(label, width, break_long_words=True) or [label]
    return "\n".join(lines[:3]) + ("…" if len(lines) > 3 else "")


def confusion_figure(results: Mapping[str, Detail], labels: Sequence[str]) -> Figure:
    """Row-normalised confusion matrices side by side, one per row name (``results[name].confusion_matrix``);
    long class names are wrapped and the x ticks rotated, so none overlap."""
    ticks = [_tick_label(label) for label in labels]
    side = max(4.0, 0.45 * len(labels) + 1.2 * max([t.count("\n") + 1 for t in ticks] or [1]))
    fig = Figure(figsize=(side * max(1, len(results)), side + 1), layout="constrained")
    axes = fig.subplots(1, max(1, len(results)), squeeze=False)[0]
    if not results:
        _empty(axes[0], "no confusion matrix in the study")
    for ax, (name, res) in zip(axes, results.items()):
        cm = np.asarray(res.confusion_matrix, dtype=float)
        norm = cm / np.clip(cm.sum(axis=1, keepdims=True), 1, None)
        ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
        for i in range(len(labels)):
            for j in range(len(labels)):
                ax.text(j, i, int(cm[i, j]), ha="center", va="center", color="white" if norm[i, j] > 0.6 else "black")
        seed = f" (seed {res.seed})" if res.seed is not None else ""
        ax.set(title=row_title(name) + seed, xticks=range(len(labels)), yticks=range(len(labels)),
               xlabel="predicted", ylabel="actual")
        ax.set_xticklabels(ticks, rotation=45, ha="right", rotation_mode="anchor", fontsize=8)
        ax.set_yticklabels(ticks, fontsize=8)
    return fig


def save_figures(study: StudyFile, folder: Path) -> dict[str, Path]:
    """Draw every figure of the report into ``folder``; returns their paths by key (see ``FIGURE_FILES``)."""
    figures = {"rank_curve": rank_curve_figure(study), "spectra": spectra_figure(study),
               "curves": curves_figure(study), "confusion": confusion_figure(study.shown_detail(), study.labels)}
    paths = {}
    for key, fig in figures.items():
        paths[key] = Path(folder) / FIGURE_FILES[key]
        fig.savefig(paths[key], dpi=DPI)
    return paths


SETUP_SECTIONS = ("model", "train", "scratch", "full", "lora", "study")  # what the report's Setup section shows


def report_markdown(study: StudyFile, figures: str = "figures") -> str:
    """The report's Markdown, its figures linked under ``figures`` (relative to the report), from ``study`` alone:
    it carries the params and the data summary it was made with."""
    links = {key: f"{figures}/{name}" for key, name in FIGURE_FILES.items()}
    return render_report(study, links, dataset=study.dataset,
                         params={k: study.params[k] for k in SETUP_SECTIONS if k in study.params})


def write_report(study: StudyFile, report: Path, figures: Path) -> None:
    """``report`` (Markdown) and its PNG figures in ``figures``, from ``study`` alone, so a committed record
    rebuilds the same report anywhere."""
    with atomic_dir(figures) as tmp:
        save_figures(study, tmp)
    rel = Path(os.path.relpath(Path(figures).resolve(), Path(report).parent.resolve())).as_posix()
    with atomic_file(report) as tmp:
        tmp.write_text(report_markdown(study, rel), encoding="utf-8")
