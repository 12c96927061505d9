"""data.subsample with predefined splits subsamples the training pool only: a given test split is kept whole,
and the manifest and dataset summary say so."""

from __future__ import annotations

import json

import pandas as pd

from tests.support.data_stages import run_data_stages, write_files


def _rows(prefix: str, n: int) -> str:
    return "".join(f"{prefix} text {i},{'a' if i % 2 else 'b'}\n" for i in range(n))


def test_a_given_test_split_is_never_subsampled_and_the_manifest_says_so(tmp_path, capsys):
    root = write_files(tmp_path / "data", {"tr.csv": "text,label\n" + _rows("train", 400),
                                           "te.csv": "text,label\n" + _rows("test", 87)})
    out = run_data_stages(tmp_path, {"path": str(root), "splits": {"train": "tr.csv", "test": "te.csv"},
                                     "subsample": 40})
    assert out["ingest"] == 0 and out["validate"] == 0
    raw = pd.read_parquet(out["raw"] / "data.parquet")
    assert raw["split"].value_counts().to_dict() == {"train": 40, "test": 87}
    manifest = json.loads((out["raw"] / "manifest.json").read_text())
    assert manifest["rows"] == 127 and manifest["rows_per_split"] == {"test": 87, "train": 40}
    assert manifest["subsample"]["applies_to"] == ["train"] and manifest["subsample"]["test_rows_kept"] == 87
    assert manifest["subsample"]["rows_before"] == 400 and manifest["subsample"]["rows_after"] == 40
    assert "the given test split keeps all its 87 rows" in capsys.readouterr().err
