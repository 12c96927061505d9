"""Select the configured columns of a parsed source as the standard string columns, refusing what
would silently turn into wrong texts: a missing or ambiguous (duplicated) column, a text column that
holds numbers, and NUL characters."""

from __future__ import annotations

import logging
from collections import Counter
from typing import Optional

import pandas as pd

from ..config import DataConfig
from ..errors import DataError, excerpt, listing

__all__ = ["standardize", "find_nul"]

log = logging.getLogger(__name__)


def standardize(frame: pd.DataFrame, cfg: DataConfig, origin: str,
                changes: Optional[Counter] = None) -> pd.DataFrame:
    """Select the configured columns as string columns ``text``, ``label`` (+ ``text_pair``), keeping nulls.

    Several text columns (``data.text_column`` a list) are joined with ``data.text_separator``, skipping
    null parts. What this changes is counted in ``changes``: rows joined from fewer parts
    (``texts_joined_with_missing_part``) and numeric labels written as floats (``labels_float_to_int``).

    Raises:
        DataError: a configured column is missing or named by several columns (the message lists the
            available columns), a text column holds non-string values, or a value contains NUL.
    """
    changes = Counter() if changes is None else changes
    joined = isinstance(cfg.text_column, tuple)
    parts = cfg.text_column if joined else (cfg.text_column,)
    wanted = {f"text{i}": (f"data.text_column[{i}]" if joined else "data.text_column", c) for i, c in enumerate(parts)}
    if cfg.text_pair_column is not None:
        wanted["text_pair"] = ("data.text_pair_column", cfg.text_pair_column)
    wanted["label"] = ("data.label_column", cfg.label_column)
    available = [str(c) for c in frame.columns]
    for key, column in wanted.values():
        _check_present_once(available, key, column, origin, cfg.header)
    _report_unused_duplicates(available, {column for _, column in wanted.values()}, origin)
    frame = frame.set_axis(available, axis=1)
    for std, (key, column) in wanted.items():
        if std != "label":  # labels may be integers (0/1, ClassLabel ids); texts may not
            _check_strings(frame[column], key, column, origin)
        _check_no_nul(frame[column], key, column, origin)
    out = pd.DataFrame({std: _as_str(frame[col], changes if std == "label" else None)
                        for std, (_, col) in wanted.items()}).reset_index(drop=True)
    text = _join([out.pop(f"text{i}") for i in range(len(parts))], cfg.text_separator, changes)
    return pd.concat([text.rename("text"), out], axis=1)


def _join(columns: list[pd.Series], separator: str, changes: Counter) -> pd.Series:
    """Join text columns row-wise, skipping null parts; null only when every part is null."""
    if len(columns) == 1:
        return columns[0]
    frame = pd.concat(columns, axis=1)
    nulls = frame.isna().sum(axis=1)
    changes["texts_joined_with_missing_part"] += int(((nulls > 0) & (nulls < frame.shape[1])).sum())
    text = pd.Series([separator.join(v for v in row if isinstance(v, str)) for row in frame.itertuples(index=False)],
                     index=frame.index, dtype=object)
    return text.where(nulls < frame.shape[1]).astype("str")


def find_nul(text: str) -> tuple[int, int, int] | None:
    """``(count, line, column)`` (1-based) of the NUL characters in ``text`` and the first one; None if none."""
    first = text.find("\x00")
    if first < 0:
        return None
    line = text.count("\n", 0, first) + 1
    return text.count("\x00"), line, first - text.rfind("\n", 0, first)


def _check_present_once(available: list[str], key: str, column: str, origin: str, header: bool) -> None:
    positions = [i + 1 for i, name in enumerate(available) if name == column]
    if not positions:
        hint = "" if header else " (the file has no header: name columns with data.column_names)"
        raise DataError(f"{key} {excerpt(column)} is not a column of {origin}; available columns: "
                        f"{listing(available)}. Set {key} to one of them{hint}.")
    if len(positions) > 1:  # pandas would keep the first silently (or rename the others 'x.1')
        where = ", ".join(map(str, positions[:-1])) + f" and {positions[-1]}"
        raise DataError(f"{key} {excerpt(column)} names {len(positions)} columns of {origin} (positions {where}), "
                        "so which one holds the data is ambiguous; rename or remove the duplicates in the file.")


def _report_unused_duplicates(available: list[str], used: set[str], origin: str) -> None:
    """Duplicates among columns the pipeline does not read change nothing: report them, do not refuse."""
    seen: set[str] = set()
    dupes = sorted({name for name in available if name in seen or seen.add(name)} - used)
    if dupes:
        log.warning("%s has duplicate column name(s) %s; they are not used (only the configured text/label "
                    "columns are read)", origin, listing(dupes))


def _check_strings(column: pd.Series, key: str, name: str, origin: str) -> None:
    """Texts must be strings: numbers would become texts like '0', '1' (a wrong column, or wrong types)."""
    values = column.dropna().astype(object)
    bad = values[~values.map(lambda v: isinstance(v, str))]
    if bad.empty:
        return
    row, value = bad.index[0], bad.iloc[0]
    kind = type(value).__name__ if column.dtype == object else column.dtype
    raise DataError(
        f"{key} {excerpt(name)} of {origin} holds {kind} values, not text: {len(bad)} of {len(values)} "
        f"non-null values are not strings (e.g. row {row}: {excerpt(value)}). Point {key} at the text column, "
        "or store the texts as strings.")


def _check_no_nul(column: pd.Series, key: str, name: str, origin: str) -> None:
    """NUL is never text: it marks binary or UTF-16 data, and it breaks tokenizers and CSV tools downstream."""
    values = column.dropna().astype(object)
    texts = values[values.map(lambda v: isinstance(v, str))].astype(str)
    hits = texts[texts.str.contains("\x00", regex=False)]
    if not hits.empty:
        raise DataError(f"{key} {excerpt(name)} of {origin}: {len(hits)} value(s) contain a NUL character "
                        f"(e.g. row {hits.index[0]}: {excerpt(hits.iloc[0])}); remove them from the data.")


def _as_str(column: pd.Series, changes: Optional[Counter] = None) -> pd.Series:
    """String dtype with nulls kept; integral floats (ints with nulls) lose their '.0' (counted)."""
    if pd.api.types.is_float_dtype(column):
        values = column.dropna()
        if (values == values.round()).all():
            column = column.astype("Int64")
            if changes is not None:
                changes["labels_float_to_int"] += len(values)
    return column.astype("str")
