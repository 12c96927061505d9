"""Team set-up, end to end (README "Team set-up"): a shared ``mlflow server`` that queued experiments log to, two
clones that split a study through one Git remote and one DVC remote, and a tracking server that hangs or dies
while a stage runs.

One tiny project (tiny random BERT, tiny data, one seed, one learning rate per variant) is built once: machine A.
Its baseline logs to a real ``mlflow server`` (SQLite backend, proxied artifacts) on 127.0.0.1; A queues its share
of ranks with ``dvc queue start -j 2``, clone B queues its own, both push, a fresh clone C gathers them side by
side and a fresh clone D into one study without training.
The tests run in file order: the last one kills the server.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from lora_pipeline.records import RunSpec
from tests.support.builders import ROOT
from tests.support.dvc_project import BIN, exp_names_by_rank, ran, run, stage_instance, write_project
from tests.support.servers import Server, start_mlflow_server

SEED, LORA_LR, BASE_RANK = 1, 5e-3, 2
A_SHARE, B_SHARE = (3, 5), 7  # ranks machine A queues (two workers), and the one machine B queues


def _tag(rank: int) -> str:
    return RunSpec("lora", SEED, LORA_LR, rank).tag


# ------------------------------------------------------------------------------------------ the server


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Server:
    server = start_mlflow_server(tmp_path_factory.mktemp("mlflow-server"))
    yield server
    server.send(signal.SIGCONT)  # in case a test stopped it and failed before resuming it
    server.stop()


# ----------------------------------------------------------------------------------------- machine A


def _env(base: Path, repo: Path, tracking_uri: str) -> dict:
    """What a teammate's shell holds: the project's tools, the team server; nothing of the caller's DVC/MLflow."""
    env = {k: v for k, v in os.environ.items()
           if k != "PYTHONDONTWRITEBYTECODE" and not k.startswith(("MLFLOW_", "DVC_"))}
    return {**env, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "MLFLOW_TRACKING_URI": tracking_uri,
            "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@localhost",
            "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@localhost", "PYTHONPATH": str(repo)}


def _write_project(base: Path, repo: Path) -> None:
    """The repository's pipeline on tiny data (as tests/e2e/test_e2e_dvc.py builds it), with a one-point grid."""
    params = write_project(base, repo)
    params["scratch"].update(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, epochs=1)
    for variant in ("full", "lora"):
        params[variant].update(epochs=1)
    # whole epochs, no early stopping: `-S lora.epochs=N` makes a train_lora run exactly N times longer
    params["train"].update(batch_size=16, checkpoint_every=0, min_steps=0, max_steps=0, patience=0, log_every=5,
                           num_threads=1)
    params["study"].update(seeds=[SEED], ranks=[BASE_RANK], scratch_lrs=[1e-3], full_lrs=[1e-3], lora_lrs=[LORA_LR])
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def project(tmp_path_factory, server) -> tuple[Path, dict]:
    """Machine A: the baseline run (logged to the server), committed and pushed to a bare Git remote
    (``origin``), its outputs pushed to a local-directory DVC remote (the project's default remote)."""
    base = tmp_path_factory.mktemp("team")
    repo = base / "a"
    _write_project(base, repo)
    env = _env(base, repo, server.url)
    run(["git", "init", "-q", "--bare", "--initial-branch=main", str(base / "origin.git")], base, env)
    run(["git", "init", "-q", "--initial-branch=main"], repo, env)
    run(["git", "remote", "add", "origin", str(base / "origin.git")], repo, env)
    run(["dvc", "remote", "add", "--default", "shared", str(base / "dvc-remote")], repo, env)
    run(["dvc", "repro"], repo, env)
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-qm", "baseline"], repo, env)
    run(["git", "push", "-q", "origin", "main"], repo, env)
    run(["dvc", "push"], repo, env)
    return repo, env


def _wait_for_queue(repo: Path, env: dict, limit_s: float = 900) -> str:
    deadline = time.monotonic() + limit_s
    while True:
        status = run(["dvc", "queue", "status"], repo, env).stdout
        if "Queued" not in status and "Running" not in status:
            return status
        assert time.monotonic() < deadline, status
        time.sleep(5)


def _exp_names(repo: Path, env: dict) -> dict[int, str]:
    return exp_names_by_rank(json.loads(run(["dvc", "exp", "show", "--json"], repo, env).stdout))


