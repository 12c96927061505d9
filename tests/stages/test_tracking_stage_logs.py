"""Stage logs: a credential in any library's log record (message, arguments, traceback) is redacted."""

from __future__ import annotations

import logging
import sys
from typing import Iterator

import pytest

from lora_pipeline.errors import PipelineError
from stages._cli import run_stage

TOKEN, PASSWORD = "tok3nVALUE", "pa55WORD"
URL = f"https://bob:{PASSWORD}@mlflow.example:5000/api/2.0/mlflow/runs/create?token={TOKEN}&x=1"
SHOWN = "https://bob:***@mlflow.example:5000/api/2.0/mlflow/runs/create?token=***&x=1"


@pytest.fixture(autouse=True)
def record_factory(monkeypatch) -> Iterator[None]:
    """run_stage installs a process-wide record factory and excepthook; later tests get the originals back."""
    before = logging.getLogRecordFactory()
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    monkeypatch.setattr(sys, "stdout", sys.stdout)
    monkeypatch.setattr(sys, "stderr", sys.stderr)
    yield
    logging.setLogRecordFactory(before)


def _noisy_stage() -> None:
    # urllib3's retry warning, verbatim in shape, with the URL as an argument
    logging.getLogger("urllib3.connectionpool").warning(
        "Retrying (%r) after connection broken by '%s': %s", "Retry(total=0)", "NewConnectionError", URL)
    try:
        raise ConnectionError(f"HTTPSConnectionPool: Max retries exceeded with url: {URL}")
    except ConnectionError:
        logging.getLogger("requests.adapters").exception("request failed")
    # a library with its own handler that does not propagate to root (MLflow configures "mlflow" so)
    own = logging.getLogger("thirdparty.own")
    own.propagate, handler = False, logging.StreamHandler(sys.stderr)
    own.addHandler(handler)
    try:
        own.warning("uploading to %s", URL)
    finally:
        own.removeHandler(handler)
    raise PipelineError(f"could not reach {URL}")


def test_every_log_record_of_a_stage_is_redacted(capfd):
    assert run_stage("evaluate", _noisy_stage) == 2
    err = capfd.readouterr().err
    assert TOKEN not in err and PASSWORD not in err
    assert "urllib3.connectionpool" not in err  # the default format has no logger name; the line is there:
    assert f"evaluate WARNING Retrying ('Retry(total=0)') after connection broken by 'NewConnectionError': " \
           f"{SHOWN}" in err
    assert f"ConnectionError: HTTPSConnectionPool: Max retries exceeded with url: {SHOWN}" in err  # traceback
    assert f"uploading to {SHOWN}" in err
    assert f"evaluate failed: could not reach {SHOWN}" in err
    assert err.count(SHOWN) == 4  # retry warning, traceback, own handler, the one final line


def test_a_malformed_logging_call_is_still_reported_not_raised(capfd):
    def body() -> None:
        logging.getLogger("urllib3").warning("%s %s", "only one")  # logging reports this, never raises

    assert run_stage("x", body) == 0
    assert "not enough arguments" in capfd.readouterr().err


def test_the_traceback_of_an_unexpected_error_is_redacted(capfd):
    def body() -> None:
        raise RuntimeError(f"unexpected: {URL}")

    with pytest.raises(RuntimeError) as caught:
        run_stage("train_lora", body)
    sys.excepthook(caught.type, caught.value, caught.tb)  # what Python does with an uncaught error
    err = capfd.readouterr().err
    assert f"RuntimeError: unexpected: {SHOWN}" in err and "Traceback (most recent call last)" in err
    assert TOKEN not in err and PASSWORD not in err


def test_a_run_link_mlflow_prints_on_stdout_is_redacted(capfd):
    def body() -> None:  # MLflow's end_run prints its run and experiment links with sys.stdout.write
        sys.stdout.write(f"\U0001f3c3 View run evaluate s42 at: {URL}\n")
        print(f"\U0001f9ea View experiment at: {URL}", file=sys.stderr)

    assert run_stage("evaluate", body) == 0
    out, err = capfd.readouterr()
    assert f"View run evaluate s42 at: {SHOWN}" in out and f"View experiment at: {SHOWN}" in err
    assert PASSWORD not in out + err and TOKEN not in out + err
