"""The study file (``study.json``), typed: what the evaluate stage and ``lora-pipeline rebuild`` write
(:func:`lora_pipeline.record.build_study`) and the report stage, its figures and the answer's MLflow tags read.

One frozen dataclass per part (a row, its intervals, the answer, the equal-cost reading, the runs table…), the
file's :data:`FORMAT` and :data:`VERSION`, and a checked reader: :func:`read_study` reads no other version, and a
key missing, unknown or of another kind is one line naming the file, the key and how to rebuild it. A file holds
every field under its name, an unknown value as ``null`` (never a missing key), under the keys evaluate has always
written. Plain JSON stays only where the data is open-ended: the params the record was computed with (the params.yaml
sections of its day), the split stage's data summary (its own file), the mean learning curves' points (keyed by
their clock). Parts are checked on construction too (:mod:`lora_pipeline.checked_json`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from .checked_json import Mismatch, Record, check_header, decode, load_json
from .config import ADAPTERS, DEFAULT_TARGET_SET, VARIANTS
from .errors import PipelineError
from .files import write_json
from .records import detail_rows, study_row
from .study_parts import LayerSpectrum, Part, SeedCurve, Spectrum, Subspace

__all__ = ["FORMAT", "VERSION", "Answer", "ClassScores", "CostRatios", "Detail", "EqualCost", "FixedModels",
           "LayerSpectrum", "LrSearch", "MetricSummary", "Part", "ReferenceScores", "SeedCurve", "SequenceStep",
           "Spectrum", "StudyFile", "StudyRow", "StudyRun", "Subspace", "ToDecide", "VsFull", "read_study", "row_order"]

FORMAT, VERSION = "lora-pipeline-study", 3
REBUILD = ("rebuild it with this lora-pipeline: `dvc repro -f evaluate`, or `lora-pipeline rebuild <folder>` for a "
           "folder holding its record.json.gz")


@dataclass(frozen=True)
class MetricSummary(Record):
    """A row's test metric: the mean over seeds with its interval (over seeds and test examples with ≥ 2 seeds,
    ``covers`` "method"; else over test examples, "these models") and the interval's variance budget."""

    mean: float
    std: Optional[float]  # across seeds (ddof 1); None with one seed
    low: float
    high: float
    interval: str  # how it was computed, in words
    covers: str  # method | these models
    se: float
    se_test: float
    se_seeds: float
    per_seed: tuple[float, ...]


@dataclass(frozen=True)
class LrSearch(Record):
    """Where the chosen learning rate sits in its grid: interior (searched), lowest / highest (not searched beyond
    that end) or only (one rate)."""

    grid: tuple[float, ...]
    position: str
    searched: bool
    seeds: tuple[int, ...]  # the seeds every rate was trained with: the rates' validation means are over these


@dataclass(frozen=True)
class FixedModels(Record):
    """LoRA − full over test examples only, these trained models fixed (beside a method-level interval)."""

    low: float
    high: float
    verdict: str


@dataclass(frozen=True)
class ToDecide(Record):
    """Roughly what data would decide an interval that straddles −tolerance (statistics.needed_to_decide)."""

    n_examples: Optional[int]
    seeds: Optional[int]
    cause: str  # test-set size | seed spread
    note: Optional[str]


@dataclass(frozen=True)
class VsFull(Record):
    """A LoRA row's paired difference from full fine-tuning (LoRA − full) with its method-level interval."""

    metric: str
    estimate: float
    difference: float  # the estimate, under the name the sentences use
    low: float
    high: float
    confidence: float
    se: float
    se_test: float
    se_seeds: float
    df: Optional[float]  # Welch–Satterthwaite; None when only the test component exists
    n_examples: int
    seeds_a: int
    seeds_b: int
    n_resamples: int
    mc_error: float
    covers: str  # method | these models
    method: str
    verdict: str  # better | worse | indistinguishable
    mc_close: bool  # a deciding end within two Monte-Carlo errors of its threshold
    these_models: FixedModels
    to_decide: Optional[ToDecide]  # only where the interval straddles −tolerance


