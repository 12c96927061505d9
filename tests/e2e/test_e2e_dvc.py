"""End to end: the real ``dvc repro`` over the whole DAG in a temporary copy of the repository,
on a small dataset written here and a tiny random BERT, then the DVC experiment workflow."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from lora_pipeline.records import RunSpec
from tests.support.dvc_project import (BIN, exp_names_by_rank, exp_values, ran, readme_compare_command, run,
                                      stage_instance, write_project)
SEEDS, RANKS, FULL_LRS, LORA_LR = (1, 2), (2, 4), (1e-3, 3e-3), 5e-3


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> tuple[Path, dict]:
    base = tmp_path_factory.mktemp("e2e")
    repo = base / "repo"
    params = write_project(base, repo)
    params["scratch"].update(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, epochs=2)
    params["full"].update(epochs=2)
    params["lora"].update(epochs=2)
    # min_steps 20: early stopping cannot end a run on the flat one-class start before two loss rows are logged
    params["train"].update(batch_size=16, checkpoint_every=5, min_steps=20, max_steps=30, patience=2,
                           num_threads=1)  # one thread: test files run side by side, one per core
    # the study the tests grow and shrink: 2 ranks x 2 seeds, and a two-value learning-rate grid for full
    params["study"].update(seeds=list(SEEDS), ranks=list(RANKS), scratch_lrs=[1e-3], full_lrs=list(FULL_LRS),
                           lora_lrs=[LORA_LR])
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    # bytecode writing ON, as on users' machines (the development machines set PYTHONDONTWRITEBYTECODE=1)
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
           "MLFLOW_TRACKING_URI": f"sqlite:///{base / 'mlflow.db'}", "DVC_NO_ANALYTICS": "1",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@localhost", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@localhost", "PYTHONPATH": str(repo)}
    run(["git", "init", "-q"], repo, env)
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-qm", "fixture"], repo, env)
    run(["dvc", "repro"], repo, env)
    return repo, env


def _instances(repo: Path, env: dict) -> list[str]:
    return run(["dvc", "stage", "list", "--name-only"], repo, env).stdout.split()


def _lora_tag(rank: int, seed: int) -> str:
    return RunSpec("lora", seed, LORA_LR, rank).tag


def _lora_stage(rank: int, seed: int, targets: str = "default", adapter: str = "lora") -> str:
    """The name DVC gives a train_lora instance: its matrix values (rank, target set, adapter, seed, lr) joined."""
    return stage_instance(RunSpec("lora", seed, LORA_LR, rank, targets, adapter))


def test_every_instance_of_the_grid_has_its_outputs(repo):
    repo, env = repo
    names = _instances(repo, env)
    expected = {f"train_scratch@{s}-0.001" for s in SEEDS} | {f"train_full@{s}-{lr}" for s in SEEDS for lr in FULL_LRS} \
        | {_lora_stage(r, s) for r in RANKS for s in SEEDS}
    assert expected <= set(names) and len([n for n in names if "@" in n]) == len(expected), names
    for path in (repo / "metrics/train").glob("*.json"):
        rec = json.loads(path.read_text())
        assert {"variant", "rank", "seed", "lr", "tag", "stop_reason", "stopped_by", "converged", "steps",
                "val_macro_f1", "cpu_seconds_to_best"} <= set(rec), path
        folder = repo / "models" / rec["variant"] / rec["tag"]
        assert folder.is_dir() and any(folder.iterdir()), folder
        curves = repo / "metrics/curves" / rec["variant"] / rec["tag"]
        steps, evals = pd.read_csv(curves / "steps.csv"), pd.read_csv(curves / "evals.csv")
        assert len(steps) >= 2 and len(evals) >= 1 and steps["step"].is_monotonic_increasing, curves
        assert rec["steps"] <= 30 and rec["stop_reason"], rec
    assert len(list((repo / "metrics/train").glob("*.json"))) == len(expected)
    for rank in RANKS:  # the instance's rank is the adapter's
        config = json.loads((repo / "models/lora" / _lora_tag(rank, 1) / "adapter_config.json").read_text())
        assert config["rank"] == rank


def test_evaluate_chooses_on_validation_and_scores_only_the_chosen_models(repo):
    repo, _ = repo
    evaluate = json.loads((repo / "metrics/evaluate.json").read_text())
    assert set(evaluate) == {"scratch", "full", "lora_r2", "lora_r4", "tfidf_logreg", "answer_rank"}
    assert evaluate["tfidf_logreg"]["macro_f1"] > 0.9  # the fixture is separable by vocabulary
    study = json.loads((repo / "metrics/study.json").read_text())
    full_runs = [r for r in study["runs"] if r["variant"] == "full"]
    val = {lr: sum(r["val_macro_f1"] for r in full_runs if r["lr"] == lr) for lr in FULL_LRS}
    best = min(val, key=lambda lr: (-val[lr], lr))  # mean validation macro-F1 over the seeds, ties to the smaller
    assert study["rows"]["full"]["lr"] == pytest.approx(best)
    assert [r["chosen"] for r in full_runs] == [r["lr"] == best for r in full_runs]
    assert set(study["rows"]["full"]["val_macro_f1_by_lr"]) == {f"{lr:g}" for lr in FULL_LRS}
    for name in ("full", "lora_r2", "lora_r4"):
        row = study["rows"][name]
        assert row["seeds"] == list(SEEDS) and len(row["macro_f1"]["per_seed"]) == len(SEEDS)
        assert row["macro_f1"]["covers"] == "method"  # 2 seeds: seeds and test examples
        assert len(row["degenerate_val"]) == len(SEEDS) and len(row["converged"]) == len(SEEDS)
        assert row["macro_f1"]["low"] <= row["macro_f1"]["mean"] <= row["macro_f1"]["high"]
    assert study["rows"]["lora_r4"]["vs_full"]["verdict"] in ("better", "worse", "indistinguishable")
    assert {s["rank"] for s in study["spectra"]} == set(RANKS) and study["subspace"]
    assert all(len(layer["singular_values"]) == s["rank"] for s in study["spectra"] for layer in s["layers"].values())
    curve = pd.read_csv(repo / "metrics/rank_curve.csv")
    assert list(curve["rank"]) == list(RANKS)
    assert sorted(p.stem for p in (repo / "metrics/predictions").glob("*.csv")) == \
        sorted(["scratch", "full", study["record"], "tfidf_logreg"])
    # the committed form of a study: the record rebuilds the same study.json
    from lora_pipeline.record import build_study, read_record

    rebuilt = json.loads(json.dumps(build_study(read_record(repo / "metrics/record.json.gz")).to_json()))
    assert rebuilt["answer"] == study["answer"] and rebuilt["rows"] == study["rows"]


def test_report_holds_the_answer_and_both_figures(repo):
    repo, env = repo
    study = json.loads((repo / "metrics/study.json").read_text())
    report = (repo / "reports/report.md").read_text()
    assert study["answer"]["sentence"] in report
    for figure in ("rank_curve.png", "spectra.png", "curves.png"):
        assert f"figures/{figure}" in report and (repo / "reports/figures" / figure).stat().st_size > 5000, figure
    assert (repo / "reports/validation/index.html").is_file()
    shown = json.loads(run(["dvc", "plots", "show", "--json"], repo, env).stdout)
    assert not shown.get("errors"), shown.get("errors")
    (rank_plot,) = [v for k, v in shown["data"].items() if k.startswith("test macro-F1 against LoRA rank")]
    assert {row["rank"] for row in rank_plot[0]["content"]["data"]["values"]} == {str(r) for r in RANKS}
    assert any(k.endswith("/steps.csv") for k in shown["data"]) and any(k.endswith("/evals.csv") for k in shown["data"])


def test_the_study_pick_is_registered_promoted_once_committed_and_predict_serves_logged_models(repo):
    """On the real DAG: evaluate registered the study's pick without moving an alias (or, when every row is
    degenerate, nothing); once dvc.lock is committed, ``lora-pipeline promote`` points the alias at it; the console
    script predicts with an MLflow model URI what the directory predicts."""
    from mlflow import MlflowClient

    from lora_pipeline.answer import registry_pick
    from lora_pipeline.study_file import read_study

    repo, env = repo
    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    study = read_study(repo / "metrics/study.json")
    name, _ = registry_pick(study.rows, study.answer.rank)
    if name is None:  # 30 steps of a tiny random BERT: often every row is degenerate
        assert not client.search_model_versions("name = 'lora-pipeline-classifier'")
        train_run = client.search_runs([client.get_experiment_by_name("lora-pipeline").experiment_id],
                                 "tags.stage = 'train_lora'")[0]
        uri, folder = train_run.data.tags["model_uri"], repo / "models" / "lora" / train_run.data.params["run.tag"]
    else:
        assert client.get_registered_model("lora-pipeline-classifier").aliases == {}
        run(["git", "add", "-A"], repo, env)
        run(["git", "commit", "-qm", "the run to promote", "--allow-empty"], repo, env)
        said = run([str(BIN / "lora-pipeline"), "promote"], repo, env).stdout
        tags = client.get_model_version_by_alias("lora-pipeline-classifier", "champion").tags
        assert said.startswith("lora-pipeline-classifier@champion: version ")
        assert (f"lora_r{tags['rank']}" if tags["variant"] == "lora" else tags["variant"]) == name
        uri, folder = "models:/lora-pipeline-classifier@champion", repo / "models" / tags["variant"] / tags["tag"]
    texts = ["a first text", "and a second one"]
    by_uri = run([str(BIN / "lora-pipeline"), "predict", uri, *texts], repo, env).stdout
    by_dir = run([str(BIN / "lora-pipeline"), "predict", str(folder), *texts], repo, env).stdout
    assert by_uri == by_dir and len(by_uri.splitlines()) == 3


def test_trained_lora_round_trips_through_peft(repo, tmp_path):
    """A trained adapter, exported to peft's format, gives peft's PeftModel the logits of our merged model."""
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
    adapter = repo / "models/lora" / _lora_tag(4, 1)
    ours = build_model("full", params.model, labels, tokenizer)
    load_adapter(ours, adapter)
    export_peft(ours, tmp_path / "peft", base_model_name=params.model.name)
    theirs = peft.PeftModel.from_pretrained(build_model("full", params.model, labels, tokenizer), tmp_path / "peft")
    merged = load_trained("lora", adapter, params.model, labels, tokenizer)
    batch = tokenizer(["great wonderful film", "dull tedious story", "detective village heist"], padding=True,
                      return_tensors="pt")
    with torch.no_grad():
        expected = merged.eval()(**batch).logits
        torch.testing.assert_close(theirs.eval()(**batch).logits, expected, atol=1e-5, rtol=1e-5)


def test_second_repro_is_a_noop(repo):
    repo, env = repo
    proc = run(["dvc", "repro"], repo, env)
    assert "Running stage" not in proc.stdout, proc.stdout
    status = run(["dvc", "status"], repo, env)
    assert "up to date" in status.stdout


def test_a_fresh_clone_pulls_from_a_dvc_remote_and_retrains_nothing(repo, tmp_path):
    """A DVC remote: push the run from one clone to a local-directory remote; a second clone that
    `dvc pull`s is up to date and its `dvc repro` runs nothing."""
    repo, env = repo
    run(["dvc", "remote", "add", "--default", "--force", "shared", str(tmp_path / "remote")], repo, env)
    run(["dvc", "push", "--run-cache"], repo, env)
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-qm", "run of record, remote"], repo, env)
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], tmp_path, env)
    clone_env = {**env, "PYTHONPATH": str(clone)}
    run(["dvc", "pull"], clone, clone_env)
    assert (clone / "models" / "lora" / _lora_tag(RANKS[0], SEEDS[0]) / "adapter.safetensors").is_file()
    assert "up to date" in run(["dvc", "status"], clone, clone_env).stdout
    assert ran(run(["dvc", "repro"], clone, clone_env)) == set()
    run(["dvc", "remote", "remove", "shared"], repo, env)  # leave the fixture repo as the other tests expect
    run(["git", "commit", "-qam", "no remote"], repo, env)


def test_editing_the_data_file_reruns_ingest(repo):
    """`data.path` is a DVC dependency of ingest (dvc.yaml: ${data.path}): DVC sees a user's file change."""
    repo, env = repo
    path = Path(yaml.safe_load((repo / "params.yaml").read_text())["data"]["path"])
    original = path.read_bytes()
    try:
        path.write_bytes(original + b"a brand new review,pos\n")
        status = run(["dvc", "status"], repo, env).stdout
        assert "ingest:" in status and str(path) in status, status
    finally:
        path.write_bytes(original)
    assert "up to date" in run(["dvc", "status"], repo, env).stdout


