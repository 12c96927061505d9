"""The MLflow store: its lock names the holder and a wait is announced, a read-only store is one clear warning."""

from __future__ import annotations

import logging
import os

import pytest

from lora_pipeline.config import MlflowConfig
from lora_pipeline.tracking import MlflowTracker
from lora_pipeline.tracking import store as tracking_store
from lora_pipeline.tracking.store import store_lock


def test_the_store_lock_names_its_holder_and_a_waiting_process_says_who_it_waits_for(monkeypatch, tmp_path,
                                                                                        caplog):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setattr(tracking_store, "STORE_LOCK_TIMEOUT", 0.3)
    monkeypatch.setattr(tracking_store, "LOCK_NOTICE_S", 0.05)
    with store_lock(uri):
        holder = (tmp_path / "mlflow.db-lock").read_text()
        assert f"pid {os.getpid()} on host " in holder
        with caplog.at_level(logging.WARNING), pytest.raises(TimeoutError, match=f"pid {os.getpid()} on host"):
            with store_lock(uri):  # a second open file: flock makes it wait like another process
                pass
    (notice,) = [r.getMessage() for r in caplog.records if r.name == "lora_pipeline.tracking.store"]
    assert "waiting for the MLflow store lock" in notice and f"pid {os.getpid()}" in notice
    assert (tmp_path / "mlflow.db-lock").read_text() == ""  # released: it names no one


def test_a_read_only_store_is_one_warning_that_says_readonly_database(monkeypatch, tmp_path, caplog, capfd):
    db = tmp_path / "mlflow.db"
    db.write_bytes(b"")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    writable = os.access
    monkeypatch.setattr(tracking_store.os, "access", lambda p, mode: False if str(p) == str(db) else writable(p, mode))
    with caplog.at_level(logging.INFO):
        tracker = MlflowTracker(MlflowConfig(), "x", {})
        tracker.log_metrics({"a": 1.0})
        tracker.close()
    records = [r for r in caplog.records if r.levelno >= logging.WARNING]
    (warning,) = [r.getMessage() for r in records]
    assert "attempt to write a readonly database" in warning and str(db) in warning and "1 metrics" in warning
    assert not [r for r in records if r.exc_info] and "Traceback" not in capfd.readouterr().err
