"""Models that cannot be used are one clear error, never a traceback: truncated weights, a model.name that is a
directory but not a model, a package name that is not a plain module name."""

from __future__ import annotations

import importlib
import json
import shutil
import sys

import pytest

from lora_pipeline.config import ModelConfig
from lora_pipeline.errors import PipelineError
from lora_pipeline.inference import load_classifier
from lora_pipeline.records import CARD
from lora_pipeline.models import load_trained, save_trained
from tests.support.training import nonzero_lora_model
from lora_pipeline.pretrained import resolve_model_path
from tests.support.builders import LABELS


@pytest.fixture
def truncated(tiny_model_dir, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    (model / CARD).write_text(json.dumps({"format": "lora-pipeline-classifier", "variant": "full", "labels": LABELS,
                                          "max_length": 32, "text_pair": False, "precision": "fp32"}))
    return model


def test_truncated_weights_in_predict_are_one_error_naming_the_file(truncated):
    with pytest.raises(PipelineError, match=r"model.safetensors\) are truncated or corrupt.*dvc repro -f train_full"):
        load_classifier(truncated)


def test_truncated_weights_in_evaluate_are_one_error_naming_the_file(truncated, tiny_tokenizer):
    with pytest.raises(PipelineError, match="truncated or corrupt"):
        load_trained("full", truncated, ModelConfig(name=str(truncated)), LABELS, tiny_tokenizer)


def test_a_truncated_lora_adapter_in_evaluate_is_one_error_naming_the_file(tmp_path, tiny_model_dir, tiny_tokenizer):
    model, lora, card = nonzero_lora_model(tiny_model_dir, tiny_tokenizer)
    save_trained("lora", model, tiny_tokenizer, tmp_path / "lora", card=card, lora=lora)
    weights = tmp_path / "lora" / "adapter.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(PipelineError, match=r"\(adapter.safetensors, peft/adapter_model.safetensors\) are truncated"):
        load_trained("lora", tmp_path / "lora", ModelConfig(name=str(tiny_model_dir)), LABELS, tiny_tokenizer)


def test_a_model_name_that_is_a_directory_without_a_model_is_one_error(tmp_path):
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(PipelineError, match="is a directory but not a model: it has no config.json"):
        resolve_model_path(str(tmp_path))


@pytest.mark.parametrize("name", ["package:os.path/model", "package:x.y/model", "package:../x/model",
                                  "package:/model"])
def test_a_package_name_that_is_not_a_plain_module_is_refused_without_importing_it(name, monkeypatch):
    imported = []
    monkeypatch.setattr(importlib, "import_module", lambda mod, *a: imported.append(mod))
    with pytest.raises(PipelineError, match="is not a plain Python package name"):
        resolve_model_path(name)
    assert not imported


def test_a_model_card_that_names_a_dotted_package_imports_nothing(tmp_path, monkeypatch, tiny_model_dir):
    model = tmp_path / "lora"
    shutil.copytree(tiny_model_dir, model)
    (model / CARD).write_text(json.dumps({"format": "lora-pipeline-classifier", "variant": "lora", "labels": LABELS,
                                          "max_length": 32, "text_pair": False, "precision": "fp32",
                                          "base_model": "package:evil_mod.sub/model"}))
    monkeypatch.setitem(sys.modules, "evil_mod", None)  # importing it would raise ModuleNotFoundError
    with pytest.raises(PipelineError, match="'evil_mod.sub' is not a plain Python package name"):
        load_classifier(model)


def test_a_model_card_of_another_version_is_one_error_naming_both_versions(tmp_path):
    (tmp_path / CARD).write_text('{"format": "lora-pipeline-classifier", "version": 2, "variant": "full", '
                                 '"labels": ["a", "b"], "max_length": 8, "text_pair": false, "precision": "fp32"}')
    with pytest.raises(PipelineError, match=r"card version 2, but this lora-pipeline reads version 1"):
        load_classifier(tmp_path)
