"""The comparison report: one table, training curves and confusion matrices."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any, Mapping, Optional

import pandas as pd
from matplotlib.figure import Figure  # no pyplot: no global backend state

__all__ = ["headline", "comparison_table", "plot_curves", "plot_confusions", "confusion_figure", "render_markdown", "dataset_section",
           "hyperparameter_section"]

VARIANT_TITLES = {"scratch": "BERT from scratch", "full": "full fine-tuning", "lora": "LoRA (ours)",
                  "tfidf_logreg": "TF-IDF + logistic regression"}


def comparison_table(evaluate: Mapping[str, dict], train: Mapping[str, dict]) -> pd.DataFrame:
    """One row per variant: test quality next to what it cost to train."""
    rows = []
    for name, res in evaluate.items():
        t = train.get(name, {})
        rows.append({
            "variant": VARIANT_TITLES.get(name, name),
            "test macro-F1": res["macro_f1"], "95 % interval": _interval(res, "macro_f1"),
            "test accuracy": res["accuracy"],
            "trainable params": t.get("trainable_params"), "% trainable": t.get("trainable_percent"),
            "train time (s)": t.get("train_seconds"), "peak memory (MB)": t.get("peak_memory_mb"),
            "size on disk (MB)": t.get("size_on_disk_mb"), "precision": t.get("precision"),
        })
    return pd.DataFrame(rows)


def _interval(res: Mapping[str, Any], metric: str) -> str:
    """``[low, high]`` of the evaluate stage's bootstrap interval, or a dash where none was computed."""
    low, high = res.get(f"{metric}_low"), res.get(f"{metric}_high")
    return "–" if low is None or high is None else f"[{low:.4f}, {high:.4f}]"


def headline(evaluate: Mapping[str, dict]) -> str:
    """What the comparison supports, in words: the paired LoRA − full verdict (never a winner the interval does
    not support) and every degenerate model by name."""
    lines = []
    lora, full = evaluate.get("lora", {}), evaluate.get("full", {})
    diff = lora.get("vs_full")
    if diff:
        words = {"better": "better than", "worse": "worse than",
                 "indistinguishable": "indistinguishable from"}[diff["verdict"]]
        conf = f"{100 * diff['confidence']:g} %"
        lines.append(
            f"**LoRA (ours) is {words} full fine-tuning at {conf}**: test macro-F1 {lora['macro_f1']:.4f} "
            f"{_interval(lora, 'macro_f1')} vs {full['macro_f1']:.4f} {_interval(full, 'macro_f1')}; paired difference "
            f"{100 * diff['difference']:+.2f} points, {conf} interval [{100 * diff['low']:+.2f}, "
            f"{100 * diff['high']:+.2f}] (bootstrap over the {diff['n_examples']:,} test examples, "
            f"{diff['seeds_a']} seed{'s' if diff['seeds_a'] > 1 else ''}).")
    for name, res in evaluate.items():
        if res.get("degenerate"):
            lines.append(f"⚠ **{VARIANT_TITLES.get(name, name)} is degenerate**: {res['degenerate']}; its numbers "
                         "are not a result.")
    lines.append("All rows are scored on the same held-out test split; intervals are 95 % percentile bootstraps "
                 "over its examples.")
    return "\n\n".join(lines)


def plot_curves(curves: Mapping[str, pd.DataFrame], path: Path) -> None:
    """Training loss and validation macro-F1 per epoch, one line per variant."""
    fig = Figure(figsize=(10, 4))
    loss_ax, f1_ax = fig.subplots(1, 2)
    for name, df in curves.items():
        loss_ax.plot(df["epoch"], df["train_loss"], marker="o", label=VARIANT_TITLES.get(name, name))
        f1_ax.plot(df["epoch"], df["val_macro_f1"], marker="o", label=VARIANT_TITLES.get(name, name))
    loss_ax.set(title="training loss", xlabel="epoch")
    f1_ax.set(title="validation macro-F1", xlabel="epoch")
    f1_ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _tick_label(label: str, width: int = 14) -> str:
    """A long class name wrapped on word boundaries (at most 3 lines, then cut) so ticks never overlap."""
    lines = textwrap.wrap(label, width, break_long_words=True) or [label]
    return "\n".join(lines[:3]) + ("…" if len(lines) > 3 else "")


def plot_confusions(evaluate: Mapping[str, dict], labels: list[str], path: Path) -> None:
    """Row-normalised confusion matrices side by side, saved as PNG (see :func:`confusion_figure`)."""
    confusion_figure(evaluate, labels).savefig(path, dpi=110)


def confusion_figure(evaluate: Mapping[str, dict], labels: list[str]) -> Figure:
    """The confusion matrices; long class names are wrapped and the x ticks rotated, so none overlap."""
    ticks = [_tick_label(label) for label in labels]
    side = max(4.0, 0.45 * len(labels) + 1.2 * max(t.count("\n") + 1 for t in ticks))
    fig = Figure(figsize=(side * len(evaluate), side + 1), layout="constrained")  # room for the tick labels
    axes = fig.subplots(1, len(evaluate), squeeze=False)[0]
    for ax, (name, res) in zip(axes, evaluate.items()):
        cm = pd.DataFrame(res["confusion_matrix"], index=labels, columns=labels)
        norm = cm.div(cm.sum(axis=1).clip(lower=1), axis=0)
        ax.imshow(norm.to_numpy(), vmin=0, vmax=1, cmap="Blues")
        for i in range(len(labels)):
            for j in range(len(labels)):
                ax.text(j, i, int(cm.iat[i, j]), ha="center", va="center",
                        color="white" if norm.iat[i, j] > 0.6 else "black")
        ax.set(title=VARIANT_TITLES.get(name, name), xticks=range(len(labels)), yticks=range(len(labels)),
               xlabel="predicted", ylabel="actual")
        ax.set_xticklabels(ticks, rotation=45, ha="right", rotation_mode="anchor", fontsize=8)
        ax.set_yticklabels(ticks, fontsize=8)
    return fig


