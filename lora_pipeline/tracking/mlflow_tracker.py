"""The MLflow client of a stage run: :class:`MlflowTracker`, which retries what parallel workers on one SQLite
store raise, degrades to a counted no-op on any other failure, and resumes the run of a killed training.

DVC owns artifacts, lineage and metrics files; MLflow mirrors params, metrics, curves and small
artifacts for browsing. Tracking must never cost a result: if the server is unreachable or the
SQLite store is locked or corrupt, the stage still finishes and one warning says what was lost.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, TypeVar

from ..config import DEFAULT_TARGET_SET, MlflowConfig
from ..credentials import redact
from .mlflow_shims import http_limits, import_mlflow, no_artifact_bars
from .protocol import ClosedOnExit, flatten, param_value
from .store import check_server, check_writable, default_tracking_uri, experiment, store_lock

__all__ = ["MlflowTracker", "run_display_name", "git_commit"]

log = logging.getLogger(__name__)
T = TypeVar("T")


def git_commit() -> Optional[str]:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


# what parallel workers on one SQLite file raise while another holds the write lock or is creating the schema
_TRANSIENT = re.compile(r"(?i)database is locked|already exists|duplicate column|no such table|alembic_version")


def run_display_name(stage: str, tags: Mapping[str, Any]) -> str:
    """``train_lora r8 s42 lr0.002 [exp-name]``: stage, variant (when not in the stage name), adapter and target set
    (unless LoRA and the default set), rank, seed, learning rate (instances of one lr grid differ only there), DVC
    exp."""
    parts = [stage]
    if tags.get("variant") and str(tags["variant"]) not in stage:
        parts.append(str(tags["variant"]))
    parts += [str(tags[key]) for key, usual in (("adapter", "lora"), ("target_set", DEFAULT_TARGET_SET))
              if tags.get(key) not in (None, usual)]
    parts += [f"{prefix}{tags[key]}" for key, prefix in (("lora_rank", "r"), ("seed", "s"), ("lr", "lr"))
              if tags.get(key) is not None]
    if os.environ.get("DVC_EXP_NAME"):
        parts.append(f"[{os.environ['DVC_EXP_NAME']}]")
    return " ".join(parts)


def _sweep_orphans(mlflow: Any, experiment_id: str, checkpoint_key: Optional[str]) -> Any:
    """Mark RUNNING runs of dead processes on this host KILLED; return the newest one of them with
    ``checkpoint_key`` (left RUNNING, to resume), or None. Runs of live or remote processes are left alone."""
    host = socket.gethostname()
    running = mlflow.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'",
                                 output_format="list") or []  # newest first
    resume = None
    for run in running:
        tags = run.data.tags
        if tags.get("host") != host or not tags.get("pid", "").isdigit() or _alive(int(tags["pid"])):
            continue
        if resume is None and checkpoint_key is not None and tags.get("checkpoint_key") == checkpoint_key:
            resume = run
        else:
            _mark_killed(mlflow, run.info.run_id)
    return resume


def _last_steps(mlflow: Any, run: Any) -> dict[str, int]:
    """The last step logged of each metric of ``run``: the killed process may have logged past its checkpoint."""
    client = mlflow.MlflowClient()
    return {key: max(m.step for m in client.get_metric_history(run.info.run_id, key))
            for key in run.data.metrics}


def _mark_killed(mlflow: Any, run_id: str) -> None:
    try:
        mlflow.MlflowClient().set_terminated(run_id, status="KILLED")
    except Exception as err:  # noqa: BLE001 - tidying up someone's orphan must not cost this run
        if _TRANSIENT.search(str(err)):
            raise
        why = redact(f"{type(err).__name__}: {err}")[:300]
        log.info("could not mark orphaned MLflow run %s KILLED: %s", run_id, why)


def _alive(pid: int) -> bool:
    if pid == os.getpid():  # a recycled pid: this process has no run yet
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


class MlflowTracker(ClosedOnExit):
    """One MLflow run per stage execution; every call degrades to a counted no-op on failure.

    Transient errors of parallel ``dvc queue start -j 2`` workers on one SQLite file ("database is
    locked", and the schema races of a brand-new store) are retried with backoff; anything else
    disables logging for the rest of the run and is reported once at ``close()`` with counts of
    what was not logged. A server that does not answer at the start costs seconds (one probe, one retry);
    MLflow asks it with tight HTTP retries and timeouts, and shows no progress bars of artifact transfers (the
    user's MLflow settings win); after it failed, no call of the run (nor MLflow's exit hook) asks it again.

    A run records its host and pid. A new tracker marks RUNNING runs of dead processes on this host
    KILLED, except the newest one with the same ``checkpoint_key`` tag (the same training, killed and
    now resumed from its checkpoint): that run is continued instead of starting a new one.
    """

    RETRIES = 8

    def __init__(self, cfg: MlflowConfig, run_name: str, tags: Mapping[str, Any]):
        self._lost: dict[str, int] = {}
        self._error: Optional[str] = None
        self._mlflow = None
        self._run_id: Optional[str] = None  # once started: MLflow's exit hook would end it (see close)
        self._logged_params: dict[str, str] = {}  # params of a resumed run
        self._logged_steps: dict[str, int] = {}  # a resumed run: the last step logged of each metric
        self._resume_tags: dict[str, str] = {}
        self.uri = default_tracking_uri(cfg)
        self._call("start", lambda: self._start(cfg, run_name, tags))
        if self._resume_tags:
            self.set_tags(self._resume_tags)

    def _start(self, cfg: MlflowConfig, run_name: str, tags: Mapping[str, Any]) -> None:
        mlflow = import_mlflow()
        check_writable(self.uri)  # before MLflow, which logs tracebacks of its own on a read-only store
        check_server(self.uri)  # before MLflow, which retries a server that is down for as long as it is told
        mlflow.set_tracking_uri(self.uri)
        all_tags = {"git_commit": git_commit(), "dvc_exp_name": os.environ.get("DVC_EXP_NAME"), **tags,
                    "host": socket.gethostname(), "pid": os.getpid()}
        all_tags = {k: redact(str(v)) for k, v in all_tags.items() if v is not None}
        # the first access of a brand-new SQLite store runs MLflow's schema migrations, and two queued workers
        # doing it at once break each other ("table … already exists"): serialise store access until the run
        # exists; the same lock keeps two trackers from claiming one orphaned run
        with store_lock(self.uri):
            found = experiment(mlflow, cfg.experiment, self.uri)
            orphan = _sweep_orphans(mlflow, found.experiment_id, all_tags.get("checkpoint_key"))
            if orphan is None:  # the experiment named here: mlflow.set_experiment would write MLFLOW_EXPERIMENT_ID
                mlflow.start_run(experiment_id=found.experiment_id, run_name=run_display_name(run_name, tags),
                                 tags=all_tags)
            else:  # the same training killed and resumed: one run holds its whole curve and final status
                mlflow.start_run(run_id=orphan.info.run_id)  # last: a retried start must not find a run active
                self._logged_params = dict(orphan.data.params)
                self._logged_steps = _last_steps(mlflow, orphan)
                self._resume_tags = {**all_tags, "resumed_after_kill": "true"}
        active = mlflow.active_run()
        self._run_id = active.info.run_id if active is not None else None
        self._mlflow = mlflow

    def _call(self, what: str, fn: Callable[[], None], count: int = 1) -> None:
        if self._error is not None:
            self._lost[what] = self._lost.get(what, 0) + count
            return
        for attempt in range(self.RETRIES):
            try:
                with http_limits(), no_artifact_bars():  # fail fast instead of retrying for minutes, and quietly
                    fn()
                return
            except Exception as err:  # noqa: BLE001 - tracking must never fail a stage
                if _TRANSIENT.search(str(err)) and attempt + 1 < self.RETRIES:
                    time.sleep(min(0.2 * 2 ** attempt, 5.0))
                    continue
                self._error = redact(f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
                self._lost[what] = self._lost.get(what, 0) + count
                return

    def log_params(self, params: Mapping[str, Any]) -> None:
        clean = {k: redact(param_value(v)) for k, v in flatten(params).items()}
        if self._logged_params:  # a resumed run: MLflow refuses to change a logged param, so a change becomes a tag
            changed = {f"resumed.{k}": v for k, v in clean.items() if self._logged_params.get(k, v) != v}
            clean = {k: v for k, v in clean.items() if k not in self._logged_params}
            if changed:
                self.set_tags(changed)
        self._call("params", lambda: self._mlflow.log_params(clean), len(clean))

    def log_metrics(self, metrics: Mapping[str, float], step: Optional[int] = None) -> None:
        values = {k: float(v) for k, v in flatten(metrics).items() if isinstance(v, (int, float))}
        if step is not None and self._logged_steps:  # a resumed run repeats the steps after its checkpoint
            values = {k: v for k, v in values.items() if step > self._logged_steps.get(k, -1)}
            if not values:
                return
        self._call("metrics", lambda: self._mlflow.log_metrics(values, step=step), len(values))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        clean = {k: redact(str(v)) for k, v in tags.items() if v is not None}
        self._call("tags", lambda: self._mlflow.set_tags(clean), len(clean))

    def log_artifact(self, path: str | Path) -> None:
        path = Path(path)
        fn = (lambda: self._mlflow.log_artifacts(str(path), artifact_path=path.name)) if path.is_dir() \
            else (lambda: self._mlflow.log_artifact(str(path)))
        self._call("artifacts", fn)

    def use(self, what: str, fn: Callable[[Any], T]) -> Optional[T]:
        """``fn(mlflow)`` inside this run, under the same never-fail rules as every other call (``what`` names it
        in the warning); its result, or None when it failed or tracking is off."""
        done: list[T] = []
        self._call(what, lambda: done.append(fn(self._mlflow)))
        return done[-1] if done else None

    def close(self, failed: bool = False) -> None:
        self._call("end", lambda: self._mlflow.end_run(status="FAILED" if failed else "FINISHED"))
        if self._error is not None:
            lost = ", ".join(f"{n} {what}" for what, n in self._lost.items())
            run = "no run was started"
            if self._run_id is not None:
                run = "the run was ended" if self._end_once(failed, lost) else \
                    "the run stays RUNNING there until the next stage on this host marks it KILLED"
            log.warning("MLflow tracking at %s failed (%s); not logged: %s; %s. The stage's DVC outputs and "
                        "metrics files are complete.", redact(self.uri), self._error, lost, run)

    def _end_once(self, failed: bool, lost: str) -> bool:
        """After a failure, one attempt (no retry, 2 s per request) to end the run, tagged with what it lacks: a
        store that came back (a restarted server) then shows the run ended, not RUNNING.

        MLflow ends a still-active run at interpreter exit (``atexit`` → ``end_run``), which would ask the failed
        store again after the stage's work is done: (retries + 1) × timeout per request against a server that
        accepts but never answers. So a run still active is ended with ``mlflow.end_run``, which drops it from
        the active runs before its one request, whether that request succeeds or not.
        """
        status = "FAILED" if failed else "FINISHED"
        try:
            with http_limits(retries=0, timeout_s=2):
                client = self._mlflow.MlflowClient(tracking_uri=self.uri)
                active = self._mlflow.active_run()
                if active is not None and active.info.run_id == self._run_id:
                    self._mlflow.end_run(status=status)
                else:  # the failed request was the end itself: MLflow no longer holds the run active
                    client.set_terminated(self._run_id, status=status)
                client.set_tag(self._run_id, "tracking_incomplete", lost)
            return True
        except Exception:  # noqa: BLE001 - tracking must never fail a stage
            return False
