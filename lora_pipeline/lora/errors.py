"""The LoRA package's error type: a ValueError that names the argument at fault."""

from __future__ import annotations

__all__ = ["LoRAArgumentError"]


class LoRAArgumentError(ValueError):
    """A bad LoRA argument (``target_modules``, ``rank``…); ``argument`` names it, so callers that read
    settings from a file (``build_model`` from ``params.yaml``) can point at the right key."""

    def __init__(self, argument: str, message: str) -> None:
        super().__init__(message)
        self.argument = argument
