"""Stage entry points called as ``main([...])`` on tiny fixture data: split → train_* → evaluate → report.

The whole chain runs once per module (a few seconds with a hidden-32 BERT); the tests read its outputs. What a
stage refuses before it trains: tests/stages/test_train_stage_input.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from lora_pipeline.checkpoint import DirCheckpointer
from lora_pipeline.records import RunSpec, read_train_record
from tests.support.builders import LABELS, LRS, SEED, WALL_CLOCK_KEYS
from tests.support.chains import (EXPERIMENT, INSTANCES, RANKS, instance_paths, instance_tag, run_chain, run_train,
                                  train_args)

TRAIN_KEYS = {"variant", "rank", "seed", "lr", "tag", "val_macro_f1", "best_epoch", "best_step", "epochs", "steps",
              "planned_steps", "stop_reason", "stopped_by", "converged", "validations", "seconds_to_best",
              "cpu_seconds_to_best", "train_seconds", "train_cpu_seconds", "samples_per_second", "peak_memory_mb",
              "trainable_params", "total_params", "trainable_percent", "size_on_disk_mb", "device", "precision",
              "param_dtype", "target_set", "adapter", "adapter_params"}
# the metrics that read a clock: wall (conftest's) and process CPU seconds
CLOCK_KEYS = WALL_CLOCK_KEYS | {"train_cpu_seconds", "seconds_to_best", "cpu_seconds_to_best"}


def _read(base: Path, variant: str, rank: int | None = None) -> dict:
    return json.loads(instance_paths(base, variant, rank)["metrics"].read_text())


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, tiny_model_dir):
    """Run every stage after validate once; returns (base dir, params file, {stage: exit code}, uri)."""
    return run_chain(tmp_path_factory, tiny_model_dir)


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


def test_split_writes_the_dataset_summary_the_report_reads(pipeline):
    base, _, _, _ = pipeline
    summary = json.loads((base / "split" / "dataset.json").read_text())
    assert summary["labels"] == LABELS and sum(summary["rows_per_split"].values()) == 180


@pytest.mark.parametrize("variant, rank", INSTANCES)
def test_train_outputs(pipeline, variant, rank):
    base, _, _, _ = pipeline
    metrics = _read(base, variant, rank)
    assert set(metrics) == TRAIN_KEYS
    assert (metrics["precision"], metrics["param_dtype"]) == ("fp32", "float32")
    assert {k: metrics[k] for k in ("variant", "rank", "seed", "lr", "tag", "target_set", "adapter")} == \
           {"variant": variant, "rank": rank, "seed": SEED, "lr": LRS[variant], "tag": instance_tag(variant, rank),
            "target_set": "default" if rank else None, "adapter": "lora" if rank else None}
    assert (metrics["adapter_params"] > 0) == (variant == "lora") and metrics["adapter_params"] >= 0
    record = read_train_record(instance_paths(base, variant, rank)["metrics"])
    assert record.to_json() == metrics and record.tag == RunSpec(variant, SEED, LRS[variant], rank).tag
    per_epoch = -(-len(pd.read_parquet(base / "split" / "train.parquet")) // 16)
    every = min(-(-per_epoch // 4), 2 * per_epoch // 8)  # eval_every 0: auto
    assert metrics["epochs"] == 2 and metrics["steps"] == metrics["planned_steps"] == 2 * per_epoch
    assert metrics["stop_reason"] == (f"cap: completed 2 epochs ({2 * per_epoch} steps) with early stopping off "
                                      f"(best at step {metrics['best_step']})")  # write_params: patience 0
    assert (metrics["stopped_by"], metrics["converged"]) == ("cap", False)
    assert metrics["validations"] == 2 * per_epoch // every >= 8
    assert metrics["best_step"] % every == 0
    assert metrics["best_epoch"] == round(metrics["best_step"] / per_epoch, 3)
    assert 0 <= metrics["seconds_to_best"] <= metrics["train_seconds"]
    assert 0 <= metrics["cpu_seconds_to_best"] <= metrics["train_cpu_seconds"]
    assert 0 < metrics["trainable_params"] <= metrics["total_params"]
    assert (metrics["trainable_percent"] == 100.0) == (variant != "lora")
    assert metrics["size_on_disk_mb"] > 0 and metrics["train_seconds"] > 0
    paths = instance_paths(base, variant, rank)
    evals = pd.read_csv(paths["curve"] / "evals.csv")
    assert list(evals.columns) == ["step", "epoch", "train_loss", "val_macro_f1", "seconds", "cpu_seconds"]
    assert evals["step"].tolist() == list(range(every, 2 * per_epoch + 1, every))
    assert evals["epoch"].tolist() == [round(s / per_epoch, 3) for s in evals["step"]]
    best = evals.set_index("step").loc[metrics["best_step"]]
    assert metrics["val_macro_f1"] == pytest.approx(best["val_macro_f1"])
    assert evals["val_macro_f1"].max() <= metrics["val_macro_f1"] + 0.001  # train.min_delta: a smaller gain is none
    assert (metrics["seconds_to_best"], metrics["cpu_seconds_to_best"]) == \
           (round(best["seconds"], 2), round(best["cpu_seconds"], 2))
    steps = pd.read_csv(paths["curve"] / "steps.csv")
    assert list(steps.columns) == ["step", "epoch", "train_loss", "lr", "seconds", "cpu_seconds"]
    for curve in (evals, steps):
        for clock in ("seconds", "cpu_seconds"):
            assert curve[clock].min() >= 0 and curve[clock].is_monotonic_increasing, clock
    assert steps["step"].tolist() == list(range(10, 2 * per_epoch + 1, 10))  # train.log_every: 10
    assert steps["epoch"].tolist() == [round(s / per_epoch, 3) for s in steps["step"]]
    assert list(paths["out"].glob("*.safetensors")) and not list(paths["out"].glob("*.bin")) \
        and not list(paths["out"].glob("*.pt"))
    assert not paths["checkpoints"].exists()  # checkpoints (every 4 steps) are removed once the outputs are written


@pytest.mark.parametrize("variant, rank", INSTANCES)
def test_train_writes_the_best_validations_predictions(pipeline, variant, rank):
    """One row per val example in the split's order; scored, they give the run's val_macro_f1."""
    from lora_pipeline.evaluation import macro_f1

    base, _, _, _ = pipeline
    preds = pd.read_csv(instance_paths(base, variant, rank)["predictions"])
    val = pd.read_parquet(base / "split" / "val.parquet")
    assert list(preds.columns) == ["row", "actual", "predicted"]
    assert preds["row"].tolist() == list(range(len(val))) and preds["actual"].tolist() == val["label_id"].tolist()
    assert set(preds["predicted"]) <= set(range(len(LABELS)))
    assert macro_f1(preds["actual"].to_numpy(), preds["predicted"].to_numpy(), len(LABELS)) == \
           pytest.approx(_read(base, variant, rank)["val_macro_f1"], abs=1e-12)


def test_lora_instances_differ_only_by_their_rank(pipeline):
    """Each train_lora instance takes its rank from --rank: rank·(in+out) adapter parameters per target."""
    base, _, _, _ = pipeline
    small, large = (_read(base, "lora", rank) for rank in RANKS)
    targets = 2 * 2  # query and value in each of the tiny BERT's 2 layers, all 32 x 32
    assert large["trainable_params"] - small["trainable_params"] == (RANKS[1] - RANKS[0]) * (32 + 32) * targets
    assert large["total_params"] - small["total_params"] == (RANKS[1] - RANKS[0]) * (32 + 32) * targets


@pytest.mark.parametrize("variant", ["scratch", "full"])
def test_trained_model_reloads_and_predicts_like_at_the_end_of_training(pipeline, variant, tiny_tokenizer):
    from lora_pipeline.config import load_params
    from lora_pipeline.data.loaders import EncodedSplit
    from lora_pipeline.evaluation import macro_f1, predict
    from lora_pipeline.models import load_trained

    base, params_file, _, _ = pipeline
    params = load_params(params_file)
    model = load_trained(variant, instance_paths(base, variant)["out"], params.model, LABELS, tiny_tokenizer)
    assert model.config.id2label == dict(enumerate(LABELS))
    val = EncodedSplit.from_frame(pd.read_parquet(base / "split" / "val.parquet"))
    preds = predict(model, val, 64, tiny_tokenizer.pad_token_id, torch.device("cpu"))
    best = _read(base, variant)["val_macro_f1"]
    assert macro_f1(val.labels, preds, len(LABELS)) == pytest.approx(best)  # the saved weights are the best epoch's


def _runs(uri: str, stage: str | None = None) -> list:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    where = f"tags.stage = '{stage}'" if stage else ""
    return client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id], filter_string=where)


def test_runs_are_mirrored_to_mlflow(pipeline):
    import mlflow

    _, _, codes, uri = pipeline
    runs = _runs(uri)
    assert sorted(r.data.tags["stage"] for r in runs) == sorted(k.split()[0] for k in codes)
    assert all(r.info.status == "FINISHED" for r in runs)
    (full,) = _runs(uri, "train_full")
    tags, params = full.data.tags, full.data.params
    assert tags["variant"] == "full" and tags["resumed_from_step"] == "0" and float(tags["lr"]) == LRS["full"]
    assert tags["stop_reason"].startswith("cap: completed 2 epochs") and tags["stopped_by"] == "cap"
    assert {k: params[k] for k in ("run.variant", "run.seed", "run.lr", "run.tag", "full.epochs")} == \
           {"run.variant": "full", "run.seed": str(SEED), "run.lr": str(LRS["full"]),
            "run.tag": instance_tag("full", None), "full.epochs": "2"}
    assert not {"train.seed", "full.lr"} & set(params)  # per-instance values live under "run" only
    assert {"val_macro_f1", "trainable_params", "epoch_train_loss"} <= set(full.data.metrics)
    summary = {"validations", "seconds_to_best", "cpu_seconds_to_best", "train_cpu_seconds", "converged"}
    assert summary <= set(full.data.metrics) and full.data.metrics["converged"] == 0.0  # a boolean as 0/1
    assert not {"seed", "rank", "variant"} & set(full.data.metrics)  # the run record is params; "lr" is the schedule
    client = mlflow.MlflowClient(tracking_uri=uri)
    tag = instance_tag("full", None)
    assert {a.path for a in client.list_artifacts(full.info.run_id)} == {f"full-{tag}.json", tag, f"{tag}.csv"}
    assert {a.path for a in client.list_artifacts(full.info.run_id, tag)} == {f"{tag}/steps.csv", f"{tag}/evals.csv"}
    lora = {r.data.tags["lora_rank"]: r for r in _runs(uri, "train_lora")}
    assert set(lora) == {str(r) for r in RANKS}
    assert {r.info.run_name for r in lora.values()} == {f"train_lora r{rank} s{SEED} lr{LRS['lora']}" for rank in RANKS}
    for rank, run in lora.items():
        assert run.data.tags["rank"] == rank and run.data.params["run.rank"] == rank
        assert "lora.rank" in run.data.params and run.data.params["lora.rank"] == rank  # the instance's, not 8



def test_each_logged_model_is_named_by_its_variant_and_instance(pipeline):
    import mlflow

    _, _, _, uri = pipeline
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(EXPERIMENT).experiment_id
    names = {m.name for m in client.search_logged_models([experiment])}
    assert names == {f"{v}-{instance_tag(v, r)}".replace(".", "_") for v, r in INSTANCES}
    (full,) = _runs(uri, "train_full")
    assert full.data.tags["model_uri"].startswith("models:/") and full.outputs.model_outputs


def test_train_runs_log_their_splits_as_dataset_inputs_with_the_split_digests(pipeline):
    from lora_pipeline.files import split_digests

    base, _, _, uri = pipeline
    train, val, test = split_digests(base / "split", ("train", "val", "test"))
    for run in [r for r in _runs(uri) if r.data.tags["stage"].startswith("train_")] + _runs(uri, "evaluate"):
        logged = {next(t.value for t in d.tags if t.key == "mlflow.data.context"): (d.dataset.name, d.dataset.digest)
                  for d in run.inputs.dataset_inputs}
        expected = {"testing": ("test", test[:32])} if run.data.tags["stage"] == "evaluate" else \
            {"training": ("train", train[:32]), "validation": ("val", val[:32])}
        assert logged == expected, run.info.run_name
    (run,) = _runs(uri, "train_full")
    rows = json.loads(run.inputs.dataset_inputs[0].dataset.profile)["num_rows"]
    assert rows in (len(pd.read_parquet(base / "split" / f"{p}.parquet")) for p in ("train", "val"))


def test_the_evaluate_run_spans_the_stages_work_and_describes_the_answer(pipeline):
    base, _, _, uri = pipeline
    (run,) = _runs(uri, "evaluate")
    study = json.loads((base / "metrics" / "study.json").read_text())
    written = (base / "metrics" / "study.json").stat().st_mtime * 1000
    assert run.info.start_time <= written <= run.info.end_time  # the run was open while the study was computed
    assert study["answer"]["sentence"] in run.data.tags["mlflow.note.content"]
    assert len(run.data.tags["answer"]) <= 120 and run.data.tags["answer"].rstrip("…") in study["answer"]["sentence"]

def test_train_runs_are_tagged_with_seed_and_checkpoint_key(pipeline):
    _, _, _, uri = pipeline
    train_runs = [r for r in _runs(uri) if r.data.tags["stage"].startswith("train_")]
    assert len(train_runs) == len(INSTANCES)
    for run in train_runs:
        assert run.data.tags["seed"] == str(SEED)
        assert len(run.data.tags["checkpoint_key"]) == 16 and int(run.data.tags["checkpoint_key"], 16) >= 0
    assert len({r.data.tags["checkpoint_key"] for r in train_runs}) == len(train_runs)  # one per instance


@pytest.mark.parametrize("variant, rank", INSTANCES)
def test_the_end_of_run_summary_adds_no_point_to_the_validation_curve(pipeline, variant, rank):
    """The end-of-run summary's val_macro_f1 (step-less, so step 0) is no point of the per-validation curve."""
    import mlflow

    base, _, _, uri = pipeline
    (run,) = [r for r in _runs(uri, f"train_{variant}") if r.data.tags.get("lora_rank") in (None, str(rank))]
    metrics = _read(base, variant, rank)
    curve = mlflow.MlflowClient(tracking_uri=uri).get_metric_history(run.info.run_id, "val_macro_f1")
    evals = pd.read_csv(instance_paths(base, variant, rank)["curve"] / "evals.csv")
    assert [m.step for m in curve] == evals["step"].tolist() and len(curve) == metrics["validations"] >= 8
    assert [m.value for m in curve] == pytest.approx(evals["val_macro_f1"].tolist())
    assert run.data.metrics["best_val_macro_f1"] == pytest.approx(metrics["val_macro_f1"])
    assert "val_macro_f1" in metrics and "best_val_macro_f1" not in metrics  # the DVC metrics keys stay


