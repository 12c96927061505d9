"""Resumable training state in a directory (a DVC ``persist: true`` out).

Saved with ``torch.save`` and read back with ``torch.load(weights_only=True)``: tensors, numbers,
strings and containers only, never arbitrary pickled objects. A checkpoint records the key of
the run that wrote it (a hash of its hyper-parameters and data); a run with another key ignores
it, so changing ``lora.rank`` never resumes a rank-8 state.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any, Optional

import torch

from .io import atomic_file, sha256_bytes

__all__ = ["DirCheckpointer", "run_key"]

log = logging.getLogger(__name__)


def run_key(*parts: Any) -> str:
    """A stable hash of JSON-serialisable ``parts`` (config dicts, data digests)."""
    return sha256_bytes(json.dumps(parts, sort_keys=True, default=str).encode())[:16]


class DirCheckpointer:
    """Keeps the latest state as ``<dir>/state.pt`` plus ``<dir>/key.txt``; writes are atomic."""

    def __init__(self, directory: str | Path, key: str):
        self.dir = Path(directory)
        self.key = key

    def load(self) -> Optional[dict[str, Any]]:
        state_path, key_path = self.dir / "state.pt", self.dir / "key.txt"
        if not state_path.is_file():
            return None
        if not key_path.is_file() or key_path.read_text().strip() != self.key:
            log.info("ignoring checkpoint in %s: it belongs to a run with other params or data", self.dir)
            return None
        try:
            return torch.load(state_path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - a torn or foreign file must not block training
            log.warning("ignoring unreadable checkpoint %s (%s); starting over", state_path, err)
            return None

    def save(self, state: dict[str, Any]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        # state first, key second: a kill in between never pairs one run's key with another's state
        key_path = self.dir / "key.txt"
        if key_path.is_file() and key_path.read_text().strip() != self.key:
            key_path.unlink()
        with atomic_file(self.dir / "state.pt") as tmp:
            torch.save(state, tmp)
        with atomic_file(self.dir / "key.txt") as tmp:
            tmp.write_text(self.key + "\n")

    def clear(self) -> None:
        """Remove the saved state once the run's outputs are safely written."""
        if self.dir.exists():
            shutil.rmtree(self.dir)
