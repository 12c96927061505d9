"""A synthetic study with known numbers, built as record.build_study builds it (rows, runs, answer, learning
curves, adapter spectra), for the report tests; complete hand-made rows for the answer's tests; and a reader of the
report's Markdown tables."""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Iterable, Optional

import numpy as np

from lora_pipeline import answer as answer_lib
from lora_pipeline import curves as curves_lib
from lora_pipeline import study as study_lib
from lora_pipeline.config import (BaselineConfig, FullConfig, LoraConfig, ModelConfig, ScratchConfig, StudyConfig,
                                  TrainConfig)
from lora_pipeline.record import RUN_FIELDS
from lora_pipeline.study_file import EqualCost, StudyFile, StudyRow

LABELS = ["neg", "pos"]
LAYERS = ["bert.encoder.layer.0.attention.self.query", "bert.encoder.layer.0.attention.self.value",
          "bert.encoder.layer.1.attention.self.query"]
LAYER_EFFECTIVE = [1, 2, 3]  # each layer's effective rank, capped by the adapter's rank
FIGURES = {"rank_curve": "figures/rank_curve.png", "spectra": "figures/spectra.png", "curves": "figures/curves.png",
           "confusion": "figures/confusion.png"}
GRID = {"scratch": [4e-4], "full": [5e-5, 1e-4], "lora": [1e-3, 2e-3]}
MEANS = {"scratch": 0.70, "full": 0.88, 2: 0.85, 8: 0.87, 32: 0.875}  # test macro-F1 by variant / LoRA rank
COSTS = {"scratch": (11_171_331, 100.0, 280.0), "full": (22_714_371, 100.0, 520.0)}
CPU_PER_STEP = {"scratch": 1.5, "full": 2.0, "lora": 1.0}  # CPU-seconds of one optimizer step
TFIDF = 0.81
N_TEST = 2767
SCRATCH_REASON = f"predicts only 'neg' for all {N_TEST} test examples (collapsed)"  # statistics.degenerate_reason
CURVE_STEPS = [40, 80, 120, 160, 200, 240]  # validations of every run; the best is at step 200 unless capped
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"  # the first bytes of every PNG file
BEST_STEP, PLANNED = 200, 240


def _per_seed(mean: float, seeds: list[int], step: float = 0.002) -> list[float]:
    """Per-seed values centred on ``mean`` (their mean is ``mean``)."""
    return [mean + step * (i - (len(seeds) - 1) / 2) for i in range(len(seeds))]


def _metric(mean: float, seeds: list[int]) -> dict:
    """A row's metric in study.summarise's shape: the method-level interval (≥ 2 seeds) or, with one seed, the
    fixed-model bootstrap that covers these trained models only."""
    n = len(seeds)
    if n >= 2:
        return {"mean": mean, "std": 0.004, "low": mean - 0.01, "high": mean + 0.01, "covers": "method",
                "interval": f"estimate ± t·se, t at 3.1 Welch–Satterthwaite df, se² = paired test-example "
                            f"bootstrap (1000 resamples) + across-seed variance ({n} seeds)",
                "se": 0.0045, "se_test": 0.004, "se_seeds": 0.002, "per_seed": _per_seed(mean, seeds)}
    return {"mean": mean, "std": None, "low": mean - 0.012, "high": mean + 0.012, "covers": "these models",
            "interval": "percentile bootstrap over test examples with the models fixed (1000 resamples; 1 seeds: no "
                        "seed variance)",
            "se": 0.006, "se_test": 0.006, "se_seeds": 0.0, "per_seed": [mean]}


def _note(mean: float, tfidf: float) -> Optional[str]:
    """statistics.reference_note's sentence for a model whose macro-F1 is not better than TF-IDF's."""
    diff = mean - tfidf
    if diff - 0.013 > 0:
        return None
    verdict = "worse" if diff + 0.013 < 0 else "indistinguishable"
    return (f"not better than the TF-IDF reference: macro-F1 difference {diff:+.4f}, 95 % paired interval "
            f"[{diff - 0.013:+.4f}, {diff + 0.013:+.4f}] ({verdict})")


