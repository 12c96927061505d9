"""The evaluate stage registers the study's pick as a new Model Registry version tagged with what identifies its run
(git commit, DVC experiment, study md5, evaluate run), and never moves an alias: not under ``dvc repro``, not under
``dvc exp run`` (workspace, ``--temp`` or queued: DVC sets ``DVC_EXP_NAME`` in each)."""

from __future__ import annotations

import hashlib

import pytest

from tests.support.chains import evaluate_args, run_chain

REGISTERED = "evaluate-registry-test"


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, tiny_model_dir):
    return run_chain(tmp_path_factory, tiny_model_dir, {"mlflow.experiment": "evaluate-registry-test",
                                                         "mlflow.registered_model": REGISTERED})


@pytest.mark.parametrize("exp_name", [None, "exp-rank4"], ids=["dvc-repro", "dvc-exp-run"])
def test_evaluate_registers_a_tagged_version_and_leaves_the_alias_where_it_was(pipeline, monkeypatch, exp_name):
    import mlflow

    from lora_pipeline import answer
    from stages import evaluate

    base, params, codes, uri = pipeline
    client = mlflow.MlflowClient(tracking_uri=uri)
    if not client.search_registered_models(f"name = '{REGISTERED}'"):
        client.create_registered_model(REGISTERED)
    served = client.create_model_version(REGISTERED, "file:///nowhere/model", tags={"rank": "8"}).version
    client.set_registered_model_alias(REGISTERED, "champion", served)
    monkeypatch.setattr(answer, "registry_pick", lambda rows, rank: ("lora_r4", "the study's answer"))
    if exp_name:
        monkeypatch.setenv("DVC_EXP_NAME", exp_name)
    assert evaluate.main(evaluate_args(base, params, base / "split")) == 0
    newest = max(client.search_model_versions(f"name = '{REGISTERED}'"), key=lambda v: int(v.version))
    assert int(newest.version) > int(served)
    study_md5 = hashlib.md5((base / "metrics" / "study.json").read_bytes()).hexdigest()
    assert newest.tags["study_md5"] == study_md5 and newest.tags["rank"] == "4" and newest.tags.get("evaluate_run_id")
    assert newest.tags.get("dvc_exp_name") == exp_name and "git_commit" in newest.tags
    assert client.get_registered_model(REGISTERED).aliases == {"champion": served}