@dataclass(frozen=True)
class StudyRow(Record):
    """One row of the study, a variant or a LoRA configuration (adapter, target set, rank): the learning rate chosen
    on validation, the test metrics over its seeds, flags and notes per seed, costs (sizes of the first seed, means
    over seeds) and how each seed stopped."""

    variant: str
    rank: Optional[int]  # None unless lora
    lr: float
    seeds: tuple[int, ...]
    val_macro_f1_by_lr: Mapping[str, float]  # mean validation macro-F1 per rate of the grid (``f"{lr:g}"``)
    val_macro_f1: float
    lr_search: LrSearch
    macro_f1: MetricSummary
    accuracy: MetricSummary
    degenerate: tuple[Optional[str], ...]  # per seed: why its test predictions are degenerate, or None
    degenerate_val: Optional[tuple[Optional[str], ...]]  # the same on validation (None: no validation predictions)
    degenerate_why: Optional[str]  # why a degenerate row could not learn
    notes: tuple[Optional[str], ...]  # per seed: the TF-IDF note, or None
    trainable_params: Optional[int]
    trainable_percent: Optional[float]
    size_on_disk_mb: Optional[float]
    total_params: Optional[int]
    precision: Optional[str]
    train_seconds: Optional[float]
    train_cpu_seconds: Optional[float]
    seconds_to_best: Optional[float]
    cpu_seconds_to_best: Optional[float]
    peak_memory_mb: Optional[float]
    steps: Optional[float]
    planned_steps: Optional[float]
    epochs: Optional[float]
    best_step: Optional[float]
    stopped: tuple[Optional[str], ...]  # per seed: its stop reason
    stopped_by: tuple[Optional[str], ...]  # per seed: plateau | cap
    converged: tuple[Optional[bool], ...]  # per seed (None: a run from before the field)
    vs_full: Optional[VsFull]  # LoRA rows, where the study has full fine-tuning
    target_set: Optional[str] = None  # LoRA rows: the name of the target set (None for scratch/full)
    adapter: Optional[str] = None  # LoRA rows: lora | dora (None for scratch/full)
    adapter_params: Optional[int] = None  # the parameters the adapter layers add (None: a seed's record lacks it)

    @property
    def name(self) -> str:
        """``lora_r8``, ``dora_r8_all_linear`` or the variant: the row's key in ``rows`` (records.study_row)."""
        return study_row(self.variant, self.rank, self.target_set, self.adapter)

    @property
    def family(self) -> Optional[tuple[str, str]]:
        """``(adapter, target set)`` of a LoRA row (its ranks differ only in rank); None for scratch/full."""
        if self.variant != "lora":
            return None
        return self.adapter or "lora", self.target_set or DEFAULT_TARGET_SET

    @property
    def is_degenerate(self) -> bool:
        """Some seed is degenerate on test."""
        return any(self.degenerate)

    @property
    def all_converged(self) -> bool:
        """No seed hit its cap while still improving (a run from before the field counts as converged)."""
        return all(c is not False for c in self.converged)

    @property
    def capped_seeds(self) -> list[int]:
        """The seeds that hit their step cap while still improving."""
        return [s for s, c in zip(self.seeds, self.converged) if c is False]


@dataclass(frozen=True)
class SequenceStep(Record):
    """One LoRA configuration of the answer's fixed sequence: its status there, its own (unadjusted) status,
    borderline or not."""

    rank: int
    status: str  # within | worse | undecided | not converged | degenerate | not tested
    unadjusted: str
    mc_close: bool
    row: Optional[str] = None  # the configuration's row name (None only in a hand-built step)


@dataclass(frozen=True)
class CostRatios(Record):
    """The answer's rank against full fine-tuning: each cost as a ratio (None where one side is unmeasured)."""

    trainable_params: Optional[float]
    train_time: Optional[float]
    peak_memory_mb: Optional[float]
    size_on_disk_mb: Optional[float]


