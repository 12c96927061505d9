"""tracking: runs are named and tagged so a grid can be told apart, and artifacts follow a moved store."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname

import pytest

from lora_pipeline.config import MlflowConfig
from lora_pipeline.tracking import MlflowTracker, log_stage_run, run_display_name
from tests.support.builders import initialised_store


def _runs(uri: str, experiment: str) -> list:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    return [] if exp is None else client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])


def _local(uri: str) -> Path:
    assert uri.startswith("file:"), uri
    return Path(url2pathname(urlsplit(uri).path))


# ------------------------------------------------------------------------------------- run names


@pytest.mark.parametrize("stage, tags, exp_name, expected", [
    ("train_lora", {"stage": "train_lora", "variant": "lora", "lora_rank": 8, "seed": 42}, "exp-a",
     "train_lora r8 s42 [exp-a]"),
    ("train_lora", {"variant": "lora", "lora_rank": 2, "seed": 7}, None, "train_lora r2 s7"),
    ("train_full", {"variant": "full", "seed": 0}, None, "train_full s0"),  # seed 0 is a seed
    ("train_full", {"variant": "full", "seed": 1, "lr": 5e-05}, None, "train_full s1 lr5e-05"),  # lr grid points
    ("train", {"variant": "scratch"}, None, "train scratch"),
    ("evaluate", {"stage": "evaluate"}, "exp-b", "evaluate [exp-b]"),
    ("report", {}, None, "report"),
])
def test_run_names_carry_variant_rank_seed_and_experiment(monkeypatch, stage, tags, exp_name, expected):
    if exp_name:
        monkeypatch.setenv("DVC_EXP_NAME", exp_name)
    assert run_display_name(stage, tags) == expected


def test_two_lora_runs_of_a_grid_are_told_apart_in_the_store(monkeypatch, tmp_path):
    uri = initialised_store(tmp_path / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    for rank, exp_name in ((2, "exp-r2"), (8, "exp-r8")):
        monkeypatch.setenv("DVC_EXP_NAME", exp_name)
        MlflowTracker(MlflowConfig(experiment="grid"), "train_lora",
                      {"stage": "train_lora", "variant": "lora", "lora_rank": rank, "seed": 42}).close()
    runs = _runs(uri, "grid")
    assert [r.info.run_name for r in runs] == ["train_lora r2 s42 [exp-r2]", "train_lora r8 s42 [exp-r8]"]
    assert [r.data.tags["dvc_exp_name"] for r in runs] == ["exp-r2", "exp-r8"]


def test_evaluate_and_report_runs_are_tagged_with_stage_experiment_and_commit(monkeypatch, tmp_path):
    uri = initialised_store(tmp_path / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("DVC_EXP_NAME", "exp-r8")
    cfg = MlflowConfig(experiment="tagged")
    log_stage_run(cfg, "evaluate", metrics={"lora.macro_f1": 0.5}, tags={"seed": 42})
    log_stage_run(cfg, "report", metrics={"test_macro_f1.lora": 0.5})
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    evaluate, report = _runs(uri, "tagged")
    assert evaluate.info.run_name == "evaluate s42 [exp-r8]" and report.info.run_name == "report [exp-r8]"
    for run, stage in ((evaluate, "evaluate"), (report, "report")):
        assert run.data.tags["stage"] == stage and run.data.tags["dvc_exp_name"] == "exp-r8"
        assert run.data.tags["git_commit"] == head and len(head) == 40
        assert run.info.status == "FINISHED"
    assert evaluate.data.tags["seed"] == "42"


# ------------------------------------------------------------------------------- moved stores


def _log_file_run(monkeypatch, uri: str, tmp_path: Path, name: str) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    (tmp_path / f"{name}.json").write_text('{"n": 1}')
    tracker = MlflowTracker(MlflowConfig(experiment="moved"), name, {"stage": name})
    tracker.log_artifact(tmp_path / f"{name}.json")
    tracker.close()
    assert tracker._error is None


def test_a_copied_or_moved_store_keeps_artifacts_beside_itself(monkeypatch, tmp_path):
    original = tmp_path / "original"
    _log_file_run(monkeypatch, initialised_store(original / "mlflow.db"), tmp_path, "first")
    (first,) = _runs(f"sqlite:///{original / 'mlflow.db'}", "moved")
    assert (_local(first.info.artifact_uri) / "first.json").is_file()
    assert _local(first.info.artifact_uri).is_relative_to(original / "mlartifacts")

    shutil.copytree(original, tmp_path / "copy")  # store and artifacts: `cp -r` of a project
    (tmp_path / "bare").mkdir()
    shutil.copy(original / "mlflow.db", tmp_path / "bare")  # the store alone
    for folder in ("copy", "bare"):
        _log_file_run(monkeypatch, f"sqlite:///{tmp_path / folder / 'mlflow.db'}", tmp_path, "second")
        old, new = _runs(f"sqlite:///{tmp_path / folder / 'mlflow.db'}", "moved")
        assert _local(new.info.artifact_uri).is_relative_to(tmp_path / folder / "mlartifacts"), folder
        assert (_local(new.info.artifact_uri) / "second.json").is_file()
        # an earlier run points beside the copy when its artifacts came along, else still at the original
        where = tmp_path / folder if folder == "copy" else original
        assert _local(old.info.artifact_uri).is_relative_to(where / "mlartifacts"), folder
        assert (_local(old.info.artifact_uri) / "first.json").is_file()
    # the original store is untouched: its runs and new ones stay in its own folder
    _log_file_run(monkeypatch, f"sqlite:///{original / 'mlflow.db'}", tmp_path, "third")
    runs = _runs(f"sqlite:///{original / 'mlflow.db'}", "moved")
    assert [r.info.run_name for r in runs] == ["first", "third"]
    assert all(_local(r.info.artifact_uri).is_relative_to(original / "mlartifacts") for r in runs)
    assert not list((original / "mlartifacts").rglob("second.json"))