@pytest.fixture(scope="module")
def a_share(project) -> dict[int, str]:
    """Machine A's share of the study, one queued experiment per rank, run by two workers: {rank: exp name}."""
    repo, env = project
    for rank in A_SHARE:
        run(["dvc", "exp", "run", "--queue", "-S", f"study.ranks=[{rank}]"], repo, env)
    run(["dvc", "queue", "start", "-j", "2"], repo, env)
    status = _wait_for_queue(repo, env)
    assert "Failed" not in status, run(["dvc", "queue", "logs", status.split()[-1]], repo, env).stdout
    names = _exp_names(repo, env)
    assert set(A_SHARE) <= set(names), names
    return {rank: names[rank] for rank in A_SHARE}


# ---------------------------------------------------------------------------------------------- tests


def test_a_queued_grid_logs_every_run_with_its_tags_to_the_shared_server(server, project, a_share):
    from mlflow import MlflowClient

    repo, _ = project
    client = MlflowClient(tracking_uri=server.url)
    runs = client.search_runs([client.get_experiment_by_name("lora-pipeline").experiment_id], max_results=1000)
    baseline = {r.data.tags["stage"] for r in runs if "dvc_exp_name" not in r.data.tags}
    assert baseline == {"ingest", "validate", "split", "train_scratch", "train_full", "train_lora", "evaluate",
                        "report"}
    for rank, name in a_share.items():
        mine = [r for r in runs if r.data.tags.get("dvc_exp_name") == name]
        # the new rank's instance and what it feeds; the rest was restored from DVC's run-cache, not run
        assert sorted(r.data.tags["stage"] for r in mine) == ["evaluate", "report", "train_lora"], (rank, mine)
        assert all(r.info.status == "FINISHED" for r in mine)
        (train,) = [r for r in mine if r.data.tags["stage"] == "train_lora"]
        tags = train.data.tags
        assert (tags["variant"], tags["lora_rank"], tags["seed"]) == ("lora", str(rank), str(SEED)), tags
        assert train.info.run_name == f"{RunSpec('lora', SEED, LORA_LR, rank).run_name} [{name}]"
        # artifacts went through the server (--serve-artifacts) into its artifact root, not into the clone
        assert train.info.artifact_uri.startswith("mlflow-artifacts:"), train.info.artifact_uri
        assert f"lora-{_tag(rank)}.json" in {a.path for a in client.list_artifacts(train.info.run_id)}
    assert list(server.artifacts.rglob(f"lora-{_tag(A_SHARE[0])}.json"))
    assert not (repo / "mlflow.db").exists() and not (repo / "mlartifacts").exists()


@pytest.fixture(scope="module")
def pushed(project, a_share, tmp_path_factory) -> dict[int, str]:
    """Clone B runs its share (``dvc exp run --run-all``); A and B ``dvc exp push`` theirs: {rank: exp name}."""
    repo, env = project
    clone_b = tmp_path_factory.mktemp("machine-b") / "b"
    run(["git", "clone", "-q", str(repo.parent / "origin.git"), str(clone_b)], clone_b.parent, env)
    env_b = {**env, "PYTHONPATH": str(clone_b)}
    run(["dvc", "pull"], clone_b, env_b)  # the baseline's data and models, so B trains only its own share
    run(["dvc", "exp", "run", "--queue", "-S", f"study.ranks=[{B_SHARE}]"], clone_b, env_b)
    proc = run(["dvc", "exp", "run", "--run-all"], clone_b, env_b)
    b_name = _exp_names(clone_b, env_b).get(B_SHARE)
    assert b_name, proc.stdout[-3000:]
    run(["dvc", "exp", "push", "origin", b_name], clone_b, env_b)
    run(["dvc", "exp", "push", "origin", *a_share.values()], repo, env)
    return {**a_share, B_SHARE: b_name}


def _fresh_clone(project, where: Path) -> tuple[Path, dict]:
    repo, env = project
    run(["git", "clone", "-q", str(repo.parent / "origin.git"), str(where)], where.parent, env)
    return where, {**env, "PYTHONPATH": str(where)}


