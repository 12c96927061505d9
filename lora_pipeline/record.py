"""The study record: every input the study's numbers are computed from, in one file, and the computation itself.

The evaluate stage writes ``record.json.gz``: the labels of the validation and test splits, every train run of the
grid (its metrics record, its validation curve and the per-example validation predictions of the checkpoint it
kept), the per-example test predictions of the runs chosen on validation (of every run with ``study.test_every_run``:
then :func:`merge_records` can join parts of a study run apart), the TF-IDF reference's test predictions,
the adapters' spectra (numbers read from the weights) and the params that produced it all. :func:`build_study`
turns a record into the study file (:class:`~lora_pipeline.study_file.StudyFile`, ``study.json``); it is pure, so a
committed record rebuilds its report anywhere with ``lora-pipeline rebuild docs/results/<study>``
(:mod:`lora_pipeline.cli`; no model, no data, no training).

Rebuilding checks the record against itself: each run's validation macro-F1 is recomputed from its predictions and
must equal the one its metrics file states.
"""

from __future__ import annotations

import dataclasses
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
from .config import DEFAULT_TARGET_SET
from .records import detail_rows, row_configuration, study_row
from .study_file import Detail, EqualCost, StudyFile, StudyRow, StudyRun, row_order

__all__ = ["FORMAT", "VERSION", "build_study", "merge_records", "read_record", "run_fields", "run_row", "write_record"]

FORMAT, VERSION = "lora-pipeline study record", 1
#: what the record keeps of each train run: the study file's runs table, less whether its row chose it
RUN_FIELDS = tuple(f.name for f in dataclasses.fields(StudyRun) if f.name != "chosen")


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


#: the study lists a part may hold a subset of (unioned by a merge; the last two only where a part's params hold them)
GRID_KEYS = ("seeds", "ranks", "scratch_lrs", "full_lrs", "lora_lrs", "target_sets", "adapters")
#: how a part was launched, not what it computed: parts may differ here (one ran on 1 thread, another under torchrun)
LAUNCH_KEYS = ("num_threads", "processes", "nnodes", "rdzv_endpoint", "dist_timeout_s", "dist_start_grace_s")


def _differences(a: Any, b: Any, path: str = "") -> list[str]:
    """The dotted keys where two params trees differ (ignoring the grid lists and the launch keys)."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        out = []
        for key in sorted(set(a) | set(b)):
            dotted = f"{path}.{key}" if path else str(key)
            if dotted in {f"study.{k}" for k in GRID_KEYS} | {f"train.{k}" for k in LAUNCH_KEYS} | {SETS}:
                continue
            out += _differences(a.get(key), b.get(key), dotted)
        return out
    return [] if a == b else [f"{path} ({b!r} vs {a!r})"]


#: the named target sets: parts may define different ones, but a name two parts define must mean the same modules
SETS = "lora.target_sets"
#: LoRA params of a record from before the target-set and adapter axes: its one set and its one adapter
ONE_SET_KEYS = ("target_modules", "use_dora")


def _one_set(part: Mapping[str, Any]) -> bool:
    return any(k in (part["params"].get("lora") or {}) for k in ONE_SET_KEYS)


def _in_sets_format(part: Mapping[str, Any], where: str, parts: Sequence[Mapping[str, Any]]) -> dict:
    """A part from before the target-set and adapter axes, as a part of today writes it: its one set
    (``lora.target_modules``) under the name the other parts give those modules (``default`` for the model's
    default), its adapter (``lora.use_dora``) in ``study.adapters``, and both on each of its LoRA runs."""
    lora = dict(part["params"]["lora"])
    targets, dora = lora.pop("target_modules", None), lora.pop("use_dora", False)
    defined = {n: m for p in parts if not _one_set(p) for n, m in (p["params"]["lora"].get("target_sets") or {}).items()}
    name = DEFAULT_TARGET_SET if not targets else next((n for n, m in defined.items() if m == targets), None)
    if name is None:
        raise PipelineError(f"record: {where} is from before target sets and adapted {str(targets)[:80]!r} "
                            f"(lora.target_modules), which no other part names in {SETS}: name those modules there")
    adapter = "dora" if dora else "lora"
    runs = [{**r, "target_set": r.get("target_set") or name, "adapter": r.get("adapter") or adapter}
            if r["variant"] == "lora" else r for r in part["runs"]]
    study = {**part["params"]["study"], "target_sets": [name], "adapters": [adapter]}
    return {**part, "runs": runs, "params": {**part["params"], "lora": {**lora, "target_sets": {name: targets}},
                                             "study": study}}


def _merged_sets(parts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The union of the parts' named target sets; a name two parts define differently is refused."""
    sets: dict[str, Any] = {}
    for i, part in enumerate(parts, 1):
        for name, modules in (part["params"]["lora"].get("target_sets") or {}).items():
            if name in sets and sets[name] != modules:
                raise PipelineError(f"record: part {i} names target set {name!r} {str(modules)[:80]!r} but an "
                                    f"earlier part {str(sets[name])[:80]!r} ({SETS}): one name, one set of modules")
            sets.setdefault(name, modules)
    return dict(sorted(sets.items()))