@dataclass(frozen=True)
class Answer(Record):
    """The study's answer (lora_pipeline.answer): the LoRA configuration with the fewest trainable parameters within
    the tolerance under the fixed sequence, its sentence, the sequence, and for a passing one its difference and
    cost ratios."""

    rank: Optional[int]  # None: no configuration passed
    sentence: str
    sequence: tuple[SequenceStep, ...]
    procedure: str
    closest_rank: Optional[int]  # post hoc, without an interval, when no rank passed
    equal_cost: Optional[str]  # the equal-cost sentence
    cost_ratios: Optional[CostRatios]
    difference: Optional[VsFull]
    row: Optional[str] = None  # the answer's row name (``lora_r8``, ``dora_r2_all_linear``); None: none passed
    closest_row: Optional[str] = None  # the post-hoc closest row, when none passed


@dataclass(frozen=True)
class EqualCost(Record):
    """Where each LoRA configuration stood on validation when full fine-tuning reached its best, on ``clock``
    (lora_pipeline.curves.equal_cost)."""

    clock: str
    budget: float  # full fine-tuning's mean cost to its best
    full_best: float
    at_budget: Mapping[str, Optional[float]]  # per LoRA row name
    rank: Optional[int]
    time_within: Optional[float]
    ratio: Optional[float]
    sentence: str
    row: Optional[str] = None  # the row whose time to come within is reported (``rank`` is its rank)


@dataclass(frozen=True)
class ReferenceScores(Record):
    """The TF-IDF reference's test scores with their bootstrap intervals (these models)."""

    macro_f1: float
    macro_f1_low: float
    macro_f1_high: float
    accuracy: float
    accuracy_low: float
    accuracy_high: float


@dataclass(frozen=True)
class ClassScores(Record):
    precision: float
    recall: float
    f1: float
    support: int


@dataclass(frozen=True)
class Detail(Record):
    """Per-class scores and the confusion matrix (rows: true class) of one detail row's first seed."""

    seed: Optional[int]  # None for the TF-IDF reference
    per_class: Mapping[str, ClassScores]
    confusion_matrix: tuple[tuple[int, ...], ...]


@dataclass(frozen=True)
class StudyRun(Record):
    """One train instance of the grid, as its run record states it, and whether its row chose its rate."""

    variant: str
    rank: Optional[int]
    seed: int
    lr: float
    tag: str
    val_macro_f1: float
    steps: Optional[int]
    planned_steps: Optional[int]
    epochs: Optional[float]
    best_step: Optional[int]
    stop_reason: Optional[str]
    stopped_by: Optional[str]
    converged: Optional[bool]
    train_seconds: Optional[float]
    train_cpu_seconds: Optional[float]
    seconds_to_best: Optional[float]
    cpu_seconds_to_best: Optional[float]
    peak_memory_mb: Optional[float]
    trainable_params: Optional[int]
    trainable_percent: Optional[float]
    total_params: Optional[int]
    size_on_disk_mb: Optional[float]
    precision: Optional[str]
    device: Optional[str]
    samples_per_second: Optional[float]
    chosen: bool  # its row chose its learning rate
    target_set: Optional[str] = None  # lora: its target set (a record from before the axis: the default set)
    adapter: Optional[str] = None  # lora: lora | dora (a record from before the axis: lora)
    adapter_params: Optional[int] = None  # the parameters its adapter layers add (None: not recorded)

    @property
    def row(self) -> str:
        """The study row the run belongs to."""
        return study_row(self.variant, self.rank, self.target_set, self.adapter)


