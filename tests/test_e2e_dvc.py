"""End to end: the real ``dvc repro`` over the whole DAG in a temporary copy of the repository,
on a small dataset written here and a tiny random BERT, then the DVC experiment workflow."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import make_frame, save_tiny_bert

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow

def _fixture_csv(path: Path) -> None:
    """The shared toy corpus under other column names, plus a null text that validate must clean away."""
    df = make_frame(per_class=90).rename(columns={"text": "review", "label": "sentiment"})
    df.loc[len(df)] = {"review": None, "sentiment": "pos"}
    df.to_csv(path, index=False)


def _run(args: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> tuple[Path, dict]:
    base = tmp_path_factory.mktemp("e2e")
    repo = base / "repo"
    repo.mkdir()
    for name in ("dvc.yaml", "params.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(ROOT / name, repo / name)
    for name in ("stages", "lora_pipeline"):
        shutil.copytree(ROOT / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    (repo / ".dvc").mkdir()
    for name in ("config", ".gitignore"):
        shutil.copy(ROOT / ".dvc" / name, repo / ".dvc" / name)
    _fixture_csv(base / "reviews.csv")
    save_tiny_bert(base / "tiny_model")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["data"] = {"source": "file", "path": str(base / "reviews.csv"), "text_column": "review",
                      "label_column": "sentiment"}
    params["validate"].update(labels=["pos", "neg", "plot"], min_rows_per_class=20)
    params["model"].update(name=str(base / "tiny_model"), max_length=32)
    params["scratch"].update(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, epochs=2)
    params["full"].update(epochs=2, lr=1e-3)
    params["lora"].update(epochs=2, lr=5e-3)
    params["train"].update(batch_size=16, checkpoint_every=5)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    # bytecode writing ON, as on users' machines (the development machines set PYTHONDONTWRITEBYTECODE=1)
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
           "MLFLOW_TRACKING_URI": f"sqlite:///{base / 'mlflow.db'}", "DVC_NO_ANALYTICS": "1",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@localhost", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@localhost", "PYTHONPATH": str(repo)}
    _run(["git", "init", "-q"], repo, env)
    _run(["git", "add", "-A"], repo, env)
    _run(["git", "commit", "-qm", "fixture"], repo, env)
    _run(["dvc", "repro"], repo, env)
    return repo, env


def _outs(repo: Path) -> list[Path]:
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    paths = []
    for stage in stages.values():
        for kind in ("outs", "metrics"):
            for entry in stage.get(kind, []):
                paths.append(repo / (entry if isinstance(entry, str) else next(iter(entry))))
    return paths


def test_every_out_and_metric_exists_and_parses(repo):
    repo, _ = repo
    for path in _outs(repo):
        assert path.exists(), f"missing out {path.relative_to(repo)}"
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".csv":
            assert len(pd.read_csv(path)) > 0
    evaluate = json.loads((repo / "metrics/evaluate.json").read_text())
    assert set(evaluate) == {"scratch", "full", "lora", "tfidf_logreg"}
    assert evaluate["tfidf_logreg"]["macro_f1"] > 0.9  # the fixture is separable by vocabulary
    lora = json.loads((repo / "metrics/train_lora.json").read_text())
    assert 0 < lora["trainable_params"] < lora["total_params"]
    report = (repo / "reports/report.md").read_text()
    assert "LoRA (ours)" in report and (repo / "reports/figures/curves.png").stat().st_size > 1000
    assert (repo / "reports/validation/index.html").is_file()


def test_trained_lora_round_trips_through_peft(repo, tmp_path):
    """models/lora, exported to peft's format, gives peft's PeftModel the logits of our merged model."""
    import peft
    import torch

    from lora_pipeline.config import load_params
    from lora_pipeline.lora import export_peft, load_adapter
    from lora_pipeline.models import build_model, load_trained
    from lora_pipeline.pretrained import load_tokenizer

    repo, _ = repo
    params = load_params(repo / "params.yaml")
    labels = json.loads((repo / "data/split/labels.json").read_text())
    tokenizer = load_tokenizer(params.model)
    ours = build_model("full", params.model, labels, tokenizer)
    load_adapter(ours, repo / "models/lora")
    export_peft(ours, tmp_path / "peft", base_model_name=params.model.name)
    theirs = peft.PeftModel.from_pretrained(build_model("full", params.model, labels, tokenizer), tmp_path / "peft")
    merged = load_trained("lora", repo / "models/lora", params.model, labels, tokenizer)
    batch = tokenizer(["great wonderful film", "dull tedious story", "detective village heist"], padding=True,
                      return_tensors="pt")
    with torch.no_grad():
        expected = merged.eval()(**batch).logits
        torch.testing.assert_close(theirs.eval()(**batch).logits, expected, atol=1e-5, rtol=1e-5)


def test_second_repro_is_a_noop(repo):
    repo, env = repo
    proc = _run(["dvc", "repro"], repo, env)
    assert "Running stage" not in proc.stdout, proc.stdout
    status = _run(["dvc", "status"], repo, env)
    assert "up to date" in status.stdout


def test_editing_the_data_file_reruns_ingest(repo):
    """`data.path` is a DVC dependency of ingest (dvc.yaml: ${data.path}): DVC sees a user's file change."""
    repo, env = repo
    path = Path(yaml.safe_load((repo / "params.yaml").read_text())["data"]["path"])
    original = path.read_bytes()
    try:
        path.write_bytes(original + b"a brand new review,pos\n")
        status = _run(["dvc", "status"], repo, env).stdout
        assert "ingest:" in status and str(path) in status, status
    finally:
        path.write_bytes(original)
    assert "up to date" in _run(["dvc", "status"], repo, env).stdout