# the baseline row has no training costs, so these columns hold NaN and pandas makes the counts floats
_SCORES = ("test macro-F1", "test accuracy")
_COUNTS = ("trainable params",)
_SIZES = ("peak memory (MB)", "size on disk (MB)")  # one unit (MB) and one format for every size


def _fmt(value, column: str = "") -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "–"
    if column in _SCORES:
        return f"{value:.4f}"  # 1.0 as 1.0000, like every other score
    if column in _COUNTS:
        return f"{int(value):,}"  # 75,000, not 75,000.0
    if column in _SIZES:
        return f"{float(value):,.2f}"  # 0.30 and 2,100.00 alike, not 0.3000 beside 2,100.0
    if isinstance(value, float):
        return f"{value:.4f}" if value < 1 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def dataset_section(dataset: Mapping[str, Any]) -> str:
    """What the numbers are about: source, rows after cleaning, split sizes, label names with counts."""
    splits = dataset.get("rows_per_split", {})
    per_split = dataset.get("rows_per_class_per_split", {})
    lines = [f"- **Source**: {dataset.get('source', 'unknown')}",
             f"- **Rows**: {dataset.get('rows_raw', 0):,} raw, {dataset.get('rows_clean', 0):,} after cleaning"
             + (" → " + ", ".join(f"{n} {c:,}" for n, c in splits.items()) if splits else "")
             + (" (predefined splits, used as given)" if dataset.get("predefined_splits") else " (stratified split)")]
    if dataset.get("max_length"):
        cut = ", ".join(f"{n} {100 * s:.1f} %" for n, s in dataset.get("truncated_share", {}).items())
        lines.append(f"- **Texts cut at max_length {dataset['max_length']}**: {cut}")
    labels = dataset.get("labels", [])
    inferred = " (inferred from the data)" if dataset.get("labels_inferred") else ""
    lines.append(f"- **Labels** ({len(labels)}){inferred}, rows per split:")
    head = "| id | label | " + " | ".join(per_split) + " |\n|---|---|" + "---|" * len(per_split) + "\n"
    rows = "".join(f"| {i} | {label} | " + " | ".join(f"{per_split[s].get(label, 0):,}" for s in per_split) + " |\n"
                   for i, label in enumerate(labels))
    return "## Data\n\n" + "\n".join(lines) + "\n\n" + head + rows


def hyperparameter_section(params: Mapping[str, Mapping[str, Any]]) -> str:
    """Base model and the settings each variant was trained with (sections model, train, scratch, full, lora)."""
    model, train = params.get("model", {}), params.get("train", {})
    scratch, full, lora = params.get("scratch", {}), params.get("full", {}), params.get("lora", {})
    rows = [
        ("BERT from scratch", f"{scratch.get('num_layers')} layers × {scratch.get('hidden_size')}, "
                              f"{scratch.get('num_heads')} heads", scratch),
        ("full fine-tuning", "every parameter", full),
        ("LoRA (ours)", f"rank {lora.get('rank')}, alpha {lora.get('alpha')}, dropout {lora.get('dropout')}, "
                        f"targets {lora.get('target_modules') or 'model default'}, also trained "
                        f"{', '.join(lora.get('modules_to_save') or []) or 'head only'}"
                        + (", rsLoRA" if lora.get("rslora") else ""), lora),
    ]
    body = "".join(f"| {name} | {what} | {section.get('lr')} | {section.get('epochs')} |\n" for name, what, section in rows)
    return (f"## Setup\n\nBase model **{model.get('name')}** (max_length {model.get('max_length')}); batch size "
            f"{train.get('batch_size')}, seed {train.get('seed')}, precision {train.get('precision')}, weight decay "
            f"{train.get('weight_decay')}, warmup ratio {train.get('warmup_ratio')}.\n\n"
            "| variant | configuration | lr | epochs |\n|---|---|---|---|\n" + body)


def render_markdown(table: pd.DataFrame, evaluate: Mapping[str, dict], figures: Mapping[str, str],
                    dataset: Optional[Mapping[str, Any]] = None,
                    params: Optional[Mapping[str, Mapping[str, Any]]] = None) -> str:
    """The report body: what data and model (when given), comparison table, per-class F1, links to the figures."""
    head = "| " + " | ".join(table.columns) + " |\n|" + "---|" * len(table.columns) + "\n"
    body = "".join("| " + " | ".join(_fmt(v, c) for c, v in zip(table.columns, row)) + " |\n"
                   for row in table.itertuples(index=False))
    labels = list(next(iter(evaluate.values()))["per_class"])
    per_class = "| variant | " + " | ".join(f"F1 {label}" for label in labels) + " |\n|" + "---|" * (len(labels) + 1)
    per_class += "\n" + "".join(
        f"| {VARIANT_TITLES.get(n, n)} | " + " | ".join(f"{r['per_class'][c]['f1']:.4f}" for c in labels) + " |\n"
        for n, r in evaluate.items())
    intro = (dataset_section(dataset) + "\n" if dataset else "") + \
        (hyperparameter_section(params) + "\n" if params else "")
    return (f"# LoRA vs full fine-tuning: comparison report\n\n"
            f"{headline(evaluate)}\n\n"
            f"{intro}## Comparison\n\n{head}{body}\n## Per-class F1 (test)\n\n{per_class}\n"
            f"## Training curves\n\n![curves]({figures['curves']})\n\n"
            f"## Confusion matrices (test)\n\n![confusion]({figures['confusion']})\n")
