"""A train (or split/evaluate) stage refuses bad params and missing inputs before it trains: an unknown key, a
per-instance key left in params.yaml, a CUDA device on a CPU-only torch and a missing split file each exit 2 with
one line and write nothing; the switches in params.yaml reach the training loop's config."""

from __future__ import annotations

import pytest
import torch

from tests.support.builders import make_frame, write_clean, write_params
from tests.support.chains import RANKS, evaluate_args, run_train, train_args


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
        rc = run_train(stage.split("_")[1], train_args(tmp_path, stage.split("_")[1], params, split_dir))
    assert rc == 2
    err = capsys.readouterr().err
    assert f"'{key}'" in err and "not a known key" in err and "Traceback" not in err
    assert set(tmp_path.iterdir()) == before  # no model, metrics, curve, checkpoint or split directory


@pytest.mark.parametrize("variant, key, study_key", [("lora", "lora.rank", "study.ranks"),
                                                     ("full", "full.lr", "study.full_lrs"),
                                                     ("scratch", "train.seed", "study.seeds")])
def test_a_per_instance_key_left_in_params_exits_2_pointing_at_the_study_list(tmp_path, tiny_model_dir, split_dir,
                                                                             capsys, variant, key, study_key):
    """An old params.yaml (``lora.rank: 8``) must not train silently at the CLI's value: it names the study list."""
    params = write_params(tmp_path / "params.yaml", tiny_model_dir, {key: 8, "mlflow.enabled": False})
    before = set(tmp_path.iterdir())
    rank = RANKS[0] if variant == "lora" else None
    assert run_train(variant, train_args(tmp_path, variant, params, split_dir, rank)) == 2
    err = capsys.readouterr().err
    failure = [line for line in err.splitlines() if line.startswith(f"train_{variant} failed:")]
    assert len(failure) == 1 and f"'{key}'" in failure[0] and f"'{study_key}'" in failure[0], err
    assert "is set per stage instance now" in failure[0] and "Traceback" not in err
    assert set(tmp_path.iterdir()) == before


def test_a_cuda_device_on_a_cpu_only_torch_exits_2_with_one_line(tmp_path, tiny_model_dir, split_dir, capsys,
                                                                  monkeypatch):
    """`train.device: cuda` without CUDA exits 2 with one line before loading the model (it was a traceback,
    exit 1, after loading it)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    params = write_params(tmp_path / "params.yaml", tiny_model_dir, {"train.device": "cuda", "mlflow.enabled": False})
    before = set(tmp_path.iterdir())
    assert run_train("full", train_args(tmp_path, "full", params, split_dir)) == 2
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
    cfg = FitConfig.from_params(params, "full", torch.device("cpu"), lr=1e-4, seed=3)
    assert cfg.first_token_last_layer == choice and (cfg.lr, cfg.seed) == (1e-4, 3)


@pytest.mark.parametrize("choice, fast", [("fast", True), ("torch", False)])
def test_cpu_dropout_param_reaches_the_fit_config(choice, fast):
    import dataclasses
    import types

    from lora_pipeline.config import FullConfig, TrainConfig
    from lora_pipeline.training import FitConfig

    params = types.SimpleNamespace(train=TrainConfig(cpu_dropout=choice), full=FullConfig())
    assert FitConfig.from_params(params, "full", torch.device("cpu"), lr=1e-4, seed=3).fast_cpu_dropout is fast
    assert dataclasses.asdict(params.train)["cpu_dropout"] == choice  # logged to MLflow with the train section


@pytest.mark.parametrize("stage, missing", [("evaluate", "test.parquet"), ("train_full", "val.parquet")])
def test_a_split_file_missing_exits_2_with_one_line_naming_it(tmp_path, tiny_model_dir, split_dir, capsys, stage,
                                                              missing):
    """A missing split file is a one-line error naming it (evaluate raised a bare FileNotFoundError traceback
    when test.parquet was missing)."""
    import shutil

    from stages import evaluate

    split = tmp_path / "split"
    shutil.copytree(split_dir, split)
    (split / missing).unlink()
    params = write_params(tmp_path / "params.yaml", tiny_model_dir, {"mlflow.enabled": False})
    if stage == "evaluate":
        rc = evaluate.main(evaluate_args(tmp_path, params, split))
    else:
        rc = run_train("full", train_args(tmp_path, "full", params, split))
    assert rc == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    failure = [line for line in err.splitlines() if line.startswith(f"{stage} failed:")]
    assert len(failure) == 1 and f"{split} lacks {missing}" in failure[0] and "dvc repro split" in failure[0]
