"""Checking one ``params.yaml`` section and converting it to its dataclass, for
:func:`~lora_pipeline.config.load_params`.

Each value is checked against its field's type hint (lists become tuples, ints floats); an unknown key, a bad
value or a key the study grid holds raises :class:`~lora_pipeline.errors.ConfigError` naming the key.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal

from .errors import ConfigError

__all__ = ["build_section", "check"]


def check(ok: bool, key: str, msg: str) -> None:
    """Raise :class:`ConfigError` naming ``key`` (``params: '<key>' <msg>``) unless ``ok``."""
    if not ok:
        raise ConfigError(f"params: '{key}' {msg}")


# YAML reads ``key: #1 String`` as key: null: everything from " #" on is a comment
_NULL = "null (empty: a value that starts with '#' is a YAML comment, so quote it: \"#1 String\")"


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check ``value`` against a (simple) type hint and convert lists to tuples, ints to floats."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(value, args, key)
    check(value is not None or hint is type(None), key, f"must not be {_NULL}")
    if origin is Literal:
        check(value in args, key, f"must be one of {list(args)}, got {value!r}")
        return value
    if origin is dict:
        return _coerce_dict(value, args, key)
    if origin is tuple:
        if isinstance(value, str):  # `modules_to_save: pooler` means [pooler]
            value = [value]
        check(isinstance(value, (list, tuple)), key, f"must be a list, got {value!r}")
        return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
    if hint is bool:
        check(isinstance(value, bool), key, f"must be true or false, got {value!r}")
    elif hint is int:
        check(isinstance(value, int) and not isinstance(value, bool), key, f"must be an integer, got {value!r}")
    elif hint is float:
        check(isinstance(value, (int, float)) and not isinstance(value, bool), key, f"must be a number, got {value!r}")
        return float(value)
    elif hint is str:
        check(isinstance(value, str), key, f"must be a string, got {value!r}")
    return value


def _coerce_dict(value: Any, args: tuple[Any, ...], key: str) -> dict[str, Any]:
    """A mapping with string keys; YAML number keys (``1: World``) become their text, like labels do."""
    check(isinstance(value, dict) and bool(value), key, f"must be a non-empty mapping, got {value!r}")
    out = {}
    for k, v in value.items():
        check(isinstance(k, (str, int)) and not isinstance(k, bool), key, f"has a key {k!r} that is not text")
        out[str(k)] = _coerce(v, args[1], f"{key}.{k}")
    return out


def _coerce_union(value: Any, args: tuple[Any, ...], key: str) -> Any:
    """The first alternative of a Union that ``value`` fits, in declaration order (a str before a tuple)."""
    if value is None and type(None) in args:
        return None
    alternatives = [a for a in args if a is not type(None)]
    for alternative in alternatives:
        try:
            return _coerce(value, alternative, key)
        except ConfigError:
            continue
    shown = _NULL if value is None else repr(value) if len(repr(value)) <= 120 else repr(value)[:120] + "…"
    raise ConfigError(f"params: '{key}' must be {' or '.join(map(_describe, alternatives))}, got {shown}")


def _describe(hint: Any) -> str:
    """``str`` → "a string", ``tuple[str, ...]`` → "a list of strings", ``Literal["auto"]`` → "'auto'"."""
    names = {str: "a string", bool: "true or false", int: "an integer", float: "a number"}
    origin = typing.get_origin(hint)
    if origin is Literal:
        return " or ".join(map(repr, typing.get_args(hint)))
    if origin is tuple:
        return f"a list of {_describe(typing.get_args(hint)[0]).split(' ', 1)[-1]}s"
    return names.get(hint, getattr(hint, "__name__", str(hint)))


# keys each stage instance takes from the study grid, never from its section, and what to write instead
_PER_RUN = {"lora.rank": "list the values in 'study.ranks'", "lora.lr": "list the values in 'study.lora_lrs'",
            "full.lr": "list the values in 'study.full_lrs'", "scratch.lr": "list the values in 'study.scratch_lrs'",
            "train.seed": "list the values in 'study.seeds'",
            "lora.target_modules": "name the modules under 'lora.target_sets' (e.g. all_linear: all-linear) and "
                                   "list that name in 'study.target_sets'",
            "lora.use_dora": "list the adapters in 'study.adapters' (lora, dora)"}


def build_section(cls: type, raw: Any, section: str) -> Any:
    """Section ``section`` of params.yaml (the mapping ``raw``) as a ``cls``, each value checked against its
    field's type hint."""
    check(isinstance(raw, dict), section, f"must be a mapping of keys, got {raw!r}")
    for key in raw:
        check(f"{section}.{key}" not in _PER_RUN, f"{section}.{key}",
              f"is set per stage instance now: {_PER_RUN.get(f'{section}.{key}')} (one value trains one "
              "instance)")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    check(not unknown, f"{section}.{unknown[0]}" if unknown else section,
          f"is not a known key; known keys of '{section}': {sorted(names)}")
    kwargs = {k: _coerce(v, hints[k], f"{section}.{k}") for k, v in raw.items()}
    return cls(**kwargs)