def test_bytecode_does_not_change_dvc_status(repo):
    """Code directories are DVC dependencies; bytecode comes and goes (a fresh checkout has none, an ordinary
    `import` writes it, a `touch` rewrites it) and must never make DVC think the code changed."""
    repo, env = repo
    for cache in repo.rglob("__pycache__"):
        shutil.rmtree(cache)
    assert "up to date" in _run(["dvc", "status"], repo, env).stdout
    for source in (repo / "lora_pipeline").rglob("*.py"):
        source.touch()
    _run([sys.executable, "-c", "import stages.train_lora, stages.evaluate, stages.report, stages.split, "
          "stages.validate, stages.ingest"], repo, env)
    assert list((repo / "lora_pipeline" / "lora").glob("__pycache__/*.pyc")), "no bytecode was written"
    status = _run(["dvc", "status"], repo, env)
    assert "up to date" in status.stdout, status.stdout


def test_rank_experiment_moves_only_lora(repo):
    repo, env = repo
    _run(["git", "add", "-A"], repo, env)
    _run(["git", "commit", "-qm", "baseline run"], repo, env)
    proc = _run(["dvc", "exp", "run", "-S", "lora.rank=4"], repo, env)
    ran = {line.split("'")[1] for line in proc.stdout.splitlines() if line.startswith("Running stage")}
    assert ran == {"train_lora", "evaluate", "report"}
    diff = json.loads(_run(["dvc", "metrics", "diff", "--json"], repo, env).stdout)
    changed = diff["metrics/train_lora.json"]
    assert changed["trainable_params"]["new"] < changed["trainable_params"]["old"]
    assert "metrics/train_full.json" not in diff or not diff["metrics/train_full.json"]
    shown = json.loads(_run(["dvc", "exp", "show", "--json"], repo, env).stdout)
    assert 4 in _exp_values(shown, "rank")
    # README's readable table (the full `dvc exp show` is thousands of characters wide)
    table = _run(["dvc", "exp", "show", "--no-pager", "--md", "--drop", ".*", "--keep",
                  r"Experiment|Created|lora\.rank|train\.seed|^(scratch|full|lora|tfidf_logreg)\.macro_f1$"],
                 repo, env).stdout
    header = table.splitlines()[0]
    assert "lora.rank" in header and "lora.macro_f1" in header and "full.macro_f1" in header, table
    assert max(len(line) for line in table.splitlines()) < 200, table
    assert any("| 4 " in line for line in table.splitlines()[2:]), table


def test_params_seen_before_restore_from_the_run_cache(repo):
    """Back to the baseline's rank: DVC restores train_lora, evaluate and report from its run-cache (no training)."""
    repo, env = repo
    base_rank = yaml.safe_load(_run(["git", "show", "HEAD:params.yaml"], repo, env).stdout)["lora"]["rank"]
    proc = _run(["dvc", "exp", "run", "-S", f"lora.rank={base_rank}"], repo, env)
    assert "Running stage" not in proc.stdout, proc.stdout
    assert "Stage 'train_lora' is cached - skipping run" in proc.stdout, proc.stdout