def _vs_full(mean: float, seeds: list[int]) -> dict:
    diff = mean - MEANS["full"]
    low, high = diff - 0.004, diff + 0.006
    verdict = "worse" if high < 0 else "better" if low > 0 else "indistinguishable"
    need = {"n_examples": 5200, "seeds": 4, "cause": "test-set size", "note": None} if low < -0.01 < high else None
    return vs_full(difference=diff, low=low, high=high, verdict=verdict,
                   covers="method" if len(seeds) >= 2 else "these models", seeds_a=len(seeds), seeds_b=len(seeds),
                   these_models={"low": diff - 0.003, "high": diff + 0.005, "verdict": verdict}, to_decide=need)


def vs_full(**fields: Any) -> dict:
    """A LoRA row's ``vs_full`` with every key (placeholders where ``fields`` names none)."""
    diff = fields.get("difference", 0.0)
    base = {"metric": "macro_f1", "difference": diff, "estimate": diff, "low": diff - 0.005, "high": diff + 0.005,
            "verdict": "indistinguishable", "covers": "method", "confidence": 0.95, "se": 0.003, "se_test": 0.0025,
            "se_seeds": 0.0015, "df": 30.0, "seeds_a": 2, "seeds_b": 2, "n_examples": N_TEST, "n_resamples": 1000,
            "mc_error": 0.0003, "mc_close": False, "method": "estimate ± t·se (synthetic)",
            "these_models": {"low": diff - 0.004, "high": diff + 0.004, "verdict": "indistinguishable"},
            "to_decide": None}
    return {**base, **fields, "estimate": fields.get("difference", diff)}


def study_row(variant: str, rank: Optional[int] = None, **fields: Any) -> StudyRow:
    """A complete study row with placeholder numbers, ``fields`` replacing any of them (nested parts as dicts)."""
    seeds = fields.get("seeds", (42,))
    base = {"variant": variant, "rank": rank, "lr": 1e-3, "seeds": seeds, "val_macro_f1_by_lr": {"0.001": 0.8},
            "val_macro_f1": 0.8, "lr_search": {"grid": [1e-3], "position": "only", "searched": False, "seeds": list(seeds)},
            "macro_f1": _metric(0.85, list(seeds)), "accuracy": _metric(0.85, list(seeds)),
            "degenerate": [None] * len(seeds), "degenerate_val": [None] * len(seeds), "degenerate_why": None,
            "notes": [None] * len(seeds), "trainable_params": 1000, "trainable_percent": 1.0,
            "size_on_disk_mb": 1.0, "total_params": 100_000, "precision": "fp32", "train_seconds": 100.0,
            "train_cpu_seconds": 200.0, "seconds_to_best": 80.0, "cpu_seconds_to_best": 160.0,
            "peak_memory_mb": 1000.0, "steps": 240.0, "planned_steps": 240.0, "epochs": 1.0, "best_step": 200.0,
            "stopped": ["plateau"] * len(seeds), "stopped_by": ["plateau"] * len(seeds),
            "converged": [True] * len(seeds), "vs_full": None}
    return StudyRow(**{**base, **fields})


def equal_cost(sentence: str) -> EqualCost:
    """An equal-cost reading that only its sentence matters for."""
    return EqualCost(clock="cpu_seconds", budget=400.0, full_best=0.87, at_budget={"lora_r8": 0.86}, rank=8,
                     time_within=200.0, ratio=0.5, sentence=sentence)


