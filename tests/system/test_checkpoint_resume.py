"""Resumable checkpoints: safe loading, run keys, and an interrupted run that ends exactly
like an uninterrupted one (cut by its cap or stopped on a plateau, with the same best validation's predictions)
-- in process, and with a real training subprocess killed by SIGKILL."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification

from lora_pipeline import checkpoint as checkpoint_mod
from lora_pipeline import training
from lora_pipeline.checkpoint import DirCheckpointer, run_key
from lora_pipeline.training import FitConfig, fit
from tests.support.builders import (EPOCHS_ONLY, ROOT, WALL_CLOCK_KEYS, load_encoded, make_frame, write_params,
                                   write_split)

CPU = torch.device("cpu")


def _state() -> dict:
    return {"model": {"w": torch.arange(6.0).reshape(2, 3)}, "loop": {"epoch": 1, "history": [{"a": 0.5}]},
            "rng": {"torch": torch.get_rng_state()}}


# ------------------------------------------------------------------------------ DirCheckpointer


def test_round_trip_with_the_same_key(tmp_path):
    ck = DirCheckpointer(tmp_path / "ck", "k1")
    assert ck.load() is None  # nothing saved yet
    ck.save(_state())
    loaded = DirCheckpointer(tmp_path / "ck", "k1").load()
    torch.testing.assert_close(loaded["model"]["w"], _state()["model"]["w"])
    assert loaded["loop"] == {"epoch": 1, "history": [{"a": 0.5}]}
    assert (tmp_path / "ck" / "key.txt").read_text().strip() == "k1"
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["key.txt", "state.pt"]  # no temp leftovers


def test_a_checkpoint_of_another_run_is_ignored(tmp_path, caplog):
    DirCheckpointer(tmp_path, "rank8").save(_state())
    with caplog.at_level(logging.INFO, logger="lora_pipeline.checkpoint"):
        assert DirCheckpointer(tmp_path, "rank4").load() is None
    assert "other params or data" in caplog.text
    (tmp_path / "key.txt").unlink()  # a state without its key (killed between the two writes)
    assert DirCheckpointer(tmp_path, "rank8").load() is None


def test_saving_over_another_runs_checkpoint_replaces_its_key(tmp_path):
    DirCheckpointer(tmp_path, "old").save(_state())
    DirCheckpointer(tmp_path, "new").save({"model": {}, "loop": {"epoch": 2}})
    assert (tmp_path / "key.txt").read_text().strip() == "new"
    assert DirCheckpointer(tmp_path, "old").load() is None
    assert DirCheckpointer(tmp_path, "new").load()["loop"] == {"epoch": 2}


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_a_torn_or_garbage_state_is_ignored_with_a_warning(tmp_path, caplog, damage):
    ck = DirCheckpointer(tmp_path, "k")
    ck.save(_state())
    state = tmp_path / "state.pt"
    data = state.read_bytes()
    state.write_bytes({"garbage": os.urandom(4096), "truncated": data[: len(data) // 2], "empty": b""}[damage])
    with caplog.at_level(logging.WARNING, logger="lora_pipeline.checkpoint"):
        assert ck.load() is None
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "unreadable checkpoint" in warnings[0].getMessage()


class Payload:
    """Not on torch's weights-only allowlist; unpickling it would run code."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_arbitrary_pickled_objects_are_refused(tmp_path, caplog):
    marker = tmp_path / "pwned"
    ck = DirCheckpointer(tmp_path / "ck", "k")
    ck.save({"model": {}, "loop": {"evil": Payload(str(marker))}})
    assert not marker.exists()
    with caplog.at_level(logging.WARNING, logger="lora_pipeline.checkpoint"):
        assert ck.load() is None
    assert not marker.exists(), "torch.load ran a pickled callable: weights_only is not in effect"
    assert "unreadable checkpoint" in caplog.text


