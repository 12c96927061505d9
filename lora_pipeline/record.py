"""The study record: every input the study's numbers are computed from, in one file, and the computation itself.

The evaluate stage writes ``record.json.gz``: the labels of the validation and test splits, every train run of the
grid (its metrics record, its validation curve and the per-example validation predictions of the checkpoint it
kept), the per-example test predictions of the runs chosen on validation, the TF-IDF reference's test predictions,
the adapters' spectra (numbers read from the weights) and the params that produced it all. :func:`build_study`
turns a record into ``study.json``; it is pure, so a committed record rebuilds its report anywhere with
``lora-pipeline rebuild docs/results/<study>`` (:mod:`lora_pipeline.cli`; no model, no data, no training).

Rebuilding checks the record against itself: each run's validation macro-F1 is recomputed from its predictions and
must equal the one its metrics file states.
"""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
from sklearn.metrics import f1_score

from . import answer as answer_lib
from . import curves as curves_lib
from . import study as study_lib
from .errors import PipelineError
from .records import detail_rows

__all__ = ["FORMAT", "VERSION", "build_study", "read_record", "write_record"]

FORMAT, VERSION = "lora-pipeline study record", 1
RUN_FIELDS = ("variant", "rank", "seed", "lr", "tag", "val_macro_f1", "steps", "planned_steps", "epochs",
              "best_step", "stop_reason", "stopped_by", "converged", "train_seconds", "train_cpu_seconds",
              "seconds_to_best", "cpu_seconds_to_best", "peak_memory_mb", "trainable_params", "trainable_percent",
              "total_params", "size_on_disk_mb", "precision", "device", "samples_per_second")


def write_record(path: str | Path, record: Mapping[str, Any]) -> None:
    """gzip-compressed JSON, keys sorted, the gzip header without a timestamp (same record → same bytes)."""
    data = json.dumps(record, sort_keys=True, allow_nan=False, separators=(",", ":")).encode()
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", filename="", mtime=0) as fh:
        fh.write(data)


def read_record(path: str | Path) -> dict:
    """A record written by :func:`write_record`, or a one-line error saying what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"record '{path}' not found: a study folder holds record.json.gz (written by the "
                            "evaluate stage as metrics/record.json.gz)")
    try:
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            record = json.load(fh)
    except (OSError, ValueError) as err:
        raise PipelineError(f"record '{path}' is not gzip-compressed JSON ({err})") from err
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise PipelineError(f"record '{path}' is not a {FORMAT}")
    if record.get("version") != VERSION:
        raise PipelineError(f"record '{path}' has version {record.get('version')}; this code reads {VERSION}")
    return record


def _ids(values: Optional[Sequence[int]]) -> Optional[np.ndarray]:
    return None if values is None else np.asarray(values, dtype=np.int64)


def _check_runs(runs: Sequence[Mapping[str, Any]], y_val: np.ndarray, n_labels: int) -> None:
    """Each run's stated validation macro-F1 equals the one its kept predictions give (a record in itself)."""
    for run in runs:
        preds = run.get("val_predictions")
        if preds is None:
            continue
        score = f1_score(y_val, preds, labels=list(range(n_labels)), average="macro", zero_division=0)
        if not math.isclose(score, run["val_macro_f1"], abs_tol=1e-9):
            raise PipelineError(f"record: run {run['variant']} {run.get('tag')} states validation macro-F1 "
                                f"{run['val_macro_f1']:.6f} but its predictions give {score:.6f}")


def _curves(groups: Sequence[study_lib.Group], runs_by_tag: Mapping[tuple, Mapping[str, Any]]) -> dict[str, list]:
    """Per chosen row, each seed's validation curve (columns) for the equal-cost reading and the figures."""
    out = {}
    for g in groups:
        seeds = [runs_by_tag[(g.variant, r["tag"])] for r in g.records]
        out[g.name] = [curves_lib.curve_from_rows(s.get("curve") or [], s["seed"]) for s in seeds]
    return out


