"""Catch CSV quoting that changes the data: with ``quoting: minimal`` a field that starts with a double quote
is read as a quoted field, so the quotes vanish from the text, or an unbalanced quote swallows the following
lines into one field. Both happen silently in every CSV reader; this compares the quoted reading with a
literal one (``quoting: none``) and reports what differs."""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import sys
from collections import Counter
from typing import Iterator, Optional

import numpy as np
import pandas as pd

from ..errors import DataError, excerpt

__all__ = ["check_quoting"]

log = logging.getLogger(__name__)


def check_quoting(text: str, parsed: pd.DataFrame, sep: str, header: bool, fmt: str, name: str,
                  mode: str, changes: Optional[Counter] = None) -> None:
    """Check that ``quoting: minimal`` read ``text`` (parsed into ``parsed``) without changing it.

    Two checks: every quoted field is well formed (RFC 4180: the whole field in quotes, inner quotes doubled;
    else the reader glues the text after the closing quote on, or swallows the next lines), and, for TSV and
    other non-CSV delimiters (which have no quoting convention), no field lost the quotes around it. Changed
    records are counted in ``changes['quoted_fields_changed']``.

    Raises:
        DataError: with ``mode == "error"``, naming the count, the first line and the fix (``data.quoting: none``).
    """
    if '"' not in text:
        return
    changes = Counter() if changes is None else changes
    bad, line = _malformed_records(text, sep)
    if bad:
        changes["quoted_fields_changed"] += bad
        _complain(mode, name, f"{bad} record(s) have a double quote that does not enclose a whole field, so the "
                  f"reader dropped it and joined text or lines (first at line {line}: "
                  f"{excerpt(_line(text, line), 80)})")
        return
    if fmt != "csv":
        _stripped_quotes(text, parsed, sep, header, name, mode, changes)


def _malformed_records(text: str, sep: str) -> tuple[int, int]:
    """(records whose quoting is malformed, file line where the first starts), by Python's strict csv reader."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep, strict=True)
    bad, first = 0, 0
    with _field_size_limit(len(text) + 1):  # a long text is not malformed quoting (validate judges its length)
        while True:
            start = reader.line_num + 1
            try:
                next(reader)
            except StopIteration:
                return bad, first
            except csv.Error:
                bad, first = bad + 1, first or start


@contextlib.contextmanager
def _field_size_limit(chars: int) -> Iterator[None]:
    """Python's csv reader refuses fields over ``csv.field_size_limit()`` (131,072 characters by default) with
    the same error as malformed quoting: raise it to ``chars`` for the block."""
    before = csv.field_size_limit()
    csv.field_size_limit(max(before, min(chars, sys.maxsize)))
    try:
        yield
    finally:
        csv.field_size_limit(before)


def _stripped_quotes(text: str, parsed: pd.DataFrame, sep: str, header: bool, name: str, mode: str,
                     changes: Counter) -> None:
    """Fields whose surrounding quotes vanished (``"so it goes"`` read as ``so it goes``) in a TSV."""
    try:  # quoted delimiters/newlines: the literal reading has another shape and there is nothing to compare
        literal = pd.read_csv(io.StringIO(text), sep=sep, quoting=csv.QUOTE_NONE, header=0 if header else None,
                              dtype=str, keep_default_na=False, na_values=[], engine="c")
    except (pd.errors.ParserError, pd.errors.EmptyDataError):
        return
    if literal.shape != parsed.shape:
        return
    raw = literal.to_numpy(dtype=object)
    got = parsed.fillna("").astype(str).to_numpy(dtype=object)
    changed = np.nonzero((raw != got).any(axis=1))[0]
    if len(changed):
        changes["quoted_fields_changed"] += int(len(changed))
        line = int(changed[0]) + 1 + int(header)
        _complain(mode, name, f"removed the double quotes around fields of {len(changed)} of {len(parsed)} rows "
                  f"(first at line {line}: file {excerpt(_line(text, line), 80)}, read as "
                  f"{excerpt(' | '.join(map(str, parsed.iloc[int(changed[0])].tolist())), 80)}); "
                  "a TSV has no quoting, so they are part of the text")


def _complain(mode: str, name: str, what: str) -> None:
    fix = ("set data.quoting: none to keep quote characters as text (TSV and raw text files), or quote the "
           "fields properly (RFC 4180: the whole field in quotes, inner quotes doubled)")
    if mode == "error":
        raise DataError(f"{name}: data.quoting 'minimal' changed the data: {what}. Fix: {fix}; "
                        "data.quote_changes: warn accepts the change.")
    log.warning("%s: data.quoting 'minimal' changed the data (data.quote_changes: warn): %s", name, what)


def _line(text: str, number: int) -> str:
    lines = text.split("\n", number)
    return lines[number - 1] if len(lines) >= number else ""
