"""Parts of the study file that the figures draw: the adapters' spectra, the subspace similarities between two
ranks' adapters, each run's validation curve, and a merged study's parts (:mod:`lora_pipeline.study_file` holds
them and re-exports these classes)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional

from .checked_json import Record

__all__ = ["LayerSpectrum", "Part", "SeedCurve", "Spectrum", "Subspace"]


@dataclass(frozen=True)
class LayerSpectrum(Record):
    singular_values: tuple[float, ...]  # of ΔW, descending
    effective_rank: int


@dataclass(frozen=True)
class Spectrum(Record):
    """The singular values of each targeted layer's update of one LoRA run."""

    rank: int
    seed: int
    tag: str
    layers: Mapping[str, LayerSpectrum]
    row: Optional[str] = None  # the run's study row (None in a study whose record predates it)


@dataclass(frozen=True)
class Subspace(Record):
    """φ(A_small, A_large, i, j) of one layer between two chosen adapters of one seed (LoRA paper, Figure 3)."""

    seed: int
    small_rank: int
    large_rank: int
    layer: str
    grid: tuple[tuple[float, ...], ...]
    small_tag: Optional[str]  # the runs it pairs (None in a study whose record predates them)
    large_tag: Optional[str]
    family: Optional[str] = None  # the (adapter, target set) of both runs as ``adapter/target set``; None: lora/default


@dataclass(frozen=True)
class SeedCurve(Record):
    """One run's validations as columns (lora_pipeline.curves.curve_from_rows)."""

    seed: int
    step: tuple[Optional[float], ...]
    seconds: tuple[Optional[float], ...]
    cpu_seconds: tuple[Optional[float], ...]
    val_macro_f1: tuple[Optional[float], ...]


@dataclass(frozen=True)
class Part(Record):
    """A part of a study run apart (``lora-pipeline merge``): its seeds and how many runs it added to the parts
    before it (a run two parts hold, such as full fine-tuning evaluated again beside a new rank, counts once)."""

    seeds: tuple[int, ...]
    runs: int
