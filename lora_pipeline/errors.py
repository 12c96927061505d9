"""The project's error types: each message says what failed, where, and how to fix it."""

from __future__ import annotations

from .config import ConfigError

__all__ = ["PipelineError", "DataError", "ValidationFailed", "ConfigError"]


class PipelineError(RuntimeError):
    """A user-facing failure of a stage; stage scripts print the message and exit non-zero."""


class DataError(PipelineError):
    """The input data or its source is unusable (missing column, bad encoding, sha256 mismatch…)."""


class ValidationFailed(DataError):
    """Hard data expectations failed; the message lists each with counts and examples."""
