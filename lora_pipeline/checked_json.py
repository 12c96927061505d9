"""Frozen dataclasses as JSON files, checked both ways: the codec under the typed files stages hand each other
(:mod:`lora_pipeline.study_file`).

A :class:`Record`'s fields are checked and normalised on construction from their type hints — a list becomes a
tuple, a JSON object a nested record, an ``int`` key read back as text an ``int`` again — so a record built in
memory equals the one read back from its file. :func:`decode` reads a JSON object as a record and names the path of
a key that is missing, unknown or of another kind (``rows.full.macro_f1 lacks ['low']``); :func:`check_header`
checks a file's ``format`` and ``version`` before that. The supported hints: a record, ``Optional[X]``,
``tuple[X, ...]``, ``Mapping[K, V]``, ``Any`` (open-ended JSON, kept as lists and dicts) and the JSON scalars.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import json
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from .errors import PipelineError, excerpt, listing

__all__ = ["Mismatch", "Record", "check_header", "decode", "load_json"]

_HINTS: dict[type, dict[str, Any]] = {}
_SCALARS = {bool: (bool,), int: (int,), float: (int, float), str: (str,)}


class Mismatch(Exception):
    """A value that does not fit its field; ``str(err)`` says where and what (``rows.full lacks ['lr']``)."""


def _at(where: str, key: object) -> str:
    return f"{where}.{key}" if where else str(key)


def _kind(value: Any) -> str:
    """A value as a message quotes it: ``str '0.88'``, ``list [1, 2]``, ``null``."""
    return "null" if value is None else f"{type(value).__name__} {excerpt(value, 40)}"


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _plain(value: Any) -> Any:
    """Open-ended JSON as a file holds it: lists for tuples, dicts for mappings."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def decode(cls: type, value: Any, where: str = "") -> Any:
    """``value`` (a JSON object) as a ``cls``: every field present, no other key, each field coerced.

    Raises:
        Mismatch: naming the path (from ``where``) of the first key missing, unknown or of another kind.
    """
    if isinstance(value, cls):
        return value
    if not isinstance(value, Mapping):
        raise Mismatch(f"{where or 'the file'} is {_kind(value)}, not an object")
    names = [f.name for f in dataclasses.fields(cls)]
    missing = [n for n in names if n not in value]
    if missing:
        raise Mismatch(f"{where or 'the file'} lacks {listing(missing)}")
    unknown = [k for k in value if k not in names]
    if unknown:
        raise Mismatch(f"{where or 'the file'} has {listing(unknown)}, unknown to this version")
    hints = _hints(cls)
    return cls(**{n: _coerce(hints[n], value[n], _at(where, n)) for n in names})


def _coerce(tp: Any, value: Any, where: str) -> Any:
    """``value`` as type ``tp`` (see the module docstring for the hints supported), or :class:`Mismatch`."""
    if tp is Any:
        return _plain(value)
    if dataclasses.is_dataclass(tp):
        return decode(tp, value, where)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return None if value is None else _coerce(next(a for a in args if a is not type(None)), value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise Mismatch(f"{where} is {_kind(value)}, not a list")
        return tuple(_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is collections.abc.Mapping:
        if not isinstance(value, Mapping):
            raise Mismatch(f"{where} is {_kind(value)}, not an object")
        return {_key(args[0], k, where): _coerce(args[1], v, _at(where, k)) for k, v in value.items()}
    if isinstance(value, _SCALARS[tp]) and (tp is bool or not isinstance(value, bool)):
        return value
    raise Mismatch(f"{where} is {_kind(value)}, not {tp.__name__}")


def _key(tp: type, key: Any, where: str) -> Any:
    """A mapping's key: JSON writes an int key as text, read back as the int."""
    if tp is int and isinstance(key, str) and key.lstrip("-").isdigit():
        return int(key)
    if isinstance(key, tp) and not isinstance(key, bool):
        return key
    raise Mismatch(f"{where} has key {excerpt(key)}, not {tp.__name__}")


def _json(value: Any) -> Any:
    if isinstance(value, Record):
        return value.to_json()
    if isinstance(value, Mapping):
        return {k: _json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json(v) for v in value]
    return value


@dataclass(frozen=True)
class Record:
    """A frozen dataclass whose fields are checked and normalised on construction (a nested record may be given as
    its JSON object).

    Raises:
        PipelineError: a field of another kind, naming the class and the field.
    """

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        for f in dataclasses.fields(self):
            try:
                value = _coerce(hints[f.name], getattr(self, f.name), f.name)
            except Mismatch as bad:
                raise PipelineError(f"{type(self).__name__}: {bad}") from None
            object.__setattr__(self, f.name, value)

    def to_json(self) -> dict[str, Any]:
        """The record's JSON object: every field under its name (None as null)."""
        return {f.name: _json(getattr(self, f.name)) for f in dataclasses.fields(self)}


def load_json(path: Path, missing: str, fix: str) -> Any:
    """The JSON a file holds.

    Raises:
        PipelineError: ``missing`` when there is no such file; not JSON (with ``fix``).
    """
    if not path.is_file():
        raise PipelineError(missing)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:  # ValueError: JSON or UTF-8 decoding (a truncated or hand-edited file)
        raise PipelineError(f"'{path}' is not valid JSON ({excerpt(str(err), quote=False)}); {fix}") from None


def check_header(data: Any, where: str, *, fmt: str, version: int, kind: str, older: str, fix: str,
                 marker: str) -> dict[str, Any]:
    """The body of a versioned file (its keys but ``format`` and ``version``), once those say it is ``kind``
    ``fmt`` of ``version``.

    Args:
        where: the file, as messages name it.
        kind: what the file is, in words (``study file``).
        older: why a file with ``marker`` but no ``format`` lacks it (which writer predates the field).
        fix: how to produce a file of this version.
        marker: a key every file of the kind holds, with or without a format.

    Raises:
        PipelineError: not such a file, one from before the format, another format or another version (one line).
    """
    if not isinstance(data, Mapping) or "format" not in data and marker not in data:
        raise PipelineError(f"{where} is not a lora-pipeline {kind}; {fix}")
    if "format" not in data:
        raise PipelineError(f"{where} has no format or version: {older}; {fix}")
    if data["format"] != fmt:
        raise PipelineError(f"{where} is a {excerpt(data['format'])} file, not a lora-pipeline {kind} ({fmt!r}); "
                            f"{fix}")
    if data.get("version") != version:
        raise PipelineError(f"{where} is {kind} version {excerpt(data.get('version'))}, but this lora-pipeline "
                            f"reads version {version}; {fix}, or read it with the lora-pipeline that wrote it")
    return {k: v for k, v in data.items() if k not in ("format", "version")}