def test_bytecode_does_not_change_dvc_status(repo):
    """Code directories are DVC dependencies; bytecode comes and goes (a fresh checkout has none, an ordinary
    `import` writes it, a `touch` rewrites it) and must never make DVC think the code changed."""
    repo, env = repo
    for cache in repo.rglob("__pycache__"):
        shutil.rmtree(cache)
    assert "up to date" in run(["dvc", "status"], repo, env).stdout
    for source in (repo / "lora_pipeline").rglob("*.py"):
        source.touch()
    run([sys.executable, "-c", "import stages.train_lora, stages.evaluate, stages.report, stages.split, "
          "stages.validate, stages.ingest"], repo, env)
    assert list((repo / "lora_pipeline" / "lora").glob("__pycache__/*.pyc")), "no bytecode was written"
    status = run(["dvc", "status"], repo, env)
    assert "up to date" in status.stdout, status.stdout


def test_retraining_with_other_timings_changes_only_dvc_lock(repo):
    """A reproduction on another machine takes other seconds and memory. Retraining one instance (same seed and
    data, another clock) and rerunning evaluate and report leaves Git with dvc.lock alone changed, and
    `dvc metrics diff` with no timing key: the run files are cached outs, the one metrics file holds quality only."""
    repo, env = repo
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-qm", "a run", "--allow-empty"], repo, env)
    stage = _lora_stage(RANKS[0], SEEDS[0])
    assert ran(run(["dvc", "repro", "--force", "--single-item", stage], repo, env)) == {stage}
    assert "evaluate" in ran(run(["dvc", "repro"], repo, env))  # its run file, an input of evaluate, changed
    changed = {line[3:] for line in run(["git", "status", "--porcelain"], repo, env).stdout.splitlines()}
    assert changed <= {"dvc.lock"}, changed
    diff = json.loads(run(["dvc", "metrics", "diff", "--json"], repo, env).stdout)
    assert set(diff) <= {"metrics/evaluate.json"}, diff
    assert not [k for moved in diff.values() for k in moved if re.search("second|memory|per_s", k)], diff


