"""lora-pipeline predict against a tracking server that is down: one short line, exit code 2, within seconds,
with the URI's password and token hidden."""

from __future__ import annotations

import subprocess
import sys
import time

from tests.support.builders import ROOT
from tests.support.servers import free_port, server_env

PASSWORD, TOKEN = "pa55WORD", "tok3nVALUE"


def test_predict_from_a_server_that_is_down_fails_in_seconds_without_secrets(tmp_path):
    uri = f"http://bob:{PASSWORD}@127.0.0.1:{free_port()}/?token={TOKEN}"
    env = server_env({"MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(ROOT)})
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "lora_pipeline.cli", "predict", "models:/m@champion", "a text"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    seconds = time.monotonic() - start
    assert proc.returncode == 2 and proc.stdout == ""
    assert "cannot download it from MLflow" in proc.stderr and "Traceback" not in proc.stderr
    assert PASSWORD not in proc.stderr and TOKEN not in proc.stderr
    assert "Retrying" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert seconds < 30, seconds
    assert not list(tmp_path.iterdir())  # no mlflow.db, no downloads left behind
