"""The train stage's checkpoint key: it hashes the resolved precision and device type, so
a bf16 checkpoint written under ``precision: auto`` is never resumed by an fp32 run (or a CPU one by CUDA), and
the instance's seed and learning rate, so one grid point never resumes another's state."""

from __future__ import annotations

import pytest
import torch

from lora_pipeline.checkpoint import DirCheckpointer
from lora_pipeline.errors import PipelineError
from tests.support.builders import LRS, SEED, instance_args, write_params


def _key(monkeypatch, tmp_path, tiny_model_dir, split_dir, *, bf16: bool, device: str = "cpu",
         seed: int = SEED, lr: float = LRS["full"]) -> str:
    """Run train_full up to fit (stubbed) with the resolution patched; return the checkpointer's key."""
    import lora_pipeline.training_plan as training_plan
    import stages._train as train_stage
    from stages import train_full

    keys = []

    class Recording(DirCheckpointer):
        def __init__(self, directory, key):
            super().__init__(directory, key)
            keys.append(key)

    def stop(*_args, **_kwargs):
        raise PipelineError("stopped before training")

    monkeypatch.setattr(train_stage, "DirCheckpointer", Recording)
    monkeypatch.setattr(training_plan, "resolve_bf16", lambda precision, dev: bf16)  # FitConfig.from_params
    monkeypatch.setattr(train_stage, "resolve_device", lambda name: torch.device(device))
    monkeypatch.setattr(train_stage, "fit", stop)
    params = write_params(tmp_path / "params.yaml", tiny_model_dir,
                          {"train.precision": "auto", "train.device": "auto", "train.checkpoint_every": 4,
                           "mlflow.enabled": False})
    rc = train_full.main(["--params", str(params), "--split", str(split_dir),
                          *instance_args("full", seed=seed, lr=lr),
                          "--out", str(tmp_path / "m"), "--metrics", str(tmp_path / "m.json"),
                          "--curve", str(tmp_path / "curves"), "--predictions", str(tmp_path / "val_predictions.csv"), "--checkpoints", str(tmp_path / "ck"), "--no-progress"])
    assert rc == 2 and len(keys) == 1
    return keys[0]


def test_the_key_follows_the_resolved_precision(monkeypatch, tmp_path, tiny_model_dir, split_dir):
    fp32 = _key(monkeypatch, tmp_path, tiny_model_dir, split_dir, bf16=False)
    bf16 = _key(monkeypatch, tmp_path, tiny_model_dir, split_dir, bf16=True)
    assert fp32 != bf16, "precision: auto hashed as 'auto': a bf16 checkpoint would resume in fp32"
    assert fp32 == _key(monkeypatch, tmp_path, tiny_model_dir, split_dir, bf16=False)  # and it is stable


@pytest.mark.parametrize("other", ["cuda", "cuda:1"])
def test_the_key_follows_the_resolved_device_type(monkeypatch, tmp_path, tiny_model_dir, split_dir, other):
    cpu = _key(monkeypatch, tmp_path, tiny_model_dir, split_dir, bf16=False, device="cpu")
    cuda = _key(monkeypatch, tmp_path, tiny_model_dir, split_dir, bf16=False, device=other)
    assert cpu != cuda
    assert cuda == _key(monkeypatch, tmp_path, tiny_model_dir, split_dir, bf16=False, device="cuda:0")


@pytest.mark.parametrize("change", [{"seed": SEED + 1}, {"lr": LRS["full"] / 2}])
def test_the_key_follows_the_instance_seed_and_learning_rate(monkeypatch, tmp_path, tiny_model_dir, split_dir, change):
    base = _key(monkeypatch, tmp_path, tiny_model_dir, split_dir, bf16=False)
    assert _key(monkeypatch, tmp_path, tiny_model_dir, split_dir, bf16=False, **change) != base
