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


def test_with_test_every_run_each_run_keeps_its_test_predictions_and_the_choice_stays_on_validation(pipeline,
                                                                                                    tmp_path):
    """A part of a study that another part may outvote keeps the test predictions of its runs that were not chosen,
    so a merged record can score whichever rate the whole study chooses; the choice itself reads validation only."""
    import json
    import shutil

    import yaml

    from lora_pipeline.record import read_record
    from stages import evaluate
    from tests.support.builders import LRS
    from tests.support.chains import RANKS, instance_paths

    base, params, _, _ = pipeline
    work = tmp_path / "work"
    shutil.copytree(base, work, ignore=shutil.ignore_patterns("checkpoints", "mlruns", "*.db"))
    other = LRS["lora"] * 2
    for rank in RANKS:  # the same models under a larger rate: equal on validation, so the smaller rate is chosen
        src = instance_paths(work, "lora", rank)
        tag = src["out"].name.replace(f"lr{LRS['lora']}", f"lr{other}")
        shutil.copytree(src["out"], src["out"].with_name(tag))
        shutil.copytree(src["curve"], src["curve"].with_name(tag))
        shutil.copy(src["predictions"], src["predictions"].with_name(f"{tag}.csv"))
        run = json.loads(src["metrics"].read_text()) | {"lr": other, "tag": tag}
        src["metrics"].with_name(f"lora-{tag}.json").write_text(json.dumps(run))
    cfg = yaml.safe_load(params.read_text())
    cfg["study"].update(lora_lrs=[LRS["lora"], other], test_every_run=True)
    cfg["mlflow"]["enabled"] = False
    (work / "params.yaml").write_text(yaml.safe_dump(cfg))
    assert evaluate.main(evaluate_args(work, work / "params.yaml", work / "split")) == 0
    record = read_record(work / "metrics" / "record.json.gz")
    lora = {r["tag"]: r for r in record["runs"] if r["variant"] == "lora"}
    assert len(lora) == 2 * len(RANKS) and all(r["test_predictions"] is not None for r in lora.values())
    for tag, run in lora.items():  # a copy scores on test exactly as its original
        assert run["test_predictions"] == lora[tag.replace(f"lr{other}", f"lr{LRS['lora']}")]["test_predictions"]
    assert sorted(s["tag"] for s in record["spectra"]) == sorted(lora)
    study = json.loads((work / "metrics" / "study.json").read_text())
    assert all(study["rows"][f"lora_r{rank}"]["lr"] == LRS["lora"] for rank in RANKS)
    assert all(s["small_tag"] in lora and s["large_tag"] in lora for s in study["subspace"])