def test_a_failed_stage_is_recovered_from_the_run_cache(repo):
    """DVC deletes a stage's outs before running it, so a bad value costs the last good outputs; restoring the
    params and running `dvc repro` brings them back from the run-cache without training."""
    repo, env = repo
    lora_model = repo / "models" / "lora"
    before = sorted(p.name for p in lora_model.iterdir())
    failed = subprocess.run(["dvc", "exp", "run", "-S", "lora.rank=0"], cwd=repo, env=env, capture_output=True,
                            text=True, timeout=900)
    assert failed.returncode != 0
    assert "'lora.rank' must be >= 1" in failed.stdout + failed.stderr
    assert not lora_model.exists()  # DVC removed the outs before the command failed
    _run(["git", "checkout", "--", "params.yaml"], repo, env)
    proc = _run(["dvc", "repro"], repo, env)
    assert "Running stage" not in proc.stdout, proc.stdout
    assert sorted(p.name for p in lora_model.iterdir()) == before
    assert "up to date" in _run(["dvc", "status"], repo, env).stdout


def _exp_values(shown, key: str) -> list:
    """Every value of ``lora.<key>`` in the experiments of ``dvc exp show --json``."""
    found = []
    for baseline in shown:
        for exp in baseline.get("experiments") or []:
            for rev in exp["revs"]:
                found.append(rev["data"]["params"]["params.yaml"]["data"]["lora"][key])
    return found


def _exp_names_by_rank(shown) -> dict[int, str]:
    names = {}
    for baseline in shown:
        for exp in baseline.get("experiments") or []:
            for rev in exp["revs"]:
                if rev.get("name"):
                    names[rev["data"]["params"]["params.yaml"]["data"]["lora"]["rank"]] = rev["name"]
    return names


def test_queued_rank_grid_logs_every_run_to_one_mlflow_store(repo):
    """`dvc exp run --queue` runs in temporary copies; the default SQLite store must still be the repo's, and two
    workers that find no store yet must not lose a run while both create MLflow's schema."""
    repo, env = repo
    repo_env_uri = env["MLFLOW_TRACKING_URI"]
    env = {k: v for k, v in env.items() if k != "MLFLOW_TRACKING_URI"}
    assert not (repo / "mlflow.db").exists()
    _run(["git", "add", "-A"], repo, env)  # queued runs start from HEAD: it must hold the baseline's dvc.lock
    _run(["git", "commit", "-qm", "baseline for the queue", "--allow-empty"], repo, env)
    _run(["dvc", "exp", "run", "--queue", "-S", "lora.rank=2,16"], repo, env)  # ranks never trained before
    _run(["dvc", "queue", "start", "-j", "2"], repo, env)  # two workers write one SQLite store
    deadline = time.time() + 600
    while time.time() < deadline:
        status = _run(["dvc", "queue", "status"], repo, env).stdout
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(3)
    assert "Failed" not in status, _run(["dvc", "queue", "logs", status.split()[-1]], repo, env).stdout
    names = _exp_names_by_rank(json.loads(_run(["dvc", "exp", "show", "--json"], repo, env).stdout))
    assert {2, 16} <= set(names)
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("lora-pipeline").experiment_id])
    for rank in (2, 16):
        stages = {r.data.tags.get("stage") for r in runs if r.data.tags.get("dvc_exp_name") == names[rank]}
        # every stage that the new rank feeds ran (no run-cache entry exists for it) and logged its run; no
        # checkpoint dir (not a DVC out) forces train_scratch/train_full to rerun in the temporary copy
        assert stages == {"train_lora", "evaluate", "report"}, (rank, [(r.data.tags) for r in runs])
    lora_runs = [r for r in runs if r.data.tags.get("stage") == "train_lora"]
    assert sorted(r.data.tags["lora_rank"] for r in lora_runs) == ["16", "2"]
    assert all(r.info.status == "FINISHED" for r in runs)
    fixture_store = MlflowClient(tracking_uri=repo_env_uri)  # where the fixture's own repro logged
    original = fixture_store.search_runs([fixture_store.get_experiment_by_name("lora-pipeline").experiment_id])
    assert [r for r in original if r.data.tags.get("stage") == "train_lora" and r.data.tags.get("lora_rank") == "8"]
