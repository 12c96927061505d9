"""Bring your own data, point 1: predefined split files used as given, val carved from train, leakage reported,
every file validated, unlabelled test refused. Runs ingest → validate → split on files written here."""

from __future__ import annotations

import json

import pytest

from tests.support.data_stages import run_data_stages, write_files

WORDS = {"pos": "good fine great nice", "neg": "bad poor awful dull"}


def texts(prefix: str, n: int) -> str:
    """``n`` CSV rows ``text,label`` (alternating labels) whose texts start with ``prefix``."""
    rows = []
    for i in range(n):
        label = "pos" if i % 2 else "neg"
        rows.append(f"{prefix} {i} {WORDS[label]},{label}\n")
    return "".join(rows)


def test_three_predefined_files_are_used_as_given_and_leakage_is_reported(tmp_path, tiny_model_dir):
    # the test file repeats one train text: kept (files are used as given) but reported as leakage
    leaked = "train 3 good fine great nice,pos\n"
    root = write_files(tmp_path / "data", {"tr.csv": "text,label\n" + texts("train", 20),
                                           "dev.csv": "text,label\n" + texts("dev", 6),
                                           "te.csv": "text,label\n" + texts("test", 8) + leaked})
    out = run_data_stages(tmp_path, {"path": str(root), "splits": {"train": "tr.csv", "val": "dev.csv",
                                                                   "test": "te.csv"}}, model_dir=tiny_model_dir)
    assert out["split_rc"] == 0
    manifest = json.loads((out["raw"] / "manifest.json").read_text())
    assert manifest["rows_per_split"] == {"test": 9, "train": 20, "val": 6}
    assert set(manifest["splits"]) == {"train", "val", "test"} and len(manifest["splits"]["test"]["sha256"]) == 64
    v = out["validate_metrics"]
    assert (v["rows_train"], v["rows_val"], v["rows_test"], v["texts_across_splits"]) == (20, 6, 9, 1)
    assert v["expectations_failed_soft"] == 1  # no_text_across_splits warns, does not fail
    parts = out["parts"]
    assert [len(parts[n]) for n in ("train", "val", "test")] == [20, 6, 9]
    assert parts["val"]["text"].tolist() == [line.split(",")[0] for line in texts("dev", 6).splitlines()]  # order kept
    assert out["split_metrics"]["shared_texts_train_test"] == 1 and out["split_metrics"]["shared_texts_train_val"] == 0


def test_duplicates_are_dropped_within_a_file_not_across_files(tmp_path):
    root = write_files(tmp_path / "data", {"tr.csv": "text,label\n" + texts("a", 10) + "a 1 good fine great nice,pos\n",
                                           "te.csv": "text,label\n" + texts("b", 6) + "a 1 good fine great nice,pos\n"})
    out = run_data_stages(tmp_path, {"path": str(root), "splits": {"train": "tr.csv", "test": "te.csv"}})
    v = out["validate_metrics"]
    assert v["dropped_duplicates"] == 1 and (v["rows_train"], v["rows_test"]) == (10, 7)


def test_train_and_test_only_carves_a_stratified_val_from_train(tmp_path, tiny_model_dir):
    root = write_files(tmp_path / "data", {"tr.csv": "text,label\n" + texts("train", 40),
                                           "te.csv": "text,label\n" + texts("test", 10)})
    out = run_data_stages(tmp_path, {"path": str(root), "splits": {"train": "tr.csv", "test": "te.csv"}},
                          model_dir=tiny_model_dir, split={"val_size": 0.25})
    parts = out["parts"]
    assert [len(parts[n]) for n in ("train", "val", "test")] == [30, 10, 10]
    assert parts["val"]["label"].value_counts().to_dict() == {"neg": 5, "pos": 5}  # stratified
    assert parts["val"]["text"].str.startswith("train").all() and parts["test"]["text"].str.startswith("test").all()
    assert not set(parts["val"]["text"]) & set(parts["train"]["text"])


@pytest.mark.parametrize("test_file, expected", [
    ("text\nunlabelled one\nunlabelled two\n", "has no column 'label'"),
    ("text,label\nunlabelled one,\nunlabelled two,\n", "has no labels (all 2 values of 'label' are empty"),
])
def test_a_test_file_without_labels_is_refused_with_the_fix(tmp_path, capsys, test_file, expected):
    root = write_files(tmp_path / "data", {"tr.csv": "text,label\n" + texts("train", 10), "te.csv": test_file})
    out = run_data_stages(tmp_path, {"path": str(root), "splits": {"train": "tr.csv", "test": "te.csv"}})
    assert out["ingest"] == 2 and not out["raw"].exists()
    err = capsys.readouterr().err
    assert f"data.splits.test {root / 'te.csv'} {expected}" in err
    assert "use its labelled validation file as test" in err


def test_every_file_is_validated_and_a_label_missing_from_train_fails(tmp_path, capsys):
    root = write_files(tmp_path / "data", {"tr.csv": "text,label\n" + texts("train", 10),
                                           "te.csv": "text,label\n" + texts("test", 6) + "   ,pos\nodd one,other\n"})
    out = run_data_stages(tmp_path, {"path": str(root), "splits": {"train": "tr.csv", "test": "te.csv"}},
                          {"min_rows_per_class": 1})
    assert out["validate"] == 2
    err = capsys.readouterr().err
    assert "split_labels_in_train" in err and "test row 17: text='odd one' label='other'" in err


def test_split_files_must_exist_under_data_path(tmp_path, capsys):
    root = write_files(tmp_path / "data", {"tr.csv": "text,label\n" + texts("train", 10)})
    out = run_data_stages(tmp_path, {"path": str(root), "splits": {"train": "tr.csv", "test": "nope.csv"}})
    assert out["ingest"] == 2
    assert "data.splits: ['nope.csv'] not found (names are relative to data.path" in capsys.readouterr().err