@dataclass(frozen=True)
class StudyFile(Record):
    """``study.json``: the study computed from its record (lora_pipeline.record.build_study)."""

    labels: tuple[str, ...]
    n_test: int
    n_val: int
    confidence: float
    tolerance: float
    rows: Mapping[str, StudyRow]  # by row name (study_row)
    tfidf_logreg: ReferenceScores
    answer: Answer
    equal_cost: Optional[EqualCost]  # None when full fine-tuning has no curve on the clock
    record: Optional[str]  # the LoRA row shown in detail; None without LoRA rows
    detail: Mapping[str, Detail]  # by row name, and tfidf_logreg
    runs: tuple[StudyRun, ...]
    learning_curves: Mapping[str, Mapping[str, tuple[Mapping[str, float], ...]]]  # row → clock → mean points
    validation_curves: Mapping[str, tuple[SeedCurve, ...]]  # row → each seed's validations
    spectra: tuple[Spectrum, ...]
    subspace: tuple[Subspace, ...]
    energy: float  # the share of an update's energy its effective rank holds
    params: Mapping[str, Mapping[str, Any]]  # the record's params sections, as their params.yaml had them
    dataset: Optional[Mapping[str, Any]]  # the split stage's data summary (dataset.json)
    parts: Optional[tuple[Part, ...]]  # a merged study's parts; None for a study run in one go

    def to_json(self) -> dict[str, Any]:
        """The file's JSON object: ``format``, ``version`` and every field under its name."""
        return {"format": FORMAT, "version": VERSION, **super().to_json()}

    def write(self, path: str | Path) -> None:
        """Write the file atomically (indented JSON, keys sorted)."""
        write_json(path, self.to_json())

    @classmethod
    def from_json(cls, data: Any, where: str = "study file") -> StudyFile:
        """The study a JSON object holds.

        Raises:
            PipelineError: not a study file, another version, or a key missing, unknown or of another kind (one
                line, naming ``where`` and the key).
        """
        body = check_header(data, where, fmt=FORMAT, version=VERSION, kind="study file", marker="rows",
                            older="it was written by an older evaluate stage", fix=REBUILD)
        try:
            return decode(cls, body)
        except Mismatch as bad:
            raise PipelineError(f"{where}: {bad} (study file version {VERSION}); {REBUILD}") from None

    def ordered_rows(self) -> list[tuple[str, StudyRow]]:
        """The rows as scratch, full, then the LoRA configurations by (adapter in :data:`ADAPTERS` order, target set
        in the study's order, then by name, rank) (the file holds them with sorted keys)."""
        return sorted(self.rows.items(), key=lambda kv: row_order(kv[1], self.params.get("study", {})
                                                                  .get("target_sets") or ()))

    def lora_rows(self) -> list[StudyRow]:
        """The LoRA rows in report order (by rank within each (adapter, target set))."""
        return [row for _, row in self.ordered_rows() if row.variant == "lora"]

    def families(self) -> list[tuple[str, str]]:
        """The (adapter, target set) of the LoRA rows, in report order: one for a study of ranks only."""
        return list(dict.fromkeys(row.family for row in self.lora_rows()))

    def shown_detail(self) -> dict[str, Detail]:
        """The detail rows in report order (records.detail_rows): scratch, full, the record LoRA row, TF-IDF."""
        return {n: self.detail[n] for n in detail_rows(self.record) if n in self.detail}


def row_order(row: StudyRow, target_sets: Sequence[str] = ()) -> tuple:
    """Sort key of a study row: scratch, full, then LoRA by adapter (:data:`ADAPTERS` order), target set (the
    default set first, then ``target_sets``' order, then by name) and rank."""
    variant = VARIANTS.index(row.variant) if row.variant in VARIANTS else len(VARIANTS)
    if row.variant != "lora":
        return variant, 0, 0, "", row.rank or 0
    adapter, targets = row.family
    where = list(target_sets)
    place = -1 if targets == DEFAULT_TARGET_SET else where.index(targets) if targets in where else len(where)
    return (variant, ADAPTERS.index(adapter) if adapter in ADAPTERS else len(ADAPTERS), place, targets,
            row.rank or 0)


def read_study(path: str | Path) -> StudyFile:
    """The study file at ``path``.

    Raises:
        PipelineError: no such file, not JSON, not a study file, another version, or a key missing, unknown or of
            another kind (one line each, saying how to rebuild it).
    """
    path = Path(path)
    data = load_json(path, f"study file '{path}' not found; run the evaluate stage first (`dvc repro evaluate`)",
                     REBUILD)
    return StudyFile.from_json(data, where=f"'{path}'")
