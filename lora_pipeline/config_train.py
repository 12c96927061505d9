"""The sections of the training runs and the study: ``scratch``, ``full``, ``lora`` (one per variant), ``train``
(the one loop they share), ``study`` (the grid they fan out over) and ``baseline``; one frozen dataclass each,
validated in ``__post_init__``."""

from __future__ import annotations

import re
import typing
from dataclasses import dataclass, field
from typing import Literal, Optional, Union

from .config_parsing import check
from .errors import ConfigError

__all__ = ["Variant", "VARIANTS", "Adapter", "ADAPTERS", "DEFAULT_TARGET_SET", "ScratchConfig", "FullConfig", "LoraConfig", "TrainConfig", "StudyConfig",
           "BaselineConfig"]

# The three trained variants, in stage order; each has its own params section (scratch, full, lora).
Variant = Literal["scratch", "full", "lora"]
VARIANTS: tuple[Variant, ...] = typing.get_args(Variant)
# What a train_lora instance adds to the frozen encoder: LoRA (arXiv:2106.09685) or DoRA (arXiv:2402.09353, LoRA's
# update as a direction times a trained magnitude per output unit, as peft's use_dora); a study axis
Adapter = Literal["lora", "dora"]
ADAPTERS: tuple[Adapter, ...] = typing.get_args(Adapter)
# the target set a LoRA run uses unless its run spec names another: left empty, the architecture's default
DEFAULT_TARGET_SET = "default"
# a target set: module names/suffixes (a list), a full-match regex or all-linear (a string), or None (the default)
Targets = Optional[Union[str, tuple[str, ...]]]
# the sets params.yaml defines: the default (BERT: W_q, W_v), all of attention (BERT names), every linear layer
TARGET_SETS: dict[str, Targets] = {DEFAULT_TARGET_SET: None,
                                   "attention_all": ("query", "key", "value", "attention.output.dense"),
                                   "all_linear": "all-linear"}


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
            check(getattr(self, key) >= 1, f"scratch.{key}", "must be >= 1")
        check(self.hidden_size % self.num_heads == 0, "scratch.hidden_size", "must be divisible by scratch.num_heads")


@dataclass(frozen=True)
class FullConfig:
    """Full fine-tuning of every parameter (section ``full``)."""

    epochs: int = 10

    def __post_init__(self) -> None:
        check(self.epochs >= 1, "full.epochs", "must be >= 1")


@dataclass(frozen=True)
class LoraConfig:
    """LoRA adapters on the frozen encoder (section ``lora``; arXiv:2106.09685).

    What varies per ``train_lora`` instance is not here but in its run spec
    (:class:`~lora_pipeline.records.RunSpec`): the rank (``study.ranks``), the target set (a name of
    :attr:`target_sets`, listed in ``study.target_sets``) and the adapter (``study.adapters``: lora or dora).
    ``lora.rank``, ``lora.target_modules`` and ``lora.use_dora`` in params.yaml are refused, naming those lists.
    """

    alpha: float = 16.0
    dropout: float = 0.0
    # named sets of modules to adapt: a list of module names or name suffixes, a string ("all-linear" or a
    # full-match regex), or empty for the model's default (BERT: query, value); study.target_sets picks from them
    target_sets: dict[str, Targets] = field(default_factory=lambda: dict(TARGET_SETS))
    modules_to_save: tuple[str, ...] = ("pooler",)
    rslora: bool = False
    bias: Literal["none", "all", "lora_only"] = "none"
    epochs: int = 20
    save_merged: bool = False

    def __post_init__(self) -> None:
        check(self.alpha > 0, "lora.alpha", "must be > 0")
        check(0.0 <= self.dropout < 1.0, "lora.dropout", "must be in [0, 1)")
        check(self.epochs >= 1, "lora.epochs", "must be >= 1")
        check(bool(self.target_sets), "lora.target_sets", "must name at least one set of modules")
        for name, targets in self.target_sets.items():
            check(bool(re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name)), f"lora.target_sets.{name}",
                  "is not a usable set name: letters, digits and _ only, starting with a letter (it names "
                  "folders and study rows)")
            _check_targets(targets, f"lora.target_sets.{name}")

    def targets(self, name: str) -> Targets:
        """The modules target set ``name`` adapts (None: the architecture's default)."""
        check(name in self.target_sets, "study.target_sets",
              f"names {name!r}, which lora.target_sets does not define; defined: {sorted(self.target_sets)}")
        return self.target_sets[name]