ROWS = ["scratch", "full"] + [f"lora_r{rank}" for rank in RANKS]


def test_evaluate_outputs(pipeline):
    base, _, _, _ = pipeline
    results = json.loads((base / "metrics" / "evaluate.json").read_text())
    study = json.loads((base / "metrics" / "study.json").read_text())
    assert set(results) == {*ROWS, "tfidf_logreg", "answer_rank"} and set(study["rows"]) == set(ROWS)
    assert results["answer_rank"] == (study["answer"]["rank"] or 0) and study["answer"]["sentence"]  # 0: none
    test_rows = len(pd.read_parquet(base / "split" / "test.parquet"))
    assert study["n_test"] == test_rows and study["labels"] == LABELS
    shown = {"scratch", "full", study["record"], "tfidf_logreg"}
    assert study["record"] in {f"lora_r{rank}" for rank in RANKS}
    assert {p.stem for p in (base / "metrics" / "predictions").glob("*.csv")} == shown
    for name in shown:
        preds = pd.read_csv(base / "metrics" / "predictions" / f"{name}.csv")
        assert list(preds.columns) == ["actual", "predicted"] and len(preds) == test_rows
        assert set(preds["actual"]) <= set(LABELS) and set(preds["predicted"]) <= set(LABELS)
        accuracy = (study["tfidf_logreg"]["accuracy"] if name == "tfidf_logreg"
                    else study["rows"][name]["accuracy"]["mean"])
        assert accuracy == pytest.approx((preds["actual"] == preds["predicted"]).mean())
        assert sum(map(sum, study["detail"][name]["confusion_matrix"])) == test_rows
    assert results["tfidf_logreg"]["macro_f1"] > 0.9  # separable by vocabulary
    for name in ROWS:
        row = study["rows"][name]
        assert row["seeds"] == [SEED] and row["lr"] == LRS[row["variant"]]
        assert row["stopped"] == [_read(base, row["variant"], row["rank"])["stop_reason"]]


