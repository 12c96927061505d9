"""reporting: Markdown tables that never break or print "nan", a headline that names no winner the interval does
not support, and confusion matrices side by side in a real PNG."""

from __future__ import annotations

import dataclasses
import math

import pytest

from lora_pipeline.evaluation import classification_metrics
from lora_pipeline.figures import confusion_figure
from lora_pipeline.reporting import (COMPARISON_HEADER, comparison_rows, headline, markdown_table, render_report, row_title,
                                     setup_section)
from lora_pipeline.study_file import Detail
from tests.support.builders import ROOT
from tests.support.studies import FIGURES, PNG_MAGIC, make_study, make_study_json, table, typed

LABELS = ["neg", "plot", "pos"]


def test_row_titles_name_the_lora_rank():
    assert [row_title(n) for n in ("scratch", "full", "lora_r16", "tfidf_logreg")] == [
        "BERT from scratch", "full fine-tuning", "LoRA r=16 (ours)", "TF-IDF + logistic regression"]


def test_markdown_table_keeps_one_cell_per_column_whatever_the_text():
    text = markdown_table(["a", "b"], [["x | y", "two\nlines"]])
    assert text == "| a | b |\n|---|---|\n| x \\| y | two lines |\n"


def test_unmeasured_costs_show_as_a_dash_never_nan():
    """summarise writes NaN for a cost no seed measured (JSON NaN) and None for a missing count."""
    study = make_study_json(ranks=[8], seeds=[42])
    study["rows"]["lora_r8"].update(train_seconds=math.nan, peak_memory_mb=math.nan, trainable_params=None,
                                    steps=math.nan, precision=None)
    text = render_report(typed(study), FIGURES)
    r8 = next(r for r in table(text, "variant | test macro-F1 (mean ± std)") if r[0] == "LoRA r=8 (ours)")
    cells = {h: r8[COMPARISON_HEADER.index(h)] for h in ("trainable params", "% trainable", "train time (s)",
                                                           "peak memory (MB)", "size on disk (MB)", "precision",
                                                           "steps")}
    assert cells == {"trainable params": "–", "% trainable": "0.58", "train time (s)": "–", "peak memory (MB)": "–",
                     "size on disk (MB)": "1.42", "precision": "–", "steps": "–"}
    assert "nan" not in text.lower()


def test_mean_steps_over_seeds_keep_one_decimal_and_counts_get_separators():
    study = make_study_json(ranks=[8])
    study["rows"]["lora_r8"]["steps"] = 235.5
    r8 = next(r for r in comparison_rows(typed(study)) if r[0] == "LoRA r=8 (ours)")
    assert r8[COMPARISON_HEADER.index("steps")] == "235.5"
    assert r8[COMPARISON_HEADER.index("trainable params")] == "371,184"


def test_the_headline_names_no_winner_that_the_interval_does_not_support():
    """The report used to print "Best test macro-F1: LoRA (ours)" for a difference inside one dropout draw."""
    study = make_study_json(ranks=[8])
    study["rows"]["lora_r8"]["vs_full"].update(difference=0.006, low=-0.008, high=0.02, verdict="indistinguishable")
    text = headline(typed(study))
    assert "LoRA r=8 (ours) is indistinguishable from full fine-tuning at 95 %: paired difference +0.60 points, " \
           "95 % interval over seeds and test examples [-0.80, +2.00] (2 seeds)." in text
    assert "better than full" not in text and "best test macro-f1" not in text.lower()
    study["rows"]["lora_r8"]["vs_full"].update(low=0.001, verdict="better")
    assert "LoRA r=8 (ours) is better than full fine-tuning at 95 %" in headline(typed(study))


def test_confusion_matrices_sit_side_by_side_in_a_png(tmp_path):
    truth = [0, 0, 0, 1, 1, 1, 2, 2, 2]
    preds = {"scratch": [0, 1, 2, 1, 1, 0, 2, 0, 2], "full": [0, 0, 0, 1, 1, 1, 2, 2, 1],
             "lora_r8": [0, 0, 0, 1, 1, 1, 2, 2, 2], "tfidf_logreg": [0, 0, 1, 1, 1, 1, 2, 2, 2]}
    detail = {name: Detail(seed=42, per_class=m["per_class"], confusion_matrix=m["confusion_matrix"])
              for name, m in ((n, classification_metrics(truth, p, LABELS)) for n, p in preds.items())}
    fig = confusion_figure(detail, LABELS)
    assert [ax.get_title() for ax in fig.axes] == [
        "BERT from scratch (seed 42)", "full fine-tuning (seed 42)", "LoRA r=8 (ours) (seed 42)",
        "TF-IDF + logistic regression (seed 42)"]
    assert [t.get_text() for t in fig.axes[0].texts] == ["1", "1", "1", "1", "2", "0", "1", "0", "2"]
    fig.savefig(tmp_path / "confusion.png", dpi=110)
    data = (tmp_path / "confusion.png").read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 5_000
    import matplotlib.image

    image = matplotlib.image.imread(tmp_path / "confusion.png")
    assert image.shape[1] > 2 * image.shape[0]  # four panels side by side


@pytest.mark.parametrize("ranks", [[8], [2, 8, 32]])
def test_every_row_of_the_comparison_has_every_column(ranks):
    rows = comparison_rows(make_study(ranks=ranks))
    assert len(rows) == 2 + len(ranks) + 1 and len({len(r) for r in rows}) == 1