def _fill_adapter_params(runs: Sequence[dict]) -> list[dict]:
    """A LoRA run from before adapter counts were recorded gets its count from runs that have one: the count depends
    only on the model, the target set, the rank and the adapter (which the merge checked are one), and LoRA's is the
    rank times Σ(in + out features) over the set's modules, so one LoRA rank of a set gives every rank of it (DoRA
    adds a magnitude per output unit: only a run of its own rank gives its count)."""
    known = {study_lib.configuration(r): r["adapter_params"] for r in runs if r.get("adapter_params") is not None}
    per_rank = {(targets, adapter): count // rank for (variant, rank, targets, adapter), count in known.items()
                if variant == "lora" and adapter == "lora" and count % rank == 0}

    def count(run: Mapping[str, Any]) -> Optional[int]:
        config = study_lib.configuration(run)
        variant, rank, targets, adapter = config
        return known.get(config, per_rank[(targets, adapter)] * rank if (targets, adapter) in per_rank else None)

    return [{**r, "adapter_params": count(r)} if r["variant"] == "lora" and r.get("adapter_params") is None else r
            for r in runs]


def _same_runs(runs: Mapping[tuple, Mapping[str, Any]], part: Sequence[Mapping[str, Any]], where: str,
               first_seen: Mapping[tuple, str]) -> None:
    for run in part:
        key = (run["variant"], run["tag"])
        old = runs.get(key)
        if old is not None and any(old.get(k) != run.get(k) for k in ("val_predictions", "val_macro_f1", "steps")):
            raise PipelineError(f"record: run {run['variant']} {run['tag']} is in {first_seen[key]} and {where} with "
                                "other results: a part must not retrain a run another part holds")


def _merged_subspace(parts: Sequence[Mapping[str, Any]]) -> list[dict]:
    """Every part's subspace grids, each pair of runs and layer once; untagged grids only from a lone part."""
    held = [p["subspace"] for p in parts if p.get("subspace")]
    if any("small_tag" not in x for grids in held for x in grids):
        return list(held[0]) if len(held) == 1 else []
    unique = {(x["small_tag"], x["large_tag"], x["layer"]): x for grids in held for x in grids}
    return list(unique.values())


