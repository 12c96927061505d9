"""Experiment tracking behind a small protocol: MLflow when enabled, a no-op otherwise.

DVC owns artifacts, lineage and metrics files; MLflow mirrors params, metrics, curves and small
artifacts for browsing. Tracking must never cost a result: if the server is unreachable or the
SQLite store is locked or corrupt, the stage still finishes and one warning says what was lost.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Protocol

from .config import MlflowConfig

__all__ = ["Tracker", "NullTracker", "MlflowTracker", "default_tracking_uri", "redact", "open_tracker",
           "flatten"]

log = logging.getLogger(__name__)

_SECRET_QUERY = re.compile(r"(?i)((?:token|password|passwd|secret|key|sig|signature)=)[^&\s]+")


def redact(text: str) -> str:
    """Hide credentials in URIs (``user:password@`` → ``user:***@``) and secret-looking query values."""
    def _one(match: re.Match) -> str:
        # split by hand: urlunsplit rewrites URIs without credentials (sqlite:////abs → sqlite://abs) and
        # urlsplit raises on a '[' in a password, which would turn a logging call into a crash
        scheme, rest = match.group(0).split("://", 1)
        end = min([i for i in (rest.find(c) for c in "/?#") if i >= 0], default=len(rest))
        netloc, tail = rest[:end], rest[end:]
        if "@" not in netloc:
            return match.group(0)
        creds, host = netloc.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}{tail}" if ":" in creds else f"{scheme}://***@{host}{tail}"

    # quotes are valid in a password (RFC 3986 sub-delims): only whitespace ends a URI here
    text = re.sub(r"[A-Za-z][A-Za-z0-9+.-]*://\S+", _one, text)
    return _SECRET_QUERY.sub(r"\1***", text)


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


def _git_commit() -> Optional[str]:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


class Tracker(Protocol):
    """What stages and the training loop report through."""

    def log_params(self, params: Mapping[str, Any]) -> None: ...
    def log_metrics(self, metrics: Mapping[str, float], step: Optional[int] = None) -> None: ...
    def set_tags(self, tags: Mapping[str, Any]) -> None: ...
    def log_artifact(self, path: str | Path) -> None: ...
    def close(self, failed: bool = False) -> None: ...


class NullTracker:
    """Logs nothing (tests, ``mlflow.enabled: false``)."""

    def log_params(self, params: Mapping[str, Any]) -> None: pass
    def log_metrics(self, metrics: Mapping[str, float], step: Optional[int] = None) -> None: pass
    def set_tags(self, tags: Mapping[str, Any]) -> None: pass
    def log_artifact(self, path: str | Path) -> None: pass
    def close(self, failed: bool = False) -> None: pass


class MlflowTracker:
    """One MLflow run per stage execution; every call degrades to a counted no-op on failure.

    Transient "database is locked" errors (parallel ``dvc queue start -j 2`` on SQLite) are
    retried with backoff; anything else disables logging for the rest of the run and is reported
    once at ``close()`` with counts of what was not logged.
    """

    RETRIES = 8

    def __init__(self, cfg: MlflowConfig, run_name: str, tags: Mapping[str, Any]):
        self._lost: dict[str, int] = {}
        self._error: Optional[str] = None
        self._mlflow = None
        # fail fast instead of retrying an unreachable server for minutes: one retry, 5 s per attempt, so a
        # server that accepts connections but never answers costs a stage ~10 s, not ~20 s
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
        self.uri = default_tracking_uri(cfg)
        self._call("start", lambda: self._start(cfg, run_name, tags))

    def _start(self, cfg: MlflowConfig, run_name: str, tags: Mapping[str, Any]) -> None:
        import mlflow

        mlflow.set_tracking_uri(self.uri)
        if mlflow.get_experiment_by_name(cfg.experiment) is None:
            location = None
            if self.uri.startswith("sqlite:///"):  # keep artifacts beside the store, never in a temp copy
                location = (Path(self.uri[len("sqlite:///"):]).parent / "mlartifacts").as_uri()
            try:
                mlflow.create_experiment(cfg.experiment, artifact_location=location)
            except Exception:  # noqa: BLE001 - a parallel run may have created it first
                if mlflow.get_experiment_by_name(cfg.experiment) is None:
                    raise
        mlflow.set_experiment(cfg.experiment)
        all_tags = {"git_commit": _git_commit(), "dvc_exp_name": os.environ.get("DVC_EXP_NAME"), **tags}
        mlflow.start_run(run_name=run_name, tags={k: str(v) for k, v in all_tags.items() if v is not None})
        self._mlflow = mlflow

    def _call(self, what: str, fn: Callable[[], None], count: int = 1) -> None:
        if self._error is not None:
            self._lost[what] = self._lost.get(what, 0) + count
            return
        for attempt in range(self.RETRIES):
            try:
                fn()
                return
            except Exception as err:  # noqa: BLE001 - tracking must never fail a stage
                if "locked" in str(err).lower() and attempt + 1 < self.RETRIES:
                    time.sleep(min(0.2 * 2 ** attempt, 5.0))
                    continue
                self._error = redact(f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
                self._lost[what] = self._lost.get(what, 0) + count
                return

    def log_params(self, params: Mapping[str, Any]) -> None:
        clean = {k: redact(str(v)) for k, v in flatten(params).items()}
        self._call("params", lambda: self._mlflow.log_params(clean), len(clean))

    def log_metrics(self, metrics: Mapping[str, float], step: Optional[int] = None) -> None:
        values = {k: float(v) for k, v in flatten(metrics).items() if isinstance(v, (int, float))}
        self._call("metrics", lambda: self._mlflow.log_metrics(values, step=step), len(values))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        clean = {k: redact(str(v)) for k, v in tags.items() if v is not None}
        self._call("tags", lambda: self._mlflow.set_tags(clean), len(clean))

    def log_artifact(self, path: str | Path) -> None:
        path = Path(path)
        fn = (lambda: self._mlflow.log_artifacts(str(path), artifact_path=path.name)) if path.is_dir() \
            else (lambda: self._mlflow.log_artifact(str(path)))
        self._call("artifacts", fn)

    def close(self, failed: bool = False) -> None:
        self._call("end", lambda: self._mlflow.end_run(status="FAILED" if failed else "FINISHED"))
        if self._error is not None:
            lost = ", ".join(f"{n} {what}" for what, n in self._lost.items())
            log.warning("MLflow tracking at %s failed (%s); not logged: %s. The stage's DVC outputs and "
                        "metrics files are complete.", redact(self.uri), self._error, lost)


def open_tracker(cfg: MlflowConfig, run_name: str, tags: Mapping[str, Any]) -> Tracker:
    """An :class:`MlflowTracker`, or a :class:`NullTracker` when ``cfg.enabled`` is false."""
    return MlflowTracker(cfg, run_name, tags) if cfg.enabled else NullTracker()