def test_the_learning_rate_section_says_which_rates_were_not_searched():
    study = make_study_json(ranks=[8])
    study["rows"]["lora_r8"]["lr_search"] = {"grid": [1e-3, 2e-3], "position": "highest", "searched": False,
                                             "seeds": [42]}
    study["rows"]["full"]["lr_search"] = {"grid": [1e-4], "position": "only", "searched": False, "seeds": [42]}
    study["rows"]["scratch"]["lr_search"] = {"grid": [2e-4, 4e-4, 1e-3], "position": "interior", "searched": True,
                                             "seeds": [42]}
    text = render_report(typed(study), FIGURES)
    assert "LoRA r=8 (ours): chosen at the highest rate of its grid (0.001, 0.002): rates above 0.002 were not " \
           "searched." in text
    assert "full fine-tuning: one rate (0.0001): no learning-rate search." in text
    assert "BERT from scratch: chosen" not in text  # an interior optimum needs no caveat
    assert "Learning rates not searched around their optimum (full fine-tuning, LoRA r=8 (ours))" \
        in headline(typed(study))


def test_a_study_merged_from_parts_says_which_part_holds_which_seeds_and_that_every_run_met_test():
    study = make_study_json(ranks=[8])
    study["parts"] = [{"seeds": [42], "runs": 18}, {"seeds": [43], "runs": 9}]
    study["params"] = {"study": {"test_every_run": True}}
    text = render_report(typed(study), FIGURES, params={"model": {}, "train": {}, "study": {"seeds": [42, 43]}})
    assert "Merged from 2 parts run apart (each part's seeds and the runs it adds to the parts before it: seeds 42: " \
           "18 runs; seeds 43: 9 runs): a row's seeds column says which seeds it holds." in text
    assert "every run was scored on test (study.test_every_run, so parts can merge), the choice reads validation " \
           "only" in text
    assert "Merged from" not in render_report(make_study(ranks=[8]), FIGURES, params={"model": {}, "train": {},
                                                                                     "study": {}})


def _lora_cell(params: dict) -> str:
    """The Setup table's "what was trained" cell of the LoRA row."""
    line = next(l for l in setup_section(params).splitlines() if l.startswith("| LoRA (ours) |"))
    return line.split(" | ")[1]


def test_setup_lists_the_target_sets_the_study_trained_with_their_modules_and_the_adapters():
    lora = {"alpha": 16.0, "dropout": 0.0, "modules_to_save": ["pooler"], "rslora": True,
            "target_sets": {"default": None, "attention_all": ["query", "key", "value", "attention.output.dense"],
                            "all_linear": "all-linear", "late": r"layer\.1\.(query|key)"}}
    study = {"ranks": [4, 16], "target_sets": ["default", "all_linear", "attention_all"], "adapters": ["lora", "dora"]}
    assert _lora_cell({"lora": lora, "study": study}) == (
        "ranks 4, 16, alpha 16.0, dropout 0.0, target sets default (model default), all_linear (all-linear) and "
        "attention_all (query, key, value, attention.output.dense), adapters LoRA and DoRA, also trained pooler, "
        "rsLoRA")  # only the sets the study trained, in its order; "late" is defined but not trained
    one = _lora_cell({"lora": {**lora, "rslora": False}, "study": {**study, "target_sets": ["late"],
                                                                    "adapters": ["dora"]}})
    assert "target set late (layer\\.1\\.(query\\|key)), adapter DoRA, also trained pooler" in one  # pipe escaped


def test_setup_of_a_study_from_before_the_target_set_and_adapter_axes_reads_as_it_always_did():
    old = {"alpha": 16.0, "dropout": 0.0, "modules_to_save": ["pooler"], "rslora": False, "target_modules": None,
           "use_dora": False}
    assert _lora_cell({"lora": old, "study": {"ranks": [4, 16]}}) == (
        "ranks 4, 16, alpha 16.0, dropout 0.0, targets model default, also trained pooler")
    listed = {**old, "target_modules": ["query", "key"], "use_dora": True, "rslora": True}
    assert _lora_cell({"lora": listed, "study": {"ranks": [8]}}) == (
        "ranks 8, alpha 16.0, dropout 0.0, targets ['query', 'key'], also trained pooler, rsLoRA, DoRA")


def test_the_learning_rate_section_says_on_which_seeds_rates_were_compared_when_a_row_holds_more():
    study = make_study_json(ranks=[8], seeds=(42, 43, 44))
    study["rows"]["lora_r8"]["lr_search"] = {"grid": [1e-3, 2e-3, 4e-3], "position": "interior", "searched": True,
                                             "seeds": [42, 43]}
    text = render_report(typed(study), FIGURES)
    assert ("LoRA r=8 (ours): the rates were compared on seeds 42, 43 (those every rate was trained with); its row "
            "holds seeds 42, 43, 44 of the chosen rate 0.001.") in text
    assert "full fine-tuning: the rates were compared" not in text  # its row holds the seeds it was compared on


def test_a_merged_study_without_subspace_grids_for_its_chosen_runs_says_why():
    from lora_pipeline.study_file import read_study

    merged = read_study(ROOT / "docs" / "results" / "sms_spam" / "study.json")
    assert merged.parts
    without = dataclasses.replace(merged, subspace=())  # the record's own parts may or may not supply one
    assert "No subspace similarity: each part of this merged study" in render_report(without, FIGURES)
    if merged.subspace:
        assert "No subspace similarity" not in render_report(merged, FIGURES)
    single = read_study(ROOT / "docs" / "results" / "default_corpus_seed42" / "study.json")
    assert not single.parts and "No subspace similarity" not in render_report(single, FIGURES)