def test_adding_a_rank_trains_only_its_instances(repo):
    repo, env = repo
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-qm", "baseline run", "--allow-empty"], repo, env)
    proc = run(["dvc", "exp", "run", "-S", "study.ranks=[2,4,8]"], repo, env)
    assert ran(proc) == {_lora_stage(8, s) for s in SEEDS} | {"evaluate", "report"}, proc.stdout
    assert "up to date" in run(["dvc", "status"], repo, env).stdout
    diff = json.loads(run(["dvc", "metrics", "diff", "--json"], repo, env).stdout)
    moved = diff["metrics/evaluate.json"]
    assert moved["lora_r8.macro_f1"]["old"] is None and moved["lora_r8.macro_f1"]["new"] > 0, moved
    assert set(diff) == {"metrics/evaluate.json"}  # the one DVC metrics file
    shown = json.loads(run(["dvc", "exp", "show", "--json"], repo, env).stdout)
    assert [2, 4, 8] in exp_values(shown, "ranks")
    # README's comparison table fits an ordinary terminal; DVC drops what does not fit without a mark, so every
    # column must be there at 120 columns (the whole `dvc exp show` is thousands of characters wide)
    table = run(readme_compare_command(), repo, {**env, "COLUMNS": "120"}).stdout
    assert max(len(line) for line in table.splitlines()) <= 120, table
    header = next(line for line in table.splitlines() if "Experiment" in line).split()
    assert header == ["Experiment", "answer_rank", *(f"lora_r{r}.vs_full" for r in (2, 4, 8)), "study.seeds"], table
    assert sum(f"{list(SEEDS)}" in line for line in table.splitlines()) >= 3, table  # workspace, baseline, experiment