def build_study(record: Mapping[str, Any]) -> dict:
    """``study.json`` from a record: the lr choice on validation, rows with method-level intervals, the answer
    (fixed sequence), the equal-cost reading, learning curves, per-class detail and the runs table."""
    labels, params = record["labels"], record["params"]
    s = params["study"]
    y_test, y_val = _ids(record["test"]["labels"]), _ids(record["val"]["labels"])
    runs = record["runs"]
    _check_runs(runs, y_val, len(labels))
    groups = study_lib.choose_learning_rates([{k: r.get(k) for k in RUN_FIELDS} for r in runs])
    by_tag = {(r["variant"], r["tag"]): r for r in runs}
    preds = {g.name: [_ids(by_tag[(g.variant, r["tag"])]["test_predictions"]) for r in g.records] for g in groups}
    val_preds = {g.name: [_ids(by_tag[(g.variant, r["tag"])].get("val_predictions")) for r in g.records]
                 for g in groups}
    has_val = all(p is not None for ps in val_preds.values() for p in ps)
    tfidf_pred = _ids(record["tfidf"]["test_predictions"])
    rows = study_lib.summarise(groups, preds, y_test, labels, tfidf_pred, tolerance=s["tolerance"],
                               confidence=s["confidence"], n_resamples=s["resamples"], seed=s["bootstrap_seed"],
                               val=(y_val, val_preds) if has_val else None)
    for row in rows.values():
        row["degenerate_why"] = study_lib.explain_degenerate(row)
    curves = _curves(groups, by_tag)
    ranks = sorted(g.rank for g in groups if g.variant == "lora")
    first = answer_lib.answer(rows, s["tolerance"], s["confidence"])
    cost = curves_lib.equal_cost(curves, ranks, s["tolerance"], first["rank"])
    result = answer_lib.answer(rows, s["tolerance"], s["confidence"], equal_cost=cost)
    record_row = study_lib.record_row(rows, result["rank"], s.get("record_rank"), result.get("closest_rank"))
    chosen = {(g.variant, g.rank, g.lr) for g in groups}
    return {"labels": labels, "n_test": int(y_test.size), "n_val": int(y_val.size), "confidence": s["confidence"],
            "tolerance": s["tolerance"], "rows": rows, "tfidf_logreg": record["tfidf"]["row"], "answer": result,
            "equal_cost": cost, "record": record_row,
            "detail": _detail(rows, preds, tfidf_pred, record_row, y_test, labels),
            "runs": [{**{k: r.get(k) for k in RUN_FIELDS}, "chosen": (r["variant"], r.get("rank"), r["lr"]) in chosen}
                     for r in runs],
            "learning_curves": {name: {x: curves_lib.mean_curve(c, x) for x in ("step", curves_lib.CLOCK)}
                                for name, c in curves.items()},
            "validation_curves": curves,  # per chosen row, each seed's own validations (the figures draw them)
            "spectra": record.get("spectra", []), "subspace": record.get("subspace", []),
            "energy": record.get("energy", 0.9), "params": params, "dataset": record.get("dataset")}


def _detail(rows: Mapping[str, Any], preds: Mapping[str, Sequence[np.ndarray]], tfidf_pred: np.ndarray,
            record_row: Optional[str], y_test: np.ndarray, labels: Sequence[str]) -> dict:
    """Per-class F1 and confusion matrices of scratch, full, the record row (first seed) and TF-IDF."""
    from .evaluation import classification_metrics

    shown = {n: preds[n][0] for n in detail_rows(record_row) if n in preds} | {"tfidf_logreg": tfidf_pred}
    return {n: {"seed": rows[n]["seeds"][0] if n in rows else None,
                **{k: v for k, v in classification_metrics(y_test, p, list(labels)).items()
                   if k in ("per_class", "confusion_matrix")}} for n, p in shown.items()}