def test_load_asks_torch_for_weights_only(tmp_path, monkeypatch):
    calls = []
    real = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(checkpoint_mod.torch, "load", spy)
    ck = DirCheckpointer(tmp_path, "k")
    ck.save(_state())
    assert ck.load() is not None
    assert calls and calls[0].get("weights_only") is True and str(calls[0].get("map_location")) == "cpu"


def test_clear_removes_the_state(tmp_path):
    ck = DirCheckpointer(tmp_path / "ck", "k")
    ck.save(_state())
    ck.clear()
    assert not (tmp_path / "ck").exists()
    assert ck.load() is None


def test_run_key_is_stable_and_sensitive():
    a = run_key("lora", {"lora": {"rank": 8, "alpha": 16.0}}, "sha-train")
    assert a == run_key("lora", {"lora": {"alpha": 16.0, "rank": 8}}, "sha-train")  # key order is irrelevant
    assert a != run_key("lora", {"lora": {"rank": 4, "alpha": 16.0}}, "sha-train")
    assert a != run_key("lora", {"lora": {"rank": 8, "alpha": 16.0}}, "sha-other")
    assert len(a) == 16 and int(a, 16) >= 0


# ------------------------------------------------------------------ interrupted fit, in process


class Crash(Exception):
    pass


class CrashingCheckpointer(DirCheckpointer):
    """Dies right after its ``crash_after``-th save, like a process killed there."""

    def __init__(self, directory, key, crash_after: int | None):
        super().__init__(directory, key)
        self.crash_after, self.saves = crash_after, 0

    def save(self, state):
        super().save(state)
        self.saves += 1
        if self.saves == self.crash_after:
            raise Crash


def _run(model_dir, data, ck, **overrides):
    torch.manual_seed(5)  # what the stage does before build_model; dropout draws from this RNG too
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, use_safetensors=True)
    cfg = FitConfig(**{"lr": 5e-3, "epochs": 2, "batch_size": 16, "seed": 9, "checkpoint_every": 3,
                       **EPOCHS_ONLY, **overrides})
    result = fit(model, *data, cfg, pad_id=0, device=CPU, checkpointer=ck, progress=False)
    return result, {n: p.detach().clone() for n, p in model.state_dict().items()}


