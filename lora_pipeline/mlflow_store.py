"""The MLflow store a process talks to: the lock beside a SQLite store (naming its holder), a check that the
store can be written before MLflow tries, and the HTTP limits of requests to a tracking server."""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import socket
from pathlib import Path
from time import monotonic
from time import sleep as wait  # the lock's poll (tests patch it, not time.sleep)
from typing import IO, Iterator, Optional

try:
    import fcntl
except ImportError:  # Windows: no cross-process lock on store creation
    fcntl = None  # type: ignore[assignment]

__all__ = ["STORE_LOCK_TIMEOUT", "LOCK_NOTICE_S", "HTTP_RETRIES", "HTTP_TIMEOUT_S", "sqlite_db", "store_lock",
           "check_writable", "http_limits"]

log = logging.getLogger(__name__)

STORE_LOCK_TIMEOUT = 300.0  # s: a first migration takes seconds, even on a loaded machine
LOCK_NOTICE_S = 2.0  # s of waiting for the lock after which one line names its holder
# one retry, 5 s per attempt: a server that accepts connections but never answers costs ~10 s, not minutes
HTTP_RETRIES, HTTP_TIMEOUT_S = 1, 5


def sqlite_db(uri: str) -> Optional[Path]:
    """The database file of a ``sqlite:///`` URI, else None."""
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Hold ``<db>-lock`` (beside a SQLite store) exclusively; other stores need no lock.

    The holder writes its pid, host and start time into the file; a process that waits longer than
    :data:`LOCK_NOTICE_S` says so once, naming the holder.

    Raises:
        TimeoutError: the lock stayed held for :data:`STORE_LOCK_TIMEOUT` seconds.
    """
    db = sqlite_db(uri)
    if db is None or fcntl is None:
        yield
        return
    with open(f"{db}-lock", "a+", encoding="utf-8") as handle:  # the OS drops the lock when the holder dies
        _acquire(handle, db)
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on host {socket.gethostname()} since "
                     f"{datetime.datetime.now().isoformat(timespec='seconds')}\n")
        handle.flush()
        try:
            yield
        finally:
            handle.truncate(0)
            handle.flush()
            fcntl.flock(handle, fcntl.LOCK_UN)


def _acquire(handle: IO[str], db: Path) -> None:
    start = monotonic()
    noticed = False
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            waited = monotonic() - start
            if waited > STORE_LOCK_TIMEOUT:
                raise TimeoutError(f"{db}-lock held by another process ({_holder(handle)}) for "
                                   f"{STORE_LOCK_TIMEOUT:.0f} s") from None
            if not noticed and waited >= LOCK_NOTICE_S:
                noticed = True
                log.warning("waiting for the MLflow store lock %s-lock, held by %s; MLflow logging gives up after "
                            "%.0f s (the stage's results do not depend on it). If that process hangs, stop it.",
                            db, _holder(handle), STORE_LOCK_TIMEOUT)
            wait(0.05)


def _holder(handle: IO[str]) -> str:
    handle.seek(0)
    return handle.read().strip() or "a process that did not name itself"


def check_writable(uri: str) -> None:
    """Refuse, before MLflow tries, a SQLite store that this process may not write.

    Raises:
        PermissionError: "attempt to write a readonly database", naming the file (or its folder) and the fix.
    """
    db = sqlite_db(uri)
    if db is None:
        return
    target = db if db.exists() else db.parent
    if target.exists() and not os.access(target, os.W_OK):
        raise PermissionError(f"attempt to write a readonly database: {target} is not writable by this user; "
                              "make it writable (chmod u+w) or point MLFLOW_TRACKING_URI at another store")
    if db.exists() and not os.access(db.parent, os.W_OK):  # SQLite writes its journal beside the file
        raise PermissionError(f"attempt to write a readonly database: the folder {db.parent} is not writable, "
                              "and SQLite needs to write its journal there")


def _errors_only(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR


@contextlib.contextmanager
def http_limits(retries: int = HTTP_RETRIES, timeout_s: int = HTTP_TIMEOUT_S) -> Iterator[None]:
    """Tight retries and timeouts for MLflow's requests inside the block (``retries`` and ``timeout_s`` per
    request), unless the user set their own, and no urllib3 "Retrying (…)" warnings: when the client gives up,
    the caller's one message names the final error.

    MLflow reads ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` and ``MLFLOW_HTTP_REQUEST_TIMEOUT`` at each request and has
    no other setting for them, so they are set for the block only and restored after it.
    """
    urllib3_log = logging.getLogger("urllib3.connectionpool")
    urllib3_log.addFilter(_errors_only)
    limits = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(retries), "MLFLOW_HTTP_REQUEST_TIMEOUT": str(timeout_s)}
    added = [name for name in limits if name not in os.environ]
    for name in added:
        os.environ[name] = limits[name]
    try:
        yield
    finally:
        urllib3_log.removeFilter(_errors_only)
        for name in added:
            os.environ.pop(name, None)
