"""The comparison report: one table, training curves and confusion matrices."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import pandas as pd
from matplotlib.figure import Figure  # no pyplot: no global backend state

__all__ = ["comparison_table", "plot_curves", "plot_confusions", "render_markdown"]

VARIANT_TITLES = {"scratch": "BERT from scratch", "full": "full fine-tuning", "lora": "LoRA (ours)",
                  "tfidf_logreg": "TF-IDF + logistic regression"}


def comparison_table(evaluate: Mapping[str, dict], train: Mapping[str, dict]) -> pd.DataFrame:
    """One row per variant: test quality next to what it cost to train."""
    rows = []
    for name, res in evaluate.items():
        t = train.get(name, {})
        rows.append({
            "variant": VARIANT_TITLES.get(name, name),
            "test macro-F1": res["macro_f1"], "test accuracy": res["accuracy"],
            "trainable params": t.get("trainable_params"), "% trainable": t.get("trainable_percent"),
            "train time (s)": t.get("train_seconds"), "peak memory (MB)": t.get("peak_memory_mb"),
            "size on disk (MB)": t.get("size_on_disk_mb"), "precision": t.get("precision"),
        })
    return pd.DataFrame(rows)


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


def plot_confusions(evaluate: Mapping[str, dict], labels: list[str], path: Path) -> None:
    """Row-normalised confusion matrices side by side."""
    fig = Figure(figsize=(4 * len(evaluate), 4))
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
               xticklabels=labels, yticklabels=labels, xlabel="predicted", ylabel="actual")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# the baseline row has no training costs, so these columns hold NaN and pandas makes the counts floats
_SCORES = ("test macro-F1", "test accuracy")
_COUNTS = ("trainable params",)


def _fmt(value, column: str = "") -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "–"
    if column in _SCORES:
        return f"{value:.4f}"  # 1.0 as 1.0000, like every other score
    if column in _COUNTS:
        return f"{int(value):,}"  # 75,000, not 75,000.0
    if isinstance(value, float):
        return f"{value:.4f}" if value < 1 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def render_markdown(table: pd.DataFrame, evaluate: Mapping[str, dict], figures: Mapping[str, str]) -> str:
    """The report body: comparison table, per-class F1, and links to the figures."""
    head = "| " + " | ".join(table.columns) + " |\n|" + "---|" * len(table.columns) + "\n"
    body = "".join("| " + " | ".join(_fmt(v, c) for c, v in zip(table.columns, row)) + " |\n"
                   for row in table.itertuples(index=False))
    labels = list(next(iter(evaluate.values()))["per_class"])
    per_class = "| variant | " + " | ".join(f"F1 {label}" for label in labels) + " |\n|" + "---|" * (len(labels) + 1)
    per_class += "\n" + "".join(
        f"| {VARIANT_TITLES.get(n, n)} | " + " | ".join(f"{r['per_class'][c]['f1']:.4f}" for c in labels) + " |\n"
        for n, r in evaluate.items())
    best = table.loc[table["test macro-F1"].idxmax(), "variant"]
    return (f"# LoRA vs full fine-tuning: comparison report\n\n"
            f"Best test macro-F1: **{best}**. All rows are scored on the same held-out test split.\n\n"
            f"## Comparison\n\n{head}{body}\n## Per-class F1 (test)\n\n{per_class}\n"
            f"## Training curves\n\n![curves]({figures['curves']})\n\n"
            f"## Confusion matrices (test)\n\n![confusion]({figures['confusion']})\n")
