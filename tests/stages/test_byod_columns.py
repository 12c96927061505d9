"""Bring your own data, point 2: joined text columns, one file per class, numeric labels with names used from
the clean data on (labels.json → id2label, metrics, report), labels inferred when validate.labels is unset."""

from __future__ import annotations

import json

import pandas as pd

from lora_pipeline.config import parse_params
from tests.support.data_stages import run_data_stages, write_files


def test_several_text_columns_are_joined_with_the_separator_and_missing_parts_counted(tmp_path):
    rows = "".join(f"title {i},body {i} words,{i % 2}\n" for i in range(8)) + "lone title,,1\n,only body,0\n"
    root = write_files(tmp_path, {"news.csv": "title,description,label\n" + rows})
    out = run_data_stages(tmp_path, {"path": str(root / "news.csv"), "text_column": ["title", "description"],
                                     "text_separator": " — "}, {"labels": [0, 1], "min_rows_per_class": 1})
    assert out["validate"] == 0
    raw = pd.read_parquet(out["raw"] / "data.parquet")
    assert raw["text"].tolist()[:2] == ["title 0 — body 0 words", "title 1 — body 1 words"]
    assert raw["text"].tolist()[-2:] == ["lone title", "only body"]  # null parts skipped, not "nan"
    manifest = json.loads((out["raw"] / "manifest.json").read_text())
    assert manifest["changes"]["texts_joined_with_missing_part"] == 2
    assert manifest["text_column"] == ["title", "description"]


def test_one_file_per_class_reads_cp1252_lines_without_nel_splits(tmp_path):
    # 0x85 is '…' in cp1252 and NEL in Latin-1: str.splitlines() would cut these lines in two
    pos = b"".join(b"a fine film number %d \x85 really \n" % i for i in range(6))
    neg = b"".join(b"a dull film number %d \x97 sadly \n" % i for i in range(5)) + b"\n"
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.pos").write_bytes(pos)
    (tmp_path / "d" / "x.neg").write_bytes(neg)
    out = run_data_stages(tmp_path, {"path": str(tmp_path / "d"), "encoding": "cp1252", "label_column": "category",
                                     "class_files": {"x.pos": "positive", "x.neg": "negative"}},
                          {"min_rows_per_class": 1})
    assert out["validate"] == 0
    raw = pd.read_parquet(out["raw"] / "data.parquet")
    assert raw["label"].value_counts().to_dict() == {"positive": 6, "negative": 6}  # 5 texts + 1 empty line
    assert raw["text"].isna().sum() == 1 and raw["text"].dropna().str.contains("\u2026").sum() == 6
    assert out["validate_metrics"]["dropped_empty"] == 1 and out["validate_metrics"]["rows_clean"] == 11
    manifest = json.loads((out["raw"] / "manifest.json").read_text())
    assert manifest["class_files"]["x.pos"]["rows"] == 6 and manifest["format"] == "lines"


def test_numeric_labels_in_params_with_names_are_used_everywhere(tmp_path, tiny_model_dir):
    cfg = parse_params({"data": {"source": "file", "path": "x"},
                        "validate": {"labels": [1, 2, 10], "label_names": {1: "World", 2: "Sports", 10: "Sci/Tech"}}},
                       ["validate"])
    assert cfg.validate.labels == ("1", "2", "10") and cfg.validate.label_names["10"] == "Sci/Tech"
    rows = "".join(f"story {i} about {['globe', 'match', 'chips'][i % 3]},{[1, 2, 10][i % 3]}\n" for i in range(30))
    root = write_files(tmp_path, {"ag.csv": "text,label\n" + rows})
    out = run_data_stages(tmp_path, {"path": str(root / "ag.csv")},
                          {"labels": [1, 2, 10], "label_names": {1: "World", 2: "Sports", 10: "Sci/Tech"}},
                          model_dir=tiny_model_dir)
    assert out["split_rc"] == 0
    labels = json.loads((out["split"] / "labels.json").read_text())
    assert labels == ["World", "Sports", "Sci/Tech"]  # id order follows the numbers (1, 2, 10), not the names
    assert out["validate_metrics"]["rows_per_class_Sports"] == 10
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert summary["labels"] == labels and summary["label_names"] == {"1": "World", "2": "Sports", "10": "Sci/Tech"}
    train = out["parts"]["train"]
    assert set(train["label"]) == set(labels)
    assert (train["label"].map(labels.index) == train["label_id"]).all()


def test_labels_may_be_unset_inferred_and_recorded(tmp_path):
    rows = "".join(f"text {i},{['b', 'a', 'c'][i % 3]}\n" for i in range(12))
    root = write_files(tmp_path, {"d.csv": "text,label\n" + rows})
    out = run_data_stages(tmp_path, {"path": str(root / "d.csv")}, {"labels": None, "min_rows_per_class": 1})
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert summary["labels_inferred"] is True and summary["labels"] == ["a", "b", "c"]
    assert json.loads((out["clean"] / "dataset.json").read_text())["labels_inferred"] is True


def test_a_label_without_a_name_fails_validation_naming_it(tmp_path, capsys):
    rows = "".join(f"text {i},{i % 3}\n" for i in range(12))
    root = write_files(tmp_path, {"d.csv": "text,label\n" + rows})
    out = run_data_stages(tmp_path, {"path": str(root / "d.csv")},
                          {"min_rows_per_class": 1, "label_names": {0: "zero", 1: "one"}})
    assert out["validate"] == 2
    assert "validate.label_names has no name for label(s) ['2']" in capsys.readouterr().err