def test_two_clones_split_a_study_through_one_git_remote_and_one_dvc_remote(project, a_share, pushed, tmp_path):
    """A and B each queue their share of ranks and `dvc exp push` it (Git refs to origin, outputs to the DVC
    remote). A fresh clone C gathers both: it lists and pulls them, shows them side by side, applies one and is up
    to date without training."""
    clone_c, env_c = _fresh_clone(project, tmp_path / "c")
    listed = run(["dvc", "exp", "list", "origin"], clone_c, env_c).stdout
    assert all(name in listed for name in pushed.values()), listed
    run(["dvc", "exp", "pull", "origin", *pushed.values()], clone_c, env_c)
    shown = json.loads(run(["dvc", "exp", "show", "--json"], clone_c, env_c).stdout)
    assert exp_names_by_rank(shown) == pushed  # the experiments of both machines, side by side
    assert all(isinstance(_exp_metric(shown, rank, f"lora_r{rank}"), float) for rank in pushed)
    first = a_share[A_SHARE[0]]
    run(["dvc", "exp", "apply", first], clone_c, env_c)
    run(["dvc", "pull"], clone_c, env_c)
    assert (clone_c / "models" / "lora" / _tag(A_SHARE[0]) / "adapter.safetensors").is_file()
    assert f"lora_r{A_SHARE[0]}" in json.loads((clone_c / "metrics" / "evaluate.json").read_text())
    assert "up to date" in run(["dvc", "status"], clone_c, env_c).stdout
    assert ran(run(["dvc", "repro"], clone_c, env_c)) == set()


def test_one_report_over_every_machines_experiments_trains_nothing(project, pushed, tmp_path):
    """README "One report over every machine's experiments": a fresh clone D pulls the pushed experiments and
    gathers them into one study (every rank of A and B) in which only `evaluate` and `report` run; its rows are
    the experiments' own numbers."""
    clone_d, env_d = _fresh_clone(project, tmp_path / "d")
    run(["dvc", "exp", "pull", "origin", *pushed.values()], clone_d, env_d)
    shown = json.loads(run(["dvc", "exp", "show", "--json"], clone_d, env_d).stdout)
    # `dvc exp pull` brings the experiments' outputs, not run-cache entries: `dvc commit --force` on each applied
    # experiment records its stages in this clone's run-cache, so the study below restores them
    for name in pushed.values():
        run(["dvc", "exp", "apply", name], clone_d, env_d)
        run(["dvc", "pull"], clone_d, env_d)
        run(["dvc", "commit", "--force"], clone_d, env_d)
    run(["git", "reset", "-q", "--hard"], clone_d, env_d)  # back to the baseline commit
    run(["git", "clean", "-q", "-d", "--force"], clone_d, env_d)
    run(["dvc", "pull"], clone_d, env_d)
    ranks = sorted(pushed)
    proc = run(["dvc", "exp", "run", "-S", f"study.ranks={ranks}"], clone_d, env_d)
    assert ran(proc) == {"evaluate", "report"}, proc.stdout[-3000:]
    combined = json.loads((clone_d / "metrics" / "evaluate.json").read_text())
    for rank in ranks:
        assert combined[f"lora_r{rank}"]["macro_f1"] == _exp_metric(shown, rank, f"lora_r{rank}"), rank


def _exp_metric(shown: list, rank: int, row: str) -> float:
    """Test macro-F1 of ``row`` in the one-rank experiment of ``rank`` (``dvc exp show --json``)."""
    for baseline in shown:
        for exp in baseline.get("experiments") or []:
            for rev in exp["revs"]:
                if rev["data"]["params"]["params.yaml"]["data"]["study"]["ranks"] == [rank]:
                    return rev["data"]["metrics"]["metrics/evaluate.json"]["data"][row]["macro_f1"]
    raise AssertionError(f"no experiment with study.ranks=[{rank}]")


_HANGING = """
import logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
from lora_pipeline.config import MlflowConfig
from lora_pipeline.tracking import MlflowTracker
tracker = MlflowTracker(MlflowConfig(experiment="hang-check"), "train_lora", {"stage": "train_lora"})
tracker.log_metrics({"train_loss": 1.0}, step=0)
print("started", tracker._error, flush=True)
sys.stdin.readline()
for step in range(1, 20):
    tracker.log_metrics({"train_loss": 1.0 / step}, step=step)
tracker.close()
"""


