"""tracking: what parallel workers on one SQLite store raise ("database is locked", the schema races of a brand-new
store) is retried with growing backoff; any other error disables logging after one try and costs one warning."""

from __future__ import annotations

import logging
import sqlite3
import sys
import types

import pytest

from lora_pipeline.config import MlflowConfig
from lora_pipeline.tracking import MlflowTracker
from lora_pipeline.tracking import mlflow_tracker


def _tracker_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name.startswith("lora_pipeline") and r.levelno >= logging.WARNING]


# ----------------------------------------------------------------------- "database is locked"


class FakeMlflow(types.ModuleType):
    """Stands in for ``mlflow``; ``fail[name]`` errors are raised by the next calls of ``name``."""

    def __init__(self, fail: dict[str, list[Exception]]):
        super().__init__("mlflow")
        self.fail, self.calls = fail, []

    def _record(self, name: str, *args, **kwargs):
        self.calls.append((name, args, kwargs))
        if self.fail.get(name):
            raise self.fail[name].pop(0)

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return lambda *a, **k: self._record(name, *a, **k)

    def get_experiment_by_name(self, name):
        self._record("get_experiment_by_name", name)
        return types.SimpleNamespace(experiment_id="1", artifact_location="s3://elsewhere")

    def search_runs(self, *args, **kwargs):
        self._record("search_runs", *args, **kwargs)
        return []

    def active_run(self):
        return None


def _locked() -> Exception:
    return sqlite3.OperationalError("database is locked")


def _install(monkeypatch, fake: FakeMlflow) -> list[float]:
    sleeps: list[float] = []
    monkeypatch.setitem(sys.modules, "mlflow", fake)
    # only the tracker's clock: patching time.sleep itself would also speed up other libraries' threads
    monkeypatch.setattr(mlflow_tracker, "time", types.SimpleNamespace(sleep=sleeps.append))
    return sleeps


def test_database_is_locked_is_retried(monkeypatch, caplog):
    fake = FakeMlflow({"log_metrics": [_locked(), _locked()], "start_run": [_locked()]})
    sleeps = _install(monkeypatch, fake)
    with caplog.at_level(logging.WARNING):
        tracker = MlflowTracker(MlflowConfig(), "x", {})
        tracker.log_metrics({"f1": 0.5}, step=3)
        tracker.close()
    names = [c[0] for c in fake.calls]
    assert names.count("start_run") == 2 and names.count("log_metrics") == 3 and names.count("end_run") == 1
    assert [c for c in fake.calls if c[0] == "log_metrics"][-1][1:] == (({"f1": 0.5},), {"step": 3})
    assert len(sleeps) == 3 and sleeps[1] < sleeps[2]  # backoff grows
    assert not _tracker_warnings(caplog)


def test_a_lock_that_never_clears_gives_up_with_one_warning(monkeypatch, caplog):
    fake = FakeMlflow({"log_params": [_locked() for _ in range(100)]})
    sleeps = _install(monkeypatch, fake)
    with caplog.at_level(logging.WARNING):
        tracker = MlflowTracker(MlflowConfig(), "x", {})
        tracker.log_params({"a": 1, "b": 2})
        tracker.log_metrics({"f1": 0.5})
        tracker.close()
    assert [c[0] for c in fake.calls].count("log_params") == MlflowTracker.RETRIES
    assert len(sleeps) == MlflowTracker.RETRIES - 1 and sum(sleeps) < 60
    (warning,) = _tracker_warnings(caplog)
    assert "database is locked" in warning and "2 params" in warning and "1 metrics" in warning


def test_other_errors_are_not_retried(monkeypatch, caplog):
    fake = FakeMlflow({"log_params": [RuntimeError("boom")]})
    sleeps = _install(monkeypatch, fake)
    with caplog.at_level(logging.WARNING):
        tracker = MlflowTracker(MlflowConfig(), "x", {})
        tracker.log_params({"a": 1})
        tracker.log_metrics({"f1": 0.5})  # skipped: logging is off after the first hard error
        tracker.close()
    names = [c[0] for c in fake.calls]
    assert names.count("log_params") == 1 and "log_metrics" not in names and not sleeps
    (warning,) = _tracker_warnings(caplog)
    assert "RuntimeError: boom" in warning


# ------------------------------------------------------------------ a brand-new store, two workers


@pytest.mark.parametrize("message", [
    "(sqlite3.OperationalError) table experiments already exists",
    "(sqlite3.OperationalError) table alembic_version already exists",
    "(sqlite3.OperationalError) duplicate column name: step",
    "(sqlite3.OperationalError) no such table: experiments",
])
def test_schema_races_of_a_new_store_are_retried(monkeypatch, caplog, message):
    fake = FakeMlflow({"start_run": [sqlite3.OperationalError(message)] * 2})
    sleeps = _install(monkeypatch, fake)
    with caplog.at_level(logging.WARNING):
        MlflowTracker(MlflowConfig(), "x", {}).close()
    assert [c[0] for c in fake.calls].count("start_run") == 3 and len(sleeps) == 2
    assert not _tracker_warnings(caplog)
