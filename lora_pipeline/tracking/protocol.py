"""What stages and the training loop report through: the :class:`Tracker` protocol, the no-op
:class:`NullTracker`, and how params and metrics are flattened and shown."""

from __future__ import annotations

import json
from pathlib import Path
from types import TracebackType
from typing import Any, Callable, Mapping, Optional, Protocol, TypeVar

__all__ = ["Tracker", "ClosedOnExit", "NullTracker", "flatten", "param_value"]

T = TypeVar("T")


def flatten(obj: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}``."""
    out: dict[str, Any] = {}
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def param_value(value: Any) -> str:
    """A param as the MLflow UI shows it: strings as they are, anything else as JSON (``["pooler"]``, ``null``,
    ``false``, ``5e-05``), never a Python repr like ``('pooler',)``."""
    if isinstance(value, str):
        return value
    try:
        return json.dumps(list(value) if isinstance(value, (tuple, set, frozenset)) else value)
    except (TypeError, ValueError):
        return str(value)


class Tracker(Protocol):
    """What stages and the training loop report through."""

    def log_params(self, params: Mapping[str, Any]) -> None: ...
    def log_metrics(self, metrics: Mapping[str, float], step: Optional[int] = None) -> None: ...
    def set_tags(self, tags: Mapping[str, Any]) -> None: ...
    def log_artifact(self, path: str | Path) -> None: ...
    def use(self, what: str, fn: Callable[[Any], T]) -> Optional[T]: ...
    def close(self, failed: bool = False) -> None: ...


class ClosedOnExit:
    """``with tracker:`` closes the run on leaving: FAILED when an exception (or Ctrl-C) left the block."""

    def close(self, failed: bool = False) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, kind: Optional[type[BaseException]], err: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        self.close(failed=kind is not None)


class NullTracker(ClosedOnExit):
    """Logs nothing (tests, ``mlflow.enabled: false``)."""

    def log_params(self, params: Mapping[str, Any]) -> None: pass
    def log_metrics(self, metrics: Mapping[str, float], step: Optional[int] = None) -> None: pass
    def set_tags(self, tags: Mapping[str, Any]) -> None: pass
    def log_artifact(self, path: str | Path) -> None: pass
    def use(self, what: str, fn: Callable[[Any], T]) -> Optional[T]: return None
    def close(self, failed: bool = False) -> None: pass
