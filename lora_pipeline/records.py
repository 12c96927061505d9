"""The files stages hand each other, and their vocabulary: the run spec of one train instance (its command-line
flags, tag, study row and MLflow run name, and the study grid it is a point of), the train run record each train
stage writes (``metrics/train/<variant>-<tag>.json``, read by evaluate), the model card every train stage writes
beside its weights (``classifier.json``, read by evaluate, predict, serving and MLflow), and the words and orders
that the study file's writer (evaluate) and readers (report, figures) share (a verdict's phrase, the detail rows'
order, the answer's MLflow tags)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Mapping, Optional

from .config import ADAPTERS, DEFAULT_TARGET_SET, VARIANTS, StudyConfig, Variant
from .config_parsing import check
from .errors import PipelineError, excerpt, listing

__all__ = ["RunSpec", "study_row", "row_rank", "row_configuration", "TrainRecord", "read_train_record", "CARD",
           "ModelCard", "read_card",
           "VERDICT_PHRASES", "ANSWER_TAG_CHARS", "answer_tags", "detail_rows"]


@dataclass(frozen=True)
class RunSpec:
    """One point of the study grid: what one train stage instance trains (an item of dvc.yaml's ``matrix:``).

    Attributes:
        variant: scratch, full or lora.
        seed: one of ``study.seeds``.
        lr: the peak learning rate, one of ``study.<variant>_lrs``.
        rank: the LoRA rank, one of ``study.ranks``; None for the other variants.
        target_set: the LoRA target set, a name of ``lora.target_sets`` listed in ``study.target_sets``
            (lora: ``default`` unless given; None for the other variants).
        adapter: lora or dora, one of ``study.adapters`` (lora: ``lora`` unless given; None for the others).

    Raises:
        PipelineError: an unknown variant or adapter, or a rank, target set or adapter on a variant other than
            lora (or no rank on lora).
        ConfigError: a rank below 1 (named ``lora.rank``, the key a LoRA run's params record it under).
    """

    variant: Variant
    seed: int
    lr: float
    rank: Optional[int] = None
    target_set: Optional[str] = None
    adapter: Optional[str] = None

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise PipelineError(f"unknown variant {excerpt(self.variant)}; expected one of {', '.join(VARIANTS)}")
        if (self.rank is None) == (self.variant == "lora"):
            raise PipelineError(f"a {self.variant} run {'needs a' if self.rank is None else 'takes no'} LoRA rank")
        check(self.rank is None or self.rank >= 1, "lora.rank", "must be >= 1")
        if self.variant != "lora":
            if self.target_set is not None or self.adapter is not None:
                raise PipelineError(f"a {self.variant} run takes no LoRA target set or adapter")
            return
        if self.target_set is None:  # frozen: the defaults are filled in once, here
            object.__setattr__(self, "target_set", DEFAULT_TARGET_SET)
        if self.adapter is None:
            object.__setattr__(self, "adapter", "lora")
        if self.adapter not in ADAPTERS:
            raise PipelineError(f"unknown adapter {excerpt(self.adapter)}; expected one of {', '.join(ADAPTERS)}")

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser, variant: Variant) -> None:
        """Add the flags that pick the grid point to a train stage's parser: ``--seed --lr`` (and ``--rank``)."""
        parser.add_argument("--seed", type=int, required=True, help="seed of this run (one of study.seeds)")
        parser.add_argument("--lr", type=float, required=True,
                            help=f"peak learning rate (one of study.{variant}_lrs)")
        if variant == "lora":
            parser.add_argument("--rank", type=int, required=True, help="LoRA rank (one of study.ranks)")
            parser.add_argument("--target-set", default=DEFAULT_TARGET_SET,
                                help="modules to adapt: a name of lora.target_sets (one of study.target_sets)")
            parser.add_argument("--adapter", default="lora", choices=ADAPTERS,
                                help="lora or dora (one of study.adapters)")

    @classmethod
    def from_args(cls, args: argparse.Namespace, variant: Variant) -> RunSpec:
        """The spec that :meth:`add_arguments`' flags parsed into ``args`` name."""
        if variant != "lora":
            return cls(variant, args.seed, args.lr)
        return cls(variant, args.seed, args.lr, args.rank, args.target_set, args.adapter)

    @classmethod
    def grid(cls, study: StudyConfig) -> list[RunSpec]:
        """Every train instance of the study, in dvc.yaml's order: the stages scratch, full, lora, each one's
        ``matrix:`` expanded as DVC does (the product of its lists in their order: seed, lr; lora: rank, target
        set, adapter, seed, lr)."""
        specs = []
        for variant in VARIANTS:
            if variant == "lora":
                specs += [cls(variant, seed, lr, rank, targets, adapter) for rank in study.ranks
                          for targets in study.target_sets for adapter in study.adapters for seed in study.seeds
                          for lr in study.lrs(variant)]
            else:
                specs += [cls(variant, seed, lr) for seed in study.seeds for lr in study.lrs(variant)]
        return specs

    @property
    def tag(self) -> str:
        """``lora-default-r8-s42-lr0.002`` (lora: adapter, target set, rank) or ``s42-lr0.0001``: the name dvc.yaml
        gives the instance's folders.

        DVC writes ``${item.lr}`` with Python's ``str`` of the float it read from params.yaml, and the stage reads
        that text back with ``float``; ``str`` of a float is the shortest text that reads back as it, so this is
        the folder's name for every learning rate params.yaml holds as a float (``2.0e-3`` -> ``lr0.002``,
        ``5.0e-5`` -> ``lr5e-05``). A learning rate written as a YAML integer (``1``) is the exception: DVC
        writes ``lr1``, this ``lr1.0``; the train stage therefore records the name of its ``--out`` folder.
        """
        lora = f"{self.adapter}-{self.target_set}-r{self.rank}-" if self.variant == "lora" else ""
        return lora + f"s{self.seed}-lr{self.lr}"

    @property
    def row(self) -> str:
        """The study row the run belongs to: :func:`study_row` of its configuration."""
        return study_row(self.variant, self.rank, self.target_set, self.adapter)

    @property
    def stage(self) -> str:
        """The DVC stage that trains it: ``train_<variant>``."""
        return f"train_{self.variant}"

    @property
    def run_name(self) -> str:
        """The name of the instance's MLflow run, ``train_lora r8 s42 lr0.002`` (``train_lora dora all_linear r8 …``
        for another adapter or target set; `` [<exp>]`` appended under ``dvc exp run``): what the tracker builds
        from :attr:`stage` and :meth:`tracking_tags`."""
        unusual = [v for v, usual in ((self.adapter, "lora"), (self.target_set, DEFAULT_TARGET_SET)) if v != usual]
        lora = "".join(f" {v}" for v in unusual) + f" r{self.rank}" if self.variant == "lora" else ""
        return f"{self.stage}{lora} s{self.seed} lr{self.lr}"

    def fields(self) -> dict[str, Any]:
        """``variant``, ``rank``, ``target_set``, ``adapter``, ``seed``, ``lr``: the grid point as the run record
        and MLflow's ``run.*`` params hold it."""
        return {"variant": self.variant, "rank": self.rank, "target_set": self.target_set, "adapter": self.adapter,
                "seed": self.seed, "lr": self.lr}

    def tracking_tags(self, **extra: Any) -> dict[str, Any]:
        """The MLflow tags of the instance's run: stage, variant, seed, lr, ``extra``, and for lora ``lora_rank``,
        ``rank``, ``target_set`` and ``adapter``."""
        tags = {"stage": self.stage, "variant": self.variant, "seed": self.seed, "lr": self.lr, **extra}
        if self.rank is not None:
            tags["lora_rank"] = tags["rank"] = self.rank
            tags["target_set"], tags["adapter"] = self.target_set, self.adapter
        return tags


def study_row(variant: str, rank: Optional[int], target_set: Optional[str] = None,
              adapter: Optional[str] = None) -> str:
    """The name of a study row (a key of ``rows`` in evaluate.json and study.json): the variant's own name, or for
    a LoRA configuration ``<adapter>_r<rank>``, with ``_<target set>`` unless it is the default set: ``lora_r8``,
    ``dora_r8``, ``lora_r8_all_linear``."""
    if rank is None:
        return variant
    suffix = f"_{target_set}" if target_set not in (None, DEFAULT_TARGET_SET) else ""
    return f"{adapter or 'lora'}_r{rank}{suffix}"


_ROW = re.compile(r"(lora|dora)_r(\d+)(?:_([A-Za-z][A-Za-z0-9_]*))?")


def row_rank(name: str) -> Optional[int]:
    """The LoRA rank a study row's name holds (``lora_r8``, ``dora_r8_all_linear`` -> 8), or None for any other
    row."""
    match = _ROW.fullmatch(name)
    return int(match.group(2)) if match else None


def row_configuration(name: str) -> Optional[tuple[str, str, int]]:
    """The (adapter, target set, rank) a LoRA study row's name holds (``lora_r8`` -> ("lora", "default", 8)), or
    None for any other row."""
    match = _ROW.fullmatch(name)
    if not match:
        return None
    return match.group(1), match.group(3) or DEFAULT_TARGET_SET, int(match.group(2))


@dataclass(frozen=True)
class TrainRecord:
    """What one train instance gave (``metrics/train/<variant>-<tag>.json``, a DVC metrics file): its grid point,
    the name of its folders (``tag``), and the run's scores, length, cost and size.

    A version 1 file holds exactly these keys, and no ``format``/``version`` keys (a DVC metrics file is flat
    values, each one shown by ``dvc metrics show``); a later version adds both, and :func:`read_train_record`
    reads no other version than :attr:`VERSION`.
    """

    FORMAT: ClassVar[str] = "lora-pipeline-train-run"
    VERSION: ClassVar[int] = 1
    # which run; the rest: its metrics
    RUN_KEYS: ClassVar[tuple[str, ...]] = ("variant", "rank", "seed", "lr", "tag", "target_set", "adapter")

    variant: Variant
    rank: Optional[int]  # None unless lora
    seed: int
    lr: float
    tag: str  # the name of the instance's --out folder (and of its curve and prediction files)
    val_macro_f1: float  # of the best validation: the kept checkpoint
    best_epoch: float
    best_step: int
    epochs: float  # at the last validation
    steps: int
    planned_steps: int
    stop_reason: str
    stopped_by: str  # plateau | cap
    converged: bool
    validations: int
    seconds_to_best: float
    cpu_seconds_to_best: float
    train_seconds: float
    train_cpu_seconds: float
    samples_per_second: float
    peak_memory_mb: float
    trainable_params: int
    total_params: int
    trainable_percent: float
    size_on_disk_mb: float  # weights + their config
    device: str
    precision: str  # the compute (autocast) dtype: bf16 | fp32
    param_dtype: str  # the dtype the trained parameters were held and updated in
    # lora: the run's target set and adapter (None for the other variants). A record written before the study
    # had these axes has neither key (nor adapter_params); its run used the default set and LoRA (the only ones).
    target_set: Optional[str] = None
    adapter: Optional[str] = None
    # the parameters the adapter layers add (A, B, DoRA's magnitudes): 0 for scratch/full, None in such older records
    adapter_params: Optional[int] = None

    def __post_init__(self) -> None:
        if self.variant == "lora" and self.target_set is None:
            object.__setattr__(self, "target_set", DEFAULT_TARGET_SET)
        if self.variant == "lora" and self.adapter is None:
            object.__setattr__(self, "adapter", "lora")

    def spec(self) -> RunSpec:
        """The grid point the run trained."""
        return RunSpec(self.variant, self.seed, self.lr, self.rank, self.target_set, self.adapter)

    def to_json(self) -> dict[str, Any]:
        """The file's JSON object: every field under its name."""
        return dataclasses.asdict(self)

    def metrics(self) -> dict[str, Any]:
        """The fields other than :attr:`RUN_KEYS`: what the run measured."""
        return {k: v for k, v in self.to_json().items() if k not in self.RUN_KEYS}


def read_train_record(path: str | Path) -> TrainRecord:
    """The train run record at ``path``.

    Raises:
        PipelineError: unreadable, not a train run record, another version, or a key of this version missing (one
            line each).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise PipelineError(f"{path}: unreadable ({excerpt(str(err), quote=False)})") from None
    if not isinstance(data, dict) or data.get("format", TrainRecord.FORMAT) != TrainRecord.FORMAT:
        raise PipelineError(f"{path}: not a lora-pipeline train run record")
    if data.get("version", 1) != TrainRecord.VERSION:
        raise PipelineError(f"{path}: train run record version {excerpt(data.get('version'))}, but this lora-pipeline "
                            f"reads version {TrainRecord.VERSION}; use the lora-pipeline that wrote it, or retrain "
                            "(`dvc repro -f train_<variant>`)")
    names = [f.name for f in dataclasses.fields(TrainRecord)]
    missing = [n for n in names if n not in data and n not in ("target_set", "adapter", "adapter_params")]
    if missing:
        raise PipelineError(f"{path}: a train run record without {listing(missing)}; retrain "
                            "(`dvc repro -f train_<variant>`) with this lora-pipeline")
    return TrainRecord(**{n: data[n] for n in names if n in data})

CARD = "classifier.json"
_FORMAT = "lora-pipeline-classifier"


@dataclass(frozen=True)
class ModelCard:
    """What a trained model directory is and how to feed it (``classifier.json``)."""

    variant: Variant
    labels: tuple[str, ...]
    max_length: int
    text_pair: bool  # trained on sentence pairs: inputs need ``text`` and ``text_pair``
    precision: str  # train.precision it was trained with: auto | fp32 | bf16
    base_model: Optional[str] = None  # LoRA: model.name of the base (HF id, directory or package:<pkg>/<dir>)
    format: str = _FORMAT
    version: int = 1

    def write(self, directory: str | Path) -> None:
        data = dataclasses.asdict(self)
        data["labels"] = list(self.labels)
        (Path(directory) / CARD).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def read_card(directory: str | Path) -> ModelCard:
    """The card of a model directory.

    Raises:
        PipelineError: not a directory, no ``classifier.json`` (not written by a train stage), or a card
            without its label map.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise PipelineError(f"model {excerpt(str(directory))}: no such directory. Give a models/<variant>/<tag> "
                            "directory written by a train stage, or an MLflow model URI (models:/name@alias)")
    path = directory / CARD
    if not path.is_file():
        raise PipelineError(f"model {excerpt(str(directory))}: no {CARD}, so not a model directory written by a "
                            "lora-pipeline train stage (rerun it with this version: `dvc repro -f train_<variant>`)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise PipelineError(f"{path}: unreadable ({excerpt(str(err), quote=False)})") from None
    if data.get("format") != _FORMAT or not data.get("labels"):
        raise PipelineError(f"{path}: not a lora-pipeline classifier card, or its label map is missing")
    if data.get("version", 1) != ModelCard.version:
        raise PipelineError(f"{path}: card version {excerpt(data.get('version'))}, but this lora-pipeline reads "
                            f"version {ModelCard.version}; use the lora-pipeline that wrote it, or retrain "
                            "(`dvc repro -f train_<variant>`)")
    known = {f.name for f in dataclasses.fields(ModelCard)}
    return ModelCard(**{k: (tuple(v) if k == "labels" else v) for k, v in data.items() if k in known})



# a paired comparison's verdict (statistics.vs_reference) as the sentences and the report say it
VERDICT_PHRASES = {"better": "better than", "worse": "worse than", "indistinguishable": "indistinguishable from"}


def detail_rows(record_row: Optional[str]) -> tuple[str, ...]:
    """The rows with per-class F1 and a confusion matrix, in report order: scratch, full, the record LoRA row
    (when there is one), the TF-IDF reference."""
    return tuple(n for n in ("scratch", "full", record_row, "tfidf_logreg") if n)


ANSWER_TAG_CHARS = 100  # the ``answer`` tag, a column of the runs table; the run's description holds it whole


def answer_tags(answer: Mapping[str, Any]) -> dict:
    """The run's ``answer`` tag (cut at a word, with "…"), ``answer_rank``, and its description (the
    ``mlflow.note.content`` tag, Markdown in the UI's Overview): the whole answer and its equal-cost reading."""
    sentence = answer["sentence"]
    short = sentence if len(sentence) <= ANSWER_TAG_CHARS else \
        sentence[:ANSWER_TAG_CHARS - 1].rsplit(" ", 1)[0].rstrip(" ,;:") + "…"
    note = "\n\n".join(text for text in (sentence, answer.get("equal_cost")) if text)
    return {"answer": short, "answer_rank": answer["rank"], "mlflow.note.content": note}
