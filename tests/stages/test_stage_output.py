"""What a stage prints on stderr: one line per event, no progress bars of loading, saving or MLflow's artifact
transfers (``--no-progress``: none at all), no CloudPickle warning from logging the MLflow model, and an error once."""

from __future__ import annotations

from tests.support.builders import write_params
from tests.support.chains import instance_paths, run_train, train_args

NOISE = ("CloudPickle", "Writing model shards", "Loading weights", "Downloading artifacts", "Uploading artifacts",
         "it/s]", "\r")


def test_a_train_stage_logging_its_model_to_mlflow_prints_no_progress_bar_and_no_pickle_warning(
        tmp_path, tiny_model_dir, split_dir, capfd):
    import mlflow

    params = write_params(tmp_path / "params.yaml", tiny_model_dir, {"mlflow.experiment": "stage-output-test"})
    capfd.readouterr()
    assert run_train("lora", train_args(tmp_path, "lora", params, split_dir)) == 0
    err = capfd.readouterr().err
    assert instance_paths(tmp_path, "lora")["out"].is_dir()
    assert "MLflow tracking" not in err  # the model was logged: no "tracking … failed" warning
    (run,) = mlflow.MlflowClient().search_runs(
        [mlflow.MlflowClient().get_experiment_by_name("stage-output-test").experiment_id])
    assert run.data.tags.get("model_uri"), run.data.tags
    assert [n for n in NOISE if n in err] == [], err[-3000:]
    assert "timing:" in err  # the stage's own lines still show


def test_a_failing_stage_prints_its_error_once(tmp_path, tiny_model_dir, capfd):
    params = write_params(tmp_path / "params.yaml", tiny_model_dir)
    missing = tmp_path / "no-split"
    capfd.readouterr()
    assert run_train("lora", train_args(tmp_path, "lora", params, missing)) == 2
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if str(missing) in line]
    assert len(lines) == 1 and lines[0].startswith("train_lora failed: "), err
