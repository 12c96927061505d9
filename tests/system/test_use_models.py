"""Using what the pipeline trained: self-contained model directories, ``lora-pipeline predict``, the peft export,
the merged model, the MLflow pyfunc model of every train run and the registry entry of the study's pick.

The stage chain of ``test_stages_train`` (tests/support/chains.py: tiny random BERT, MLflow on a temp SQLite store)
runs once here too.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from lora_pipeline import cli, mlflow_model
from lora_pipeline.inference import load_classifier, predict_frame
from lora_pipeline.records import CARD
from tests.support.builders import LABELS
from tests.support.chains import INSTANCES, instance_paths, run_chain
from tests.support.servers import start_mlflow_server, start_model_server
from tests.support.training import nonzero_lora_model

EVAL_BATCH = 64  # write_params' train.eval_batch_size: the evaluate stage's batches
EXPERIMENT = "use-models-test"
REGISTERED = "use-models-test-classifier"


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, tiny_model_dir):
    """The stage chain with its own experiment and registered model name (the MLflow store is session-wide)."""
    return run_chain(tmp_path_factory, tiny_model_dir, {"mlflow.experiment": EXPERIMENT,
                                                         "mlflow.registered_model": REGISTERED})


def _predict(argv: list[str], capsys) -> tuple[int, str, str]:
    code = cli.main(["predict", *argv, "--no-progress"])
    out, err = capsys.readouterr()
    return code, out, err


def _test_texts(base: Path) -> pd.DataFrame:
    return pd.read_parquet(base / "split" / "test.parquet")[["text", "label"]]


@pytest.mark.parametrize("variant, rank", INSTANCES)
def test_every_model_directory_loads_by_itself_with_its_label_names(pipeline, variant, rank):
    base, *_ = pipeline
    out = instance_paths(base, variant, rank)["out"]
    card = json.loads((out / CARD).read_text())
    assert card["labels"] == LABELS and card["variant"] == variant and card["max_length"] == 32
    assert (out / "tokenizer.json").is_file() and (out / "tokenizer_config.json").is_file()
    if variant == "lora":
        assert card["base_model"] and not (out / "model.safetensors").exists()  # the adapter only
        assert {p.name for p in (out / "peft").iterdir()} == {"adapter_config.json", "adapter_model.safetensors"}
    else:
        config = json.loads((out / "config.json").read_text())
        assert config["id2label"] == {str(i): name for i, name in enumerate(LABELS)}
    probs = load_classifier(out).predict_proba(["one text", "another, longer text to classify"])
    assert probs.shape == (2, 3) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("name", ["full", "record"])
def test_predict_on_the_test_split_equals_the_evaluate_predictions(pipeline, name, tmp_path, capsys):
    base, *_ = pipeline
    study = json.loads((base / "metrics" / "study.json").read_text())
    row = study["record"] if name == "record" else "full"
    tag = next(r["tag"] for r in study["runs"] if r["chosen"] and
               (r["variant"] == "full" if row == "full" else f"lora_r{r['rank']}" == row))
    variant = "full" if row == "full" else "lora"
    test = _test_texts(base)
    test[["text"]].to_csv(tmp_path / "test.csv", index=False)
    code, out, err = _predict([str(base / "models" / variant / tag), "--input", str(tmp_path / "test.csv"),
                               "--batch-size", str(EVAL_BATCH)], capsys)
    assert code == 0, err
    got = pd.read_csv(io.StringIO(out))
    expected = pd.read_csv(base / "metrics" / "predictions" / f"{row}.csv")
    assert got["label"].tolist() == expected["predicted"].tolist()
    assert got["text"].tolist() == test["text"].tolist()
    assert list(got.columns) == ["text", "label"] + [f"prob_{label}" for label in LABELS]
    code, out1, _ = _predict([str(base / "models" / variant / tag), "--input", str(tmp_path / "test.csv"),
                              "--batch-size", "1"], capsys)  # other batches, other padding: the same labels
    assert code == 0 and pd.read_csv(io.StringIO(out1))["label"].tolist() == got["label"].tolist()


@pytest.mark.parametrize("kind", ["tsv", "jsonl", "parquet", "stdin", "args"])
def test_predict_reads_every_input_kind_and_writes_jsonl(pipeline, kind, tmp_path, capsys, monkeypatch):
    base, *_ = pipeline
    model = str(instance_paths(base, "full")["out"])
    texts = ["a first review", "a second, rather different review", "third"]
    frame = pd.DataFrame({"review": texts})
    source = {"tsv": lambda p: frame.to_csv(p, sep="\t", index=False), "jsonl": lambda p: frame.to_json(
        p, orient="records", lines=True), "parquet": lambda p: frame.to_parquet(p)}
    if kind in source:
        path = tmp_path / f"in.{kind}"
        source[kind](path)
        argv = [model, "--input", str(path), "--text-column", "review"]
    elif kind == "stdin":
        monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(texts) + "\n"))
        argv = [model, "--text-column", "review"]
    else:
        argv = [model, *texts, "--text-column", "review"]
    code, _, err = _predict([*argv, "--output", str(tmp_path / "out.jsonl")], capsys)
    assert code == 0, err
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    expected = predict_frame(load_classifier(model), frame, text_column="review")
    assert [r["review"] for r in rows] == texts
    assert [r["label"] for r in rows] == expected["label"].tolist()
    assert np.allclose([[r[f"prob_{x}"] for x in LABELS] for r in rows], expected.filter(like="prob_"), atol=1e-6)


def test_predict_refuses_bad_input_in_one_line_with_exit_code_2(pipeline, tmp_path, capsys):
    base, *_ = pipeline
    model = str(instance_paths(base, "lora", INSTANCES[-1][1])["out"])
    pd.DataFrame({"review": ["fine", "  ", "good"]}).to_csv(tmp_path / "blank.csv", index=False)
    pd.DataFrame({"body": ["fine"]}).to_csv(tmp_path / "other.csv", index=False)
    (tmp_path / "nocard").mkdir()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / CARD).write_text(json.dumps({"format": "lora-pipeline-classifier", "variant": "full"}))
    cases = {
        "missing column": ([model, "--input", str(tmp_path / "other.csv")], "no column 'text'"),
        "empty text": ([model, "--input", str(tmp_path / "blank.csv"), "--text-column", "review"],
                       "empty text in row 2"),
        "no such dir": ([str(tmp_path / "nowhere"), "x"], "no such directory"),
        "not a model dir": ([str(tmp_path / "nocard"), "x"], "no classifier.json"),
        "no label map": ([str(broken), "x"], "label map is missing"),
        "unknown suffix": ([model, "--input", str(tmp_path / "blank.xlsx")], "unknown suffix"),
        "missing file": ([model, "--input", str(tmp_path / "nofile.csv")], "no such file"),
        "pairs to a single-text model": ([model, "x", "--pair-column", "text"], "trained on single texts"),
    }
    for what, (argv, needle) in cases.items():
        code, out, err = _predict(argv, capsys)
        assert code == 2 and out == "", what
        assert needle in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, (what, err)


def test_the_peft_export_loads_with_peft_alone_to_the_same_logits(tiny_model_dir, tiny_tokenizer, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    from lora_pipeline.models import save_trained

    model, lora, card = nonzero_lora_model(tiny_model_dir, tiny_tokenizer)
    save_trained("lora", model, tiny_tokenizer, tmp_path / "m", card=card, lora=lora)
    base = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=3)
    peft_model = PeftModel.from_pretrained(base, tmp_path / "m" / "peft").eval()
    batch = tiny_tokenizer(["a text", "another text here"], padding=True, return_tensors="pt")
    ours = load_classifier(tmp_path / "m").model
    with torch.no_grad():
        torch.testing.assert_close(peft_model(**batch).logits, ours(**batch).logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model.eval()(**batch).logits, ours(**batch).logits, atol=1e-5, rtol=1e-5)


def test_the_merged_model_works_in_a_transformers_pipeline(tiny_model_dir, tiny_tokenizer, tmp_path):
    from transformers import pipeline as hf_pipeline

    from lora_pipeline.models import save_trained

    model, lora, card = nonzero_lora_model(tiny_model_dir, tiny_tokenizer)
    save_trained("lora", model, tiny_tokenizer, tmp_path / "m", card=card, lora=lora, save_merged=True)
    texts = ["a text", "another text here", "third one"]
    got = hf_pipeline("text-classification", model=str(tmp_path / "m" / "merged"), device="cpu")(texts)
    expected = predict_frame(load_classifier(tmp_path / "m"), pd.DataFrame({"text": texts}))
    assert [g["label"] for g in got] == expected["label"].tolist()
    assert np.allclose([g["score"] for g in got], expected.filter(like="prob_").max(axis=1), atol=1e-5)
    sizes = {p.name: p.stat().st_size for p in (tmp_path / "m").iterdir() if p.is_file()}
    merged = (tmp_path / "m" / "merged" / "model.safetensors").stat().st_size
    assert sizes["adapter.safetensors"] < merged


def test_sentence_pairs_are_tokenised_as_pairs(tiny_model_dir, tiny_tokenizer, tmp_path, capsys):
    from lora_pipeline.models import save_trained

    model, lora, card = nonzero_lora_model(tiny_model_dir, tiny_tokenizer, pairs=True)
    save_trained("lora", model, tiny_tokenizer, tmp_path / "m", card=card, lora=lora)
    frame = pd.DataFrame({"q": ["is it good?", "what time"], "a": ["it is very good", "noon"]})
    frame.to_csv(tmp_path / "pairs.csv", index=False)
    code, out, err = _predict([str(tmp_path / "m"), "--input", str(tmp_path / "pairs.csv"), "--text-column", "q",
                               "--pair-column", "a"], capsys)
    assert code == 0, err
    batch = tiny_tokenizer(frame["q"].tolist(), frame["a"].tolist(), padding=True, return_tensors="pt")
    with torch.no_grad():
        probs = torch.softmax(model.eval()(**batch).logits, dim=-1).numpy()
    got = pd.read_csv(io.StringIO(out))
    assert list(got.columns[:2]) == ["q", "a"]
    assert np.allclose(got.filter(like="prob_").to_numpy(), probs, atol=1e-5)
    code, _, err = _predict([str(tmp_path / "m"), "--input", str(tmp_path / "pairs.csv"), "--text-column", "q"],
                            capsys)
    assert code == 2 and "no column 'text_pair'" in err


# ------------------------------------------------------------------------------------------------------ MLflow


def _client(uri: str):
    import mlflow

    mlflow.set_tracking_uri(uri)
    return mlflow.MlflowClient()


def test_every_train_run_logs_its_model_and_a_lora_run_only_the_adapter(pipeline):
    import mlflow

    base, _, _, uri = pipeline
    client = _client(uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id], "tags.stage LIKE 'train_%'")
    assert len(runs) == len(INSTANCES)
    frame = pd.DataFrame({"text": ["a first review", "a second one"]})
    for run in runs:
        model_uri = run.data.tags["model_uri"]
        info = mlflow.models.get_model_info(model_uri)
        assert [c["name"] for c in info.signature.inputs.to_dict()] == ["text"]
        assert [c["name"] for c in info.signature.outputs.to_dict()] == ["label"] + [f"prob_{x}" for x in LABELS]
        local = Path(mlflow.artifacts.download_artifacts(model_uri))
        weights = {p.name for p in local.rglob("*.safetensors")}
        variant = run.data.tags["variant"]
        assert weights == ({"adapter.safetensors", "adapter_model.safetensors"} if variant == "lora"
                           else {"model.safetensors"})
        loaded = mlflow.pyfunc.load_model(model_uri)
        out_dir = base / "models" / variant / run.data.params["run.tag"]
        assert loaded.predict(frame)["label"].tolist() == \
            predict_frame(load_classifier(out_dir), frame)["label"].tolist()


def test_evaluate_registers_the_study_pick_or_says_why_not_and_moves_no_alias(pipeline):
    from lora_pipeline.answer import registry_pick
    from lora_pipeline.study_file import read_study

    base, _, _, uri = pipeline
    study = read_study(base / "metrics" / "study.json")
    name, why = registry_pick(study.rows, study.answer.rank)
    client = _client(uri)
    evaluate_run = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id],
                                      "tags.stage = 'evaluate'")[0]
    if name is None:  # the tiny random models are degenerate: nothing is registered
        assert why == "every trained model is degenerate on validation" and "registered_model" not in evaluate_run.data.tags
        assert not client.search_model_versions(f"name = '{REGISTERED}'")
        return
    (version,) = client.search_model_versions(f"name = '{REGISTERED}'")
    tags = version.tags
    assert {"variant", "rank", "seed", "lr", "test_macro_f1", "val_macro_f1", "git_commit", "selection",
            "model_digest", "study_md5", "evaluate_run_id"} <= set(tags)
    assert (f"lora_r{tags['rank']}" if tags["variant"] == "lora" else tags["variant"]) == name
    assert evaluate_run.data.tags["registered_model"] == f"{REGISTERED} v{version.version}"
    assert client.get_registered_model(REGISTERED).aliases == {}


def test_registration_logs_the_model_itself_when_no_train_run_did(tiny_model_dir, tiny_tokenizer, tmp_path, capsys,
                                                                  monkeypatch):
    import mlflow

    from lora_pipeline import mlflow_model
    from lora_pipeline.models import model_digest, save_trained, weights_files

    model, lora, card = nonzero_lora_model(tiny_model_dir, tiny_tokenizer)
    save_trained("lora", model, tiny_tokenizer, tmp_path / "m", card=card, lora=lora)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'fresh.db'}")
    empty = mlflow.MlflowClient().create_experiment("empty")  # not set_experiment: no process-wide state left
    digest = model_digest(weights_files("lora", tmp_path / "m"))
    with mlflow.start_run(experiment_id=empty) as run:
        version = mlflow_model.register_pick(mlflow, tmp_path / "m", digest, "reg-test", {"rank": 4})
    assert mlflow.MlflowClient().get_registered_model("reg-test").aliases == {}  # registering moves no alias
    mlflow_model.promote(mlflow.MlflowClient(), "reg-test", "champion", version)
    got = mlflow.MlflowClient().get_model_version_by_alias("reg-test", "champion")
    assert str(got.version) == version and got.tags["rank"] == "4" and got.run_id == run.info.run_id
    texts = pd.DataFrame({"text": ["good", "bad"]})
    expected = predict_frame(load_classifier(tmp_path / "m"), texts)["label"].tolist()
    assert mlflow.pyfunc.load_model("models:/reg-test@champion").predict(texts)["label"].tolist() == expected
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'fresh.db'}")
    code, out, err = _predict(["models:/reg-test@champion", "good", "bad"], capsys)
    assert code == 0 and pd.read_csv(io.StringIO(out))["label"].tolist() == expected, err


def test_predict_takes_an_mlflow_model_uri(pipeline, capsys, monkeypatch):
    base, _, _, uri = pipeline
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = _client(uri)
    run = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id], "tags.variant = 'lora'")[0]
    texts = ["a review", "another"]
    name = mlflow_model.model_name("lora", run.data.params["run.tag"])  # e.g. lora-r8-s42-lr0_002
    for model_uri in (run.data.tags["model_uri"], f"runs:/{run.info.run_id}/{name}"):
        code, out, err = _predict([model_uri, *texts], capsys)
        assert code == 0, err
        local = base / "models" / "lora" / run.data.params["run.tag"]
        assert pd.read_csv(io.StringIO(out))["label"].tolist() == \
            predict_frame(load_classifier(local), pd.DataFrame({"text": texts}))["label"].tolist()
    code, _, err = _predict(["models:/no-such-model@champion", "x"], capsys)
    assert code == 2 and "cannot download it from MLflow" in err


def test_a_failing_tracking_call_costs_the_stage_nothing(tmp_path):
    from lora_pipeline.config import MlflowConfig
    from lora_pipeline.tracking import MlflowTracker

    tracker = MlflowTracker(MlflowConfig(tracking_uri=f"sqlite:///{tmp_path / 'db.sqlite'}"), "x", {})

    def boom(mlflow):
        raise OSError("disk full")

    assert tracker.use("model", boom) is None
    assert tracker.use("model", lambda mlflow: 1) is None  # disabled after the first failure, counted as lost
    tracker.close()


def test_a_model_registered_on_a_tracking_server_is_served_with_the_right_labels(tiny_model_dir, tiny_tokenizer,
                                                                                  tmp_path):
    """Log and register through ``mlflow server`` (SQLite backend, proxied artifacts), then
    ``mlflow models serve -m models:/<name>@champion --env-manager local`` on 127.0.0.1, as README shows."""
    import urllib.request

    import mlflow

    from lora_pipeline import mlflow_model
    from lora_pipeline.models import model_digest, save_trained, weights_files

    model, lora, card = nonzero_lora_model(tiny_model_dir, tiny_tokenizer)
    save_trained("lora", model, tiny_tokenizer, tmp_path / "m", card=card, lora=lora)
    tracking = start_mlflow_server(tmp_path)
    texts = ["a good film", "a bad film", "something else entirely"]
    try:
        mlflow.set_tracking_uri(tracking.url)
        with mlflow.start_run(experiment_id=mlflow.MlflowClient().create_experiment("serve")):
            version = mlflow_model.register_pick(mlflow, tmp_path / "m",
                                                 model_digest(weights_files("lora", tmp_path / "m")), "serve-test", {})
            mlflow_model.promote(mlflow.MlflowClient(), "serve-test", "champion", version)
        server = start_model_server("models:/serve-test@champion", tracking.url, tmp_path / "serve.log")
        try:
            body = json.dumps({"dataframe_records": [{"text": t} for t in texts]}).encode()
            request = urllib.request.Request(f"{server.url}/invocations", data=body,
                                             headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=60) as response:
                answer = json.loads(response.read())["predictions"]
        finally:
            server.stop()
    finally:
        tracking.stop()
    expected = predict_frame(load_classifier(tmp_path / "m"), pd.DataFrame({"text": texts}))
    assert [row["label"] for row in answer] == expected["label"].tolist()
    assert np.allclose([[row[f"prob_{x}"] for x in LABELS] for row in answer], expected.filter(like="prob_"),
                       atol=1e-5)
    assert list(tracking.artifacts.rglob("adapter.safetensors"))  # the artifacts went through the server