def test_removing_a_rank_drops_it_without_training(repo):
    repo, env = repo
    proc = run(["dvc", "exp", "run", "-S", "study.ranks=[2]"], repo, env)
    assert ran(proc) == {"evaluate", "report"}, proc.stdout
    evaluate = json.loads((repo / "metrics/evaluate.json").read_text())
    assert "lora_r2" in evaluate and "lora_r4" not in evaluate and "lora_r8" not in evaluate
    assert "rank 4" not in (repo / "reports/report.md").read_text().split("##")[0]


def test_adding_a_target_set_trains_only_its_instances(repo):
    """`study.target_sets` is a list like the ranks: adding all_linear (defined in the project's lora.target_sets)
    trains one instance per rank and seed of the new set; every instance of the default set stays up to date, and
    the experiment's metrics hold the new rows' difference from full fine-tuning."""
    repo, env = repo
    ranks = yaml.safe_load((repo / "params.yaml").read_text())["study"]["ranks"]  # what the tests before left
    proc = run(["dvc", "exp", "run", "-S", "study.target_sets=[default,all_linear]"], repo, env)
    assert ran(proc) == {_lora_stage(r, s, "all_linear") for r in ranks for s in SEEDS} | {"evaluate", "report"}, \
        proc.stdout
    assert "up to date" in run(["dvc", "status"], repo, env).stdout
    shown = json.loads(run(["dvc", "exp", "show", "--json"], repo, env).stdout)
    assert ["default", "all_linear"] in exp_values(shown, "target_sets")
    evaluate = json.loads((repo / "metrics/evaluate.json").read_text())
    for rank in ranks:
        assert isinstance(evaluate[f"lora_r{rank}_all_linear"]["vs_full"], float), evaluate
        assert isinstance(evaluate[f"lora_r{rank}"]["vs_full"], float), evaluate
    diff = json.loads(run(["dvc", "metrics", "diff", "--json"], repo, env).stdout)["metrics/evaluate.json"]
    assert diff[f"lora_r{ranks[0]}_all_linear.vs_full"]["old"] is None, diff


