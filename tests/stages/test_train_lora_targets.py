"""Every documented form of ``lora.target_modules`` in params.yaml works through the train stage: module names,
name suffixes, a full-match regex, and all-linear. A string used to become a one-element list, which apply_lora
reads as name suffixes, so a regex or all-linear matched nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from torch import nn
from transformers import AutoModelForSequenceClassification

from lora_pipeline.config import load_params
from tests.support.builders import instance_args, write_params

LAYERS = ("bert.encoder.layer.0", "bert.encoder.layer.1")


def _linear_names(model_dir: Path) -> set[str]:
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, use_safetensors=True)
    return {name for name, module in model.named_modules() if isinstance(module, nn.Linear)}


def _expected(form: str, model_dir: Path) -> set[str]:
    if form == "names":
        return {f"{layer}.attention.self.{m}" for layer in LAYERS for m in ("query", "value")}
    if form == "suffixes":
        return {f"{layer}.{m}" for layer in LAYERS for m in ("attention.self.key", "attention.output.dense")}
    if form == "regex":
        return {f"bert.encoder.layer.1.attention.self.{m}" for m in ("query", "key")}
    return {name for name in _linear_names(model_dir) if not name.startswith("classifier")}  # all but the head


FORMS = {  # the YAML values a user writes (safe_dump writes the lists and strings as given)
    "names": ["query", "value"],
    "suffixes": ["attention.self.key", "attention.output.dense"],
    "regex": r"bert\.encoder\.layer\.1\.attention\.self\.(query|key)",
    "all-linear": "all-linear",
}


@pytest.mark.parametrize("form", list(FORMS))
def test_each_documented_target_form_trains_the_modules_it_names(form, tmp_path, tiny_model_dir, split_dir, capsys):
    from stages import train_lora

    params = write_params(tmp_path / "params.yaml", tiny_model_dir, {
        "lora.target_modules": FORMS[form], "lora.epochs": 1, "lora.modules_to_save": [], "mlflow.enabled": False})
    assert yaml.safe_load(params.read_text())["lora"]["target_modules"] == FORMS[form]
    parsed = load_params(params).lora.target_modules
    assert parsed == (tuple(FORMS[form]) if isinstance(FORMS[form], list) else FORMS[form])
    out = tmp_path / "model"
    rc = train_lora.main(["--params", str(params), "--split", str(split_dir), *instance_args("lora"),
                          "--out", str(out), "--metrics", str(tmp_path / "metrics.json"),
                          "--curve", str(tmp_path / "curves"), "--predictions", str(tmp_path / "val_predictions.csv"),
                          "--checkpoints", str(tmp_path / "ck"), "--no-progress"])
    assert rc == 0, capsys.readouterr().err[-3000:]
    config = json.loads((out / "adapter_config.json").read_text())
    assert set(config["target_modules"]) == _expected(form, tiny_model_dir)
