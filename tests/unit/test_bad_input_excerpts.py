"""Error messages quote user data in capped excerpts: errors.excerpt / errors.listing and the data-path
messages that use them."""

from __future__ import annotations

import zipfile

import pandas as pd
import pytest

from lora_pipeline.config import DataConfig
from lora_pipeline.data.sources import ingest, read_archive_member, safe_member_name
from lora_pipeline.errors import DataError, excerpt, listing


def test_excerpt_keeps_short_values_and_cuts_long_ones():
    assert excerpt("label") == "'label'"
    assert excerpt("a\x00b\u200b") == "'a\\x00b\\u200b'"  # invisible characters stay visible
    assert excerpt("x" * 10_000_000, 5) == "'xxxxx'… and 9999995 more characters"
    assert excerpt("x" * 10, 5, quote=False) == "xxxxx… and 5 more characters"
    assert excerpt(12345, 3) == "123… and 2 more characters" and excerpt(None) == "None"


def test_listing_caps_items_and_each_item():
    assert listing(["sentence", "label"]) == "['sentence', 'label']"  # unchanged for short lists
    long = listing([f"l{i}" for i in range(500)])
    assert long == "['l0', 'l1', 'l2', 'l3', 'l4', 'l5', 'l6', 'l7', 'l8', 'l9'] … and 490 more"
    assert listing(["y" * 1000]) == "['" + "y" * 40 + "'… and 960 more characters]"
    assert listing({"a": 1, "b": 2}) == "{'a': 1, 'b': 2}"
    assert listing({f"c{i}": i for i in range(12)}, 2) == "{'c0': 0, 'c1': 1} … and 10 more"
    assert listing(iter(["g"])) == "['g']" and listing([]) == "[]"


def test_five_hundred_columns_are_not_listed_in_full(tmp_path):
    path = tmp_path / "wide.csv"
    path.write_text(",".join(f"c{i}" for i in range(500)) + "\n" + ",".join("x" * 500) + "\n")
    with pytest.raises(DataError, match=r"available columns: \['c0', .*'c9'\] … and 490 more\.") as err:
        ingest(DataConfig(source="file", path=str(path)), tmp_path / "raw")
    assert len(str(err.value)) < 600


def test_huge_archive_member_names_are_cut(tmp_path):
    with pytest.raises(DataError, match=r"archive member '\.\./x+'… and 999923 more characters contains '\.\.'"):
        safe_member_name("../" + "x" * 1_000_000)
    wheel = tmp_path / "w.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for i in range(300):
            zf.writestr(f"pkg/data/file{i:03d}.csv", "x")
    with pytest.raises(DataError, match=r"similar members: \[.*\] … and 290 more") as err:
        read_archive_member(wheel, "qqqqqqqq")
    assert len(str(err.value)) < 1_000


def test_ten_megabyte_label_is_cut_in_validation_examples():
    from lora_pipeline.config import ValidateConfig
    from lora_pipeline.data.validation import validate

    rows = [(f"text {i}", "ab"[i % 2]) for i in range(10)] + [("odd", "z" * 10_000_000)]
    with pytest.raises(DataError) as err:
        validate(pd.DataFrame(rows, columns=["text", "label"]), ValidateConfig(labels=("a", "b"), min_rows_per_class=1))
    message = str(err.value)
    assert "label_in_set" in message and "label='zzzz" in message and "… and 9999960 more characters" in message
    assert len(message) < 3_000
