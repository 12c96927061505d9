"""What MLflow offers no public way to do, in one place, each checked against the MLflow versions of
:data:`CHECKED_MLFLOW` (those pyproject.toml allows; a test pins both). Every other module of lora_pipeline uses
MLflow's public API only: no SQL on MLflow's tables, no private attributes; no module writes the process
environment.

- :func:`import_mlflow`: MLflow sets the levels of its loggers when it is first imported (``MLFLOW_LOGGING_LEVEL``,
  else INFO), over the application's logging configuration, and has no other switch for it than that
  environment variable; the level the application had given the ``mlflow`` logger is put back after the import.
- :func:`http_limits` and :func:`no_artifact_bars`: MLflow takes the retries and timeout of a request to a
  tracking server (read at each request by ``mlflow.utils.rest_utils.http_request``) and whether an artifact
  transfer shows a progress bar only from the environment; no client, store or call argument sets them. Each
  setting is a public object of ``mlflow.environment_variables`` whose ``default`` MLflow uses where the
  environment does not name it: these defaults are changed for a block, and a value the user set in the
  environment still wins. Only with an MLflow of :data:`CHECKED_MLFLOW`; with another one MLflow's own defaults
  apply.
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
import sys
from pathlib import Path
from typing import Any, Iterator, Mapping
from urllib.parse import urlsplit
from urllib.request import url2pathname

__all__ = ["CHECKED_MLFLOW", "mlflow_checked", "import_mlflow", "HTTP_RETRIES", "HTTP_TIMEOUT_S", "http_limits",
           "no_artifact_bars", "relocate_artifacts"]

log = logging.getLogger(__name__)

#: MLflow major versions [from, to) the shims were checked against (last with 3.17.2)
CHECKED_MLFLOW = (3, 4)
# one retry, 5 s per attempt: a server that accepts connections but never answers costs ~10 s, not minutes
HTTP_RETRIES, HTTP_TIMEOUT_S = 1, 5


def mlflow_checked(version: str) -> bool:
    """Whether MLflow ``version`` (``mlflow.__version__``) is one of :data:`CHECKED_MLFLOW`."""
    major = version.split(".", 1)[0]
    return major.isdigit() and CHECKED_MLFLOW[0] <= int(major) < CHECKED_MLFLOW[1]


def import_mlflow() -> Any:
    """``mlflow``; its first import in the process keeps the level the application gave the ``mlflow`` logger
    (a stage says WARNING), unless the user named one in ``MLFLOW_LOGGING_LEVEL``."""
    first = "mlflow" not in sys.modules
    level = logging.getLogger("mlflow").level
    import mlflow

    if first and level != logging.NOTSET and not os.environ.get("MLFLOW_LOGGING_LEVEL"):
        logging.getLogger("mlflow").setLevel(level)
    return mlflow


@contextlib.contextmanager
def _defaults(values: Mapping[str, Any]) -> Iterator[None]:
    """MLflow's settings ``values`` (names of ``mlflow.environment_variables``) as their defaults in the block."""
    if not mlflow_checked(getattr(import_mlflow(), "__version__", "")):
        yield
        return
    from mlflow import environment_variables

    settings = {getattr(environment_variables, name): value for name, value in values.items()}
    before = {setting: setting.default for setting in settings}
    for setting, value in settings.items():
        setting.default = value
    try:
        yield
    finally:
        for setting, value in before.items():
            setting.default = value


def _errors_only(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR


@contextlib.contextmanager
def http_limits(retries: int = HTTP_RETRIES, timeout_s: int = HTTP_TIMEOUT_S) -> Iterator[None]:
    """Tight retries and timeouts for MLflow's requests inside the block (``retries`` and ``timeout_s`` per
    request), unless the user set their own (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``, ``MLFLOW_HTTP_REQUEST_TIMEOUT``),
    and no urllib3 "Retrying (…)" warnings: when the client gives up, the caller's one message names the final
    error. The process environment is left as it is (see the module's docstring)."""
    urllib3_log = logging.getLogger("urllib3.connectionpool")
    urllib3_log.addFilter(_errors_only)
    try:
        with _defaults({"MLFLOW_HTTP_REQUEST_MAX_RETRIES": retries, "MLFLOW_HTTP_REQUEST_TIMEOUT": timeout_s}):
            yield
    finally:
        urllib3_log.removeFilter(_errors_only)


@contextlib.contextmanager
def no_artifact_bars() -> Iterator[None]:
    """No progress bars of MLflow's artifact uploads and downloads inside the block, unless the user set
    ``MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR`` (see the module's docstring)."""
    with _defaults({"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": False}):
        yield


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
