"""Typed, validated configuration: one frozen dataclass per ``params.yaml`` section (the data stages' in
:mod:`~lora_pipeline.config_data`, the training runs' and the study's in :mod:`~lora_pipeline.config_train`,
``mlflow`` here), all importable from here.

``load_params`` is the only way stage scripts read parameters. It rejects unknown keys,
missing sections and bad values with a message naming the offending key, so a typo in
``params.yaml`` or a ``dvc exp run -S`` override fails before any work is done.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ruamel.yaml import YAML, YAMLError

from .config_data import DataConfig, ModelConfig, SplitConfig, ValidateConfig
from .config_data import EMBEDDED_MODEL, EMBEDDED_MODEL_HUB_ID  # noqa: F401 -- re-exported (models, pretrained)
from .config_parsing import build_section, check
from .config_train import (ADAPTERS, DEFAULT_TARGET_SET, VARIANTS, Adapter, BaselineConfig, FullConfig, LoraConfig,
                           ScratchConfig, StudyConfig, TrainConfig, Variant)
from .credentials import has_credentials
from .errors import ConfigError  # defined with the other error types; importable from here as before

__all__ = [
    "ConfigError",
    "Variant",
    "VARIANTS",
    "Adapter",
    "ADAPTERS",
    "DEFAULT_TARGET_SET",
    "DataConfig",
    "ValidateConfig",
    "SplitConfig",
    "ModelConfig",
    "ScratchConfig",
    "TrainConfig",
    "FullConfig",
    "LoraConfig",
    "StudyConfig",
    "BaselineConfig",
    "MlflowConfig",
    "Params",
    "load_params",
    "parse_params",
]


@dataclass(frozen=True)
class MlflowConfig:
    """Experiment tracking (section ``mlflow``). ``MLFLOW_TRACKING_URI`` overrides ``tracking_uri``."""

    experiment: str = "lora-pipeline"
    tracking_uri: Optional[str] = None
    enabled: bool = True
    registered_model: str = "lora-pipeline-classifier"
    alias: str = "champion"

    def __post_init__(self) -> None:
        check(bool(self.experiment), "mlflow.experiment", "must be a non-empty name")
        check(bool(self.registered_model), "mlflow.registered_model", "must be a non-empty name")
        check(bool(re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", self.alias)) and not re.fullmatch(r"[vV]\d+", self.alias),
              "mlflow.alias", "must be a name of letters, digits, _ and - (not v<N>, which MLflow keeps for versions)")
        check(self.tracking_uri is None or not has_credentials(self.tracking_uri), "mlflow.tracking_uri",
              "carries credentials (user info before '@' or a secret query value); params.yaml is copied into "
              "dvc.lock, `dvc params diff` and `dvc exp show`, so put only the bare URI here and set "
              "MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN in the environment "
              "(or the whole URI in MLFLOW_TRACKING_URI)")


@dataclass(frozen=True)
class Params:
    """All of ``params.yaml``."""

    data: DataConfig = field(default_factory=DataConfig)
    validate: ValidateConfig = field(default_factory=ValidateConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    scratch: ScratchConfig = field(default_factory=ScratchConfig)
    full: FullConfig = field(default_factory=FullConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    study: StudyConfig = field(default_factory=StudyConfig)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)


def parse_params(raw: Any, sections: Optional[typing.Iterable[str]] = None) -> Params:
    """Build :class:`Params` from a parsed mapping.

    Args:
        raw: the parsed YAML document.
        sections: sections that must be present (a stage names what it reads); all when None.

    Raises:
        ConfigError: naming the missing section, unknown key or bad value.
    """
    check(isinstance(raw, dict), "params.yaml", "must be a mapping of sections")
    fields = {f.name: f for f in dataclasses.fields(Params)}
    unknown = sorted(set(raw) - set(fields))
    check(not unknown, unknown[0] if unknown else "", f"is not a known section; known: {sorted(fields)}")
    hints = typing.get_type_hints(Params)
    built = {name: build_section(hints[name], raw[name], name) for name in raw}
    required = list(fields) if sections is None else list(sections)
    for name in required:
        check(name in raw, name, "section is missing from params.yaml")
    if "study" in built and "lora" in built:
        for name in built["study"].target_sets:
            built["lora"].targets(name)  # every set the study names is defined
    return Params(**built)


def load_params(path: str | Path = "params.yaml", sections: Optional[typing.Iterable[str]] = None) -> Params:
    """Read and validate ``params.yaml``. See :func:`parse_params`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"params: file '{path}' not found (pass --params PATH)")
    try:  # YAML 1.2, as DVC reads it: `dvc exp run -S` writes 5e-05 back, a float there and a string to YAML 1.1
        raw = YAML(typ="safe", pure=True).load(path.read_text(encoding="utf-8"))
    except YAMLError as err:
        raise ConfigError(f"params: '{path}' is not valid YAML: {err}") from err
    return parse_params(raw, sections)
