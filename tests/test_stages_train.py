"""Stage entry points called as ``main([...])`` on tiny fixture data: split → train_* → evaluate → report.

The whole chain runs once per module (a few seconds with a hidden-32 BERT); the tests read its outputs.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from lora_pipeline.checkpoint import DirCheckpointer
from tests.conftest import LABELS, WALL_CLOCK_KEYS, isolate_env, make_frame, restored_logging, write_clean, write_params

EXPERIMENT = "stages-test"
TRAIN_KEYS = {"val_macro_f1", "best_epoch", "epochs", "steps", "train_seconds", "samples_per_second",
              "peak_memory_mb", "trainable_params", "total_params", "trainable_percent", "size_on_disk_mb",
              "device", "precision"}


def _train_args(base: Path, variant: str, params: Path, split: Path, tag: str = "") -> list[str]:
    return ["--params", str(params), "--split", str(split), "--out", str(base / f"models{tag}" / variant),
            "--metrics", str(base / f"metrics{tag}" / f"train_{variant}.json"),
            "--curve", str(base / f"metrics{tag}" / "curves" / f"{variant}.csv"),
            "--checkpoints", str(base / f"checkpoints{tag}" / variant), "--no-progress"]


def _train(variant: str, argv: list[str]) -> int:
    from stages import train_full, train_lora, train_scratch

    return {"scratch": train_scratch, "full": train_full, "lora": train_lora}[variant].main(argv)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, tiny_model_dir):
    """Run every stage after validate once; returns (base dir, params file, {stage: exit code}, uri)."""
    from stages import evaluate, report, split

    base = tmp_path_factory.mktemp("stages")
    clean = write_clean(base / "clean", make_frame(60))
    params = write_params(base / "params.yaml", tiny_model_dir,
                          {"mlflow.experiment": EXPERIMENT, "train.checkpoint_every": 4})
    codes, seconds = {}, {}
    with pytest.MonkeyPatch.context() as mp, restored_logging():
        uri = isolate_env(mp, tmp_path_factory)
        start = time.monotonic()
        codes["split"] = split.main(["--params", str(params), "--clean", str(clean), "--out", str(base / "split"),
                                     "--metrics", str(base / "metrics" / "split.json")])
        for variant in ("scratch", "full", "lora"):
            codes[f"train_{variant}"] = _train(variant, _train_args(base, variant, params, base / "split"))
        codes["evaluate"] = evaluate.main([
            "--params", str(params), "--split", str(base / "split"), "--models", str(base / "models"),
            "--metrics", str(base / "metrics" / "evaluate.json"),
            "--predictions", str(base / "metrics" / "predictions")])
        codes["report"] = report.main([
            "--params", str(params), "--metrics-dir", str(base / "metrics"),
            "--curves", str(base / "metrics" / "curves"), "--labels", str(base / "split" / "labels.json"),
            "--report", str(base / "reports" / "report.md"), "--figures", str(base / "reports" / "figures")])
        seconds["all"] = time.monotonic() - start
    return base, params, codes, uri


def test_every_stage_exits_zero(pipeline):
    _, _, codes, _ = pipeline
    assert codes and all(code == 0 for code in codes.values()), codes


def test_split_outputs(pipeline):
    base, _, _, _ = pipeline
    assert json.loads((base / "split" / "labels.json").read_text()) == LABELS
    metrics = json.loads((base / "metrics" / "split.json").read_text())
    total = 0
    for name in ("train", "val", "test"):
        df = pd.read_parquet(base / "split" / f"{name}.parquet")
        assert {"text", "label", "input_ids", "label_id"} <= set(df.columns)
        assert metrics[f"rows_{name}"] == len(df) > 0
        assert df["input_ids"].map(len).max() <= 32  # model.max_length
        assert df["label_id"].tolist() == [LABELS.index(x) for x in df["label"]]
        total += len(df)
    assert total == 180 and metrics["n_labels"] == 3


@pytest.mark.parametrize("variant", ["scratch", "full", "lora"])
def test_train_outputs(pipeline, variant):
    base, params, _, _ = pipeline
    metrics = json.loads((base / "metrics" / f"train_{variant}.json").read_text())
    assert set(metrics) == TRAIN_KEYS
    assert metrics["epochs"] == 2 and metrics["best_epoch"] in (1, 2)
    train_rows = len(pd.read_parquet(base / "split" / "train.parquet"))
    assert metrics["steps"] == 2 * -(-train_rows // 16)
    assert 0 < metrics["trainable_params"] <= metrics["total_params"]
    assert (metrics["trainable_percent"] == 100.0) == (variant != "lora")
    assert metrics["size_on_disk_mb"] > 0 and metrics["train_seconds"] > 0
    curve = pd.read_csv(base / "metrics" / "curves" / f"{variant}.csv")
    assert list(curve.columns) == ["epoch", "train_loss", "val_macro_f1"] and curve["epoch"].tolist() == [1, 2]
    assert metrics["val_macro_f1"] == pytest.approx(curve["val_macro_f1"].max())
    out = base / "models" / variant
    assert list(out.glob("*.safetensors")) and not list(out.glob("*.bin")) and not list(out.glob("*.pt"))
    ck = base / "checkpoints" / variant
    assert not ck.exists()  # checkpoints (every 4 steps) are removed once the outputs are written


@pytest.mark.parametrize("variant", ["scratch", "full"])
def test_trained_model_reloads_and_predicts_like_at_the_end_of_training(pipeline, variant, tiny_tokenizer):
    from lora_pipeline.config import load_params
    from lora_pipeline.data.loaders import EncodedSplit
    from lora_pipeline.evaluation import macro_f1, predict
    from lora_pipeline.models import load_trained

    base, params_file, _, _ = pipeline
    params = load_params(params_file)
    model = load_trained(variant, base / "models" / variant, params.model, LABELS, tiny_tokenizer)
    assert model.config.id2label == dict(enumerate(LABELS))
    val = EncodedSplit.from_frame(pd.read_parquet(base / "split" / "val.parquet"))
    preds = predict(model, val, 64, tiny_tokenizer.pad_token_id, torch.device("cpu"))
    best = json.loads((base / "metrics" / f"train_{variant}.json").read_text())["val_macro_f1"]
    assert macro_f1(val.labels, preds, len(LABELS)) == pytest.approx(best)  # the saved weights are the best epoch's


def test_runs_are_mirrored_to_mlflow(pipeline):
    import mlflow

    _, _, codes, uri = pipeline
    client = mlflow.MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    by_stage = {r.data.tags["stage"]: r for r in runs}
    assert set(by_stage) == set(codes) and len(runs) == len(codes)
    assert all(r.info.status == "FINISHED" for r in runs)
    full = by_stage["train_full"]
    assert full.data.tags["variant"] == "full" and full.data.tags["resumed_from_step"] == "0"
    assert full.data.params["train.seed"] == "7" and full.data.params["full.epochs"] == "2"
    assert {"val_macro_f1", "trainable_params", "epoch_train_loss"} <= set(full.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(full.info.run_id)}
    assert artifacts == {"train_full.json", "full.csv"}
    assert by_stage["train_lora"].data.tags["lora_rank"] == "4"


def test_train_runs_are_tagged_with_seed_and_checkpoint_key(pipeline):
    import mlflow

    _, _, _, uri = pipeline
    client = mlflow.MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    train_runs = [r for r in runs if r.data.tags["stage"].startswith("train_")]
    assert train_runs
    for run in train_runs:
        assert run.data.tags["seed"] == "7"
        assert len(run.data.tags["checkpoint_key"]) == 16 and int(run.data.tags["checkpoint_key"], 16) >= 0
    assert len({r.data.tags["checkpoint_key"] for r in train_runs}) == len(train_runs)  # one per variant


@pytest.mark.parametrize("variant", ["scratch", "full", "lora"])
def test_the_end_of_run_summary_adds_no_point_to_the_epoch_curve(pipeline, variant):
    """Issue 11, item 9: the summary's val_macro_f1 (step-less, so step 0) used to join the per-epoch curve."""
    import mlflow

    base, _, _, uri = pipeline
    client = mlflow.MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id],
                              filter_string=f"tags.stage = 'train_{variant}'")
    metrics = json.loads((base / "metrics" / f"train_{variant}.json").read_text())
    curve = client.get_metric_history(runs[0].info.run_id, "val_macro_f1")
    assert [m.step for m in curve] == [metrics["steps"] // 2, metrics["steps"]]  # one point per epoch
    history = pd.read_csv(base / "metrics" / "curves" / f"{variant}.csv")["val_macro_f1"].tolist()
    assert [m.value for m in curve] == pytest.approx(history)
    assert runs[0].data.metrics["best_val_macro_f1"] == pytest.approx(metrics["val_macro_f1"])
    assert "val_macro_f1" in metrics and "best_val_macro_f1" not in metrics  # the DVC metrics keys stay


def test_evaluate_outputs(pipeline):
    base, _, _, _ = pipeline
    results = json.loads((base / "metrics" / "evaluate.json").read_text())
    assert set(results) == {"scratch", "full", "lora", "tfidf_logreg"}
    test_rows = len(pd.read_parquet(base / "split" / "test.parquet"))
    for name, res in results.items():
        assert {"accuracy", "macro_f1", "per_class", "confusion_matrix"} <= set(res)
        assert sum(map(sum, res["confusion_matrix"])) == test_rows
        preds = pd.read_csv(base / "metrics" / "predictions" / f"{name}.csv")
        assert list(preds.columns) == ["actual", "predicted"] and len(preds) == test_rows
        assert set(preds["actual"]) <= set(LABELS) and set(preds["predicted"]) <= set(LABELS)
        assert res["accuracy"] == pytest.approx((preds["actual"] == preds["predicted"]).mean())
    assert results["tfidf_logreg"]["macro_f1"] > 0.9  # separable by vocabulary


def test_evaluate_states_uncertainty_degenerate_models_and_the_paired_comparison(pipeline):
    base, _, _, _ = pipeline
    results = json.loads((base / "metrics" / "evaluate.json").read_text())
    for name, res in results.items():
        for metric in ("macro_f1", "accuracy"):
            assert res[f"{metric}_low"] <= res[metric] <= res[f"{metric}_high"], (name, metric)
        if name != "tfidf_logreg":
            assert res["degenerate"] is None or isinstance(res["degenerate"], str)
    diff = results["lora"]["vs_full"]
    assert diff["difference"] == pytest.approx(results["lora"]["macro_f1"] - results["full"]["macro_f1"])
    assert diff["low"] <= diff["difference"] <= diff["high"]
    assert diff["verdict"] == ("better" if diff["low"] > 0 else "worse" if diff["high"] < 0 else "indistinguishable")


def test_report_outputs(pipeline):
    base, _, _, _ = pipeline
    text = (base / "reports" / "report.md").read_text()
    for title in ("BERT from scratch", "full fine-tuning", "LoRA (ours)", "TF-IDF + logistic regression"):
        assert f"| {title} |" in text
    for name in ("curves.png", "confusion.png"):
        assert (base / "reports" / "figures" / name).read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
        assert f"](figures/{name})" in text


def test_same_seed_same_result_even_over_a_foreign_checkpoint(pipeline, tmp_path, capsys):
    """Determinism (issue 4): a second run reproduces the first; a stale checkpoint of another run is ignored."""
    base, params, _, _ = pipeline
    DirCheckpointer(tmp_path / "checkpoints2" / "full", "another-run").save({"loop": {"epoch": 1}})
    assert _train("full", _train_args(tmp_path, "full", params, base / "split", tag="2")) == 0
    err = capsys.readouterr().err  # the stage logs to stderr (run_stage replaces the root handlers)
    assert "ignoring checkpoint" in err and "resuming" not in err
    first = json.loads((base / "metrics" / "train_full.json").read_text())
    second = json.loads((tmp_path / "metrics2" / "train_full.json").read_text())
    assert {k: v for k, v in first.items() if k not in WALL_CLOCK_KEYS} == \
           {k: v for k, v in second.items() if k not in WALL_CLOCK_KEYS}
    assert (base / "metrics" / "curves" / "full.csv").read_text() == \
           (tmp_path / "metrics2" / "curves" / "full.csv").read_text()
    a, b = load_file(base / "models" / "full" / "model.safetensors"), \
        load_file(tmp_path / "models2" / "full" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("stage", ["split", "train_scratch", "train_full"])
def test_unknown_param_exits_2_naming_the_key_and_writes_nothing(tmp_path, tiny_model_dir, split_dir, capsys, stage):
    from stages import split

    key = "split.sed" if stage == "split" else "train.learning_rate"
    params = write_params(tmp_path / "params.yaml", tiny_model_dir, {key: 1})
    clean = write_clean(tmp_path / "clean", make_frame(20))
    before = set(tmp_path.iterdir())
    if stage == "split":
        rc = split.main(["--params", str(params), "--clean", str(clean), "--out", str(tmp_path / "split"),
                         "--metrics", str(tmp_path / "metrics" / "split.json")])
    else:
        rc = _train(stage.split("_")[1], _train_args(tmp_path, stage.split("_")[1], params, split_dir))
    assert rc == 2
    err = capsys.readouterr().err
    assert f"'{key}'" in err and "not a known key" in err and "Traceback" not in err
    assert set(tmp_path.iterdir()) == before  # no model, metrics, curve, checkpoint or split directory



def test_a_cuda_device_on_a_cpu_only_torch_exits_2_with_one_line(tmp_path, tiny_model_dir, split_dir, capsys,
                                                                  monkeypatch):
    """Issue 11, item 16: `train.device: cuda` without CUDA was a traceback (exit 1) after loading the model."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    params = write_params(tmp_path / "params.yaml", tiny_model_dir, {"train.device": "cuda", "mlflow.enabled": False})
    before = set(tmp_path.iterdir())
    assert _train("full", _train_args(tmp_path, "full", params, split_dir)) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    failure = [line for line in err.splitlines() if line.startswith("train_full failed:")]
    assert len(failure) == 1 and "'train.device' is 'cuda'" in failure[0] and "auto or cpu" in failure[0]
    assert set(tmp_path.iterdir()) == before


@pytest.mark.parametrize("choice", ["auto", True, False])
def test_first_token_last_layer_param_reaches_the_fit_config(choice):
    import types

    from lora_pipeline.config import FullConfig, TrainConfig
    from lora_pipeline.training import FitConfig

    params = types.SimpleNamespace(train=TrainConfig(first_token_last_layer=choice), full=FullConfig())
    assert FitConfig.from_params(params, "full", torch.device("cpu")).first_token_last_layer == choice


@pytest.mark.parametrize("choice, fast", [("fast", True), ("torch", False)])
def test_cpu_dropout_param_reaches_the_fit_config(choice, fast):
    import dataclasses
    import types

    from lora_pipeline.config import FullConfig, TrainConfig
    from lora_pipeline.training import FitConfig

    params = types.SimpleNamespace(train=TrainConfig(cpu_dropout=choice), full=FullConfig())
    assert FitConfig.from_params(params, "full", torch.device("cpu")).fast_cpu_dropout is fast
    assert dataclasses.asdict(params.train)["cpu_dropout"] == choice  # logged to MLflow with the train section


@pytest.mark.parametrize("stage, missing", [("evaluate", "test.parquet"), ("train_full", "val.parquet")])
def test_a_split_file_missing_exits_2_with_one_line_naming_it(tmp_path, tiny_model_dir, split_dir, capsys, stage,
                                                              missing):
    """Issue 12: evaluate raised a bare FileNotFoundError traceback when test.parquet was missing."""
    import shutil

    from stages import evaluate

    split = tmp_path / "split"
    shutil.copytree(split_dir, split)
    (split / missing).unlink()
    params = write_params(tmp_path / "params.yaml", tiny_model_dir, {"mlflow.enabled": False})
    if stage == "evaluate":
        rc = evaluate.main(["--params", str(params), "--split", str(split), "--models", str(tmp_path / "models"),
                            "--metrics", str(tmp_path / "evaluate.json"), "--predictions", str(tmp_path / "pred")])
    else:
        rc = _train("full", _train_args(tmp_path, "full", params, split))
    assert rc == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    failure = [line for line in err.splitlines() if line.startswith(f"{stage} failed:")]
    assert len(failure) == 1 and f"{split} lacks {missing}" in failure[0] and "dvc repro split" in failure[0]
