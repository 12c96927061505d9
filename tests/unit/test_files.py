"""files: atomic outputs and the split folder's layout, read and written in one place."""

from __future__ import annotations

import pandas as pd
import pytest

from lora_pipeline.errors import PipelineError
from lora_pipeline.files import (LABELS_FILE, SPLIT_PARTS, read_split, split_digests, split_part_file,
                                 write_split)


def _frames() -> dict[str, pd.DataFrame]:
    return {part: pd.DataFrame({"input_ids": [[1, 2, i]], "label_id": [i % 2]})
            for i, part in enumerate(SPLIT_PARTS)}


def test_what_write_split_writes_read_split_reads(tmp_path):
    write_split(tmp_path, ["a", "b"], _frames())
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([LABELS_FILE] + [split_part_file(p)
                                                                                 for p in SPLIT_PARTS])
    labels, frames = read_split(tmp_path, ("train", "test"))
    assert labels == ["a", "b"] and list(frames) == ["train", "test"]
    assert frames["test"]["input_ids"].map(list).tolist() == [[1, 2, 2]]
    _, only = read_split(tmp_path, ("val",), columns=["label_id"])
    assert list(only["val"].columns) == ["label_id"]


def test_a_missing_file_is_one_line_naming_it_and_the_fix(tmp_path):
    write_split(tmp_path, ["a", "b"], _frames())
    (tmp_path / "test.parquet").unlink()
    (tmp_path / LABELS_FILE).unlink()
    with pytest.raises(PipelineError) as info:
        read_split(tmp_path, ("train", "test"))
    assert str(info.value) == f"{tmp_path} lacks labels.json, test.parquet: run the split stage first " \
                              "(dvc repro split)"
    with pytest.raises(PipelineError, match="labels.json"):
        split_digests(tmp_path)


def test_split_digests_follow_the_content(tmp_path):
    write_split(tmp_path, ["a", "b"], _frames())
    before = split_digests(tmp_path)
    assert len(before) == 2 and before[0] != before[1]
    frames = _frames()
    frames["val"]["label_id"] = [0]
    write_split(tmp_path, ["a", "b"], frames)
    after = split_digests(tmp_path)
    assert after[0] == before[0] and after[1] != before[1]
