"""tracking across real processes: parallel workers on a fresh SQLite store, and a stage killed mid-run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

from tests.support.builders import ROOT, initialised_store

# Each worker imports everything first, then waits for the go file of each repetition, so that both open a
# tracker on the same brand-new store within a millisecond: what `dvc queue start -j 2` does on a first run.
_WORKER = textwrap.dedent("""
    import json, logging, os, sys, time
    from pathlib import Path
    logging.basicConfig(level=logging.WARNING)
    from lora_pipeline.config import MlflowConfig
    from lora_pipeline.tracking import MlflowTracker
    import mlflow
    base, who, reps = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    for rep in range(reps):
        folder = base / f"rep{rep}"
        (folder / f"ready-{who}").touch()
        while not (folder / "go").exists():
            time.sleep(0.001)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder / 'mlflow.db'}"
        tracker = MlflowTracker(MlflowConfig(experiment="grid"), "train_lora", {"stage": "train_lora",
                                                                               "worker": who})
        tracker.log_metrics({"val_macro_f1": 0.5}, step=1)
        tracker.close()
        print(json.dumps({"rep": rep, "worker": who, "error": tracker._error}), flush=True)
""")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PYTHONPATH"] = str(ROOT)
    return env


def _runs(uri: str, experiment: str) -> list:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    return [] if exp is None else client.search_runs([exp.experiment_id])


def test_two_workers_creating_a_fresh_sqlite_store_both_log(tmp_path):
    reps, workers = 3, 2
    for rep in range(reps):
        (tmp_path / f"rep{rep}").mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, str(tmp_path), str(w), str(reps)], cwd=ROOT,
                              env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for w in range(workers)]
    try:
        for rep in range(reps):
            folder = tmp_path / f"rep{rep}"
            deadline = time.monotonic() + 120
            while not all((folder / f"ready-{w}").exists() for w in range(workers)):
                assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "a worker died"
                time.sleep(0.005)
            (folder / "go").touch()
        outs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0] * workers, [err[-2000:] for _, err in outs]
    results = [json.loads(line) for out, _ in outs for line in out.splitlines()]
    assert len(results) == reps * workers
    assert [r for r in results if r["error"]] == []
    assert (tmp_path / "rep0" / "mlflow.db-lock").is_file()  # the lock sits beside the store (git-ignored)
    for rep in range(reps):
        runs = _runs(f"sqlite:///{tmp_path / f'rep{rep}' / 'mlflow.db'}", "grid")
        assert sorted(r.data.tags["worker"] for r in runs) == ["0", "1"]
        assert all(r.info.status == "FINISHED" and r.data.metrics == {"val_macro_f1": 0.5} for r in runs)


# A train stage: opens its run with the checkpoint key, logs a step, then trains until it is killed.
_STAGE = textwrap.dedent("""
    import sys, time
    from lora_pipeline.config import MlflowConfig
    from lora_pipeline.tracking import MlflowTracker
    key, step = sys.argv[1], int(sys.argv[2])
    tracker = MlflowTracker(MlflowConfig(experiment="resume"), "train_lora",
                            {"stage": "train_lora", "checkpoint_key": key})
    tracker.log_params({"lora": {"rank": 8}, "resolved": {"device": "cpu"}})
    tracker.log_metrics({"train_loss": 1.0 / step}, step=step)
    print("ready", tracker._error, flush=True)
    time.sleep(600)
""")


def _start_stages(uri: str, jobs: list[tuple[str, int]]) -> list[subprocess.Popen]:
    env = {**_env(), "MLFLOW_TRACKING_URI": uri}
    procs = [subprocess.Popen([sys.executable, "-c", _STAGE, key, str(step)], cwd=ROOT, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for key, step in jobs]
    for proc in procs:
        line = proc.stdout.readline()
        assert line == "ready None\n", (line, proc.poll() is None or proc.stderr.read()[-2000:])
    return procs


def test_a_killed_stage_run_is_resumed_and_other_orphans_are_marked_killed(monkeypatch, tmp_path):
    import mlflow

    from lora_pipeline.config import MlflowConfig
    from lora_pipeline.tracking import MlflowTracker

    uri = initialised_store(tmp_path / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    # killed mid-training: same key as the rerun, and an older params set; still alive: same key, step 7
    killed_same, killed_other, alive = _start_stages(uri, [("abc", 1), ("old", 1), ("abc", 7)])
    try:
        for proc in (killed_same, killed_other):
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=30)  # reaped: its pid is free
        tracker = MlflowTracker(MlflowConfig(experiment="resume"), "train_lora",
                                {"stage": "train_lora", "checkpoint_key": "abc"})
        tracker.log_params({"lora": {"rank": 8}, "resolved": {"device": "cuda"}})  # resumed on another device
        # the checkpoint was older than the last logged step: the rerun logs step 1 again, once in the history
        tracker.log_metrics({"train_loss": 0.5, "val_macro_f1": 0.75}, step=1)
        tracker.log_metrics({"train_loss": 0.25}, step=2)
        tracker.close()
        assert tracker._error is None
        runs = {r.info.run_id: r for r in _runs(uri, "resume")}
    finally:
        alive.kill()
        alive.communicate(timeout=30)
    assert len(runs) == 3  # the rerun made no run of its own
    client = mlflow.MlflowClient(tracking_uri=uri)
    history = {rid: [(m.step, m.value) for m in client.get_metric_history(rid, "train_loss")] for rid in runs}
    (resumed,) = [runs[rid] for rid, h in history.items() if h == [(1, 1.0), (2, 0.25)]]
    assert resumed.info.status == "FINISHED" and resumed.data.tags["resumed_after_kill"] == "true"
    assert [(m.step, m.value) for m in client.get_metric_history(resumed.info.run_id, "val_macro_f1")] == [(1, 0.75)]
    assert resumed.data.tags["pid"] == str(os.getpid()) and resumed.info.run_name == "train_lora"
    assert resumed.data.params == {"lora.rank": "8", "resolved.device": "cpu"}
    assert resumed.data.tags["resumed.resolved.device"] == "cuda"
    (other,) = [r for r in runs.values() if r.data.tags["checkpoint_key"] == "old"]
    assert other.info.status == "KILLED"
    (running,) = [runs[rid] for rid, h in history.items() if h == [(7, 1.0 / 7)]]
    assert running.info.status == "RUNNING"  # a live process's run is never touched