def test_a_rank_seen_before_is_restored_from_the_run_cache(repo):
    """Rank 8 was trained by an earlier experiment: adding it to the baseline, whose dvc.lock never had it, restores
    its instances from the run-cache without training. (Its outputs are DVC-cached: while the workspace's dvc.lock
    still lists them, they are simply checked out.)"""
    repo, env = repo
    run(["git", "checkout", "--", "params.yaml", "dvc.lock"], repo, env)
    proc = run(["dvc", "exp", "run", "-S", "study.ranks=[2,4,8]"], repo, env)
    assert not {n for n in ran(proc) if n.startswith("train_")}, proc.stdout
    assert f"Stage '{_lora_stage(8, 1)}' is cached - skipping run" in proc.stdout, proc.stdout


def test_a_failed_stage_is_recovered_from_the_run_cache(repo):
    """DVC deletes a stage's outs before running it, so a bad value costs the last good outputs; restoring the
    params and running `dvc repro` brings them back from the run-cache without training."""
    repo, env = repo
    run(["git", "checkout", "--", "params.yaml"], repo, env)
    # back to the baseline: no training (evaluate may rerun: models/ also holds rank 8's files, which it ignores)
    assert not {n for n in ran(run(["dvc", "repro"], repo, env)) if n.startswith("train_")}
    lora_model = repo / "models" / "lora" / _lora_tag(2, 1)
    before = sorted(p.name for p in lora_model.iterdir())
    failed = subprocess.run(["dvc", "exp", "run", "-S", "lora.alpha=0"], cwd=repo, env=env, capture_output=True,
                            text=True, timeout=900)
    assert failed.returncode != 0
    assert "'lora.alpha' must be > 0" in failed.stdout + failed.stderr
    run(["git", "checkout", "--", "params.yaml"], repo, env)
    proc = run(["dvc", "repro"], repo, env)
    assert not {n for n in ran(proc) if n.startswith("train_")}, proc.stdout
    assert sorted(p.name for p in lora_model.iterdir()) == before
    assert "up to date" in run(["dvc", "status"], repo, env).stdout