def test_a_server_that_hangs_mid_run_costs_one_timeout_then_nothing(server):
    """A server that accepts connections but never answers (stopped, or a host behind a dead link): the first call
    waits (retries + 1) x timeout, later calls and MLflow's exit hook send nothing. MLflow's own defaults would wait
    minutes per call (7 retries, 120 s timeout)."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_HTTP_REQUEST_")},  # the tracker's own
           "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": server.url}
    proc = subprocess.Popen([sys.executable, "-c", _HANGING], cwd=ROOT, env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "started None", proc.communicate(timeout=60)
        server.send(signal.SIGSTOP)
        start = time.monotonic()
        _, err = proc.communicate("go\n", timeout=120)
        elapsed = time.monotonic() - start
    finally:
        server.send(signal.SIGCONT)
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    # one request of (1 retry + 1) x 5 s, then close's one attempt to end the run (no retry, 2 s); MLflow's exit
    # hook asks nothing more
    assert elapsed < 2 * 5 + 2 + 6, (elapsed, err[-3000:])
    warnings = [line for line in err.splitlines() if "WARNING" in line]
    assert len(warnings) == 1 and "MLflow tracking at" in warnings[0], err[-3000:]
    assert "not logged: 19 metrics, 1 end" in warnings[0], warnings


def test_a_server_that_dies_mid_stage_costs_no_result_and_no_minutes(server, project):
    """The server is killed while a train stage logs to it: the stage, and the experiment, finish with every DVC
    output and metric; the stage says so once and is not held up by MLflow's HTTP retries."""
    from mlflow import MlflowClient

    repo, env = project
    instance = stage_instance(RunSpec("lora", SEED, LORA_LR, BASE_RANK))
    metrics_file = repo / "metrics" / "train" / f"lora-{_tag(BASE_RANK)}.json"
    steps_per_epoch = json.loads(metrics_file.read_text())["steps"]
    client = MlflowClient(tracking_uri=server.url)
    experiment = client.get_experiment_by_name("lora-pipeline").experiment_id
    before = {r.info.run_id for r in client.search_runs([experiment], max_results=1000)}
    proc = subprocess.Popen(["dvc", "exp", "run", "-S", "lora.epochs=40"], cwd=repo, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines: list[tuple[float, str]] = []
    reader = threading.Thread(target=lambda: lines.extend((time.monotonic(), line) for line in proc.stdout),
                              daemon=True)
    reader.start()
    deadline = time.monotonic() + 600
    while True:  # until the new train_lora run has logged a loss point, i.e. the stage is training
        running = client.search_runs([experiment], "tags.stage = 'train_lora' and attributes.status = 'RUNNING'")
        if any(r.info.run_id not in before and "train_loss" in r.data.metrics for r in running):
            break
        assert proc.poll() is None and time.monotonic() < deadline, "".join(line for _, line in lines)[-5000:]
        time.sleep(0.5)
    killed = time.monotonic()
    server.stop(signal.SIGKILL)
    assert proc.wait(timeout=900) == 0, "".join(line for _, line in lines)[-5000:]
    reader.join(30)
    out = "".join(line for _, line in lines)
    starts = [i for i, (_, line) in enumerate(lines) if line.startswith("Running stage")]
    first = next(i for i in starts if f"'{instance}'" in lines[i][1])
    after = next(i for i in starts if i > first)
    stage = [line for _, line in lines[first:after]]
    warnings = [line for line in stage if "MLflow tracking at" in line]
    assert len(warnings) == 1 and "not logged" in warnings[0], out[-5000:]
    assert not [line for line in stage if "Retrying (" in line], out[-5000:]  # urllib3's; the one warning says it
    assert lines[after][0] - killed < 60, out[-5000:]  # the rest of 40 epochs; MLflow's own retries: minutes
    metrics = json.loads(metrics_file.read_text())
    assert metrics["steps"] == 40 * steps_per_epoch and metrics["val_macro_f1"] >= 0, metrics
    assert (repo / "models" / "lora" / _tag(BASE_RANK) / "adapter.safetensors").is_file()
    assert f"lora_r{BASE_RANK}" in json.loads((repo / "metrics" / "evaluate.json").read_text())
    assert "up to date" in run(["dvc", "status"], repo, env).stdout