def _check_targets(targets: Targets, key: str) -> None:
    """A target set: no empty names; a string other than all-linear must compile as a regex."""
    if isinstance(targets, tuple):
        check(bool(targets) and all(targets), key, "must not be empty (or contain an empty name): list module "
              "names/suffixes, or give a regex or all-linear")
    elif isinstance(targets, str):
        check(bool(targets), key, "must not be empty: give a regex, all-linear, or a list of module names")
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
            check(getattr(self, key) >= 1, f"train.{key}", "must be >= 1")
        check(self.dist_start_grace_s >= 0, "train.dist_start_grace_s", "must be >= 0")
        check(self.nnodes == 1 or bool(self.rdzv_endpoint and re.fullmatch(r"[^\s:]+:\d+", self.rdzv_endpoint)),
              "train.rdzv_endpoint", "must be host:port (the rendezvous every machine joins) when train.nnodes > 1")
        for key in ("min_steps", "max_steps", "patience", "eval_every"):
            check(getattr(self, key) >= 0, f"train.{key}", "must be >= 0")
        check(self.min_delta >= 0, "train.min_delta", "must be >= 0 (a macro-F1 gain: 0.001 = 0.1 point)")
        check(self.log_every >= 1, "train.log_every", "must be >= 1")
        check(not self.max_steps or self.min_steps <= self.max_steps, "train.min_steps",
              f"({self.min_steps}) must be <= train.max_steps ({self.max_steps}) unless max_steps is 0 (no cap)")
        check(self.batch_size >= 1, "train.batch_size", "must be >= 1")
        check(self.eval_batch_size >= 1, "train.eval_batch_size", "must be >= 1")
        check(self.weight_decay >= 0, "train.weight_decay", "must be >= 0")
        check(0 <= self.warmup_ratio < 1, "train.warmup_ratio", "must be in [0, 1)")
        check(self.max_grad_norm > 0, "train.max_grad_norm", "must be > 0")
        check(self.checkpoint_every >= 0, "train.checkpoint_every", "must be >= 0 (0 disables checkpoints)")
        check(self.num_threads >= 0, "train.num_threads", "must be >= 0 (0 = torch default)")
        check(self.device in ("auto", "cpu") or self.device.startswith("cuda"), "train.device",
              "must be 'auto', 'cpu' or 'cuda[:N]'")
        check(self.precision in ("auto", "fp32", "bf16"), "train.precision", "must be 'auto', 'fp32' or 'bf16'")
        check(self.cpu_dropout in ("fast", "torch"), "train.cpu_dropout", "must be 'fast' or 'torch'")


@dataclass(frozen=True)
class StudyConfig:
    """The grid the train stages fan out over (LoRA: rank × target set × adapter × seed × learning rate; the
    other variants: seed × learning rate), and how evaluate summarises it
    (section ``study``; read by dvc.yaml's ``matrix:`` and by evaluate/report, never by one train instance)."""

    seeds: tuple[int, ...] = (42,)
    ranks: tuple[int, ...] = (4, 16)
    scratch_lrs: tuple[float, ...] = (4e-4,)
    full_lrs: tuple[float, ...] = (1e-4,)
    lora_lrs: tuple[float, ...] = (2e-3,)
    target_sets: tuple[str, ...] = (DEFAULT_TARGET_SET,)  # names of lora.target_sets, one train_lora instance each
    adapters: tuple[Adapter, ...] = ("lora",)  # lora | dora, one train_lora instance each
    tolerance: float = 0.01
    confidence: float = 0.95
    resamples: int = 1000
    bootstrap_seed: int = 0
    record_rank: Optional[int] = None
    test_every_run: bool = False  # also score every run of the grid on test (the choice still reads validation only)

    def __post_init__(self) -> None:
        for key in ("seeds", "ranks", "scratch_lrs", "full_lrs", "lora_lrs", "target_sets", "adapters"):
            values = getattr(self, key)
            check(bool(values), f"study.{key}", "must list at least one value")
            check(len(set(values)) == len(values), f"study.{key}", f"lists a value twice: {list(values)}")
        check(all(r >= 1 for r in self.ranks), "study.ranks", "must all be >= 1")
        for variant in VARIANTS:
            check(all(lr > 0 for lr in self.lrs(variant)), f"study.{variant}_lrs", "must all be > 0")
        check(0 <= self.tolerance < 1, "study.tolerance", "must be in [0, 1) (a macro-F1 difference: 0.01 = 1 point)")
        check(0.5 <= self.confidence < 1, "study.confidence", "must be in [0.5, 1)")
        check(self.resamples >= 1000, "study.resamples", "must be >= 1000")
        check(self.record_rank is None or self.record_rank in self.ranks, "study.record_rank",
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
        check(self.max_features >= 1, "baseline.max_features", "must be >= 1")
        check(self.ngram_max >= 1, "baseline.ngram_max", "must be >= 1")
        check(self.C > 0, "baseline.C", "must be > 0")
