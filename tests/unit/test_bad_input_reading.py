"""Reading input files: a long text is a length question for validate, not a quoting error; advice for
encodings fits the bytes; a compressed file is refused past a decompressed-size cap."""

from __future__ import annotations

import bz2
import gzip
import lzma

import pytest

from lora_pipeline.config import DataConfig
from lora_pipeline.data import reading
from lora_pipeline.data.reading import read_table
from lora_pipeline.errors import DataError


def cfg(**kw) -> DataConfig:
    return DataConfig(source="file", path="x", **kw)


@pytest.mark.parametrize("fmt, sep", [("csv", ","), ("tsv", "\t")])
def test_a_text_longer_than_pythons_csv_field_limit_is_read_whole(fmt, sep):
    long = "word " * 40_000  # 200,000 characters
    data = f'text{sep}label\n"a ""quoted"" text"{sep}pos\n{long}{sep}neg\n'.encode() if fmt == "csv" else \
        f'text{sep}label\nhe said "hi"{sep}pos\n{long}{sep}neg\n'.encode()
    frame, _ = read_table(data, f"in.{fmt}", cfg())
    assert frame["text"].tolist()[1] == long


def test_a_json_control_character_error_says_at_once():
    with pytest.raises(DataError, match=r"line 1 is not valid JSON: Invalid control character at column \d+$") as err:
        read_table(b'{"text": "tab\there"}\n', "in.jsonl", cfg())
    assert "at at" not in str(err.value)


def test_utf16_le_without_a_bom_gets_utf16_advice_not_cp1252():
    data = "text,label\ncafé crème,a\n".encode("utf-16-le")
    with pytest.raises(DataError, match="utf-16-le") as err:
        read_table(data, "in.csv", cfg())
    assert "cp1252" not in str(err.value)


@pytest.mark.parametrize("suffix, compress", [(".bz2", bz2.compress), (".gz", gzip.compress), (".xz", lzma.compress)])
def test_a_compressed_file_is_refused_once_it_decompresses_past_the_cap(monkeypatch, suffix, compress):
    monkeypatch.setattr(reading, "MAX_DECOMPRESSED_BYTES", 10_000)
    body = b"text,label\n" + b"".join(b"row %d,a\n" % i for i in range(5000))
    with pytest.raises(DataError, match=r"decompresses to more than 0 MB"):
        read_table(compress(body), f"in.csv{suffix}", cfg())
    small = b"text,label\nx,a\n"
    assert read_table(compress(small) + compress(b"y,b\n"), f"in.csv{suffix}", cfg())[0]["text"].tolist() == \
        ["x", "y"]  # every stream of a multi-stream file
    with pytest.raises(DataError, match="cannot decompress"):
        read_table(compress(body)[:200], f"in.csv{suffix}", cfg())
