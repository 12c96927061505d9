"""Reading input files: a long text is a length question for validate, not a quoting error; advice for
encodings fits the bytes; a compressed file is refused past a decompressed-size cap."""

from __future__ import annotations

from pathlib import Path

import pytest

from lora_pipeline.config import DataConfig
from lora_pipeline.data.sources import read_table
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
