"""A study over both LoRA axes besides rank, run through the stage mains on the tiny BERT: two target sets
(``default``, ``all_linear``) × two adapters (LoRA, DoRA) at one rank and one seed, with scratch and full. Each
configuration trains into the folder its run spec names, evaluate keeps the four configurations apart as four
study rows with their adapter parameter counts, and the report shows the four rows, the equal-parameter-budget
section, the answer over configurations and the target sets and adapters in its Setup section."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from lora_pipeline.answer import configuration_words
from lora_pipeline.budget import EQUAL_BUDGET_HEADER
from lora_pipeline.records import RunSpec, read_train_record
from lora_pipeline.report_configurations import row_title
from lora_pipeline.study_file import read_study
from tests.support.builders import LRS, RANK, SEED, make_frame, restored_logging, write_clean, write_params
from tests.support.chains import evaluate_args, report_args, run_train, spec_paths, spec_train_args

TARGET_SETS, ADAPTERS = ("default", "all_linear"), ("lora", "dora")  # both defined in the repository's params.yaml
LORA_SPECS = [RunSpec("lora", SEED, LRS["lora"], RANK, targets, adapter) for targets in TARGET_SETS
              for adapter in ADAPTERS]
SPECS = [RunSpec("scratch", SEED, LRS["scratch"]), RunSpec("full", SEED, LRS["full"]), *LORA_SPECS]
ROWS = {f"lora_r{RANK}": ("default", "lora"), f"dora_r{RANK}": ("default", "dora"),
        f"lora_r{RANK}_all_linear": ("all_linear", "lora"), f"dora_r{RANK}_all_linear": ("all_linear", "dora")}


@pytest.fixture(scope="module")
def axes(tmp_path_factory, tiny_model_dir):
    """split → the six train instances → evaluate → report; returns (base dir, exit codes). Each run trains at
    least 48 steps (past the tiny model's flat one-class start, so full fine-tuning is a reference and the answer's
    sequence runs) and stops after 3 validations without a gain: about ten seconds in all."""
    from stages import evaluate, report, split

    base = tmp_path_factory.mktemp("axes")
    clean = write_clean(base / "clean", make_frame(60))
    params = write_params(base / "params.yaml", tiny_model_dir, {
        "study.target_sets": list(TARGET_SETS), "study.adapters": list(ADAPTERS), "scratch.epochs": 1,
        "full.epochs": 10, "lora.epochs": 10, "train.patience": 3, "train.min_steps": 48, "mlflow.enabled": False})
    codes = {}
    with restored_logging():
        codes["split"] = split.main(["--params", str(params), "--clean", str(clean), "--out", str(base / "split"),
                                     "--metrics", str(base / "metrics" / "split.json")])
        for spec in SPECS:
            codes[f"{spec.variant} {spec.tag}"] = run_train(spec.variant,
                                                            spec_train_args(base, spec, params, base / "split"))
        codes["evaluate"] = evaluate.main(evaluate_args(base, params, base / "split"))
        codes["report"] = report.main(report_args(base, params))
    return base, codes


def test_every_stage_of_the_two_axis_study_exits_zero(axes):
    _, codes = axes
    assert len(codes) == 9 and all(code == 0 for code in codes.values()), codes


def test_each_configuration_trains_into_the_folder_its_run_spec_names(axes):
    base, _ = axes
    for spec in LORA_SPECS:
        paths = spec_paths(base, "lora", spec.tag)
        record = read_train_record(paths["metrics"])
        assert (record.tag, record.target_set, record.adapter, record.rank) == \
            (spec.tag, spec.target_set, spec.adapter, RANK)
        assert (paths["out"] / "adapter_config.json").is_file()
        assert json.loads((paths["out"] / "adapter_config.json").read_text())["use_dora"] == (spec.adapter == "dora")


def test_the_study_has_one_row_per_configuration_with_its_axes_and_adapter_parameters(axes):
    base, _ = axes
    study = json.loads((base / "metrics" / "study.json").read_text())
    assert set(study["rows"]) == {"scratch", "full", *ROWS}
    rows = study["rows"]
    for name, (targets, adapter) in ROWS.items():
        assert (rows[name]["target_set"], rows[name]["adapter"], rows[name]["rank"]) == (targets, adapter, RANK)
        assert rows[name]["adapter_params"] > 0
    params = {name: rows[name]["adapter_params"] for name in ROWS}
    for adapter in ADAPTERS:  # every linear layer adapts more than the default query and value
        assert params[f"{adapter}_r{RANK}_all_linear"] > params[f"{adapter}_r{RANK}"]
    for suffix in ("", "_all_linear"):  # DoRA adds a magnitude per output unit of each adapted layer
        assert params[f"dora_r{RANK}{suffix}"] > params[f"lora_r{RANK}{suffix}"]
    assert rows[f"lora_r{RANK}"]["adapter_params"] == 2 * 2 * RANK * (32 + 32)  # 2 layers x (query, value)


def test_the_rank_curve_has_one_series_per_adapter_and_target_set(axes):
    base, _ = axes
    curve = pd.read_csv(base / "metrics" / "rank_curve.csv")
    assert {"adapter", "target_set", "rank"} <= set(curve.columns)
    assert sorted(zip(curve["adapter"], curve["target_set"])) == sorted((a, t) for t, a in ROWS.values())
    assert set(curve["rank"]) == {RANK}


def test_the_report_shows_the_four_configurations_and_the_equal_budget_section(axes):
    base, _ = axes
    report = (base / "reports" / "report.md").read_text()
    comparison = report.split("## Comparison (test)")[1].split("\n## ")[0]
    for name in ROWS:
        assert f"\n| {row_title(name)} |" in comparison, name
    budget = report.split("## Equal parameter budget")[1].split("\n## ")[0]
    # adapter parameters depend on shapes only: LoRA and DoRA on one set are within 1.25x of each other, and sets
    # of different adapters pair, so the section has its table
    assert "| " + " | ".join(EQUAL_BUDGET_HEADER) + " |" in budget, budget
    assert "target sets default (model default) and all_linear (all-linear), adapters LoRA and DoRA" in report


def test_the_answer_names_a_configuration_or_says_why_none(axes):
    base, _ = axes
    study = read_study(base / "metrics" / "study.json")
    answer = study.answer
    report = (base / "reports" / "report.md").read_text()
    assert f"**{answer.sentence}**" in report
    if answer.row is not None:
        assert answer.row in ROWS and configuration_words(study.rows[answer.row], True) in answer.sentence
    elif answer.sequence:  # tested, none passed: the sentence says which configuration stopped the sequence
        assert answer.sentence.startswith(("No LoRA configuration is shown within", "Undecided")), answer.sentence
        assert {s.row for s in answer.sequence} == set(ROWS)
        params = [study.rows[s.row].trainable_params for s in answer.sequence]
        assert params == sorted(params, reverse=True)  # by trainable parameters from the most down
    else:  # no reference to compare with: the sentence says why
        assert answer.sentence.startswith("Full fine-tuning "), answer.sentence
