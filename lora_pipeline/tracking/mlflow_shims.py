"""What MLflow offers no public way to do, in one place, each checked against the MLflow versions of
:data:`CHECKED_MLFLOW` (those pyproject.toml allows; a test pins both). Every other module of lora_pipeline uses
MLflow's public API only: no environment writes, no SQL on MLflow's tables, no private attributes.

- :func:`http_limits`: MLflow takes the retries and timeout of a request to a tracking server only from the
  environment (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``, ``MLFLOW_HTTP_REQUEST_TIMEOUT``, read at each request by
  ``mlflow.utils.rest_utils.http_request``); no client, store or call argument sets them.
- :func:`relocate_artifacts`: MLflow fixes an experiment's artifact location and a run's artifact URI when it
  creates them and has no API (client, CLI or store) to change either, so a SQLite store moved with its project
  is repointed by an UPDATE of its ``experiments`` and ``runs`` rows; only with an MLflow of
  :data:`CHECKED_MLFLOW`, whose schema it was checked against.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit
from urllib.request import url2pathname

__all__ = ["CHECKED_MLFLOW", "mlflow_checked", "HTTP_RETRIES", "HTTP_TIMEOUT_S", "http_limits",
           "relocate_artifacts"]

log = logging.getLogger(__name__)

#: MLflow major versions [from, to) the shims were checked against (last with 3.17.2)
CHECKED_MLFLOW = (3, 4)
# one retry, 5 s per attempt: a server that accepts connections but never answers costs ~10 s, not minutes
HTTP_RETRIES, HTTP_TIMEOUT_S = 1, 5


def mlflow_checked(version: str) -> bool:
    """Whether MLflow ``version`` (``mlflow.__version__``) is one of :data:`CHECKED_MLFLOW`."""
    major = version.split(".", 1)[0]
    return major.isdigit() and CHECKED_MLFLOW[0] <= int(major) < CHECKED_MLFLOW[1]


def _errors_only(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR


@contextlib.contextmanager
def http_limits(retries: int = HTTP_RETRIES, timeout_s: int = HTTP_TIMEOUT_S) -> Iterator[None]:
    """Tight retries and timeouts for MLflow's requests inside the block (``retries`` and ``timeout_s`` per
    request), unless the user set their own, and no urllib3 "Retrying (…)" warnings: when the client gives up,
    the caller's one message names the final error.

    The environment is MLflow's only setting for these (see the module's docstring): the names the user has not
    set are set for the block only and removed after it. They are MLflow's documented settings, so an MLflow
    outside :data:`CHECKED_MLFLOW` at worst ignores them; the test that pins the range checks that MLflow reads
    them at each request.
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


def relocate_artifacts(db: Path, experiment_id: str, old: str, new: str, mlflow_version: str) -> None:
    """The store ``db`` was moved or copied: new runs of the experiment write to ``new`` (beside it), and earlier
    runs whose artifacts came along (``mlartifacts/`` copied too) point there.

    With an MLflow outside :data:`CHECKED_MLFLOW` the store is left as it is, and one warning says where new runs'
    artifacts go instead.
    """
    if not mlflow_checked(mlflow_version):
        log.warning("MLflow store %s was moved or copied, but its artifact location is repointed only with MLflow "
                    "%d.x (MLflow has no API for it) and this is MLflow %s: new runs' artifacts go to %s",
                    db, CHECKED_MLFLOW[0], mlflow_version, old)
        return
    with contextlib.closing(sqlite3.connect(db, timeout=30)) as con, con:
        con.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = ?", (new, int(experiment_id)))
        runs = con.execute("SELECT run_uuid, artifact_uri FROM runs WHERE experiment_id = ?",
                           (int(experiment_id),)).fetchall()
        moved = [(new + uri[len(old):], run) for run, uri in runs if (uri or "").startswith(old + "/")
                 and Path(url2pathname(urlsplit(new + uri[len(old):]).path)).exists()]
        con.executemany("UPDATE runs SET artifact_uri = ? WHERE run_uuid = ?", moved)
    log.info("MLflow store %s was moved or copied: artifacts now go to %s (was %s); %d of %d earlier runs "
             "found their artifacts there", db, new, old, len(moved), len(runs))
