"""Reading one input file into a table: decompression (size-capped), strict decoding with a hint for the likely
encoding, CSV/TSV (with the quoting check), JSON Lines and Parquet. Ingest reads every source through
:func:`read_table`, and so does ``lora-pipeline predict``, so a file reads the same way in both.
"""

from __future__ import annotations

import bz2
import codecs
import csv
import io
import json
import lzma
import re
import zlib
from collections import Counter
from pathlib import PurePosixPath
from typing import Any, Callable, Optional

import pandas as pd

from ..config import DataConfig
from ..errors import DataError, excerpt, listing
from .columns import find_nul
from .quoting import check_quoting

__all__ = ["MAX_DECOMPRESSED_BYTES", "read_table", "decode_strict", "refuse_nul"]

_COMPRESSIONS = (".bz2", ".gz", ".xz")
MAX_DECOMPRESSED_BYTES = 2**30  # a compressed input may hold at most this much data (it is read into memory)
_PIECE = 2**26  # bytes decompressed per call: what memory holds beyond the cap before a refusal
_FORMATS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl",
            ".parquet": "parquet", ".pq": "parquet"}


def read_table(data: bytes, name: str, cfg: DataConfig, changes: Optional[Counter] = None,
               keep_blank_lines: bool = False) -> tuple[pd.DataFrame, str]:
    """Parse CSV/TSV/JSONL/Parquet bytes (optionally .bz2/.gz/.xz compressed) into a DataFrame.

    Text formats are decoded strictly with ``cfg.encoding``; every non-Parquet column is read as string.

    Args:
        data: the file's bytes.
        name: file or member name, used to infer format/compression and in messages.
        cfg: reading options (format, delimiter, quoting, encoding, header, column_names).
        keep_blank_lines: a blank line of a CSV/TSV is a row (of empty fields), not skipped: where every line must
            give an answer (``lora-pipeline predict``).

    Returns:
        The frame with the file's original column names, and the format used.

    Raises:
        DataError: unknown format, corrupt compression, undecodable bytes or malformed content.
    """
    suffixes = [s.lower() for s in PurePosixPath(name).suffixes]
    if suffixes and suffixes[-1] in _COMPRESSIONS:
        data = _decompress(data, suffixes.pop(), name)
    fmt = cfg.format if cfg.format != "auto" else _FORMATS.get(suffixes[-1] if suffixes else "")
    if fmt is None:
        raise DataError(f"cannot infer the format of '{name}' from its suffix; "
                        "set data.format to one of csv, tsv, jsonl, parquet")
    if fmt == "parquet":
        try:
            return pd.read_parquet(io.BytesIO(data)), fmt
        except Exception as err:  # pyarrow raises several unrelated types for corrupt files
            raise DataError(f"{name}: not a readable Parquet file ({excerpt(str(err), 300, quote=False)})") from err
    text = decode_strict(data, cfg.encoding, name)
    refuse_nul(text, name, cfg.encoding)
    frame = _parse_jsonl(text, name) if fmt == "jsonl" else _parse_csv(text, fmt, cfg, name, changes,
                                                                        keep_blank_lines)
    return frame, fmt


def decode_strict(data: bytes, encoding: str, name: str) -> str:
    """Decode ``data`` with ``encoding`` and no replacement characters; strip a UTF-8 BOM.

    Raises:
        DataError: naming the byte offset, line and column of the first bad byte, and suggesting
            ``data.encoding``.
    """
    try:
        codecs.lookup(encoding)
    except LookupError as err:
        raise DataError(f"data.encoding '{encoding}' is not a known codec (e.g. utf-8, cp1252)") from err
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        column = err.start - data.rfind(b"\n", 0, err.start)
        example = _encoding_hint(data)
        raise DataError(
            f"{name}: byte offset {err.start} (line {line}, column {column}) is not valid {encoding}: "
            f"{data[err.start:err.start + 4]!r} ({err.reason}). Set data.encoding to the file's real "
            f"encoding, e.g. {example}.") from err
    return text[1:] if text.startswith("\ufeff") else text


def _encoding_hint(data: bytes) -> str:
    """The likely encoding of bytes that are not valid in the declared one, as advice."""
    if data[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):
        return "utf-16 (the file starts with a UTF-16 byte-order mark)"
    head = data[:4096]
    even, odd = head[0::2].count(0), head[1::2].count(0)
    if max(even, odd) > len(head) // 8:  # mostly-ASCII text in UTF-16 has a NUL in every other byte
        which = "le" if odd > even else "be"
        return f"utf-16-{which} (every other byte is NUL: UTF-16 without a byte-order mark)"
    return "cp1252 for Windows-1252 text (typical of old English corpora)"


def _decompress(data: bytes, suffix: str, name: str) -> bytes:
    """``data`` decompressed (every stream of a multi-stream file) in pieces of at most :data:`_PIECE` bytes,
    refused once it passes :data:`MAX_DECOMPRESSED_BYTES`: memory holds at most the cap and one piece then."""
    make = {".bz2": bz2.BZ2Decompressor, ".xz": lzma.LZMADecompressor,
            ".gz": lambda: zlib.decompressobj(wbits=31)}[suffix]
    parts: list[bytes] = []
    size, rest = 0, data
    try:
        while rest:
            decompressor = make()
            rest = _one_stream(decompressor, rest, parts, size, name)
            size = sum(len(p) for p in parts)
    except (OSError, EOFError, ValueError, lzma.LZMAError, zlib.error) as err:
        raise DataError(f"{name}: cannot decompress ({excerpt(str(err), 300, quote=False)})") from err
    return b"".join(parts)


