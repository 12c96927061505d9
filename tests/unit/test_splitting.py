"""data.splitting: stratified proportions, no text in two splits, seeded, clear error on tiny classes."""

from __future__ import annotations

import pandas as pd
import pytest

from lora_pipeline.config import SplitConfig
from lora_pipeline.data.splitting import label_map, split_frame
from lora_pipeline.errors import DataError
from tests.support.builders import make_frame

CFG = SplitConfig(seed=42, val_size=0.1, test_size=0.2)


def _unbalanced() -> pd.DataFrame:
    df = make_frame(200)
    keep = {"pos": 200, "neg": 100, "plot": 40}
    return pd.concat([df[df["label"] == k].head(n) for k, n in keep.items()]).reset_index(drop=True)


def test_split_is_a_partition_with_stratified_proportions():
    df = _unbalanced()
    parts = split_frame(df, CFG)
    assert set(parts) == {"train", "val", "test"}
    assert sum(len(p) for p in parts.values()) == len(df)
    pd.testing.assert_frame_equal(
        pd.concat(parts.values()).sort_values("text").reset_index(drop=True),
        df.sort_values("text").reset_index(drop=True))
    counts = df["label"].value_counts()
    for name, share in (("test", 0.2), ("val", 0.1), ("train", 0.7)):
        got = parts[name]["label"].value_counts()
        for label, n in counts.items():
            assert abs(got[label] - share * n) <= 1.5, (name, label, got[label], share * n)
    assert list(parts["train"].columns) == list(df.columns)


def _duplicated() -> pd.DataFrame:
    df = make_frame(80)
    dups = df.sample(60, random_state=1).copy()
    dups["text"] = "  " + dups["text"] + "\t "  # same text after stripping
    exact = df.sample(40, random_state=2)
    return pd.concat([df, dups, exact]).sample(frac=1.0, random_state=3).reset_index(drop=True)


def test_identical_stripped_texts_never_cross_splits():
    df = _duplicated()
    parts = split_frame(df, CFG)
    assert sum(len(p) for p in parts.values()) == len(df)  # duplicates are kept, just grouped
    seen: dict[str, str] = {}
    for name, part in parts.items():
        for text in part["text"].str.strip():
            assert seen.setdefault(text, name) == name, f"{text!r} in {seen[text]} and {name}"


def test_pairs_are_grouped_by_text_and_pair():
    df = make_frame(40)
    df["text_pair"] = "same premise"
    parts = split_frame(df, CFG)
    keys = [set(p["text"].str.strip() + "|" + p["text_pair"]) for p in parts.values()]
    assert not (keys[0] & keys[1]) and not (keys[0] & keys[2]) and not (keys[1] & keys[2])
    assert all("text_pair" in p.columns for p in parts.values())


def test_split_is_a_function_of_the_seed():
    df = _duplicated()
    a, b = split_frame(df, CFG), split_frame(df.copy(), CFG)
    for name in a:
        pd.testing.assert_frame_equal(a[name], b[name])
    c = split_frame(df, SplitConfig(seed=43, val_size=0.1, test_size=0.2))
    assert set(c["test"]["text"]) != set(a["test"]["text"])


def test_too_small_class_raises_a_data_error_naming_the_fix():
    df = make_frame(50)
    df = pd.concat([df[df["label"] != "plot"], df[df["label"] == "plot"].head(1)])
    with pytest.raises(DataError, match=r"split\.val_size|split\.test_size") as info:
        split_frame(df, CFG)
    assert "plot" in str(info.value)  # the per-class counts are in the message


def test_label_map_is_sorted_and_stringly():
    assert label_map(pd.Series(["pos", "neg", "plot", "neg"])) == ["neg", "plot", "pos"]
    assert label_map(pd.Series([1, 0, 1])) == ["0", "1"]


def test_too_small_classes_error_lists_at_most_ten_classes():
    rows = [(f"text {i} of class {i % 500}", f"class_{i % 500:03d}") for i in range(1000)]  # 2 rows per class
    expected = r"rows per class, smallest first: \{'class_000': 2, .*'class_009': 2\} … and 490 more\)"
    with pytest.raises(DataError, match=expected) as err:
        split_frame(pd.DataFrame(rows, columns=["text", "label"]), CFG)
    assert "class_499" not in str(err.value) and len(str(err.value)) < 1_500