def test_evaluate_states_uncertainty_degenerate_models_and_the_paired_comparison(pipeline):
    base, _, _, _ = pipeline
    results = json.loads((base / "metrics" / "evaluate.json").read_text())
    study = json.loads((base / "metrics" / "study.json").read_text())
    for name in [*ROWS, "tfidf_logreg"]:
        assert results[name]["macro_f1_low"] <= results[name]["macro_f1"] <= results[name]["macro_f1_high"], name
    for name in ROWS:
        degenerate = study["rows"][name]["degenerate"]
        assert len(degenerate) == 1 and (degenerate[0] is None or isinstance(degenerate[0], str))
        accuracy = study["rows"][name]["accuracy"]
        assert accuracy["low"] <= accuracy["mean"] <= accuracy["high"], name
    for rank in RANKS:
        diff = study["rows"][f"lora_r{rank}"]["vs_full"]
        r = results[f"lora_r{rank}"]
        assert r["vs_full"] == pytest.approx(diff["difference"])
        assert diff["difference"] == pytest.approx(r["macro_f1"] - results["full"]["macro_f1"])
        assert diff["low"] <= diff["difference"] <= diff["high"]
        assert diff["verdict"] == ("better" if diff["low"] > 0 else "worse" if diff["high"] < 0
                                   else "indistinguishable")