def _one_stream(decompressor: Any, data: bytes, parts: list[bytes], size: int, name: str) -> bytes:
    """Decompress one stream of ``data`` into ``parts``, piece by piece; returns the bytes after it."""
    feed = data
    while True:
        piece = decompressor.decompress(feed, _PIECE)
        # zlib hands back the input it has not read yet; bz2 and lzma keep it and want empty input
        feed = getattr(decompressor, "unconsumed_tail", b"")
        parts.append(piece)
        size += len(piece)
        if size > MAX_DECOMPRESSED_BYTES:
            raise DataError(f"{name}: decompresses to more than {MAX_DECOMPRESSED_BYTES / 2**20:,.0f} MB, more "
                            "than the pipeline reads into memory; split the file, or subsample a smaller copy")
        if decompressor.eof:
            return decompressor.unused_data
        if not piece and not feed and getattr(decompressor, "needs_input", True):
            raise EOFError("the compressed data ends early (a truncated file)")


def refuse_nul(text: str, name: str, encoding: str) -> None:
    """Refuse NUL characters rather than strip them: text never holds NUL, so they mean the bytes are
    not ``encoding`` text (UTF-16 read as UTF-8 decodes "cleanly" into NUL-riddled garbage) or the file
    is corrupt; stripping would ingest garbage or hide the corruption."""
    found = find_nul(text)
    if found is not None:
        count, line, column = found
        raise DataError(f"{name}: NUL character at line {line}, column {column} ({count} NUL in all), which "
                        f"{encoding} text never contains. If the file is UTF-16 without a byte-order mark (Windows "
                        "exports), set data.encoding: utf-16-le (or utf-16-be); otherwise the file is binary or "
                        "corrupt: remove the NULs.")


def _parse_csv(text: str, fmt: str, cfg: DataConfig, name: str, changes: Optional[Counter] = None,
               keep_blank_lines: bool = False) -> pd.DataFrame:
    sep = cfg.delimiter or ("\t" if fmt == "tsv" else ",")
    quoting = csv.QUOTE_NONE if cfg.quoting == "none" else csv.QUOTE_MINIMAL
    try:  # only empty fields are null: "NA", "null", "nan" are legitimate texts
        frame = pd.read_csv(io.StringIO(text), sep=sep, quoting=quoting, header=0 if cfg.header else None,
                            dtype=str, keep_default_na=False, na_values=[""], engine="c",
                            skip_blank_lines=not keep_blank_lines)
    except pd.errors.EmptyDataError as err:
        raise DataError(f"{name} is empty: no header and no rows") from err
    except pd.errors.ParserError as err:
        raise DataError(
            f"{name}: malformed {fmt.upper()}: {excerpt(str(err).strip(), 300, quote=False)} (pandas counts "
            "lines as records from 1, header included; a quoted newline does not start a record). Check "
            f"data.delimiter ({sep!r}) and data.quoting ('{cfg.quoting}'): use quoting 'none' when fields "
            "contain unbalanced double quotes, or quote fields that contain the delimiter or newlines.") from err
    if quoting == csv.QUOTE_MINIMAL:
        check_quoting(text, frame, sep, cfg.header, fmt, name, cfg.quote_changes, changes)
    if cfg.header:
        return _unmangle_header(frame, text, sep, quoting)
    names = cfg.column_names or tuple(str(i) for i in range(frame.shape[1]))
    if len(names) != frame.shape[1]:
        raise DataError(f"data.column_names has {len(names)} names {listing(names)} but {name} has "
                        f"{frame.shape[1]} columns (delimiter {sep!r})")
    frame.columns = list(names)
    return frame


def _unmangle_header(frame: pd.DataFrame, text: str, sep: str, quoting: int) -> pd.DataFrame:
    """Give back duplicated header names that pandas renamed ('text', 'text' → 'text', 'text.1'), so
    :func:`standardize` sees the duplicates instead of silently reading the first one."""
    if not any(re.search(r"\.\d+$", str(c)) for c in frame.columns):  # no renamed column: skip the re-read
        return frame
    raw = pd.read_csv(io.StringIO(text), sep=sep, quoting=quoting, header=None, nrows=1, dtype=str,
                      keep_default_na=False, engine="c").iloc[0].tolist()
    if len(raw) != frame.shape[1] or len(set(raw)) == len(raw):
        return frame
    dupes = {n for n in raw if n and raw.count(n) > 1}  # blank names stay pandas' 'Unnamed: i'
    return frame.set_axis([r if r in dupes else c for r, c in zip(raw, frame.columns)], axis=1)


def _no_duplicate_keys(lineno: int, name: str) -> Callable[[list[tuple[str, Any]]], dict[str, Any]]:
    """A json ``object_pairs_hook`` refusing a repeated key, which ``json.loads`` would resolve silently."""
    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise DataError(f"{name}: line {lineno} has the key {excerpt(key)} twice (an object's keys "
                                "are its columns); remove the duplicate")
            seen.add(key)
        return dict(pairs)
    return hook


def _parse_jsonl(text: str, name: str) -> pd.DataFrame:
    records = []
    for lineno, line in enumerate(text.split("\n"), start=1):  # not splitlines(): U+2028/NEL are text
        if not line.strip():
            continue
        try:
            record = json.loads(line, object_pairs_hook=_no_duplicate_keys(lineno, name))
        except json.JSONDecodeError as err:
            why = err.msg.removesuffix(" at")  # json's "Invalid control character at"
            raise DataError(f"{name}: line {lineno} is not valid JSON: {why} at column {err.colno}") from err
        if not isinstance(record, dict):
            raise DataError(f"{name}: line {lineno} is a JSON {type(record).__name__}, expected an object")
        records.append(record)
    return pd.DataFrame.from_records(records)


# --------------------------------------------------------------------------- common