def merge_records(parts: Sequence[Mapping[str, Any]]) -> dict:
    """One record from parts of one study run apart (other seeds, ranks or rates; other machines or days).

    Parts must share the split (labels of val and test), the TF-IDF reference and every param that changes what is
    computed; the study's grid lists are unioned and the launch keys (:data:`LAUNCH_KEYS`) may differ. A run held
    by two parts must be the same run. Spectra are kept by run, and the subspace similarities by the two runs
    they pair (a merge cannot compute new ones: it has no adapter weights); grids that do not name their runs
    (older records) are kept only when one part holds them all. The named target sets (``lora.target_sets``) are
    unioned, one name meaning one set of modules; a part from before the target-set and adapter axes joins parts
    that have them in their format (its one set and adapter named on its runs), and a run without an adapter
    count takes its configuration's from a run that has one.
    """
    if not parts:
        raise PipelineError("merge: no parts given")
    if not all(_one_set(p) for p in parts):  # a part of another day beside parts with target sets: in their format
        parts = [_in_sets_format(p, f"part {i}", parts) if _one_set(p) else p for i, p in enumerate(parts, 1)]
    first = parts[0]
    runs: dict[tuple, dict] = {}
    seen: dict[tuple, str] = {}
    for i, part in enumerate(parts, 1):
        where = f"part {i}"
        if part["labels"] != first["labels"]:
            raise PipelineError(f"record: {where} has other labels than part 1 ({part['labels']} vs {first['labels']})")
        for split in ("val", "test"):
            if part[split]["labels"] != first[split]["labels"]:
                raise PipelineError(f"record: {where} has other {split} labels than part 1: not the same split")
        if part["tfidf"] != first["tfidf"]:
            raise PipelineError(f"record: {where} has another TF-IDF reference than part 1 (baseline params or data)")
        diff = _differences(first["params"], part["params"])
        if diff:
            raise PipelineError(f"record: {where} differs from part 1 in params {'; '.join(diff[:3])}")
        _same_runs(runs, part["runs"], where, seen)
        for run in part["runs"]:
            key = (run["variant"], run["tag"])
            if key not in runs or run.get("test_predictions") is not None:
                runs[key] = run
            seen.setdefault(key, where)
    study = {**first["params"]["study"]}
    for key in GRID_KEYS:
        if any(key in p["params"]["study"] for p in parts):
            study[key] = sorted({v for p in parts for v in p["params"]["study"].get(key) or ()})
    spectra = {s["tag"]: s for p in parts for s in p.get("spectra", [])}
    subspace = _merged_subspace(parts)
    lora = {**first["params"]["lora"], **({"target_sets": _merged_sets(parts)} if not _one_set(first) else {})}
    return {**first, "params": {**first["params"], "lora": lora, "study": study},
            "runs": sorted(_fill_adapter_params(list(runs.values())),
                           key=lambda r: (r["variant"], r.get("rank") or 0, r["seed"], r["lr"], r["tag"])),
            "spectra": [spectra[t] for t in sorted(spectra)],
            "subspace": subspace,
            "parts": [{"seeds": p["params"]["study"]["seeds"],
                       "runs": sum(seen[(r["variant"], r["tag"])] == f"part {i}" for r in p["runs"])}
                      for i, p in enumerate(parts, 1)]}


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


def run_fields(run: Mapping[str, Any]) -> dict[str, Any]:
    """What the study file's runs table holds of a record's run; a LoRA run of a record from before the target-set
    and adapter axes (neither key) trained the default set with LoRA, and its adapter parameters are unknown."""
    out = {k: run.get(k) for k in RUN_FIELDS}
    _, _, out["target_set"], out["adapter"] = study_lib.configuration(run)
    return out


def run_row(run: Mapping[str, Any]) -> str:
    """The study row a record's run belongs to (``lora_r8``, ``dora_r8_all_linear``, ``full``)."""
    return study_row(*study_lib.configuration(run))


def _equal_cost(curves: Mapping[str, list], rows: Mapping[str, StudyRow], tolerance: float,
                chosen: Optional[str]) -> Optional[EqualCost]:
    """The equal-cost reading over the LoRA rows, in report order, named as the answer names them."""
    lora = sorted((r for r in rows.values() if r.variant == "lora"), key=row_order)
    several = len({r.family for r in lora}) > 1
    found = curves_lib.equal_cost(curves, {r.name: answer_lib.configuration_words(r, several) for r in lora},
                                  tolerance, chosen)
    return EqualCost(**found) if found is not None else None