def test_evaluate_writes_the_rank_curve_and_the_adapters_spectra_and_subspaces(pipeline):
    base, _, _, _ = pipeline
    study = json.loads((base / "metrics" / "study.json").read_text())
    curve = pd.read_csv(base / "metrics" / "rank_curve.csv")
    assert curve["rank"].tolist() == list(RANKS)
    assert curve["lora_macro_f1"].tolist() == pytest.approx([study["rows"][f"lora_r{r}"]["macro_f1"]["mean"]
                                                             for r in RANKS])
    assert {s["rank"] for s in study["spectra"]} == set(RANKS)
    for spectrum in study["spectra"]:
        assert len(spectrum["layers"]) == 4  # query and value of 2 layers
        assert all(len(layer["singular_values"]) == spectrum["rank"] for layer in spectrum["layers"].values())
    assert len(study["subspace"]) == 4
    for entry in study["subspace"]:
        assert (entry["small_rank"], entry["large_rank"], entry["seed"]) == (RANKS[0], RANKS[1], SEED)
        grid = entry["grid"]  # φ(i, j) for i <= small rank, j <= large rank, each in [0, 1]
        assert len(grid) == RANKS[0] and all(len(row) == RANKS[1] for row in grid)
        assert all(0.0 <= v <= 1.0 + 1e-6 for row in grid for v in row)


