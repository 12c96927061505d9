"""A training process whose disk fills while it saves a checkpoint exits with code 2 and one line naming the
folder and "no space left", not a traceback (a file-size limit stands in for a full disk)."""

from __future__ import annotations

import subprocess
import sys

from tests.support.builders import ROOT

SCRIPT = """
import resource, signal, sys, torch
from lora_pipeline.checkpoint import DirCheckpointer
from stages._cli import run_stage
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG, as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))
sys.exit(run_stage("train_lora", lambda: DirCheckpointer(sys.argv[1], "k").save({"w": torch.zeros(1_000_000)})))
"""


def test_a_checkpoint_on_a_full_disk_is_one_line_and_exit_code_2(tmp_path):
    folder = tmp_path / "checkpoints" / "lora"
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(folder)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "no space left on device" in proc.stderr
    assert str(folder) in proc.stderr.splitlines()[-1]
    assert not list(folder.iterdir())
