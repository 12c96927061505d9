"""The report presents the study's answer: the answer sentence and the equal-cost reading first, what the
intervals cover, degenerate models named with why, runs capped while improving labelled (never called worse),
TF-IDF notes kept apart from degenerate flags, every section in order, figures that draw on every shape of study
(tests/stages/test_report_figures.py), and the stage turning study.json alone into report.md, PNGs and one MLflow
run."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest

from lora_pipeline import answer as answer_lib
from lora_pipeline import study as study_lib
from lora_pipeline.config import ModelConfig
from lora_pipeline.figures import save_figures
from lora_pipeline.files import write_json
from lora_pipeline.record import RUN_FIELDS
from lora_pipeline.reporting import render_report, setup_section
from lora_pipeline.study_file import VERSION, ReferenceScores
from tests.support.builders import ROOT
from tests.support.studies import (FIGURES, LABELS, N_TEST, PNG_MAGIC, SCRATCH_REASON, make_study, make_study_json,
                                   params_dict, table, typed)

TABLE = "variant | test macro-F1 (mean ± std)"


def verdict_lines(text: str) -> list[str]:
    """The unadjusted per-rank verdicts: the bullet list after its lead-in paragraph."""
    paragraphs = text.split("\n\n")
    lead = next(i for i, p in enumerate(paragraphs) if p.startswith("Each rank against full fine-tuning, unadjusted"))
    return [line[2:] for line in paragraphs[lead + 1].splitlines()]


# --------------------------------------------------------------------------------------------- Markdown


def test_the_answer_then_the_equal_cost_reading_come_first_then_what_intervals_cover():
    study = make_study()
    paragraphs = render_report(study, FIGURES).split("\n\n")
    assert paragraphs[0].startswith("# ")
    assert paragraphs[1] == f"**{study.answer.sentence}**"
    assert study.answer.rank == 32 and "smallest LoRA rank within 1 point of full fine-tuning is 32" \
        in paragraphs[1]
    cost = study.equal_cost
    assert cost.budget == pytest.approx(400.0) and cost.rank == 32  # full: best at step 200 × 2 CPU-s
    assert paragraphs[2] == f"**{study.answer.equal_cost}**" == f"**{cost.sentence}**"
    assert "by the 400 CPU-seconds full fine-tuning needed to reach its best (0.870)" in paragraphs[2]
    assert "Rank 32 came within 1 point of it after 200 CPU-seconds (0.50× full fine-tuning's)" in paragraphs[2]
    assert paragraphs[3].startswith(f"All rows are scored once, at the checkpoint chosen on validation, on the same "
                                    f"held-out test split ({N_TEST:,} examples). Intervals are 95 %")
    assert f"The answer's procedure: {answer_lib.PROCEDURE}." in paragraphs[3]


def test_without_learning_curves_no_equal_cost_sentence_is_printed():
    study = make_study(curves=False)
    assert study.answer.equal_cost is None
    paragraphs = render_report(study, FIGURES).split("\n\n")
    assert paragraphs[1] == f"**{study.answer.sentence}**"
    assert paragraphs[2].startswith("All rows are scored once") and "At equal cost" not in "".join(paragraphs)


def test_the_intervals_paragraph_says_whether_the_numbers_are_about_the_methods_or_these_models():
    methods = render_report(make_study(), FIGURES)
    assert "they are about the methods (a new seed, a new test set)" in methods
    assert "these trained models" not in methods
    one_seed = render_report(make_study(ranks=[8], seeds=[42]), FIGURES)
    assert "about these trained models, not the method" in one_seed and "about the methods" not in one_seed
    mixed = make_study_json()
    mixed["rows"]["scratch"]["macro_f1"]["covers"] = "these models"  # one row without seed variance
    text = render_report(typed(mixed), FIGURES)
    assert "about these trained models, not the method" in text and "about the methods" not in text


def test_a_degenerate_row_prints_its_reason_and_why_it_could_not_learn():
    study = make_study()
    paragraphs = render_report(study, FIGURES).split("\n\n")
    why = study.rows["scratch"].degenerate_why
    assert why.startswith("it stopped on a validation plateau (best at step 200 of 240) without learning beyond "
                          "the majority class at lr 0.0004")
    assert paragraphs[4] == (f"⚠ **BERT from scratch (seed 42) is degenerate**: {SCRATCH_REASON}; its numbers are "
                             f"not a result. Why: {why}.")
    assert "(seed 43) is degenerate" not in "\n\n".join(paragraphs)  # only the seed that collapsed
    capped = render_report(make_study(capped={"scratch": [42]}), FIGURES)
    assert (f"{SCRATCH_REASON}; its numbers are not a result. Why: it was still improving when it hit its cap of "
            "240 steps at lr 0.0004: it needs more steps") in capped


def test_verdicts_are_an_unadjusted_list_in_words_and_no_winner_is_named():
    text = render_report(make_study(), FIGURES)
    assert ("Each rank against full fine-tuning, unadjusted (the answer above controls the family; these lines do "
            "not):") in text.split("\n\n")
    assert verdict_lines(text) == [
        "LoRA r=2 (ours) is worse than full fine-tuning at 95 %: paired difference -3.00 points, 95 % interval over "
        "seeds and test examples [-3.40, -2.40] (2 seeds).",
        "LoRA r=32 (ours) is indistinguishable from full fine-tuning at 95 %: paired difference -0.50 points, 95 % "
        "interval over seeds and test examples [-0.90, +0.10] (2 seeds)."]
    one_seed = verdict_lines(render_report(make_study(ranks=[8], seeds=[42]), FIGURES))
    assert one_seed == ["LoRA r=8 (ours) is worse than full fine-tuning at 95 %: paired difference -1.00 points, "
                        "95 % interval over test examples, these models [-1.40, -0.40] (1 seed)."]
    checkpoints = r"best (step|checkpoint|validation|at step|so far)|its best|a new best|s to best"  # not a ranking
    assert not re.search(r"\b(best|winner|wins)\b", re.sub(checkpoints, "", text, flags=re.I), re.I)


def test_a_tfidf_note_is_printed_as_a_note_and_the_row_is_not_called_degenerate():
    study = make_study(bad={}, tfidf=0.86)  # no degenerate seed; r2 (0.85) and scratch (0.70) trail TF-IDF
    text = render_report(study, FIGURES)
    notes = [p for p in text.split("\n\n") if p.startswith("Note — ")]
    assert [n.split(":")[0] for n in notes] == ["Note — BERT from scratch", "Note — LoRA r=2 (ours)"]
    assert notes[1] == ("Note — LoRA r=2 (ours): seed 42: not better than the TF-IDF reference: macro-F1 difference "
                        "-0.0110, 95 % paired interval [-0.0240, +0.0020] (indistinguishable); seed 43: not better "
                        "than the TF-IDF reference: macro-F1 difference -0.0090, 95 % paired interval [-0.0220, "
                        "+0.0040] (indistinguishable).")
    assert "is degenerate" not in text and "⚠" not in text  # no flag, no warning
    comparison = {r[0]: r for r in table(text, TABLE)}
    assert comparison["LoRA r=2 (ours)"][-1] == comparison["BERT from scratch"][-1] == "no"
    assert comparison["LoRA r=2 (ours)"][7] == "worse"  # a note removes no rank from the answer's sequence


def test_a_seed_that_did_not_converge_is_labelled_and_its_rank_is_never_called_worse():
    study = make_study(capped={"lora_r2": [43]})
    text = render_report(study, FIGURES)
    assert ("⏱ **LoRA r=2 (ours) did not converge** (seed 43: still improving at the cap of 240 steps); it is never "
            "called worse.") in text.split("\n\n")
    r2 = next(line for line in verdict_lines(text) if line.startswith("LoRA r=2"))
    assert "worse" not in r2 and "did not converge" in r2 and "-3.00 points" in r2
    row = {r[0]: r for r in table(text, TABLE)}["LoRA r=2 (ours)"]
    assert row[18] == "⏱ no (seed 43)" and row[7] == "not converged"
    assert "worse" not in row[6]  # the unadjusted column does not call it worse either
    assert [s.status for s in study.answer.sequence] == ["within", "not converged"]
    runs = [r for r in table(text, "variant | rank | seed") if r[1] == "2" and r[2] == "43"]
    assert runs and all(r[10] == "⏱ cap" for r in runs)


def test_a_degenerate_reference_supports_no_verdict():
    study = make_study(bad={"full": [42, 43]})
    text = render_report(study, FIGURES)
    assert "⚠ **full fine-tuning (seed 43) is degenerate**" in text
    assert "no comparison is stated" in study.answer.sentence
    assert "is worse than full fine-tuning" not in text and "indistinguishable from full" not in text
    assert "Each rank against full fine-tuning, unadjusted" not in text
    rows = {r[0]: r for r in table(text, TABLE)}
    assert rows["LoRA r=2 (ours)"][6] == rows["LoRA r=32 (ours)"][6] == "none: full fine-tuning is degenerate"
    assert rows["LoRA r=2 (ours)"][7] == "–"  # no rank was tested


def test_sections_come_in_the_order_of_the_study():
    text = render_report(make_study(), FIGURES, dataset={"source": "x", "labels": LABELS}, params=params_dict())
    order = ["## Data", "## Setup", "## Rank curve", "## Comparison", "## Learning-rate choice",
             "## Where each run stopped", "## What rank the adapters used", "## Per-class F1", "## Learning curves"]
    positions = [text.index(h) for h in order]
    assert positions == sorted(positions)
    for key, link in FIGURES.items():
        assert f"]({link})" in text, key
    bare = render_report(make_study(), FIGURES)
    assert "## Data" not in bare and "## Setup" not in bare  # no dataset.json / params: no section


def test_comparison_table_rows_numbers_intervals_and_what_they_cover():
    text = render_report(make_study(ranks=[2, 8, 32]), FIGURES)
    header = next(line for line in text.splitlines() if line.startswith(f"| {TABLE} |"))
    assert [c.strip() for c in header.split("|")[1:-1]][3:8] == [
        "covers", "accuracy [interval]", "vs full: points [interval]", "verdict (unadjusted)", "answer's test"]
    rows = table(text, TABLE)
    assert [r[0] for r in rows] == ["BERT from scratch", "full fine-tuning", "LoRA r=2 (ours)", "LoRA r=8 (ours)",
                                    "LoRA r=32 (ours)", "TF-IDF + logistic regression"]
    assert {len(r) for r in rows} == {20}  # no cell broke the table
    scratch, full, r2, r8, r32, tfidf = rows
    assert r32[1:] == ["0.8750 ± 0.0040", "[0.8650, 0.8850]", "method", "0.8350 [0.8250, 0.8450]",
                       "-0.50 [-0.90, +0.10]", "indistinguishable at 95 %", "within", "0.001", "2", "1,034,736",
                       "0.82", "200", "260.0", "1,800.00", "3.95", "fp32", "240", "yes", "no"]
    # the fixed sequence: 32 passes, 8 straddles the margin and stops it, 2 is never tested
    assert [r32[7], r8[7], r2[7]] == ["within", "undecided", "not tested"]
    assert r2[6] == "worse at 95 %" and full[5] == "reference" and full[6] == full[7] == "–"
    assert full[12] == "400" and scratch[12] == "300"  # CPU seconds to the kept checkpoint
    assert scratch[-1] == "⚠ seed 42" and scratch[-2] == "yes"
    assert tfidf[1:5] == ["0.8100", "[0.8000, 0.8200]", "these models", "0.7800 [0.7700, 0.7900]"]
    assert set(tfidf[5:]) == {"–"}


def test_one_seed_shows_the_fixed_model_interval_without_a_spread():
    rows = table(render_report(make_study(ranks=[8], seeds=[42]), FIGURES), TABLE)
    r8 = next(r for r in rows if r[0] == "LoRA r=8 (ours)")
    assert r8[1:4] == ["0.8700", "[0.8580, 0.8820]", "these models"] and r8[9] == "1"


def test_learning_rate_table_shows_every_lr_and_the_chosen_one():
    text = render_report(make_study(), FIGURES)
    assert "the test split was scored only for the chosen lr" in text
    rows = table(text, "variant | lr | validation macro-F1")
    assert ["full fine-tuning", "5e-05", "0.8700", "✓ chosen"] in rows
    assert ["full fine-tuning", "0.0001", "0.8600", ""] in rows
    assert ["LoRA r=2 (ours)", "0.002", "0.8300", ""] in rows
    assert len(rows) == 1 + 2 + 2 * 2  # scratch 1 lr, full 2, two LoRA ranks × 2


def test_runs_table_says_where_each_run_stopped_what_stopped_it_and_why():
    study = make_study(capped={"full": [43]})
    text = render_report(study, FIGURES)
    header = next(line for line in text.splitlines() if line.startswith("| variant | rank | seed |"))
    assert [c.strip() for c in header.split("|")[1:-1]][-3:] == ["CPU s to best", "stopped by", "why"]
    rows = table(text, "variant | rank | seed")
    assert len(rows) == len(study.runs) == 2 * (1 + 2 + 2 + 2)
    assert ["LoRA (ours)", "32", "43", "0.002", "", "0.8550", "240", "0.79", "200", "200", "plateau",
            r"plateau: no gain > 0.001 in validation macro-F1 for 2 validations (best at step 200) \| lr 0.002"] \
        in rows  # the pipe cannot split a cell
    assert ["full fine-tuning", "–", "43", "5e-05", "✓", "0.8700", "240", "0.79", "240", "480", "⏱ cap",
            r"cap: reached max_steps 240 (0.79 epochs) while still improving (last gain at step 240) \| lr 5e-05"] \
        in rows
    assert [r[0] for r in rows[:2]] == ["BERT from scratch"] * 2


def test_effective_rank_table_averages_layers_and_seeds():
    text = render_report(make_study(), FIGURES)
    assert "effective rank = singular values holding 90 % of the update's energy" in text.lower()
    rows = table(text, "LoRA rank")
    assert rows == [["2", "1.7", "1–2", "6", "2"], ["32", "2.0", "1–3", "6", "2"]]


def test_per_class_table_covers_scratch_full_the_record_row_and_tfidf():
    rows = table(render_report(make_study(), FIGURES), "model")
    assert [r[0] for r in rows] == ["BERT from scratch (seed 42)", "full fine-tuning (seed 42)",
                                    "LoRA r=32 (ours) (seed 42)", "TF-IDF + logistic regression"]
    assert rows[0][1:] == ["0.8500", "0.7500"]


def test_setup_describes_convergence_based_training_and_what_each_variant_trained():
    params = params_dict()
    text = setup_section(params)
    assert f"Base model **{ModelConfig().name}** (max_length 64)" in text
    assert "Seeds 42: every trained row is repeated with each." in text
    assert ("Training length: until validation macro-F1 stops improving — validation every quarter epoch (auto) "
            "and at the last step, stop after 4 validations without a gain of more than 0.001 (0: never), the best "
            "checkpoint kept — capped at the variant's epochs (raised to at least 300 steps) and at 6000 steps.") \
        in text
    assert "stays above −1 point (1000 bootstrap resamples, raised near a threshold)" in text
    assert "| variant | what was trained | learning-rate grid | max epochs |" in text
    assert ("| LoRA (ours) | ranks 4, 16, alpha 16.0, dropout 0.0, target set default (model default), adapter "
            "LoRA, also trained pooler | 0.002 | 20 |") in text
    assert "| full fine-tuning | every parameter | 0.0001 | 10 |" in text
    params["train"].update(eval_every=50, max_steps=0, min_delta=0.0, patience=4)
    text = setup_section(params)
    assert "validation every 50 steps and at the last step, stop after 4 validations without a gain of more than 0.0" \
        in text and "300 steps) and at no step cap." in text
    assert "None" in setup_section({"train": {}})  # a key the lead removed shows as missing, never fails


# -------------------------------------------------------------------------------------------------- stage


def _params_file(path: Path) -> Path:
    """The repository's params.yaml (the report stage reads only its mlflow section)."""
    path.write_text((ROOT / "params.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    return path


def _stage_args(tmp_path: Path, study: Path, out: Path) -> list[str]:
    return ["--params", str(_params_file(tmp_path / "params.yaml")), "--study", str(study),
            "--report", str(out / "report.md"), "--figures", str(out / "figures")]


DATASET = {"source": "pypi:some-reviews", "rows_raw": 1000, "rows_clean": 990, "labels": LABELS,
           "rows_per_split": {"train": 700, "val": 140, "test": 150},
           "rows_per_class_per_split": {"test": {"neg": 75, "pos": 75}}}


@pytest.mark.parametrize("shape", [{}, {"ranks": [8], "seeds": [42], "dataset": DATASET}],
                         ids=["2 ranks x 2 seeds", "1 rank x 1 seed with dataset"])
def test_stage_writes_the_report_figures_and_one_mlflow_run_from_study_json_alone(tmp_path, monkeypatch, shape):
    from stages import report as stage

    study = make_study_json(**shape)
    study["params"]["model"]["name"] = "tiny-bert-from-the-study"  # Setup is drawn from study.json, not params.yaml
    write_json(tmp_path / "metrics" / "study.json", study)  # sorted keys, as evaluate writes it
    logged = []
    monkeypatch.setattr(stage, "log_stage_run", lambda cfg, name, **kw: logged.append((name, kw)))
    out = tmp_path / "reports"
    assert stage.main(_stage_args(tmp_path, tmp_path / "metrics" / "study.json", out)) == 0
    text = (out / "report.md").read_text(encoding="utf-8")
    assert text.split("\n\n")[1] == f"**{study['answer']['sentence']}**"
    assert text.split("\n\n")[2] == f"**{study['equal_cost']['sentence']}**"
    if shape.get("dataset"):  # the split stage's summary travels inside study.json
        assert "## Data" in text and "pypi:some-reviews" in text
    else:
        assert "## Data" not in text
    assert "## Setup" in text and "Base model **tiny-bert-from-the-study**" in text
    names = [r[0] for r in table(text, TABLE)]  # rows ordered by the study, not by study.json's sorted keys
    assert names[0] == "BERT from scratch" and names[-1] == "TF-IDF + logistic regression"
    for link in FIGURES.values():
        assert f"]({link})" in text and (out / link).stat().st_size > 10_000
    assert ("is degenerate" in text) and "plateau: no gain" in text
    (name, kw), = logged
    assert name == "report" and len(kw["tags"]["answer"]) <= 100  # the run's description holds the whole answer
    assert kw["tags"]["mlflow.note.content"].startswith(study["answer"]["sentence"])
    assert kw["metrics"]["answer_rank"] == (study["answer"]["rank"] or 0)
    assert kw["metrics"]["test_macro_f1.full"] == pytest.approx(0.88)
    assert kw["metrics"]["test_macro_f1.tfidf_logreg"] == pytest.approx(0.81)
    assert [Path(p).name for p in kw["artifacts"]] == ["report.md", "figures", "study.json"]


def _without(key: str) -> dict:
    study = make_study_json()
    del study["rows"]["lora_r2"]["vs_full"][key]
    return study


@pytest.mark.parametrize("content, message", [
    (None, "study file '{path}' not found; run the evaluate stage first (`dvc repro evaluate`)"),
    ('{"rows": {}}', "'{path}' has no format or version: it was written by an older evaluate stage; rebuild it "
                     "with this lora-pipeline: `dvc repro -f evaluate`"),
    ({**make_study_json(), "version": VERSION - 1}, f"'{{path}}' is study file version {VERSION - 1}, but this "
                                                    f"lora-pipeline reads version {VERSION}; rebuild it with this "
                                                    "lora-pipeline"),
    (_without("low"), f"'{{path}}': rows.lora_r2.vs_full lacks ['low'] (study file version {VERSION}); rebuild it"),
    ('{"rows": ', "'{path}' is not valid JSON"),
], ids=["missing", "stale", "another version", "a key missing", "truncated"])
def test_stage_names_a_missing_stale_or_other_version_study_file_in_one_line(tmp_path, capsys, content, message):
    from stages import report as stage

    path = tmp_path / "study.json"
    if content is not None:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    rc = stage.main(_stage_args(tmp_path, path, tmp_path))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("report failed: ") and message.format(path=path) in err[0]
    assert not (tmp_path / "report.md").exists() and not (tmp_path / "figures").exists()


def test_report_renders_the_rows_that_study_summarise_builds(tmp_path):
    """The fixture above mirrors the schema; this builds the rows with the real study functions instead: a
    collapsed seed is flagged with why, a coin-flip seed only gets the TF-IDF note, a capped rank is never worse."""
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 2, 300)

    def noisy(accuracy: float) -> np.ndarray:
        return np.where(rng.random(300) < accuracy, y_true, 1 - y_true)

    capped = {("lora", 2, 2)}  # rank 2's seed 2 hit its cap while still improving
    records = [{"variant": v, "rank": r, "seed": s, "lr": lr, "val_macro_f1": 0.8 + 0.01 * i, "tag": f"{v}{r}-{s}-{lr}",
                "trainable_params": 1000 * (r or 100), "trainable_percent": 1.0, "size_on_disk_mb": 1.0,
                "total_params": 100_000, "precision": "fp32", "train_seconds": 10.0, "train_cpu_seconds": 20.0,
                "seconds_to_best": 8.0, "cpu_seconds_to_best": 16.0 if v == "full" else 8.0, "peak_memory_mb": None,
                "steps": 240, "planned_steps": 240, "best_step": 200, "epochs": 1.5,
                "converged": (v, r, s) not in capped, "stopped_by": "cap" if (v, r, s) in capped else "plateau",
                "stop_reason": "cap: …" if (v, r, s) in capped else "plateau: …"}
               for v, r in (("scratch", None), ("full", None), ("lora", 2), ("lora", 8)) for s in (1, 2)
               for i, lr in enumerate((1e-3, 2e-3))]
    groups = study_lib.choose_learning_rates(records)
    accuracy = {"full": 0.9, "lora_r2": 0.6, "lora_r8": 0.9}
    preds = {g.name: [noisy(accuracy[g.name]) for _ in g.records] for g in groups if g.name in accuracy}
    preds["scratch"] = [np.zeros(300, dtype=int), noisy(0.5)]  # seed 1 collapsed, seed 2 a coin flip
    rows = study_lib.summarise(groups, preds, y_true, LABELS, noisy(0.8), tolerance=0.01)
    answer = answer_lib.answer(rows, 0.01)
    study = dataclasses.replace(  # nothing else of the synthetic study: no detail, adapters, curves or params
        make_study(), n_test=300, rows=rows, answer=answer, equal_cost=None, record=None, detail={}, spectra=(),
        subspace=(), validation_curves={}, learning_curves={}, params={},
        tfidf_logreg=ReferenceScores(macro_f1=0.8, macro_f1_low=0.75, macro_f1_high=0.85, accuracy=0.8,
                                     accuracy_low=0.75, accuracy_high=0.85),
        runs=[{**dict.fromkeys(RUN_FIELDS), **r, "chosen": r["lr"] == 2e-3} for r in records])
    text = render_report(study, FIGURES)
    paragraphs = text.split("\n\n")
    assert paragraphs[1] == f"**{answer.sentence}**"
    assert paragraphs[2].startswith("All rows are scored once") and "about the methods" in paragraphs[2]
    assert paragraphs[3].startswith("⚠ **BERT from scratch (seed 1) is degenerate**: predicts only 'neg' for all 300 "
                                    "test examples (collapsed); its numbers are not a result. Why: it stopped on a "
                                    "validation plateau")
    assert "(seed 2) is degenerate" not in text
    assert rows["scratch"].notes[1].startswith("not better than the TF-IDF reference")
    assert "Note — BERT from scratch: seed 1: not better than the TF-IDF reference" in text \
        and "seed 2: not better than the TF-IDF reference" in text
    assert "⏱ **LoRA r=2 (ours) did not converge** (seed 2: still improving at the cap of 240 steps)" in text
    assert rows["lora_r2"].vs_full.high < -0.01  # clearly behind full fine-tuning, and yet:
    r2 = next(line for line in verdict_lines(text) if line.startswith("LoRA r=2"))
    assert "worse" not in r2
    comparison = table(text, TABLE)
    assert [r[0] for r in comparison] == [
        "BERT from scratch", "full fine-tuning", "LoRA r=2 (ours)", "LoRA r=8 (ours)", "TF-IDF + logistic regression"]
    assert [r[3] for r in comparison] == ["method"] * 4 + ["these models"]
    assert comparison[2][7] == {s.rank: s.status for s in answer.sequence}[2]
    assert "nan" not in text.lower()
    paths = save_figures(study, tmp_path)
    assert all(p.read_bytes().startswith(PNG_MAGIC) for p in paths.values())