def _interrupted_and_resumed(tmp_path, model_dir, split_dir, crash_after: int, caplog, **overrides):
    """(uninterrupted result and weights, resumed result and weights) of the same run."""
    data = (load_encoded(split_dir, "train"), load_encoded(split_dir, "val"))
    assert -(-len(data[0]) // 16) == 8
    reference = _run(model_dir, data, CrashingCheckpointer(tmp_path / "a", "k", None), **overrides)
    with pytest.raises(Crash):
        _run(model_dir, data, CrashingCheckpointer(tmp_path / "b", "k", crash_after), **overrides)
    with caplog.at_level(logging.INFO, logger="lora_pipeline.training"):
        resumed = _run(model_dir, data, CrashingCheckpointer(tmp_path / "b", "k", None), **overrides)
    assert "resuming from checkpoint" in caplog.text
    return reference, resumed


CLOCKS = ("seconds", "cpu_seconds")  # the curves' columns of training time so far


def _without_clocks(result: training.TrainResult) -> dict:
    """The result's fields but the clocks (totals and curve columns) and the resume point."""
    skip = {"train_seconds", "train_cpu_seconds", "samples_per_second", "resumed_from_step"}
    fields = {k: v for k, v in dataclasses.asdict(result).items() if k not in skip}
    for curve in ("history", "steps_log"):
        fields[curve] = [{k: v for k, v in row.items() if k not in CLOCKS} for row in fields[curve]]
    return fields


def _assert_same_fit(reference, resumed) -> None:
    """Every field of the results but the clocks and the resume point, and every weight, are equal."""
    (ref, ref_weights), (got, weights) = reference, resumed
    assert _without_clocks(got) == _without_clocks(ref)
    assert ref.best_predictions and ref.stop_reason
    assert weights.keys() == ref_weights.keys()
    for name in weights:
        assert torch.equal(weights[name], ref_weights[name]), name


# 8 steps per epoch, checkpoint_every 3: saves at steps 3, 6, end of epoch 1 (8), 9, 12, 15, end (16)
@pytest.mark.parametrize("crash_after", [1, 3, 5, 7])
def test_interrupted_fit_resumes_to_the_same_result(tmp_path, tiny_model_dir, split_dir, crash_after, caplog):
    reference, resumed = _interrupted_and_resumed(tmp_path, tiny_model_dir, split_dir, crash_after, caplog,
                                                  log_every=2, eval_every=8)
    assert resumed[0].resumed_from_step == [3, 6, 8, 9, 12, 15, 16][crash_after - 1]
    assert [row["step"] for row in reference[0].history] == [8, 16] and len(reference[0].steps_log) == 8
    _assert_same_fit(reference, resumed)


# max_steps 13: validations at 8 (epoch end) and 13 (the last step, mid-epoch); saves at 3, 6, 8, 9, 12, 13
@pytest.mark.parametrize("crash_after", [2, 4, 5, 6])
def test_a_run_that_ends_mid_epoch_resumes_to_the_same_result(tmp_path, tiny_model_dir, split_dir, crash_after,
                                                              caplog):
    reference, resumed = _interrupted_and_resumed(tmp_path, tiny_model_dir, split_dir, crash_after, caplog,
                                                  epochs=3, max_steps=13, log_every=2, eval_every=8)
    assert resumed[0].resumed_from_step == [3, 6, 8, 9, 12, 13][crash_after - 1]
    assert (reference[0].steps, reference[0].planned_steps) == (13, 13)
    assert [row["step"] for row in reference[0].history] == [8, 13]
    _assert_same_fit(reference, resumed)


# validations every 4 steps score 0.17, 0.17, 0.56 (best, step 12), 0.56, 0.48: early stop at step 20.
# Saves at 3, 4, 6, 8, 9, 12, 15, 16, 18, 20: crash 8 resumes between the two non-improving validations.
@pytest.mark.parametrize("crash_after", [6, 8, 9, 10])
def test_an_early_stopped_run_resumes_to_the_same_result(tmp_path, tiny_model_dir, split_dir, crash_after, caplog):
    reference, resumed = _interrupted_and_resumed(tmp_path, tiny_model_dir, split_dir, crash_after, caplog,
                                                  lr=2e-2, epochs=6, warmup_ratio=0.1, patience=2, eval_every=4,
                                                  log_every=2)
    assert resumed[0].resumed_from_step == [3, 4, 6, 8, 9, 12, 15, 16, 18, 20][crash_after - 1]
    assert reference[0].stop_reason.startswith("plateau: ") and reference[0].steps == 20
    assert (reference[0].best_step, reference[0].planned_steps, reference[0].stopped_by) == (12, 48, "plateau")
    _assert_same_fit(reference, resumed)


# The default cadence (eval_every 0: every 2 steps here) with min_delta 0.001 and patience 5: the first five
# validations tie at 0.17, step 12 scores 0.56 (best), the five after it do not beat it: a plateau at step 22.
# Saves at 2, 3, 4, 6, 8, 9, 10, 12, 14, 15, 16, 18, 20, 21, 22: resumed before, at and after the best.
@pytest.mark.parametrize("crash_after", [5, 8, 11, 14])
def test_a_plateau_at_the_auto_cadence_resumes_to_the_same_result(tmp_path, tiny_model_dir, split_dir, crash_after,
                                                                  caplog):
    reference, resumed = _interrupted_and_resumed(tmp_path, tiny_model_dir, split_dir, crash_after, caplog,
                                                  lr=2e-2, epochs=6, warmup_ratio=0.1, patience=5, log_every=2)
    assert resumed[0].resumed_from_step == [2, 3, 4, 6, 8, 9, 10, 12, 14, 15, 16, 18, 20, 21, 22][crash_after - 1]
    ref = reference[0]
    assert [row["step"] for row in ref.history] == list(range(2, 23, 2))
    assert (ref.steps, ref.best_step, ref.stopped_by, ref.validations) == (22, 12, "plateau", 11)
    assert ref.stop_reason == ("plateau: no gain > 0.001 in validation macro-F1 for 5 validations "
                               "(best at step 12, epoch 1.50)")
    _assert_same_fit(reference, resumed)


# ------------------------------------------------------- interrupted stage, a real killed process


def _train_cmd(work: Path, params: Path, split: Path) -> list[str]:
    return [sys.executable, "-m", "stages.train_full", "--params", str(params), "--split", str(split),
            "--seed", "7", "--lr", "5e-3", "--out", str(work / "model"), "--metrics", str(work / "metrics.json"),
            "--curve", str(work / "curves"), "--predictions", str(work / "val_predictions.csv"),
            "--checkpoints", str(work / "ck"), "--no-progress"]


def _popen(cmd: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen, timeout: float = 120) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out[-2000:]}\n{err[-4000:]}"
    return err


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    files = sorted(model_dir.glob("*.safetensors"))
    assert files, f"no safetensors in {model_dir}"
    out: dict[str, torch.Tensor] = {}
    for f in files:
        out.update(load_file(f))
    return out