def build_study(record: Mapping[str, Any]) -> StudyFile:
    """``study.json`` from a record: the lr choice on validation, rows with method-level intervals, the answer
    (fixed sequence), the equal-cost reading, learning curves, per-class detail and the runs table."""
    labels, params = record["labels"], record["params"]
    s = params["study"]
    y_test, y_val = _ids(record["test"]["labels"]), _ids(record["val"]["labels"])
    runs = record["runs"]
    _check_runs(runs, y_val, len(labels))
    groups = study_lib.choose_learning_rates([run_fields(r) for r in runs])
    by_tag = {(r["variant"], r["tag"]): r for r in runs}
    for g in groups:
        for r in g.records:
            if by_tag[(g.variant, r["tag"])].get("test_predictions") is None:
                raise PipelineError(f"record: run {g.variant} {r['tag']} is chosen on validation but has no test "
                                    "predictions: its part scored only its own choice on test; evaluate it with "
                                    "study.test_every_run: true to keep every run's")
    preds = {g.name: [_ids(by_tag[(g.variant, r["tag"])]["test_predictions"]) for r in g.records] for g in groups}
    val_preds = {g.name: [_ids(by_tag[(g.variant, r["tag"])].get("val_predictions")) for r in g.records]
                 for g in groups}
    has_val = all(p is not None for ps in val_preds.values() for p in ps)
    tfidf_pred = _ids(record["tfidf"]["test_predictions"])
    rows = study_lib.summarise(groups, preds, y_test, labels, tfidf_pred, tolerance=s["tolerance"],
                               confidence=s["confidence"], n_resamples=s["resamples"], seed=s["bootstrap_seed"],
                               val=(y_val, val_preds) if has_val else None)
    curves = _curves(groups, by_tag)
    first = answer_lib.answer(rows, s["tolerance"], s["confidence"])
    cost = _equal_cost(curves, rows, s["tolerance"], first.row)
    result = answer_lib.answer(rows, s["tolerance"], s["confidence"], equal_cost=cost)
    record_row = study_lib.record_row(rows, result.row, s.get("record_rank"), result.closest_row)
    chosen = {(g.name, g.lr) for g in groups}
    chosen_tags = {(g.variant, r["tag"]) for g in groups for r in g.records}
    row_of = {r["tag"]: run_row(r) for r in runs if r["variant"] == "lora"}
    return StudyFile(
        labels=labels, n_test=int(y_test.size), n_val=int(y_val.size), confidence=s["confidence"],
        tolerance=s["tolerance"], rows=rows, tfidf_logreg=record["tfidf"]["row"], answer=result, equal_cost=cost,
        record=record_row, detail=_detail(rows, preds, tfidf_pred, record_row, y_test, labels),
        runs=[StudyRun(**run, chosen=(run_row(run), run["lr"]) in chosen) for run in map(run_fields, runs)],
        learning_curves={name: {x: curves_lib.mean_curve(c, x) for x in ("step", curves_lib.CLOCK)}
                         for name, c in curves.items()},
        validation_curves=curves,  # per chosen row, each seed's own validations (the figures draw them)
        spectra=[{**x, "row": row_of.get(x["tag"])} for x in record.get("spectra", [])
                 if ("lora", x["tag"]) in chosen_tags],
        subspace=[{"small_tag": None, "large_tag": None, **x, "family": _family(row_of.get(x.get("small_tag")))}
                  for x in record.get("subspace", [])
                  if "small_tag" not in x or {("lora", x["small_tag"]), ("lora", x["large_tag"])} <= chosen_tags],
        energy=record.get("energy", 0.9), params=params, dataset=record.get("dataset"),
        parts=record.get("parts") or None)


def _family(row: Optional[str]) -> Optional[str]:
    """``dora/all_linear``: the (adapter, target set) a subspace grid's runs share; None for the default pair (and
    for a record whose grids do not name their runs)."""
    config = row_configuration(row) if row else None
    if config is None or config[:2] == ("lora", DEFAULT_TARGET_SET):
        return None
    return f"{config[0]}/{config[1]}"


def _detail(rows: Mapping[str, StudyRow], preds: Mapping[str, Sequence[np.ndarray]], tfidf_pred: np.ndarray,
            record_row: Optional[str], y_test: np.ndarray, labels: Sequence[str]) -> dict[str, Detail]:
    """Per-class F1 and confusion matrices of scratch, full, the record row (first seed) and TF-IDF."""
    from .evaluation import classification_metrics

    shown = {n: preds[n][0] for n in detail_rows(record_row) if n in preds} | {"tfidf_logreg": tfidf_pred}
    out = {}
    for n, p in shown.items():
        metrics = classification_metrics(y_test, p, list(labels))
        out[n] = Detail(seed=rows[n].seeds[0] if n in rows else None, per_class=metrics["per_class"],
                        confusion_matrix=metrics["confusion_matrix"])
    return out

