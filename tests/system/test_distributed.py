"""Data-parallel training under torchrun on CPU (gloo): the same answer as one process, rank 0 writes, resumes
across world sizes, and bad launches end in an error instead of a hang.

Each test runs the real train stage (``python -m stages.train_<variant>``) with ``train.processes: 2``, which
re-executes itself under ``torchrun --standalone``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import BertConfig, BertForSequenceClassification

from lora_pipeline.config import ConfigError, TrainConfig
from lora_pipeline.distributed import World, shard, torchrun_argv, torchrun_env
from tests.support.builders import ROOT, make_frame, save_tiny_bert, write_params, write_split
from tests.support.servers import free_port, silent_server

# dropout 0, fp32: two processes with half batches each must reproduce one process with the whole batch, up to
# float rounding of another summation order
TOLERANCE = {"rtol": 1e-4, "atol": 2e-5}
# except attention key biases: their exact gradient is 0 (q.b_k is the same for every key, softmax drops it), so
# they move by AdamW's normalised rounding noise alone, which no summation order reproduces
NOISE_ONLY = ".attention.self.key.bias"


@pytest.fixture(scope="module")
def no_dropout_model(tmp_path_factory) -> Path:
    path = save_tiny_bert(tmp_path_factory.mktemp("tiny_bert_nodrop"))
    config = BertConfig.from_pretrained(path)
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.0
    BertForSequenceClassification.from_pretrained(path, config=config).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def split(tmp_path_factory, no_dropout_model) -> Path:
    # 117 training rows: batches of 16 end with one of 5 rows (a 3/2 shard); 27 validation rows in batches of 8
    return write_split(tmp_path_factory.mktemp("split"), no_dropout_model, make_frame(60))


def _params(path: Path, model: Path, processes: int, **overrides) -> Path:
    # precision fp32 explicitly: `auto` means bf16 autocast on a CPU with AVX-512 bf16, whose reductions differ
    # between one and two processes by more than the tolerance (the equality claimed here is fp32's)
    return write_params(path, model, {"train.processes": processes, "train.eval_batch_size": 8,
                                      "train.dist_timeout_s": 60, "mlflow.enabled": False, "train.precision": "fp32",
                                      "lora.dropout": 0.0, **overrides})


def _cmd(variant: str, work: Path, params: Path, split: Path) -> list[str]:
    args = ["--seed", "7", "--lr", "5e-3"] + (["--rank", "4"] if variant == "lora" else [])
    return [sys.executable, "-m", f"stages.train_{variant}", "--params", str(params), "--split", str(split), *args,
            "--out", str(work / "model"), "--metrics", str(work / "metrics.json"), "--curve", str(work / "curves"),
            "--predictions", str(work / "val_predictions.csv"), "--checkpoints", str(work / "ck"), "--no-progress"]


def _env(tmp_path: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}


def _popen(cmd: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _train(variant: str, work: Path, params: Path, split: Path, env: dict, timeout: float = 240) -> str:
    proc = subprocess.run(_cmd(variant, work, params, split), cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-6000:]}"
    return proc.stderr


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        out.update(load_file(f))
    assert out, f"no weights in {model_dir}"
    return out


def _curve(work: Path, name: str, column: str) -> list[float]:
    lines = (work / "curves" / name).read_text().splitlines()
    idx = lines[0].split(",").index(column)
    return [float(line.split(",")[idx]) for line in lines[1:]]


def _assert_same_training(one: Path, two: Path) -> None:
    m1, m2 = (json.loads((w / "metrics.json").read_text()) for w in (one, two))
    assert (m1["steps"], m1["best_step"], m1["stop_reason"]) == (m2["steps"], m2["best_step"], m2["stop_reason"])
    assert m1["val_macro_f1"] == pytest.approx(m2["val_macro_f1"], abs=1e-9)  # the gathered predictions agree
    torch.testing.assert_close(torch.tensor(_curve(two, "steps.csv", "train_loss")),
                               torch.tensor(_curve(one, "steps.csv", "train_loss")), **TOLERANCE)
    w1, w2 = _weights(one / "model"), _weights(two / "model")
    assert w1.keys() == w2.keys()
    for name in w1:
        if not name.endswith(NOISE_ONLY):
            torch.testing.assert_close(w2[name], w1[name], **TOLERANCE, msg=name)


@pytest.mark.parametrize("variant", ["full", "lora"])
def test_two_processes_with_half_batches_train_as_one_process_with_the_whole_batch(tmp_path, no_dropout_model, split,
                                                                                   variant):
    env = _env(tmp_path)
    one, two = tmp_path / "one", tmp_path / "two"
    _train(variant, one, _params(tmp_path / "p1.yaml", no_dropout_model, 1), split, env)
    err = _train(variant, two, _params(tmp_path / "p2.yaml", no_dropout_model, 2, **{"mlflow.enabled": True}),
                 split, env)
    assert "launching 2 training processes per machine under torchrun" in err
    _assert_same_training(one, two)
    metrics = json.loads((two / "metrics.json").read_text())
    assert metrics["steps"] == 16 and metrics["epochs"] == 2  # 8 global batches per epoch, not 8 per rank

    from mlflow import MlflowClient  # rank 0 alone tracks: one run, with the world size

    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.params["world_size"] == "2"
    assert not (two / "ck").exists()  # rank 0 cleared the checkpoint folder it owned


def _workers(root_pid: int) -> dict[int, int]:
    """{torchrun rank: pid} of the stage workers below ``root_pid`` (read from /proc)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        env = dict(item.split(b"=", 1) for item in environ if b"=" in item)
        if env.get(b"TORCHELASTIC_RUN_ID") and b"RANK" in env and _descends(int(entry.name), root_pid):
            found[int(env[b"RANK"])] = int(entry.name)
    return found


