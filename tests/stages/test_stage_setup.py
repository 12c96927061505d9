"""What a stage's set-up (run_stage) does to the process: library noise off (MLflow's INFO lines, hub and weight
progress bars), a user's own settings kept, and the process environment left as it was."""

from __future__ import annotations

import importlib
import logging
import os
import sys
from typing import Iterator

import pytest

from stages._cli import run_stage

SETTINGS = ("MLFLOW_LOGGING_LEVEL", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "HF_HUB_DISABLE_PROGRESS_BARS")


@pytest.fixture(autouse=True)
def library_state(monkeypatch) -> Iterator[None]:
    """run_stage changes process-wide state of logging and of the hub's bars; later tests get it back."""
    import huggingface_hub.utils as hub

    for name in SETTINGS:
        monkeypatch.delenv(name, raising=False)
    # the hub reads HF_HUB_DISABLE_PROGRESS_BARS once, when imported: as if the caller's shell had not set it
    monkeypatch.setattr(importlib.import_module(hub.are_progress_bars_disabled.__module__),
                        "HF_HUB_DISABLE_PROGRESS_BARS", None)
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    monkeypatch.setattr(sys, "stdout", sys.stdout)
    monkeypatch.setattr(sys, "stderr", sys.stderr)
    factory, mlflow_level = logging.getLogRecordFactory(), logging.getLogger("mlflow").level
    bars_off = hub.are_progress_bars_disabled()
    yield
    logging.setLogRecordFactory(factory)
    logging.getLogger("mlflow").setLevel(mlflow_level)
    (hub.disable_progress_bars if bars_off else hub.enable_progress_bars)()


def _set_up() -> tuple[dict[str, str], dict[str, str]]:
    """The environment before a stage and as its body sees it."""
    before, seen = dict(os.environ), {}
    assert run_stage("setup-check", lambda: seen.update(os.environ)) == 0
    return before, seen


def test_a_stage_s_set_up_quiets_the_libraries_and_leaves_the_environment_as_it_was():
    import huggingface_hub.utils as hub

    hub.enable_progress_bars()
    logging.getLogger("mlflow").setLevel(logging.INFO)
    before, seen = _set_up()
    assert seen == before and dict(os.environ) == before
    assert logging.getLogger("mlflow").level == logging.WARNING
    assert hub.are_progress_bars_disabled()
    hf_logging = sys.modules.get("transformers.utils.logging")
    assert hf_logging is None or not hf_logging.is_progress_bar_enabled()


def test_a_user_who_asked_for_mlflow_info_and_hub_bars_gets_them(monkeypatch):
    import huggingface_hub.utils as hub

    hub.enable_progress_bars()
    logging.getLogger("mlflow").setLevel(logging.INFO)  # what MLflow set from MLFLOW_LOGGING_LEVEL when imported
    monkeypatch.setenv("MLFLOW_LOGGING_LEVEL", "INFO")
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "0")
    before, seen = _set_up()
    assert seen == before and dict(os.environ) == before
    assert logging.getLogger("mlflow").level == logging.INFO
    assert not hub.are_progress_bars_disabled()