# the metrics that read a clock: wall (conftest's) and process CPU seconds
CLOCK_KEYS = WALL_CLOCK_KEYS | {"train_cpu_seconds", "seconds_to_best", "cpu_seconds_to_best"}


def _assert_same_run(a: Path, b: Path) -> None:
    ma, mb = json.loads((a / "metrics.json").read_text()), json.loads((b / "metrics.json").read_text())
    assert ma.keys() == mb.keys() and CLOCK_KEYS <= ma.keys()
    assert {k: v for k, v in ma.items() if k not in CLOCK_KEYS} == {k: v for k, v in mb.items() if k not in CLOCK_KEYS}
    for name in ("steps.csv", "evals.csv"):  # stages/_train.CURVE_FILES
        ca, cb = (pd.read_csv(run / "curves" / name) for run in (a, b))
        assert set(CLOCKS) <= set(ca.columns), name
        pd.testing.assert_frame_equal(ca.drop(columns=list(CLOCKS)), cb.drop(columns=list(CLOCKS)), check_exact=True)
    assert (a / "val_predictions.csv").read_text() == (b / "val_predictions.csv").read_text()
    wa, wb = _weights(a / "model"), _weights(b / "model")
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name


def test_killed_training_process_resumes_to_the_uninterrupted_result(tmp_path, tiny_model_dir):
    split = write_split(tmp_path / "split", tiny_model_dir, make_frame(300))  # 37 steps per epoch
    # a cap of 100 steps, validations every 10 (auto: min(ceil(37 / 4), 100 // 8)); patience 3 stops it earlier
    params = write_params(tmp_path / "params.yaml", tiny_model_dir, {
        "full.epochs": 3, "train.min_steps": 0, "train.max_steps": 100, "train.patience": 3,
        "train.checkpoint_every": 10, "train.num_threads": 1, "mlflow.enabled": False})
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    ref, victim = tmp_path / "reference", tmp_path / "victim"
    ref_proc = _popen(_train_cmd(ref, params, split), env)  # both at once: one thread each
    proc = _popen(_train_cmd(victim, params, split), env)
    key = victim / "ck" / "key.txt"
    deadline = time.monotonic() + 90
    while not key.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL, f"finished or failed before the kill ({proc.returncode}):\n{err}"
    assert not (victim / "metrics.json").exists() and (victim / "ck" / "state.pt").is_file()

    err = _finish(_popen(_train_cmd(victim, params, split), env))
    assert "resuming from checkpoint" in err
    assert "resuming" not in _finish(ref_proc)
    _assert_same_run(ref, victim)
    assert not (victim / "ck").exists()  # cleared once the outputs were written
    metrics = json.loads((ref / "metrics.json").read_text())  # step 60 here, with the CPU's precision
    assert (metrics["stopped_by"], metrics["converged"]) == ("plateau", True) and metrics["steps"] < 100
