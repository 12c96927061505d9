"""reporting: one table row per variant, a Markdown report that shows them all, real PNG figures."""

from __future__ import annotations

import pandas as pd
import pytest

from lora_pipeline.evaluation import classification_metrics
from lora_pipeline.reporting import VARIANT_TITLES, comparison_table, plot_confusions, plot_curves, render_markdown

LABELS = ["neg", "plot", "pos"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
COLUMNS = ["variant", "test macro-F1", "95 % interval", "test accuracy", "trainable params", "% trainable", "train time (s)",
           "peak memory (MB)", "size on disk (MB)", "precision"]


@pytest.fixture()
def results():
    truth = [0, 0, 0, 1, 1, 1, 2, 2, 2]
    preds = {"scratch": [0, 1, 2, 1, 1, 0, 2, 0, 2], "full": [0, 0, 0, 1, 1, 1, 2, 2, 1],
             "lora": [0, 0, 0, 1, 1, 1, 2, 2, 2], "tfidf_logreg": [0, 0, 1, 1, 1, 1, 2, 2, 2]}
    evaluate = {name: classification_metrics(truth, p, LABELS) for name, p in preds.items()}
    train = {
        "scratch": {"trainable_params": 900_000, "trainable_percent": 100.0, "train_seconds": 12.5,
                    "peak_memory_mb": 800.0, "size_on_disk_mb": 3.4, "precision": "bf16"},
        "full": {"trainable_params": 22_700_000, "trainable_percent": 100.0, "train_seconds": 95.0,
                 "peak_memory_mb": 2100.0, "size_on_disk_mb": 87.0, "precision": "bf16"},
        "lora": {"trainable_params": 75_000, "trainable_percent": 0.33, "train_seconds": 60.0,
                 "peak_memory_mb": 1500.0, "size_on_disk_mb": 0.3, "precision": "bf16"},
    }
    return evaluate, train


def test_comparison_table_has_a_row_per_variant(results):
    evaluate, train = results
    table = comparison_table(evaluate, train)
    assert list(table.columns) == COLUMNS
    assert table["variant"].tolist() == [VARIANT_TITLES[n] for n in evaluate]
    lora = table.set_index("variant").loc["LoRA (ours)"]
    assert lora["test macro-F1"] == pytest.approx(1.0) and lora["trainable params"] == 75_000
    assert lora["% trainable"] == pytest.approx(0.33) and lora["size on disk (MB)"] == pytest.approx(0.3)
    baseline = table.set_index("variant").loc["TF-IDF + logistic regression"]
    assert pd.isna(baseline["trainable params"]) and pd.isna(baseline["train time (s)"])  # nothing trained


def test_markdown_report_shows_every_variant_and_column(results):
    evaluate, train = results
    table = comparison_table(evaluate, train)
    text = render_markdown(table, evaluate, {"curves": "figures/curves.png", "confusion": "figures/confusion.png"})
    header = next(line for line in text.splitlines() if line.startswith("| variant | test macro-F1"))
    assert [c.strip() for c in header.strip("|").split("|")] == COLUMNS
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    for name in evaluate:
        matching = [r for r in rows if r.startswith(f"| {VARIANT_TITLES[name]} |")]
        assert len(matching) == 2, name  # comparison table + per-class table
        assert all(r.count("|") in (len(COLUMNS) + 1, len(LABELS) + 2) for r in matching)
    assert "Best" not in text  # no winner without an interval (test_the_headline_...)
    assert "| 75,000 |" in text and "| 1.0000 |" in text  # thousands separators, 4-digit scores
    assert "–" in text  # missing cost numbers of the baseline are shown as a dash, not "nan"
    assert "nan" not in text.lower()
    for label in LABELS:
        assert f"F1 {label}" in text
    assert "![curves](figures/curves.png)" in text and "![confusion](figures/confusion.png)" in text


def test_figures_are_png(tmp_path, results):
    evaluate, _ = results
    curves = {name: pd.DataFrame({"epoch": [1, 2, 3], "train_loss": [1.0, 0.6, 0.4],
                                  "val_macro_f1": [0.5, 0.7, 0.8]}) for name in ("scratch", "full", "lora")}
    plot_curves(curves, tmp_path / "curves.png")
    plot_confusions(evaluate, LABELS, tmp_path / "confusion.png")
    for name in ("curves.png", "confusion.png"):
        data = (tmp_path / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5_000, name
    import matplotlib.image

    image = matplotlib.image.imread(tmp_path / "confusion.png")
    assert image.shape[1] > 2 * image.shape[0]  # four panels side by side


def test_the_headline_names_no_winner_that_the_interval_does_not_support(results):
    """The report used to print "Best test macro-F1: LoRA (ours)" for a difference inside one dropout draw."""
    from lora_pipeline.reporting import headline

    evaluate, _ = results
    evaluate = {n: {**r, "macro_f1_low": r["macro_f1"] - 0.05, "macro_f1_high": min(1.0, r["macro_f1"] + 0.05)}
                for n, r in evaluate.items()}
    evaluate["lora"]["vs_full"] = {"difference": 0.006, "low": -0.008, "high": 0.02, "verdict": "indistinguishable",
                                   "confidence": 0.95, "n_examples": 2767, "seeds_a": 1}
    text = headline(evaluate)
    assert "**LoRA (ours) is indistinguishable from full fine-tuning at 95 %**" in text
    assert "[-0.80, +2.00]" in text and "better" not in text
    evaluate["scratch"]["degenerate"] = "predicts only 'neg' for all 9 test examples (collapsed)"
    assert "⚠ **BERT from scratch is degenerate**: predicts only 'neg'" in headline(evaluate)
    evaluate["lora"]["vs_full"].update(low=0.001, verdict="better")
    assert "**LoRA (ours) is better than full fine-tuning at 95 %**" in headline(evaluate)
