"""The MLflow store a process talks to: which one (the environment, params, else a SQLite file at the project
root), the lock beside a SQLite store (naming its holder), checks before MLflow tries (a SQLite store can be
written, a tracking server answers), and an experiment whose artifacts stay beside a SQLite store, also after the
project is moved."""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import socket
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from time import monotonic
from time import sleep as wait  # the lock's poll (tests patch it, not time.sleep)
from typing import IO, Any, Iterator, Optional
from urllib.parse import urlsplit, urlunsplit

from ..config import MlflowConfig
from .mlflow_shims import HTTP_RETRIES, HTTP_TIMEOUT_S, relocate_artifacts

try:
    import fcntl
except ImportError:  # Windows: no cross-process lock on store creation
    fcntl = None  # type: ignore[assignment]

__all__ = ["STORE_LOCK_TIMEOUT", "LOCK_NOTICE_S", "default_tracking_uri", "sqlite_db", "store_lock",
           "check_writable", "check_server", "experiment"]

log = logging.getLogger(__name__)

STORE_LOCK_TIMEOUT = 300.0  # s: a first migration takes seconds, even on a loaded machine
LOCK_NOTICE_S = 2.0  # s of waiting for the lock after which one line names its holder


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


def check_server(uri: str, retries: int = HTTP_RETRIES, timeout_s: float = HTTP_TIMEOUT_S) -> None:
    """Refuse, before MLflow tries, a tracking server at an ``http(s)`` ``uri`` that does not answer: a GET of its
    ``/health`` gets no HTTP answer within ``timeout_s``, in ``retries`` + 1 tries. Any answer (an error status, a
    certificate MLflow may be told to accept) is enough; MLflow's own retries and timeouts then apply to a server
    that was up. Other URIs are not asked.

    Raises:
        ConnectionError: naming the URL asked (without credentials) and the last error, e.g. "Connection refused"
            or "timed out".
    """
    parts = urlsplit(uri)
    if parts.scheme.lower() not in ("http", "https"):
        return
    netloc = parts.netloc.rsplit("@", 1)[-1]  # the probe sends no credentials
    url = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/") + "/health", "", ""))
    for attempt in range(retries + 1):
        try:
            urllib.request.urlopen(url, timeout=timeout_s).close()
            return
        except urllib.error.HTTPError:  # an answer: the server is up
            return
        except (OSError, ValueError) as err:
            reason = getattr(err, "reason", err)
            if isinstance(reason, ssl.SSLError):  # the server speaks TLS; MLflow applies the user's TLS settings
                return
            if attempt == retries:
                raise ConnectionError(f"no answer from {url}: {reason}") from None


def experiment(mlflow: Any, name: str, uri: str) -> Any:
    """The experiment ``name``; a SQLite store keeps its artifacts in ``mlartifacts/`` beside the db file (a moved
    or copied one is repointed there: :func:`~lora_pipeline.tracking.mlflow_shims.relocate_artifacts`)."""
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
        relocate_artifacts(db, experiment.experiment_id, old, location, mlflow_version=mlflow.__version__)
    return experiment
