"""The base an adapter is bound to: its weights and the config fields that change the function it computes."""

from __future__ import annotations

import copy
import json
import logging

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from lora_pipeline.lora import apply_lora, load_adapter, lora_layers, mark_only_lora_as_trainable, save_adapter
from lora_pipeline.lora.adapter_io import ADAPTER_CONFIG
from lora_pipeline.lora.fingerprint import ARCHITECTURE_FIELDS, UNCHECKED_FIELDS, architecture_config
# `seeded` is the autouse fixture that fixes the RNG seeds.
from tests.support.tiny_models import ARCHS, CONFIGS, logits, tiny_batch, tiny_model, train_steps


def variant(arch: str, attn: str | None = None, **changes) -> torch.nn.Module:
    """``tiny_model(arch)`` with config fields changed: the same weights (same seed, same shapes)."""
    config = copy.deepcopy(CONFIGS[arch])
    for key, value in changes.items():
        setattr(config, key, value)
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(config, attn_implementation=attn).eval()


def saved(tmp_path, arch: str = "bert"):
    model = tiny_model(arch)
    apply_lora(model, rank=4, alpha=8)
    mark_only_lora_as_trainable(model)
    train_steps(model, tiny_batch())
    save_adapter(model, tmp_path / "adapter", base_model_name=f"tiny-{arch}")
    return model, tmp_path / "adapter"


@pytest.mark.parametrize("changes, named", [
    ({"hidden_act": "relu"}, "hidden_act 'relu' (adapter 'gelu')"),
    ({"layer_norm_eps": 1e-5}, "layer_norm_eps 1e-05 (adapter 1e-12)"),
    ({"num_attention_heads": 2}, "num_attention_heads 2 (adapter 4)"),  # same weight shapes, other attention
])
def test_load_refuses_a_base_with_the_same_weights_and_another_architecture_config(changes, named, tmp_path):
    _, adapter = saved(tmp_path)
    other = variant("bert", **changes)
    with pytest.raises(ValueError, match="config differs") as err:
        load_adapter(other, adapter)
    assert named in str(err.value) and "tiny-bert" in str(err.value)
    assert not lora_layers(other)  # refused before touching the model


@pytest.mark.parametrize("arch, changes", [
    ("gpt2", {"activation_function": "relu"}), ("gpt2", {"layer_norm_epsilon": 1e-3}),
    ("distilbert", {"activation": "relu"}), ("deberta-v2", {"pooler_hidden_act": "tanh"}),
    ("roberta", {"pad_token_id": 0}),  # RoBERTa counts positions from the pad id
])
def test_architecture_fields_of_other_model_types_are_checked(arch, changes, tmp_path):
    _, adapter = saved(tmp_path, arch)
    with pytest.raises(ValueError, match=f"config differs: {next(iter(changes))}"):
        load_adapter(variant(arch, **changes), adapter)


@pytest.mark.parametrize("attn, changes", [
    (None, {"id2label": {0: "x", 1: "y", 2: "z"}, "label2id": {"x": 0, "y": 1, "z": 2}}),
    (None, {"_name_or_path": "elsewhere/tiny-bert", "output_hidden_states": True, "problem_type": "regression"}),
    (None, {"hidden_dropout_prob": 0.3, "classifier_dropout": 0.2, "chunk_size_feed_forward": 4}),
    ("eager", {}),
])
def test_load_accepts_a_base_that_differs_only_in_fields_that_leave_the_function_alone(attn, changes, tmp_path):
    model, adapter = saved(tmp_path)
    other = variant("bert", attn, **changes)
    load_adapter(other, adapter)
    with torch.no_grad():
        got = other(input_ids=tiny_batch()["input_ids"], attention_mask=tiny_batch()["attention_mask"]).logits
    torch.testing.assert_close(got, logits(model, tiny_batch()), atol=1e-6, rtol=1e-6)


def test_saved_adapter_records_the_architecture_fields(tmp_path):
    _, adapter = saved(tmp_path)
    config = json.loads((adapter / ADAPTER_CONFIG).read_text())
    recorded = config["base_architecture"]
    assert recorded == architecture_config(tiny_model("bert"))
    assert recorded["hidden_act"] == "gelu" and recorded["layer_norm_eps"] == 1e-12 and recorded["vocab_size"] == 99
    assert not set(recorded) & set(UNCHECKED_FIELDS)


def test_format_version_2_adapter_loads_with_one_warning_naming_what_is_not_checked(tmp_path, caplog):
    model, adapter = saved(tmp_path)
    path = adapter / ADAPTER_CONFIG
    config = json.loads(path.read_text())
    del config["base_architecture"]
    path.write_text(json.dumps({**config, "format_version": 2}))
    fresh = tiny_model("bert")
    with caplog.at_level(logging.WARNING, logger="lora_pipeline.lora"):
        load_adapter(fresh, adapter)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "format_version 2" in warnings[0] and all(f in warnings[0] for f in ("hidden_act", "layer_norm_eps"))
    torch.testing.assert_close(logits(fresh, tiny_batch()), logits(model, tiny_batch()), atol=0, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_every_config_field_of_a_supported_architecture_is_classified(arch):
    """A field that transformers adds is either checked or deliberately not: a decision, never an accident."""
    fields = set(tiny_model(arch).config.to_dict())
    assert not set(ARCHITECTURE_FIELDS) & set(UNCHECKED_FIELDS)
    assert fields <= set(ARCHITECTURE_FIELDS) | set(UNCHECKED_FIELDS), sorted(
        fields - set(ARCHITECTURE_FIELDS) - set(UNCHECKED_FIELDS))
