"""Tests of lora_pipeline.data.validation: the GX suite, severities, cleaning policy, report."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pandas as pd
import pytest

from lora_pipeline.config import ValidateConfig
from lora_pipeline.data.validation import flat_metrics, validate
from lora_pipeline.errors import ValidationFailed

CFG = ValidateConfig(labels=("a", "b", "c"), max_classes=5, min_text_chars=2, max_text_chars=1000,
                     max_duplicate_rate=0.2, min_rows_per_class=3)


def frame(n: int = 4, labels: tuple[str, ...] = ("a", "b", "c")) -> pd.DataFrame:
    rows = [(f"text {label} number {i}", label) for label in labels for i in range(n)]
    return pd.DataFrame(rows, columns=["text", "label"]).astype("str")


def add(df: pd.DataFrame, rows: list[tuple]) -> pd.DataFrame:
    return pd.concat([df, pd.DataFrame(rows, columns=df.columns)], ignore_index=True)


def failure(df: pd.DataFrame, cfg: ValidateConfig = CFG) -> str:
    with pytest.raises(ValidationFailed) as err:
        validate(df, cfg)
    return str(err.value)


def test_clean_data_passes_and_reports(tmp_path):
    clean, report = validate(frame(), CFG, docs_dir=tmp_path / "docs")
    assert clean.equals(frame()) and report["rows_clean"] == report["rows_raw"] == 12
    assert report["expectations_failed_soft"] == 0 and report["expectations_passed"] == len(report["expectations"])
    assert report["rows_per_class"] == {"a": 4, "b": 4, "c": 4}
    index = (tmp_path / "docs" / "index.html").read_text()
    assert "<script" not in index and "min_rows_per_class" in index
    pages = list((tmp_path / "docs" / "gx" / "validations").rglob("*.html"))
    assert len(pages) == 1 and pages[0].relative_to(tmp_path / "docs").as_posix() in index
    assert (tmp_path / "docs" / "gx" / "index.html").is_file()


def test_empty_texts_dropped_softly_with_counts(caplog):
    df = add(frame(), [(np.nan, "a"), ("   ", "b"), ("\t\n", "c")])
    with caplog.at_level(logging.WARNING):
        clean, report = validate(df, CFG)
    assert report["dropped_empty"] == 3 and len(clean) == 12 and clean["text"].notna().all()
    assert report["expectations_failed_soft"] == 2
    assert "text_not_null" in caplog.text and "1 of 15 rows with a null text" in caplog.text
    assert "text_not_blank" in caplog.text and "2 of 15 rows with a blank text" in caplog.text


def test_empty_texts_are_hard_without_drop_empty():
    msg = failure(add(frame(), [(np.nan, "a"), ("  ", "b")]), dataclasses.replace(CFG, drop_empty=False))
    assert "text_not_null [hard" in msg and "1 of 14 rows with a null text" in msg
    assert "text_not_blank [hard" in msg and "set validate.drop_empty: true" in msg


def test_dedupe_keeps_first_and_counts():
    df = add(frame(), [("text a number 0", "a"), ("text a number 0", "a")])
    clean, report = validate(df, CFG)
    assert report["dropped_duplicates"] == 2 and len(clean) == 12
    assert report["duplicate_rate"] == pytest.approx(2 / 14, abs=1e-6)


def test_duplicate_rate_hard_without_dedupe_above_limit_only():
    df = add(frame(), [("text a number 0", "a")] * 5)
    msg = failure(df, dataclasses.replace(CFG, dedupe=False))
    assert "duplicate_rate [hard" in msg and "5 of 17 rows repeating" in msg and "'text a number 0'" in msg
    clean, report = validate(add(frame(), [("text a number 0", "a")]), dataclasses.replace(CFG, dedupe=False))
    assert len(clean) == 13 and report["dropped_duplicates"] == 0  # under the limit: kept


def test_conflicting_labels_dropped_with_count():
    df = add(frame(), [("text a number 0", "b"), ("same", "a"), ("same", "a"), ("same", "c")])
    clean, report = validate(df, CFG)
    assert report["dropped_conflicting"] == 5 and report["conflicting_texts"] == 2
    assert "same" not in clean["text"].tolist() and "text a number 0" not in clean["text"].tolist()


def test_conflicting_labels_hard_without_drop_conflicting():
    df = add(frame(), [("same", "a"), ("same", "b")])
    msg = failure(df, dataclasses.replace(CFG, drop_conflicting=False))
    assert "no_conflicting_labels [hard" in msg and "2 of 14 rows whose text also occurs with another label" in msg
    assert "text='same' label='a'" in msg and "text='same' label='b'" in msg


def test_nan_labels_fail():
    msg = failure(add(frame(), [("a text", np.nan), ("b text", None)]))
    assert "label_not_null [hard" in msg and "2 of 14 rows with a null label" in msg


def test_labels_outside_declared_set_fail_with_examples():
    msg = failure(add(frame(), [("x1 text", "z"), ("x2 text", "y")]))
    assert "label_in_set [hard" in msg and "2 of 14 rows with a label outside" in msg and "label='z'" in msg


def test_more_distinct_labels_than_max_classes():
    df = frame(labels=("a", "b", "c", "d", "e", "f"))
    msg = failure(df, dataclasses.replace(CFG, labels=None))
    assert "max_classes [hard" in msg and "6 distinct labels, more than validate.max_classes=5" in msg


def test_single_class_fails():
    msg = failure(frame(labels=("a",)))
    assert "n_classes [hard" in msg and "1 distinct label(s) ['a'] left after cleaning" in msg
    assert "declared labels with no rows after cleaning" in msg
    assert "n_classes" in failure(frame(labels=("a",)), dataclasses.replace(CFG, labels=None))


def test_zero_rows_fails():
    msg = failure(frame().iloc[:0])
    assert "row_count [hard" in msg and "the data has 0 rows" in msg


def test_all_texts_empty_or_nan_fail_even_with_drop_empty():
    df = pd.DataFrame({"text": [np.nan, "", " ", np.nan], "label": ["a", "b", "c", "a"]}).astype("str")
    msg = failure(df)
    assert "0 of 4 rows kept (dropped 4 empty" in msg and "n_classes" in msg


def test_min_rows_per_class_checked_after_cleaning():
    df = add(frame(n=4, labels=("a", "b")), [("c one", "c"), ("c one", "c"), ("c one", "c")])
    msg = failure(df)  # 3 raw rows of 'c', 1 after dedupe
    assert "min_rows_per_class [hard" in msg and "'c' (1 rows)" in msg


def test_text_length_bounds_with_short_messages():
    long = "x" * 10_000_000
    msg = failure(add(frame(), [(long, "a"), ("z", "b")]))
    assert "text_max_chars [hard" in msg and "… and 9999940 more characters" in msg and len(msg) < 3000
    assert "text_min_chars [hard" in msg and "text='z'" in msg


def test_missing_column_fails():
    msg = failure(frame().drop(columns="label"))
    assert "column_exists_label [hard" in msg and "column 'label' is missing" in msg


def test_every_hard_failure_is_listed():
    df = add(frame(labels=("a",)), [("q", np.nan)])
    msg = failure(df)
    for name in ("label_not_null", "text_min_chars", "n_classes", "declared_labels_present"):
        assert name in msg
    assert msg.startswith(f"{msg.count(chr(10) + '  - ')} hard data expectation(s) failed")


def test_text_pair_conflicts_use_both_texts():
    df = frame()
    df["text_pair"] = "pair p"
    df = add(df, [("same", "b", "q1"), ("same", "c", "q2")])  # different pairs: no conflict
    clean, report = validate(df, CFG)
    assert report["dropped_conflicting"] == 0 and list(clean.columns) == ["text", "text_pair", "label"]


def test_flat_metrics():
    _, report = validate(add(frame(), [(np.nan, "a")]), CFG)
    flat = flat_metrics(report)
    assert flat["rows_raw"] == 13 and flat["rows_clean"] == 12 and flat["dropped_empty"] == 1
    assert flat["rows_per_class_a"] == 4 and flat["expectations_failed_soft"] == 1
    assert all(isinstance(v, (int, float)) for v in flat.values())


# --------------------------------------------------------------------------- invisible-only texts
def test_zero_width_only_texts_are_empty_dropped_and_counted(caplog):
    invisible = [("\u200b\u200b", "a"), (" \ufeff\u200d ", "b"), ("\u2060\u00ad", "c")]
    df = add(frame(), invisible + [("\u200bvisible\u200b", "a")])
    with caplog.at_level(logging.WARNING):
        clean, report = validate(df, CFG)
    assert report["dropped_empty"] == 3 and report["invisible_only_texts"] == 3
    assert len(clean) == 13 and "\u200bvisible\u200b" in clean["text"].tolist()
    assert "text_not_blank" in caplog.text and "3 of 16 rows with a blank text" in caplog.text
    assert "'\\u200b\\u200b'" in caplog.text  # the example shows the invisible characters
    assert flat_metrics(report)["invisible_only_texts"] == 3


def test_zero_width_only_texts_are_hard_without_drop_empty():
    msg = failure(add(frame(), [("\u200b\u200b", "a")]), dataclasses.replace(CFG, drop_empty=False))
    assert "text_not_blank [hard" in msg and "1 of 13 rows with a blank text" in msg


def test_min_chars_ignores_invisible_padding():
    msg = failure(add(frame(), [("\u200bz\u200b", "a")]))  # one visible character < min_text_chars=2
    assert "text_min_chars [hard" in msg and "1 of 13 texts shorter" in msg


def test_invisible_only_count_is_zero_for_clean_data():
    _, report = validate(frame(), CFG)
    assert report["invisible_only_texts"] == 0