def _descends(pid: int, ancestor: int) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        try:
            pid = int((Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            return False
    return False


def _slow_params(tmp_path: Path, model: Path, processes: int) -> Path:
    return _params(tmp_path / f"slow{processes}.yaml", model, processes,
                   **{"full.epochs": 12, "train.checkpoint_every": 5, "train.log_every": 5})


def test_a_killed_two_process_run_resumes_with_one_process(tmp_path, no_dropout_model, split):
    """SIGKILL the whole 2-process launch after a checkpoint; the rerun with 1 process resumes from it (the state
    holds global steps and global batches only) and ends where an uninterrupted 1-process run ends."""
    env = _env(tmp_path)
    reference, victim = tmp_path / "reference", tmp_path / "victim"
    proc = _popen(_cmd("full", victim, _slow_params(tmp_path, no_dropout_model, 2), split), env)
    deadline = time.monotonic() + 180
    while not (victim / "ck" / "key.txt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher, torchrun and both workers
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"finished or failed before the kill ({proc.returncode}):\n{err}"
    assert (victim / "ck" / "state.pt").is_file() and not (victim / "metrics.json").exists()

    one = _slow_params(tmp_path, no_dropout_model, 1)
    assert "resuming from checkpoint" in _train("full", victim, one, split, env)
    _train("full", reference, one, split, env)
    _assert_same_training(reference, victim)


def test_a_dying_rank_ends_the_launch_with_an_error(tmp_path, no_dropout_model, split):
    proc = _popen(_cmd("full", tmp_path / "w", _slow_params(tmp_path, no_dropout_model, 2), split), _env(tmp_path))
    deadline = time.monotonic() + 120
    while 1 not in (workers := _workers(proc.pid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert 1 in workers, "rank 1 never started"
    time.sleep(3)  # inside the training loop
    os.kill(workers[1], signal.SIGKILL)
    t0 = time.monotonic()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err[-4000:]
    assert time.monotonic() - t0 < 90
    assert "train_full failed: torchrun (2 process(es) per machine x 1 machine(s)) failed" in err
    assert not (tmp_path / "w" / "metrics.json").exists()


def test_two_machines_train_as_one_process(tmp_path, no_dropout_model, split):
    """train.nnodes 2 (two launches on this machine standing in for two): node rank 0 writes the outputs."""
    port = free_port()
    env = _env(tmp_path)
    two = _params(tmp_path / "p2.yaml", no_dropout_model, 1, **{"train.nnodes": 2,
                                                                "train.rdzv_endpoint": f"127.0.0.1:{port}"})
    node0, node1, one = tmp_path / "node0", tmp_path / "node1", tmp_path / "one"
    other = _popen(_cmd("lora", node1, two, split), {**env, "PET_NODE_RANK": "1"})
    _train("lora", node0, two, split, env)
    _, err = other.communicate(timeout=120)
    assert other.returncode == 0, err[-4000:]
    assert not node1.exists()  # rank 1 wrote nothing
    _train("lora", one, _params(tmp_path / "p1.yaml", no_dropout_model, 1), split, env)
    _assert_same_training(one, node0)


def test_a_rendezvous_nobody_joins_times_out(tmp_path, no_dropout_model, split):
    """Two machines asked for, one comes: the launch fails after train.dist_timeout_s, with the reason."""
    port = free_port()
    params = _params(tmp_path / "p.yaml", no_dropout_model, 1, **{"train.nnodes": 2, "train.dist_timeout_s": 10,
                                                                   "train.rdzv_endpoint": f"127.0.0.1:{port}"})
    t0 = time.monotonic()
    proc = subprocess.run(_cmd("full", tmp_path / "w", params, split), cwd=ROOT, env=_env(tmp_path),
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 2, proc.stderr[-4000:]
    assert time.monotonic() - t0 < 120
    assert "train_full failed: torchrun (1 process(es) per machine x 2 machine(s)) failed" in proc.stderr


def _launch_against(port: int, tmp_path: Path, model: Path, split: Path, node_rank: int):
    params = _params(tmp_path / "p.yaml", model, 1, **{
        "train.nnodes": 2, "train.dist_timeout_s": 10, "train.dist_start_grace_s": 5,
        "train.rdzv_endpoint": f"127.0.0.1:{port}"})
    t0 = time.monotonic()
    proc = subprocess.run(_cmd("full", tmp_path / f"w{node_rank}", params, split), cwd=ROOT, capture_output=True,
                          text=True, timeout=180, env={**_env(tmp_path), "PET_NODE_RANK": str(node_rank)})
    assert proc.returncode == 2, proc.stderr[-4000:]
    return time.monotonic() - t0, proc.stderr


def test_a_rendezvous_port_held_by_another_program_ends_in_an_error(tmp_path, no_dropout_model, split):
    with silent_server() as busy:  # listens, never speaks torch's store protocol
        # node 0 hosts the rendezvous: it cannot listen there, and says so at once
        seconds, err = _launch_against(busy, tmp_path, no_dropout_model, split, 0)
        assert seconds < 60 and "EADDRINUSE" in err
        assert err.splitlines()[-1].startswith("train_full failed: torchrun (1 process(es) per machine x 2 machine(s))")
        # node 1 reaches the port, whose owner never answers: the launch stops it after the timeout + the grace
        seconds, err = _launch_against(busy, tmp_path, no_dropout_model, split, 1)
        assert 15 <= seconds < 75
        assert "torchrun: no training process started within 15 s" in err.splitlines()[-1]


# ------------------------------------------------------------------------------------------ units


def test_shards_are_disjoint_cover_the_batch_and_weigh_to_the_global_mean():
    rows = [10, 11, 12, 13, 14]
    parts = [shard(rows, World(r, 2, r)) for r in range(2)]
    assert parts == [([10, 12, 14], 2 * 3 / 5), ([11, 13], 2 * 2 / 5)]
    loss = {10: 0.3, 11: 1.7, 12: 0.2, 13: 0.9, 14: 2.4}  # per-row losses
    # DDP averages over 2 ranks: sum_r(weight_r * mean loss of rank r) / 2 must be the mean loss of all 5 rows
    ddp = sum(w * sum(loss[i] for i in m) / len(m) for m, w in parts) / 2
    assert ddp == pytest.approx(sum(loss.values()) / 5)
    assert shard([10], World(1, 2, 1)) == ([10], 0.0)  # no row of its own: takes part, adds nothing
    assert shard(rows, World()) == (rows, 1.0)


def test_torchrun_command_for_one_and_several_machines():
    one = torchrun_argv(TrainConfig(processes=4), "stages.train_lora", ["--rank", "8"], "r8-s1")
    assert one[1:] == ["-m", "torch.distributed.run", "--nproc-per-node", "4", "--max-restarts", "0", "--standalone",
                       "--local-addr", "127.0.0.1", "--module", "stages.train_lora", "--rank", "8"]
    many = torchrun_argv(TrainConfig(processes=2, nnodes=3, rdzv_endpoint="node0:29400", dist_timeout_s=60),
                         "stages.train_full", [], "s1-lr0.001")
    assert "--standalone" not in many
    assert many[many.index("--nnodes") + 1] == "3" and many[many.index("--rdzv-endpoint") + 1] == "node0:29400"
    assert many[many.index("--rdzv-id") + 1] == "s1-lr0.001"
    assert many[many.index("--rdzv-backend") + 1] == "static"  # node rank 0 (dvc repro's machine) holds rank 0
    assert many[many.index("--rdzv-conf") + 1] == "timeout=60"


def test_one_machine_keeps_gloo_and_nccl_on_loopback_unless_the_user_chose_an_interface(monkeypatch):
    monkeypatch.delenv("GLOO_SOCKET_IFNAME", raising=False)
    monkeypatch.setenv("NCCL_SOCKET_IFNAME", "eth1")
    env = torchrun_env(TrainConfig(processes=2))
    assert (env["GLOO_SOCKET_IFNAME"], env["NCCL_SOCKET_IFNAME"]) == ("lo", "eth1")
    many = torchrun_env(TrainConfig(processes=2, nnodes=2, rdzv_endpoint="node0:29400"))
    assert "GLOO_SOCKET_IFNAME" not in many  # several machines talk over the network


@pytest.mark.parametrize("bad, key", [({"processes": 0}, "train.processes"), ({"nnodes": 2}, "train.rdzv_endpoint"),
                                      ({"nnodes": 2, "rdzv_endpoint": "node0"}, "train.rdzv_endpoint"),
                                      ({"dist_timeout_s": 0}, "train.dist_timeout_s"),
                                      ({"dist_start_grace_s": -1}, "train.dist_start_grace_s")])
def test_bad_launch_params_are_refused(bad, key):
    with pytest.raises(ConfigError, match=key):
        TrainConfig(**bad)
