"""The study file is typed and checked: a study written and read back is the same study, and a file of another
version, without its format, or with a key missing, unknown or of another kind is refused in one line that names the
file, the key and how to rebuild it."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from lora_pipeline.errors import PipelineError
from lora_pipeline.study_file import FORMAT, VERSION, EqualCost, MetricSummary, StudyFile, StudyRow, read_study
from tests.support.studies import make_study, make_study_json


def _write(tmp_path, data) -> str:
    path = tmp_path / "study.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return str(path)


def _refusal(tmp_path, data) -> str:
    path = _write(tmp_path, data)
    with pytest.raises(PipelineError) as err:
        read_study(path)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"'{path}'")
    return message


@pytest.mark.parametrize("shape", [{}, {"ranks": [8], "seeds": [42], "curves": False},
                                   {"bad": {"full": [42, 43]}, "capped": {"lora_r2": [43]}}],
                         ids=["2 ranks x 2 seeds", "1 rank x 1 seed, no curves", "degenerate and capped"])
def test_a_study_written_and_read_back_is_the_same_study(tmp_path, shape):
    study = make_study(**shape)
    study.write(tmp_path / "study.json")
    again = read_study(tmp_path / "study.json")
    assert again == study and again.to_json() == study.to_json()
    data = json.loads((tmp_path / "study.json").read_text(encoding="utf-8"))
    assert data["format"] == FORMAT and data["version"] == VERSION
    assert list(data) == sorted(data)  # written with sorted keys, as evaluate always wrote it


def test_an_unknown_value_is_an_explicit_null_never_a_missing_key(tmp_path):
    data = make_study_json(ranks=[8], seeds=[42], curves=False)
    assert data["equal_cost"] is None and data["parts"] is None and data["rows"]["full"]["vs_full"] is None
    assert data["answer"]["rank"] is None and data["answer"]["cost_ratios"] is None  # no rank passed: no ratios
    del data["parts"]
    assert "the file lacks ['parts']" in _refusal(tmp_path, data)


def test_equal_cost_ranks_read_back_as_numbers():
    cost = EqualCost(clock="cpu_seconds", budget=400.0, full_best=0.87, at_budget={"lora_r2": 0.8, "lora_r16": None}, rank=2,
                     time_within=None, ratio=None, sentence="…")
    text = json.loads(json.dumps(cost.to_json()))
    assert text["at_budget"] == {"lora_r2": 0.8, "lora_r16": None}
    assert EqualCost(**text) == cost and list(EqualCost(**text).at_budget) == ["lora_r2", "lora_r16"]


def test_another_version_is_refused_in_one_line_that_says_how_to_rebuild(tmp_path):
    message = _refusal(tmp_path, {**make_study_json(), "version": VERSION + 1})
    assert f"is study file version {VERSION + 1}, but this lora-pipeline reads version {VERSION}" in message
    assert "`dvc repro -f evaluate`" in message and "`lora-pipeline rebuild <folder>`" in message


def test_a_file_from_before_the_format_or_of_another_format_is_refused(tmp_path):
    old = {k: v for k, v in make_study_json().items() if k not in ("format", "version")}
    assert "has no format or version: it was written by an older evaluate stage" in _refusal(tmp_path, old)
    other = {**make_study_json(), "format": "lora-pipeline study record"}
    assert "is a 'lora-pipeline study record' file, not a lora-pipeline study file" in _refusal(tmp_path, other)
    assert "is not a lora-pipeline study file" in _refusal(tmp_path, [1, 2])


@pytest.mark.parametrize("edit, named", [
    (lambda d: d["rows"]["lora_r2"]["vs_full"].pop("low"), "rows.lora_r2.vs_full lacks ['low']"),
    (lambda d: d["rows"]["full"].pop("lr_search"), "rows.full lacks ['lr_search']"),
    (lambda d: [d.pop(k) for k in ("answer", "labels")], "the file lacks ['labels', 'answer']"),
    (lambda d: d["runs"][3].pop("chosen"), "runs[3] lacks ['chosen']"),
], ids=["nested", "a row's part", "top level", "in a list"])
def test_a_missing_key_is_named_with_its_path(tmp_path, edit, named):
    data = make_study_json()
    edit(data)
    message = _refusal(tmp_path, data)
    assert f": {named} (study file version {VERSION}); rebuild it with this lora-pipeline" in message


def test_an_unknown_key_is_named_so_a_renamed_field_cannot_blank_a_column(tmp_path):
    data = make_study_json()
    data["rows"]["full"]["peak_memory"] = data["rows"]["full"].pop("peak_memory_mb")
    message = _refusal(tmp_path, data)
    assert "rows.full lacks ['peak_memory_mb']" in message
    data = make_study_json()
    data["answer"]["verdict"] = "within"
    assert "answer has ['verdict'], unknown to this version" in _refusal(tmp_path, data)


@pytest.mark.parametrize("edit, named", [
    (lambda d: d["rows"]["full"]["macro_f1"].update(mean="0.88"), "rows.full.macro_f1.mean is str '0.88', not float"),
    (lambda d: d["rows"]["full"].update(seeds=[42, True]), "rows.full.seeds[1] is bool True, not int"),
    (lambda d: d.update(rows=[]), "rows is list [], not an object"),
    (lambda d: d["answer"].update(sentence=None), "answer.sentence is null"),
], ids=["text for a number", "a flag for a seed", "a list for the rows", "null where a value is required"])
def test_a_value_of_another_kind_is_named(tmp_path, edit, named):
    data = make_study_json()
    edit(data)
    assert named in _refusal(tmp_path, data)


def test_parts_built_in_code_are_checked_and_normalised_like_a_read_file():
    summary = MetricSummary(mean=0.8, std=None, low=0.7, high=0.9, interval="…", covers="these models", se=0.05,
                            se_test=0.05, se_seeds=0.0, per_seed=[0.8])
    assert summary.per_seed == (0.8,)  # a list becomes a tuple: frozen all the way down
    with pytest.raises(PipelineError, match=r"MetricSummary: se is str 'x', not float"):
        dataclasses.replace(summary, se="x")
    row = make_study().rows["lora_r2"]
    assert isinstance(row, StudyRow) and row.vs_full.these_models.verdict == "worse"
    assert StudyRow(**row.to_json()) == row  # nested objects become their dataclasses


def test_nan_costs_survive_the_round_trip(tmp_path):
    data = make_study_json(ranks=[8], seeds=[42])
    data["rows"]["lora_r8"].update(train_seconds=math.nan, trainable_params=None)
    path = _write(tmp_path, data)
    row = read_study(path).rows["lora_r8"]
    assert math.isnan(row.train_seconds) and row.trainable_params is None


def test_the_rows_come_in_study_order_whatever_the_file_order():
    study = StudyFile.from_json(make_study_json(ranks=[32, 2]))
    assert [name for name, _ in study.ordered_rows()] == ["scratch", "full", "lora_r2", "lora_r32"]
    assert [row.rank for row in study.lora_rows()] == [2, 32]
    assert list(study.shown_detail()) == ["scratch", "full", "lora_r32", "tfidf_logreg"]
