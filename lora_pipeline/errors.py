"""The project's error types: each message says what failed, where, and how to fix it.

User data quoted in a message goes through :func:`excerpt` / :func:`listing`, so a 10 MB line or
500 labels cost a line of the message, not megabytes of log.
"""

from __future__ import annotations

from typing import Iterable, Mapping

__all__ = ["PipelineError", "DataError", "ValidationFailed", "ConfigError", "excerpt", "listing",
           "EXCERPT_CHARS", "LIST_ITEMS"]

EXCERPT_CHARS = 80  # characters of one quoted value
LIST_ITEMS = 10  # items of one quoted list
_ITEM_CHARS = 40  # characters of each item in a list


class ConfigError(ValueError):
    """A parameter is missing, unknown or out of range. The message names the key."""


class PipelineError(RuntimeError):
    """A user-facing failure of a stage; stage scripts print the message and exit non-zero."""


class DataError(PipelineError):
    """The input data or its source is unusable (missing column, bad encoding, sha256 mismatch…)."""


class ValidationFailed(DataError):
    """Hard data expectations failed; the message lists each with counts and examples."""


def excerpt(value: object, limit: int = EXCERPT_CHARS, *, quote: bool = True) -> str:
    """``value`` cut to ``limit`` characters, then ``… and K more characters``.

    A string is cut first, then quoted with ``repr`` (unless ``quote`` is false), so escapes such as
    ``\x00`` or ``\u200b`` stay visible and the cost does not grow with its length; any other value
    is shown by its ``repr``, cut.
    """
    text = value if isinstance(value, str) else repr(value)
    head = text[:limit]
    if quote and isinstance(value, str):
        head = repr(head)
    return head if len(text) <= limit else f"{head}… and {len(text) - limit} more characters"


def listing(items: Iterable[object] | Mapping[object, object], limit: int = LIST_ITEMS) -> str:
    """``['a', 'b']`` (or ``{'a': 1}`` for a mapping) of the first ``limit`` items, each an
    :func:`excerpt`, then ``… and K more``."""
    if isinstance(items, Mapping):
        parts = [f"{excerpt(k, _ITEM_CHARS)}: {excerpt(v, _ITEM_CHARS)}" for k, v in items.items()]
        brackets = "{}"
    else:
        parts = [excerpt(item, _ITEM_CHARS) for item in items]
        brackets = "[]"
    shown = brackets[0] + ", ".join(parts[:limit]) + brackets[1]
    return shown if len(parts) <= limit else f"{shown} … and {len(parts) - limit} more"
