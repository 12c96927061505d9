"""Bring your own data, points 3-4: quoting that changes texts is refused with the fix (or counted), a seeded
stratified subsample keeps the class shares, and the split stage reports what model.max_length cuts."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from lora_pipeline.data.sampling import stratified_subsample
from tests.support.data_stages import run_data_stages, write_files

# sentence pairs as MRPC ships them: quotes are part of the sentences, never CSV quoting
PAIRS = "".join(f'{i % 2}\t"Quoted sentence {i}" he said .\tplain pair {i}\n' for i in range(6)) + \
    "".join(f'{i % 2}\t"whole sentence {i} in quotes"\tother {i}\n' for i in range(6))
PAIR_DATA = {"format": "tsv", "header": False, "column_names": ["label", "s1", "s2"], "text_column": "s1",
             "text_pair_column": "s2"}


def test_tsv_pairs_with_quotes_fail_with_the_fix_under_minimal_quoting(tmp_path, capsys):
    root = write_files(tmp_path, {"pairs.tsv": PAIRS})
    out = run_data_stages(tmp_path, {"path": str(root / "pairs.tsv"), **PAIR_DATA}, {"min_rows_per_class": 1})
    assert out["ingest"] == 2 and not out["raw"].exists()
    err = capsys.readouterr().err
    assert "data.quoting 'minimal' changed the data: 6 record(s) have a double quote" in err
    assert "(first at line 1:" in err and "Fix: set data.quoting: none" in err


def test_whole_field_quotes_in_a_tsv_are_counted_when_accepted(tmp_path, capsys):
    rows = "".join(f'{i % 2}\t"whole sentence {i} in quotes"\tother {i}\n' for i in range(6))
    root = write_files(tmp_path, {"pairs.tsv": rows})
    out = run_data_stages(tmp_path, {"path": str(root / "pairs.tsv"), **PAIR_DATA, "quote_changes": "warn"},
                          {"min_rows_per_class": 1})
    assert out["validate"] == 0
    manifest = json.loads((out["raw"] / "manifest.json").read_text())
    assert manifest["changes"]["quoted_fields_changed"] == 6
    assert "removed the double quotes around fields of 6 of 6 rows" in capsys.readouterr().err


def test_quoting_none_keeps_every_quote_and_proper_csv_quoting_passes(tmp_path):
    root = write_files(tmp_path, {"pairs.tsv": PAIRS,
                                  "ok.csv": 'text,label\n"a, b",x\n"say ""hi""",y\n"two\nlines",x\nplain,y\n'})
    out = run_data_stages(tmp_path, {"path": str(root / "pairs.tsv"), **PAIR_DATA, "quoting": "none"},
                          {"min_rows_per_class": 1})
    raw = pd.read_parquet(out["raw"] / "data.parquet")
    assert raw["text"].tolist()[0] == '"Quoted sentence 0" he said .' and len(raw) == 12
    out = run_data_stages(tmp_path, {"path": str(root / "ok.csv")}, {"min_rows_per_class": 1})
    assert pd.read_parquet(out["raw"] / "data.parquet")["text"].tolist() == ["a, b", 'say "hi"', "two\nlines", "plain"]


def test_subsample_is_seeded_stratified_and_recorded(tmp_path):
    rows = "".join(f"text {i},{'rare' if i % 10 == 0 else 'common'}\n" for i in range(1000))
    root = write_files(tmp_path, {"d.csv": "text,label\n" + rows})
    out = run_data_stages(tmp_path, {"path": str(root / "d.csv"), "subsample": 0.25, "subsample_seed": 3},
                          {"min_rows_per_class": 1})
    raw = pd.read_parquet(out["raw"] / "data.parquet")
    assert len(raw) == 250 and raw["label"].value_counts().to_dict() == {"common": 225, "rare": 25}  # 90/10 as full
    sub = json.loads((out["raw"] / "manifest.json").read_text())["subsample"]
    assert sub == {"requested": 0.25, "seed": 3, "rows_before": 1000, "rows_after": 250,
                   "rows_per_label_before": {"common": 900, "rare": 100},
                   "rows_per_label_after": {"common": 225, "rare": 25}}
    (tmp_path / "again").mkdir()
    again = run_data_stages(tmp_path / "again", {"path": str(root / "d.csv"), "subsample": 0.25, "subsample_seed": 3},
                            {"min_rows_per_class": 1})
    assert pd.read_parquet(again["raw"] / "data.parquet").equals(raw)  # same seed, same rows


@pytest.mark.parametrize("size, expected", [(7, {"a": 4, "b": 2, "c": 1}), (0.5, {"a": 6, "b": 3, "c": 1})])
def test_subsample_rounds_by_largest_remainder_to_the_exact_size(size, expected):
    df = pd.DataFrame({"text": [f"t{i}" for i in range(20)], "label": ["a"] * 12 + ["b"] * 6 + ["c"] * 2})
    out, summary = stratified_subsample(df, size, seed=0)
    assert out["label"].value_counts().to_dict() == expected and summary["rows_after"] == sum(expected.values())


def test_split_reports_truncation_per_split_and_warns_above_the_threshold(tmp_path, tiny_model_dir, capsys):
    long = " ".join(["word"] * 40)
    rows = "".join(f"{long if i % 4 == 0 else 'short text'} {i},{i % 2}\n" for i in range(40))
    root = write_files(tmp_path, {"d.csv": "text,label\n" + rows})
    out = run_data_stages(tmp_path, {"path": str(root / "d.csv")}, {"min_rows_per_class": 1},
                          model_dir=tiny_model_dir, max_length=16, split={"max_truncated_share": 0.1})
    metrics = out["split_metrics"]
    long_per_part = {n: int(p["text"].str.startswith("word").sum()) for n, p in out["parts"].items()}
    for name, n in long_per_part.items():
        assert metrics[f"truncated_{name}"] == n
        assert metrics[f"truncated_share_{name}"] == round(n / metrics[f"rows_{name}"], 4)
    assert metrics["tokens_max_train"] == 43 and metrics["tokens_p50_train"] < 16  # [CLS] 40 words n [SEP]
    assert "are longer than model.max_length=16 tokens" in capsys.readouterr().err
    dataset = json.loads((out["split"] / "dataset.json").read_text())
    assert dataset["truncated_share"]["test"] == metrics["truncated_share_test"] and dataset["max_length"] == 16
