"""The MLflow store a process talks to: which one (the environment, params, else a SQLite file at the project
root), the lock beside a SQLite store (naming its holder), a check that the store can be written before MLflow
tries, the HTTP limits of requests to a tracking server, and an experiment whose artifacts stay beside a SQLite
store, also after the project is moved."""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import socket
import sqlite3
from pathlib import Path
from time import monotonic
from time import sleep as wait  # the lock's poll (tests patch it, not time.sleep)
from typing import IO, Any, Iterator, Optional
from urllib.parse import urlsplit
from urllib.request import url2pathname

from ..config import MlflowConfig

try:
    import fcntl
except ImportError:  # Windows: no cross-process lock on store creation
    fcntl = None  # type: ignore[assignment]

__all__ = ["STORE_LOCK_TIMEOUT", "LOCK_NOTICE_S", "HTTP_RETRIES", "HTTP_TIMEOUT_S", "default_tracking_uri",
           "sqlite_db", "store_lock", "check_writable", "http_limits", "experiment"]

log = logging.getLogger(__name__)

STORE_LOCK_TIMEOUT = 300.0  # s: a first migration takes seconds, even on a loaded machine
LOCK_NOTICE_S = 2.0  # s of waiting for the lock after which one line names its holder
# one retry, 5 s per attempt: a server that accepts connections but never answers costs ~10 s, not minutes
HTTP_RETRIES, HTTP_TIMEOUT_S = 1, 5


def default_tracking_uri(cfg: MlflowConfig, cwd: Optional[Path] = None) -> str:
    """The tracking URI: ``MLFLOW_TRACKING_URI``, else ``cfg.tracking_uri``, else an absolute SQLite path.

    The SQLite file lives at the root of the DVC project the user runs from. Queued ``dvc exp``
    runs execute in temporary copies; DVC points ``DVC_ROOT`` at the parent project there, so all
    runs land in the one store.
    """
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    if cfg.tracking_uri:
        return cfg.tracking_uri
    root = Path(os.environ.get("DVC_ROOT") or _project_root(cwd or Path.cwd())).resolve()
    return f"sqlite:///{root / 'mlflow.db'}"


def _project_root(start: Path) -> Path:
    for path in [start, *start.parents]:
        if (path / ".dvc").is_dir() or (path / ".git").exists():
            return path
    return start


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


def experiment(mlflow: Any, name: str, uri: str) -> Any:
    """The experiment ``name``; a SQLite store keeps its artifacts in ``mlartifacts/`` beside the db file."""
    db = sqlite_db(uri)
    location = (Path(os.path.abspath(db)).parent / "mlartifacts").as_uri() if db is not None else None
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None:
        try:
            mlflow.create_experiment(name, artifact_location=location)
        except Exception:  # noqa: BLE001 - a parallel run may have created it first
            if mlflow.get_experiment_by_name(name) is None:
                raise
        return mlflow.get_experiment_by_name(name)
    old = getattr(experiment, "artifact_location", None)
    if location and isinstance(old, str) and old.startswith("file:") and old.endswith("/mlartifacts") \
            and old != location:
        _relocate_artifacts(db, experiment.experiment_id, old, location)
    return experiment


def _relocate_artifacts(db: Path, experiment_id: str, old: str, new: str) -> None:
    """The store was moved or copied: new runs write beside it, and earlier runs whose artifacts came along
    (``mlartifacts/`` copied too) point there. MLflow has no API to change an artifact location."""
    with contextlib.closing(sqlite3.connect(db, timeout=30)) as con, con:
        con.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = ?", (new, int(experiment_id)))
        runs = con.execute("SELECT run_uuid, artifact_uri FROM runs WHERE experiment_id = ?",
                           (int(experiment_id),)).fetchall()
        moved = [(new + uri[len(old):], run) for run, uri in runs if (uri or "").startswith(old + "/")
                 and Path(url2pathname(urlsplit(new + uri[len(old):]).path)).exists()]
        con.executemany("UPDATE runs SET artifact_uri = ? WHERE run_uuid = ?", moved)
    log.info("MLflow store %s was moved or copied: artifacts now go to %s (was %s); %d of %d earlier runs "
             "found their artifacts there", db, new, old, len(moved), len(runs))
