"""Ingest refuses structurally wrong input that it used to accept silently: NUL characters, non-string text
columns, duplicate column names."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from lora_pipeline.config import DataConfig
from lora_pipeline.data.sources import DATA_FILE, ingest
from lora_pipeline.errors import DataError


def file_cfg(path: Path, **kw) -> DataConfig:
    return DataConfig(source="file", path=str(path), **kw)


def write(path: Path, content: bytes | pd.DataFrame) -> Path:
    if isinstance(content, pd.DataFrame):
        content.to_parquet(path, index=False)
    else:
        path.write_bytes(content)
    return path


# --------------------------------------------------------------------------- NUL characters
def test_nul_byte_in_csv_is_refused_with_its_line_and_column(tmp_path):
    path = write(tmp_path / "nul.csv", b"text,label\nfine,a\nhel\x00lo,b\n")
    with pytest.raises(DataError, match=r"nul\.csv: NUL character .*line 3, column 4.*1 NUL") as err:
        ingest(file_cfg(path), tmp_path / "raw")
    assert "utf-16" in str(err.value)  # the usual cause: UTF-16 text read as UTF-8
    assert not (tmp_path / "raw").exists()


def test_utf16_file_read_as_utf8_is_refused_not_ingested_as_nul_riddled_text(tmp_path):
    path = write(tmp_path / "u16.csv", "text,label\nhello,a\n".encode("utf-16-le"))
    with pytest.raises(DataError, match=r"u16\.csv: NUL character.*line 1, column 2 \(19 NUL.*utf-16-le"):
        ingest(file_cfg(path), tmp_path / "raw")
    ingest(file_cfg(path, encoding="utf-16-le"), tmp_path / "raw")  # the suggested fix works
    assert pd.read_parquet(tmp_path / "raw" / DATA_FILE)["text"].tolist() == ["hello"]


def test_utf16_file_with_bom_suggests_utf16(tmp_path):
    path = write(tmp_path / "bom.csv", "text,label\nhello,a\n".encode("utf-16"))
    with pytest.raises(DataError, match=r"byte offset 0 .*e\.g\. utf-16 \(the file starts with a UTF-16 byte-order"):
        ingest(file_cfg(path), tmp_path / "raw")
    ingest(file_cfg(path, encoding="utf-16"), tmp_path / "raw")
    assert pd.read_parquet(tmp_path / "raw" / DATA_FILE)["text"].tolist() == ["hello"]


@pytest.mark.parametrize("name", ["nul.parquet", "nul.jsonl"])
def test_nul_inside_values_of_parquet_and_jsonl_is_refused_with_its_row(tmp_path, name):
    if name.endswith(".parquet"):
        path = write(tmp_path / name, pd.DataFrame({"text": ["ok", "a\x00b"], "label": ["x", "y"]}))
    else:  # a JSON escape: no raw NUL byte in the file, but one in the value
        path = write(tmp_path / name, b'{"text": "ok", "label": "x"}\n{"text": "a\\u0000b", "label": "y"}\n')
    with pytest.raises(DataError, match=r"data\.text_column 'text'.*1 value\(s\) contain a NUL.*row 1: 'a\\x00b'"):
        ingest(file_cfg(path), tmp_path / "raw")


# --------------------------------------------------------------------------- non-string texts
def test_parquet_int64_text_column_is_refused(tmp_path):
    path = write(tmp_path / "ints.parquet", pd.DataFrame({"text": [0, 1, 2], "label": ["a", "b", "a"]}))
    with pytest.raises(DataError, match=r"data\.text_column 'text' of .*ints\.parquet holds int64 values, not "
                                        r"text: 3 of 3 non-null values are not strings \(e\.g\. row 0: 0\)"):
        ingest(file_cfg(path), tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_jsonl_numbers_among_texts_are_refused_but_integer_labels_are_fine(tmp_path):
    path = write(tmp_path / "mixed.jsonl", b'{"text": "good", "label": 1}\n{"text": 42, "label": 0}\n'
                                           b'{"text": null, "label": 0}\n')
    with pytest.raises(DataError, match=r"data\.text_column 'text'.*1 of 2 non-null values are not strings "
                                        r"\(e\.g\. row 1: 42\)"):
        ingest(file_cfg(path), tmp_path / "raw")
    write(path, b'{"text": "good", "label": 1}\n{"text": null, "label": 0}\n')
    ingest(file_cfg(path), tmp_path / "raw")  # int labels and null texts stay allowed (validate handles nulls)
    assert pd.read_parquet(tmp_path / "raw" / DATA_FILE)["label"].tolist() == ["1", "0"]


def test_text_pair_column_is_checked_too(tmp_path):
    frame = pd.DataFrame({"a": ["x", "y"], "b": [1.5, 2.5], "label": ["p", "q"]})
    path = write(tmp_path / "pair.parquet", frame)
    with pytest.raises(DataError, match=r"data\.text_pair_column 'b' .* holds float64 values"):
        ingest(file_cfg(path, text_column="a", text_pair_column="b"), tmp_path / "raw")


# --------------------------------------------------------------------------- duplicate column names
def test_csv_duplicate_text_column_is_refused(tmp_path):
    path = write(tmp_path / "dup.csv", b"text,text,label\nfirst,second,a\n")
    with pytest.raises(DataError, match=r"data\.text_column 'text' names 2 columns of .*dup\.csv "
                                        r"\(positions 1 and 2\)"):
        ingest(file_cfg(path), tmp_path / "raw")


def test_csv_duplicate_label_column_is_refused(tmp_path):
    path = write(tmp_path / "dup.csv", b"text,label,label\nx,a,b\n")
    with pytest.raises(DataError, match=r"data\.label_column 'label' names 2 columns .*\(positions 2 and 3\)"):
        ingest(file_cfg(path), tmp_path / "raw")


def test_duplicate_unused_column_is_only_reported(tmp_path, caplog):
    path = write(tmp_path / "dup.csv", b"text,note,note,label\nx,n1,n2,a\n")
    manifest = ingest(file_cfg(path), tmp_path / "raw")
    assert manifest["columns"] == ["text", "note", "note", "label"]  # the file's real header, not note.1
    assert "duplicate column name(s) ['note']" in caplog.text


def test_headerless_duplicate_column_names_are_refused(tmp_path):
    path = write(tmp_path / "h.tsv", b"a\tb\tc\n")
    with pytest.raises(DataError, match=r"data\.text_column 'text' names 2 columns"):
        ingest(file_cfg(path, header=False, column_names=("text", "text", "label")), tmp_path / "raw")


def test_jsonl_duplicate_key_is_refused(tmp_path):
    path = write(tmp_path / "dup.jsonl", b'{"text": "a", "label": "x"}\n{"text": "a", "text": "b", "label": "y"}\n')
    with pytest.raises(DataError, match=r"dup\.jsonl: line 2 has the key 'text' twice"):
        ingest(file_cfg(path), tmp_path / "raw")
