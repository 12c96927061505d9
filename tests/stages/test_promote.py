"""``lora-pipeline promote``: the registry alias moves only by this command, only to a version registered by the run
that the checked-out commit's ``dvc.lock`` records, and it says from which version to which.

Versions are created directly in a fresh SQLite store (their source is never loaded); the project is a temporary git
repository whose ``dvc.lock`` lists the evaluate stage's study file by md5, as DVC writes it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from lora_pipeline import cli
from tests.support.builders import ROOT, initialised_store

NAME, ALIAS = "promote-test", "champion"
COMMITTED, EXPERIMENT = "a" * 32, "b" * 32  # study md5s: of the committed run, of a `dvc exp run`


def _git(root: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=root, check=True,
                   capture_output=True)


def _write_params(root: Path, alias: str) -> None:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["mlflow"].update(registered_model=NAME, alias=alias)
    (root / "params.yaml").write_text(yaml.safe_dump(params))


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A committed project whose dvc.lock records the study with md5 COMMITTED; returns (root, client)."""
    import mlflow

    root = tmp_path / "project"
    root.mkdir()
    _write_params(root, ALIAS)
    lock = {"schema": "2.0", "stages": {"evaluate": {"cmd": "python -m stages.evaluate", "outs": [
        {"path": "metrics/study.json", "hash": "md5", "md5": COMMITTED, "size": 10}]}}}
    (root / "dvc.lock").write_text(yaml.safe_dump(lock))
    _git(root, "init", "-q")
    _git(root, "add", ".")
    _git(root, "commit", "-qm", "run")
    uri = initialised_store(tmp_path / "store" / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(root)
    client = mlflow.MlflowClient(tracking_uri=uri)
    client.create_registered_model(NAME)
    return root, client


def _version(client, study_md5: str, **tags) -> str:
    tags = {"variant": "lora", "rank": "8", "study_md5": study_md5, **tags}
    return str(client.create_model_version(NAME, "file:///nowhere/model", tags=tags).version)


def _alias(client) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(NAME, ALIAS).version)
    except MlflowException:
        return None


def _promote(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(["promote", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_promote_moves_the_alias_to_the_newest_version_of_the_committed_run_and_says_from_which(project, capsys):
    root, client = project
    first = _version(client, COMMITTED)
    code, out, err = _promote(capsys)
    assert code == 0, err
    assert _alias(client) == first and f"{NAME}@{ALIAS}: version {first} (variant lora rank 8" in out
    assert "newly set" in out
    second = _version(client, COMMITTED, rank="4")
    _version(client, EXPERIMENT)  # newer, but an experiment's
    code, out, err = _promote(capsys)
    assert code == 0, err
    assert _alias(client) == second and out.strip().endswith(f"from version {first}")


def test_promote_refuses_an_experiments_version_with_one_line_and_exit_2(project, capsys):
    root, client = project
    committed = _version(client, COMMITTED)
    experiment = _version(client, EXPERIMENT, dvc_exp_name="exp-1")
    assert _promote(capsys)[0] == 0
    code, out, err = _promote(capsys, "--version", experiment)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert f"version {experiment} is not from the run committed at" in err and "dvc exp apply" in err
    assert _alias(client) == committed


def test_promote_picks_nothing_when_only_experiments_registered_versions(project, capsys):
    root, client = project
    _version(client, EXPERIMENT, dvc_exp_name="exp-1")
    code, out, err = _promote(capsys)
    assert code == 2 and "no version of 'promote-test' comes from the run committed at" in err
    assert "`dvc repro`, commit dvc.lock" in err and _alias(client) is None


def test_promote_refuses_a_working_tree_with_uncommitted_changes(project, capsys):
    root, client = project
    _version(client, COMMITTED)
    _write_params(root, "other")
    code, out, err = _promote(capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "uncommitted changes (params.yaml)" in err and "git commit" in err
    assert _alias(client) is None


def test_promote_takes_an_explicit_version_of_the_committed_run_and_another_alias(project, capsys):
    root, client = project
    first = _version(client, COMMITTED)
    _version(client, COMMITTED)
    code, out, err = _promote(capsys, "--version", first, "--alias", "staging")
    assert code == 0, err
    assert str(client.get_model_version_by_alias(NAME, "staging").version) == first and _alias(client) is None
    code, out, err = _promote(capsys, "--version", "99")
    assert code == 2 and "has no version 99" in err


def test_promote_outside_a_store_names_it_and_creates_nothing(project, capsys, monkeypatch):
    root, client = project
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    code, out, err = _promote(capsys)
    assert code == 2 and f"no MLflow store at {root / 'mlflow.db'}" in err and "MLFLOW_TRACKING_URI" in err
    assert not (root / "mlflow.db").exists()
