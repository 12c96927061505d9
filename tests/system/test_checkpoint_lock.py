"""Checkpoint folder lock: a second training process on the same folder fails at once,
naming the holder; a lock left by a killed process never blocks; the train stage takes the lock first."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lora_pipeline.checkpoint import DirCheckpointer, lock_dir
from lora_pipeline.errors import PipelineError
from tests.support.builders import ROOT, instance_args, write_params

HOLD = """
import sys, time
from lora_pipeline.checkpoint import lock_dir
with lock_dir(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


def _holder(directory: Path) -> subprocess.Popen:
    """Another process that takes the lock on ``directory`` and keeps it until killed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(directory)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    line = proc.stdout.readline()
    assert line.strip() == "held", proc.stderr.read()
    return proc


@pytest.fixture
def holder(tmp_path):
    proc = _holder(tmp_path / "ck")
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=30)


def test_a_second_process_fails_at_once_naming_the_holder(tmp_path, holder):
    start = time.monotonic()
    with pytest.raises(PipelineError) as info:
        with lock_dir(tmp_path / "ck"):
            pass
    assert time.monotonic() - start < 2  # no waiting
    message = str(info.value)
    assert f"pid {holder.pid}" in message and socket.gethostname() in message and str(tmp_path / "ck") in message
    assert "\n" not in message
    assert holder.poll() is None  # the holder keeps its lock and runs on


def test_a_lock_left_by_a_killed_process_does_not_block(tmp_path, holder):
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    assert (tmp_path / "ck.lock").is_file()  # the file stays behind; the kernel dropped the lock with the process
    with lock_dir(tmp_path / "ck") as path:
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert not (tmp_path / "ck.lock").exists()


def test_the_lock_is_released_and_can_be_taken_again(tmp_path):
    ck = DirCheckpointer(tmp_path / "ck", "key")
    for _ in range(2):
        with ck.lock() as path:
            assert path == tmp_path / "ck.lock"
            holder = json.loads(path.read_text())
            assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
            with pytest.raises(PipelineError, match=f"pid {os.getpid()}"):  # not re-entrant: a bug, said so
                with lock_dir(tmp_path / "ck"):
                    pass
        assert not path.exists()
    ck.save({"loop": {"epoch": 1}})
    ck.clear()  # the lock lives beside the folder, so clearing the folder never drops a held lock
    assert not (tmp_path / "ck").exists()


def test_a_second_train_stage_on_the_same_folder_exits_2_before_training(tmp_path, tiny_model_dir, split_dir,
                                                                        capsys):
    from stages import train_full

    checkpoints = tmp_path / "checkpoints" / "full"
    proc = _holder(checkpoints)
    try:
        params = write_params(tmp_path / "params.yaml", tiny_model_dir, {"mlflow.enabled": False})
        start = time.monotonic()
        rc = train_full.main(["--params", str(params), "--split", str(split_dir), *instance_args("full"),
                              "--out", str(tmp_path / "model"), "--metrics", str(tmp_path / "metrics.json"),
                              "--curve", str(tmp_path / "curves"), "--predictions", str(tmp_path / "val_predictions.csv"),
                              "--checkpoints", str(checkpoints), "--no-progress"])
        elapsed = time.monotonic() - start
    finally:
        proc.kill()
        proc.communicate(timeout=30)
    assert rc == 2
    err = capsys.readouterr().err
    assert f"pid {proc.pid}" in err and "Traceback" not in err and "in use by another training process" in err
    assert elapsed < 10, "it must fail before loading the model and training"
    assert not (tmp_path / "model").exists() and not (tmp_path / "metrics.json").exists()
