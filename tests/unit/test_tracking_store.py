"""The MLflow store: its lock names the holder and a wait is announced, a read-only store is one clear warning, and
a tracking server that does not answer is one clear error within seconds."""

from __future__ import annotations

import http.server
import logging
import os
import threading
import time

import pytest

from lora_pipeline.config import MlflowConfig
from lora_pipeline.tracking import MlflowTracker
from lora_pipeline.tracking import store as tracking_store
from lora_pipeline.tracking.store import check_server, store_lock
from tests.support.servers import free_port, silent_server

SECRET = "s3cretPW"


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


# ----------------------------------------------------------------------- a tracking server that is down


@pytest.mark.parametrize("path", ["", "/", "/prefix"])
def test_a_tracking_server_that_answers_anything_passes_the_check(path):
    """Any HTTP answer counts (here 404): the server is up, and MLflow's own requests say what is wrong."""
    asked = []

    class Answer(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            asked.append((self.path, self.headers.get("Authorization")))
            self.send_error(404)

        def log_message(self, *args):
            pass

    with http.server.HTTPServer(("127.0.0.1", 0), Answer) as server:
        thread = threading.Thread(target=server.handle_request, daemon=True)
        thread.start()
        check_server(f"http://alice:{SECRET}@127.0.0.1:{server.server_address[1]}{path}")
        thread.join(10)
    assert asked == [(f"{path.rstrip('/')}/health", None)]  # no credentials sent


def test_a_refused_tracking_server_is_one_clear_error_at_once():
    start = time.monotonic()
    with pytest.raises(ConnectionError, match="Connection refused") as raised:
        check_server(f"http://alice:{SECRET}@127.0.0.1:{free_port()}")
    assert time.monotonic() - start < 5
    assert SECRET not in str(raised.value) and "/health" in str(raised.value)


def test_a_tracking_server_that_never_answers_costs_retries_plus_one_timeouts():
    with silent_server() as port:
        start = time.monotonic()
        with pytest.raises(ConnectionError, match="timed out"):
            check_server(f"http://127.0.0.1:{port}", retries=1, timeout_s=0.5)
        elapsed = time.monotonic() - start
    assert 1.0 <= elapsed < 5, elapsed


@pytest.mark.parametrize("uri", ["sqlite:////nowhere/mlflow.db", "postgresql://u:p@127.0.0.1:9/db", "databricks",
                                 "file:///nowhere/mlruns"])
def test_only_an_http_tracking_server_is_asked(uri):
    check_server(uri, retries=0, timeout_s=0.01)  # no network, no error