def test_queued_rank_grid_logs_every_run_to_one_mlflow_store(repo):
    """`dvc exp run --queue` runs in temporary copies; the default SQLite store must still be the repo's, and two
    workers that find no store yet must not lose a run while both create MLflow's schema."""
    repo, env = repo
    repo_env_uri = env["MLFLOW_TRACKING_URI"]
    env = {k: v for k, v in env.items() if k != "MLFLOW_TRACKING_URI"}
    assert not (repo / "mlflow.db").exists()
    run(["git", "add", "-A"], repo, env)  # queued runs start from HEAD: it must hold the baseline's dvc.lock
    run(["git", "commit", "-qm", "baseline for the queue", "--allow-empty"], repo, env)
    for rank in (3, 16):  # ranks never trained before, one experiment each
        run(["dvc", "exp", "run", "--queue", "-S", f"study.ranks=[{rank}]"], repo, env)
    run(["dvc", "queue", "start", "-j", "2"], repo, env)  # two workers write one SQLite store
    deadline = time.time() + 600
    while time.time() < deadline:
        status = run(["dvc", "queue", "status"], repo, env).stdout
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(3)
    assert "Failed" not in status, run(["dvc", "queue", "logs", status.split()[-1]], repo, env).stdout
    names = exp_names_by_rank(json.loads(run(["dvc", "exp", "show", "--json"], repo, env).stdout))
    assert {3, 16} <= set(names)
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("lora-pipeline").experiment_id])
    for rank in (3, 16):
        stages = {r.data.tags.get("stage") for r in runs if r.data.tags.get("dvc_exp_name") == names[rank]}
        # every stage that the new rank feeds ran (no run-cache entry exists for it) and logged its run; no
        # checkpoint dir (not a DVC out) forces train_scratch/train_full to rerun in the temporary copy
        assert stages == {"train_lora", "evaluate", "report"}, (rank, [(r.data.tags) for r in runs])
    lora_runs = [r for r in runs if r.data.tags.get("stage") == "train_lora"]
    assert sorted(r.data.tags["lora_rank"] for r in lora_runs) == ["16", "16", "3", "3"]  # two seeds each
    assert {r.data.tags["seed"] for r in lora_runs} == {str(s) for s in SEEDS}
    assert all(r.info.status == "FINISHED" for r in runs)
    fixture_store = MlflowClient(tracking_uri=repo_env_uri)  # where the fixture's own repro logged
    original = fixture_store.search_runs([fixture_store.get_experiment_by_name("lora-pipeline").experiment_id])
    assert [r for r in original if r.data.tags.get("stage") == "train_lora" and r.data.tags.get("lora_rank") == "4"]


def test_experiments_in_the_workspace_and_in_the_queue_never_move_the_alias(repo):
    """After the workspace `dvc exp run`s and the queued experiments above, the alias points where `lora-pipeline
    promote` put it (a version no experiment registered), or nowhere; the queue's own store has no alias at all."""
    from mlflow import MlflowClient

    repo, env = repo
    for uri in (env["MLFLOW_TRACKING_URI"], f"sqlite:///{repo / 'mlflow.db'}"):
        client = MlflowClient(tracking_uri=uri)
        for model in client.search_registered_models():
            for alias, version in model.aliases.items():
                assert uri == env["MLFLOW_TRACKING_URI"], (uri, model.name, alias)
                assert not client.get_model_version(model.name, version).tags.get("dvc_exp_name"), (model.name, alias)