def test_report_outputs(pipeline):
    base, _, _, _ = pipeline
    text = (base / "reports" / "report.md").read_text()
    study = json.loads((base / "metrics" / "study.json").read_text())
    assert study["answer"]["sentence"] in text
    for title in ("BERT from scratch", "full fine-tuning", "LoRA r=", "TF-IDF + logistic regression"):
        assert f"| {title}" in text
    for rank in RANKS:
        assert f"| LoRA r={rank} (ours)" in text
    for name in ("rank_curve.png", "spectra.png", "curves.png", "confusion.png"):
        assert (base / "reports" / "figures" / name).read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
        assert f"](figures/{name})" in text


def test_same_seed_same_result_even_over_a_foreign_checkpoint(pipeline, tmp_path, capsys):
    """Determinism: a second run reproduces the first; a stale checkpoint of another run is ignored."""
    base, params, _, _ = pipeline
    first, second = instance_paths(base, "full"), instance_paths(tmp_path, "full")
    DirCheckpointer(second["checkpoints"], "another-run").save({"loop": {"epoch": 1}})
    assert run_train("full", train_args(tmp_path, "full", params, base / "split")) == 0
    err = capsys.readouterr().err  # the stage logs to stderr (run_stage replaces the root handlers)
    assert "ignoring checkpoint" in err and "resuming" not in err
    a, b = (json.loads(p["metrics"].read_text()) for p in (first, second))
    assert {k: v for k, v in a.items() if k not in CLOCK_KEYS} == {k: v for k, v in b.items() if k not in CLOCK_KEYS}
    for name in ("steps.csv", "evals.csv"):  # all but the clocks
        ca, cb = (pd.read_csv(p["curve"] / name).drop(columns=["seconds", "cpu_seconds"]) for p in (first, second))
        pd.testing.assert_frame_equal(ca, cb, check_exact=True)
    assert first["predictions"].read_text() == second["predictions"].read_text()
    a, b = load_file(first["out"] / "model.safetensors"), load_file(second["out"] / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
