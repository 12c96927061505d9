"""Every documented form of a target set (``lora.target_sets``) works through the train stage: module names, name
suffixes, a full-match regex, and all-linear (a string stays one: a one-element list would read as a name suffix);
a run adapts the set its ``--target-set`` names, with the adapter its ``--adapter`` names, and records both; a set
that matches nothing is refused with the names it holds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from torch import nn
from transformers import AutoModelForSequenceClassification

from lora_pipeline.config import load_params
from tests.support.builders import RANK, instance_args, write_params

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


def _train(tmp_path: Path, params: Path, split_dir: Path, *extra: str) -> tuple[int, Path]:
    from stages import train_lora

    out = tmp_path / "model"
    rc = train_lora.main(["--params", str(params), "--split", str(split_dir), *instance_args("lora"), *extra,
                          "--out", str(out), "--metrics", str(tmp_path / "metrics.json"),
                          "--curve", str(tmp_path / "curves"), "--predictions", str(tmp_path / "val_predictions.csv"),
                          "--checkpoints", str(tmp_path / "ck"), "--no-progress"])
    return rc, out


@pytest.mark.parametrize("form", list(FORMS))
def test_each_documented_target_form_trains_the_modules_it_names(form, tmp_path, tiny_model_dir, split_dir, capsys):
    params = write_params(tmp_path / "params.yaml", tiny_model_dir, {
        "lora.target_sets": {"default": None, "mine": FORMS[form]}, "study.target_sets": ["default", "mine"],
        "lora.epochs": 1, "lora.modules_to_save": [], "mlflow.enabled": False})
    assert yaml.safe_load(params.read_text())["lora"]["target_sets"]["mine"] == FORMS[form]
    parsed = load_params(params).lora.targets("mine")
    assert parsed == (tuple(FORMS[form]) if isinstance(FORMS[form], list) else FORMS[form])
    rc, out = _train(tmp_path, params, split_dir, "--target-set", "mine")
    assert rc == 0, capsys.readouterr().err[-3000:]
    config = json.loads((out / "adapter_config.json").read_text())
    assert set(config["target_modules"]) == _expected(form, tiny_model_dir)
    record = json.loads((tmp_path / "metrics.json").read_text())
    assert (record["target_set"], record["adapter"]) == ("mine", "lora") and not config["use_dora"]
    shapes = {n: m for n, m in AutoModelForSequenceClassification.from_pretrained(
        tiny_model_dir, use_safetensors=True).named_modules() if n in config["target_modules"]}
    assert record["adapter_params"] == sum(RANK * (m.in_features + m.out_features) for m in shapes.values())


def test_the_dora_adapter_trains_dora_layers_and_records_it(tmp_path, tiny_model_dir, split_dir, capsys):
    params = write_params(tmp_path / "params.yaml", tiny_model_dir, {
        "study.adapters": ["lora", "dora"], "lora.epochs": 1, "lora.modules_to_save": [], "mlflow.enabled": False})
    rc, out = _train(tmp_path, params, split_dir, "--adapter", "dora")
    assert rc == 0, capsys.readouterr().err[-3000:]
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["use_dora"] and set(config["target_modules"]) == _expected("names", tiny_model_dir)
    record = json.loads((tmp_path / "metrics.json").read_text())
    assert (record["target_set"], record["adapter"]) == ("default", "dora")
    lora = json.loads((tmp_path / "metrics.json").read_text())["adapter_params"]
    assert lora == 2 * 2 * (RANK * (32 + 32) + 32)  # 2 layers x (query, value): r(in + out) + out magnitudes


def test_a_target_set_that_matches_nothing_is_refused_with_its_unmatched_names(tmp_path, tiny_model_dir, split_dir,
                                                                                capsys):
    params = write_params(tmp_path / "params.yaml", tiny_model_dir, {
        "lora.target_sets": {"default": None, "typo": ["query", "vlaue", "kye"]},
        "study.target_sets": ["default", "typo"], "lora.epochs": 1, "mlflow.enabled": False})
    rc, _ = _train(tmp_path, params, split_dir, "--target-set", "typo")
    err = capsys.readouterr().err
    assert rc == 2
    line = next(l for l in err.splitlines() if "lora.target_sets.typo" in l)
    assert "'vlaue'" in line and "'kye'" in line and "Traceback" not in err


def test_a_target_set_params_yaml_does_not_define_is_a_one_line_error(tmp_path, tiny_model_dir, split_dir, capsys):
    params = write_params(tmp_path / "params.yaml", tiny_model_dir, {"lora.epochs": 1, "mlflow.enabled": False})
    rc, _ = _train(tmp_path, params, split_dir, "--target-set", "all_lnear")
    err = capsys.readouterr().err
    assert rc == 2 and "'all_lnear', which lora.target_sets does not define" in err and "Traceback" not in err
