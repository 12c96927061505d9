"""Resumable training state in a directory: the :class:`Checkpointer` protocol ``fit`` saves through, and
:class:`DirCheckpointer`, its implementation.

The directory (``checkpoints/<variant>``) is git-ignored and deliberately not a DVC out: a fresh clone or a queued
experiment's temporary copy has none, and DVC would rerun a stage whose out is missing.

Saved with ``torch.save`` and read back with ``torch.load(weights_only=True)``: tensors, numbers,
strings and containers only, never arbitrary pickled objects. A checkpoint records the key of
the run that wrote it (a hash of its hyper-parameters and data); a run with another key ignores
it, so changing ``lora.rank`` never resumes a rank-8 state.

One training process at a time owns a checkpoint folder: :func:`lock_dir` holds an exclusive ``flock`` on
``<folder>.lock`` (beside the folder, so clearing the folder never drops it). The kernel releases it when
the holder exits or is killed, so a lock left by a dead process never blocks.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import logging
import os
import shutil
import socket
from pathlib import Path
from typing import Any, Iterator, Optional, Protocol

import torch

from .errors import PipelineError
from .files import atomic_file, disk_full_is_an_error, sha256_bytes

__all__ = ["Checkpointer", "DirCheckpointer", "run_key", "lock_dir"]

log = logging.getLogger(__name__)


def run_key(*parts: Any) -> str:
    """A stable hash of JSON-serialisable ``parts`` (config dicts, data digests)."""
    return sha256_bytes(json.dumps(parts, sort_keys=True, default=str).encode())[:16]


@contextlib.contextmanager
def lock_dir(directory: str | Path) -> Iterator[Path]:
    """Hold an exclusive lock on ``directory`` (file ``<directory>.lock``) for this process; never waits.

    Yields:
        The lock file, which names the holder (JSON: pid, host, since) while it is held.

    Raises:
        PipelineError: another process (or another ``lock_dir`` of this one) holds it; says which pid and host.
    """
    directory = Path(directory)
    path = directory.with_name(directory.name + ".lock")
    fd = _acquire(path, directory)
    try:
        holder = {"pid": os.getpid(), "host": socket.gethostname(),
                  "since": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        yield path
    finally:
        path.unlink(missing_ok=True)  # before unlocking: a process that opened this file sees it was replaced
        os.close(fd)


def _acquire(path: Path, directory: Path) -> int:
    """An open descriptor of ``path`` holding its flock; the file is re-opened if its holder removed it meanwhile."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise PipelineError(f"checkpoint folder {directory} is in use by another training process ({holder}); "
                                "wait for it to finish or stop it (kill PID), then run the stage again") from None
        try:
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)  # the holder released and removed the file between our open and flock: take the new one


def _holder(fd: int) -> str:
    """'pid N on host H since T' from a held lock file, or why it is unknown."""
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {info['pid']} on host {info['host']} since {info['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder not yet recorded: it is starting"


class Checkpointer(Protocol):
    """What ``fit`` saves resumable state through and resumes from (``load`` gives None when there is none)."""

    def load(self) -> Optional[dict[str, Any]]: ...
    def save(self, state: dict[str, Any]) -> None: ...


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
        with disk_full_is_an_error(self.dir / "state.pt", "the training checkpoint"):
            with atomic_file(self.dir / "state.pt") as tmp, open(tmp, "wb") as fh:
                torch.save(state, fh)  # through a Python file, so that a failed write keeps its errno
            with atomic_file(self.dir / "key.txt") as tmp:
                tmp.write_text(self.key + "\n")

    def lock(self) -> contextlib.AbstractContextManager[Path]:
        """This folder's :func:`lock_dir`: take it before loading or saving, hold it until the run's outputs exist."""
        return lock_dir(self.dir)

    def clear(self) -> None:
        """Remove the saved state once the run's outputs are safely written."""
        if self.dir.exists():
            shutil.rmtree(self.dir)