def _row(variant: str, rank: Optional[int], seeds: list[int], bad: Iterable[int], capped: Iterable[int],
         tfidf: float) -> StudyRow:
    mean = MEANS[rank if rank is not None else variant]
    grid = GRID[variant]
    params, percent, seconds = COSTS[variant] if rank is None else (rank * 27_648 + 150_000, 0.5 + rank / 100,
                                                                    100.0 + 5 * rank)
    converged = [s not in capped for s in seeds]
    reasons = [SCRATCH_REASON if s in bad else None for s in seeds]
    row = {"variant": variant, "rank": rank, "lr": grid[0], "seeds": seeds,
           "val_macro_f1_by_lr": {f"{lr:g}": mean - 0.01 * (i + 1) for i, lr in enumerate(grid)},
           "val_macro_f1": mean - 0.01, "macro_f1": _metric(mean, seeds), "accuracy": _metric(mean - 0.04, seeds),
           "lr_search": {"grid": grid, "position": "interior", "searched": True, "seeds": list(seeds)},  # no "not searched" notes
           "degenerate": reasons, "degenerate_val": list(reasons), "degenerate_why": None,
           "notes": [_note(v, tfidf) for v in _per_seed(mean, seeds)],
           "trainable_params": params, "trainable_percent": percent, "size_on_disk_mb": params * 4 / 2**20,
           "total_params": 22_714_371, "precision": "fp32", "train_seconds": seconds,
           "train_cpu_seconds": PLANNED * CPU_PER_STEP[variant], "seconds_to_best": seconds * 0.8,
           "cpu_seconds_to_best": BEST_STEP * CPU_PER_STEP[variant], "peak_memory_mb": 1800.0,
           "steps": float(PLANNED), "planned_steps": float(PLANNED), "epochs": 0.79, "best_step": float(BEST_STEP),
           "stopped": [_stop_reason(c) for c in converged],
           "stopped_by": ["plateau" if c else "cap" for c in converged],
           "converged": converged, "vs_full": _vs_full(mean, seeds) if variant == "lora" else None}
    typed = StudyRow(**row)
    return dataclasses.replace(typed, degenerate_why=study_lib.explain_degenerate(typed))  # as study.summarise does


def _stop_reason(converged: bool) -> str:
    if converged:
        return f"plateau: no gain > 0.001 in validation macro-F1 for 2 validations (best at step {BEST_STEP})"
    return f"cap: reached max_steps {PLANNED} (0.79 epochs) while still improving (last gain at step {PLANNED})"


def _runs(rows: dict[str, StudyRow]) -> list[dict]:
    runs = []
    for row in rows.values():
        for lr in GRID[row.variant]:
            for seed, converged in zip(row.seeds, row.converged):
                best = BEST_STEP if converged else PLANNED
                prefix = f"r{row.rank}-" if row.rank else ""
                runs.append({**dict.fromkeys(RUN_FIELDS), "variant": row.variant, "rank": row.rank, "seed": seed,
                             "lr": lr, "tag": f"{prefix}s{seed}-lr{lr:g}",
                             "val_macro_f1": row.val_macro_f1_by_lr[f"{lr:g}"], "chosen": lr == row.lr,
                             "steps": PLANNED, "planned_steps": PLANNED, "epochs": 0.79, "best_step": best,
                             "converged": converged, "stopped_by": "plateau" if converged else "cap",
                             "stop_reason": _stop_reason(converged) + f" | lr {lr:g}",  # a pipe must not split a cell
                             "train_seconds": row.train_seconds,
                             "cpu_seconds_to_best": best * CPU_PER_STEP[row.variant]})
    return runs


def _seed_curves(row: StudyRow) -> list[dict]:
    """Each seed's validation curve (curves.curve_from_rows' columns): rising to the row's validation score at
    step 200 then flat-ish, or still rising at the cap when the seed did not converge."""
    per_cpu = CPU_PER_STEP[row.variant]
    out = []
    for seed, best, converged in zip(row.seeds, _per_seed(row.val_macro_f1, list(row.seeds)), row.converged):
        top = BEST_STEP if converged else PLANNED
        f1 = [best - 0.2 * (1 - min(s, top) / top) - (0.005 if s > top else 0.0) for s in CURVE_STEPS]
        out.append(curves_lib.curve_from_rows([{"step": s, "seconds": 0.5 * s, "cpu_seconds": per_cpu * s,
                                                "val_macro_f1": v} for s, v in zip(CURVE_STEPS, f1)], seed))
    return out


def _adapters(ranks: list[int], seeds: list[int]) -> tuple[list, list]:
    rng = np.random.default_rng(0)
    spectra = [{"rank": r, "seed": s, "tag": f"r{r}-s{s}-lr0.001", "row": f"lora_r{r}",
                "layers": {name: {"singular_values": sorted(rng.uniform(0.01, 1.0, r).tolist(), reverse=True),
                                  "effective_rank": min(r, eff)} for name, eff in zip(LAYERS, LAYER_EFFECTIVE)}}
               for r in ranks for s in seeds]
    subspace = [{"seed": s, "small_rank": r, "large_rank": max(ranks), "layer": name,
                 "grid": rng.uniform(0, 1, (r, max(ranks))).round(4).tolist(), "small_tag": f"r{r}-s{s}-lr0.001",
                 "large_tag": f"r{max(ranks)}-s{s}-lr0.001", "family": None}
                for r in ranks[:-1] for s in seeds for name in LAYERS]
    return spectra, subspace


def _detail(name: str, seed: Optional[int]) -> dict:
    per_class = {c: {"precision": 0.8, "recall": 0.9, "f1": 0.85 - 0.1 * i, "support": 100}
                 for i, c in enumerate(LABELS)}
    return {"seed": seed, "per_class": per_class, "confusion_matrix": [[90, 10], [25, 75]]}


def params_dict() -> dict[str, dict]:
    """The params study.json carries (dataclass defaults of the sections record.build_study passes on)."""
    return {n: dataclasses.asdict(c()) for n, c in (("model", ModelConfig), ("train", TrainConfig),
                                                    ("scratch", ScratchConfig), ("full", FullConfig),
                                                    ("lora", LoraConfig), ("study", StudyConfig),
                                                    ("baseline", BaselineConfig))}


def make_study(ranks: Iterable[int] = (2, 32), seeds: Iterable[int] = (42, 43), *, scratch: bool = True,
               bad: Optional[dict[str, Iterable[int]]] = None, capped: Optional[dict[str, Iterable[int]]] = None,
               curves: bool = True, tfidf: float = TFIDF, dataset: Optional[dict] = None) -> StudyFile:
    """A study as record.build_study builds it, with known numbers.

    Args:
        bad: degenerate seeds per row (default: scratch's first seed).
        capped: seeds per row that hit their step cap while still improving (converged False).
        curves: whether the study has learning curves (and so an equal-cost reading).
        tfidf: the TF-IDF reference's macro-F1; rows not better than it get a note.
    """
    ranks, seeds = sorted(ranks), list(seeds)
    bad = bad if bad is not None else {"scratch": [seeds[0]]}
    capped = capped or {}
    names = (["scratch"] if scratch else []) + ["full"] + [f"lora_r{r}" for r in ranks]
    rows = {n: _row("lora" if n.startswith("lora") else n, int(n[6:]) if n.startswith("lora") else None, seeds,
                    bad.get(n, []), capped.get(n, []), tfidf) for n in names}
    seed_curves = {n: _seed_curves(r) for n, r in rows.items()} if curves else {}
    first = answer_lib.answer(rows, 0.01, 0.95)
    found = curves_lib.equal_cost(seed_curves, {f"lora_r{r}": f"rank {r}" for r in ranks}, 0.01, first.row) \
        if curves else None
    cost = EqualCost(**found) if found else None
    answer = answer_lib.answer(rows, 0.01, 0.95, equal_cost=cost)
    record = study_lib.record_row(rows, answer.row, None, answer.closest_row)
    spectra, subspace = _adapters(ranks, seeds)
    shown = [n for n in ("scratch", "full", record) if n in rows] + ["tfidf_logreg"]
    return StudyFile(
        labels=LABELS, n_test=N_TEST, n_val=900, confidence=0.95, tolerance=0.01, rows=rows,
        tfidf_logreg={"macro_f1": tfidf, "macro_f1_low": tfidf - 0.01, "macro_f1_high": tfidf + 0.01,
                      "accuracy": 0.78, "accuracy_low": 0.77, "accuracy_high": 0.79},
        answer=answer, equal_cost=cost, record=record,
        detail={n: _detail(n, seeds[0] if n in rows else None) for n in shown},
        runs=_runs(rows), spectra=spectra, subspace=subspace, energy=0.9, params=params_dict(), dataset=dataset,
        validation_curves=seed_curves,
        learning_curves={n: {x: curves_lib.mean_curve(c, x) for x in ("step", curves_lib.CLOCK)}
                         for n, c in seed_curves.items()},
        parts=None)


def make_study_json(**kwargs: Any) -> dict:
    """:func:`make_study`'s study as its file holds it (to edit, then read back with :func:`typed`)."""
    return make_study(**kwargs).to_json()


def typed(data: dict) -> StudyFile:
    """A study file's JSON read as the report stage reads it (checked)."""
    return StudyFile.from_json(data, "the synthetic study")


def table(text: str, first_header: str) -> list[list[str]]:
    """The cells of the Markdown table whose header starts with ``| first_header |``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]])
    return rows
