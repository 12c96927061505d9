"""evaluate: the study's answer. Per variant and LoRA configuration (adapter, target set, rank) the learning rate with the best validation macro-F1 is chosen,
only the chosen models are scored on the test split (every seed; every run with ``study.test_every_run``, so a part
of a study keeps what a merged study may choose); every input of the numbers is written to the
study record (record.json.gz), and study.json is computed from it alone (lora_pipeline.record.build_study): rows
with method-level intervals, the fixed-sequence answer, the equal-cost reading and the adapters' spectra."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from lora_pipeline import answer as answer_lib
from lora_pipeline import record as record_lib
from lora_pipeline import study
from lora_pipeline.config import Params, load_params
from lora_pipeline.data.loaders import EncodedSplit
from lora_pipeline.data.summary import DATASET_FILE
from lora_pipeline.errors import PipelineError
from lora_pipeline.evaluation import classification_metrics, fit_tfidf_baseline, predict, predict_tfidf
from lora_pipeline.files import atomic_dir, atomic_file, read_json, read_split, write_json
from lora_pipeline.lora import adapter_factors
from lora_pipeline.models import load_trained, model_digest, weights_files
from lora_pipeline.records import answer_tags, read_train_record
from lora_pipeline.pretrained import load_tokenizer
from lora_pipeline.runtime import resolve_bf16, resolve_device
from lora_pipeline.speedups import trim_switch
from lora_pipeline.statistics import bootstrap_metric_ci
from lora_pipeline.study_file import StudyFile, StudyRow
from lora_pipeline.tracking import git_commit, log_split_inputs, open_tracker
from stages._cli import phase, run_stage, timed_tracker

log = logging.getLogger(__name__)
STUDY_TAG = "study_md5"  # lora_pipeline.mlflow_model.STUDY_TAG (that module imports mlflow: only when tracking is on)
ENERGY = 0.9  # effective rank: the singular values holding this share of an update's energy
RECORD_SECTIONS = ("model", "train", "scratch", "full", "lora", "study", "baseline")  # the params a record keeps


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--split", required=True, help="directory from the split stage")
    parser.add_argument("--models", required=True, help="directory holding <variant>/<tag>/ of every train instance")
    parser.add_argument("--runs", required=True, help="directory of the train instances' metrics JSON files")
    parser.add_argument("--curves", required=True, help="directory of <variant>/<tag>/evals.csv (validation curves)")
    parser.add_argument("--val-predictions", required=True,
                        help="directory of <variant>/<tag>.csv: each run's validation predictions (kept checkpoint)")
    parser.add_argument("--metrics", required=True, help="the DVC metrics: answer rank, macro-F1 and LoRA - full with intervals")
    parser.add_argument("--study", required=True, help="the whole study as JSON (the report reads it)")
    parser.add_argument("--record", required=True,
                        help="record.json.gz: every input of the study's numbers (lora-pipeline rebuild reads it)")
    parser.add_argument("--rank-curve", required=True, help="CSV of test macro-F1 against LoRA rank (dvc plots)")
    parser.add_argument("--learning-curves", required=True,
                        help="directory of per-row mean validation curves by step and by CPU seconds (dvc plots)")
    parser.add_argument("--predictions", required=True, help="directory of actual/predicted CSVs (dvc plots)")
    return parser.parse_args(argv)


def _score_runs(runs: Sequence[tuple[str, str]], args, params: Params, labels: list[str],
                test: EncodedSplit) -> dict[tuple[str, str], np.ndarray]:
    """Test predictions of each (variant, tag): the runs chosen on validation (with ``study.test_every_run``, every
    run of the grid, so a part of a study keeps what a merged study may choose). Test is scored nowhere else."""
    with phase("model"):
        tokenizer = load_tokenizer(params.model)
    device = resolve_device(params.train.device)
    bf16 = resolve_bf16(params.train.precision, device)
    preds = {}
    for variant, tag in runs:
        with phase("model"):
            model = load_trained(variant, Path(args.models) / variant / tag, params.model, labels, tokenizer).to(device)
        with trim_switch(model, params.train.first_token_last_layer), phase("forward"):  # as validation did
            preds[(variant, tag)] = predict(model, test, params.train.eval_batch_size, tokenizer.pad_token_id, device,
                                            bf16=bf16)
    return preds


def _adapters(groups, models: Path, every: Sequence[Mapping[str, Any]] = ()) -> tuple[list[dict], list[dict]]:
    """Spectra of every chosen LoRA adapter (and of each run in ``every``), and φ(small, largest rank) per seed
    between the chosen adapters of one (adapter, target set) (LoRA paper, Figure 3; never across target sets or
    adapters, whose layers differ), each entry naming the two runs it pairs."""
    lora = [g for g in groups if g.variant == "lora"]
    chosen = {(g.adapter, g.target_set, g.rank, rec["seed"]): rec["tag"] for g in lora for rec in g.records}
    runs = {r["tag"]: (r["rank"], r["seed"]) for r in every if r["variant"] == "lora"}
    runs.update({tag: key[2:] for key, tag in chosen.items()})
    factors = {tag: {k: (a.float().numpy(), b.float().numpy(), s) for k, (a, b, s)
                     in adapter_factors(models / "lora" / tag).items()} for tag in runs}
    spectra = [{"rank": rank, "seed": seed, "tag": tag, "layers": study.adapter_spectrum(factors[tag], ENERGY)}
               for tag, (rank, seed) in sorted(runs.items(), key=lambda kv: (kv[1], kv[0]))]
    subspace = []
    for family in sorted({(g.adapter, g.target_set) for g in lora}):
        ranks = [g.rank for g in lora if (g.adapter, g.target_set) == family]
        if len(ranks) < 2:
            continue
        largest = max(ranks)
        for (adapter, targets, rank, seed), tag in sorted(chosen.items()):
            big = chosen.get((*family, largest, seed))
            if (adapter, targets) == family and rank != largest and big is not None:
                for layer, grid in study.subspace_overlaps(factors[tag], factors[big]).items():
                    subspace.append({"seed": seed, "small_rank": rank, "large_rank": largest, "layer": layer,
                                     "grid": grid, "small_tag": tag, "large_tag": big})
    return spectra, subspace


def _tfidf(params: Params, frames, test: EncodedSplit, labels: list[str]) -> tuple[np.ndarray, dict]:
    pred = predict_tfidf(fit_tfidf_baseline(frames["train"], params.baseline, params.study.bootstrap_seed),
                         frames["test"])
    s = params.study
    row = {}
    for metric in ("macro_f1", "accuracy"):
        ci = bootstrap_metric_ci(test.labels, pred, labels, metric=metric, n_resamples=s.resamples,
                                 confidence=s.confidence, seed=s.bootstrap_seed)
        row.update({metric: ci.value, f"{metric}_low": ci.low, f"{metric}_high": ci.high})
    return pred, row


def _write_predictions(folder: str, study: StudyFile, record: dict) -> None:
    """actual/predicted CSVs (label names) of the detail rows' first seed and TF-IDF, for ``dvc plots``."""
    labels, y_true = record["labels"], record["test"]["labels"]
    by_tag = {(r["variant"], r["tag"]): r for r in record["runs"] if r.get("test_predictions") is not None}
    shown = {}
    for name in study.detail:
        if name == "tfidf_logreg":
            shown[name] = record["tfidf"]["test_predictions"]
            continue
        row = study.rows[name]
        run = next(r for (v, _), r in by_tag.items() if v == row.variant and record_lib.run_row(r) == name
                   and r["seed"] == row.seeds[0] and r["lr"] == row.lr)
        shown[name] = run["test_predictions"]
    with atomic_dir(folder) as tmp:
        for name, p in shown.items():
            pd.DataFrame({"actual": [labels[i] for i in y_true],
                          "predicted": [labels[i] for i in p]}).to_csv(tmp / f"{name}.csv", index=False)


def _write_learning_curves(folder: str, study: StudyFile) -> None:
    """<folder>/<clock>/<row>.csv: mean best-so-far validation macro-F1 with its min-max band over seeds."""
    with atomic_dir(folder) as tmp:
        for name, by_clock in study.learning_curves.items():
            for clock, points in by_clock.items():
                (tmp / clock).mkdir(exist_ok=True)
                pd.DataFrame(list(points), columns=[clock, "val_macro_f1", "low", "high", "seeds"]).to_csv(
                    tmp / clock / f"{name}.csv", index=False)


def file_md5(path: str | Path) -> str:
    """The md5 of a file's bytes: what dvc.lock records for it."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "md5").hexdigest()


def _csv_rows(path: Path) -> list[dict] | None:
    return pd.read_csv(path).to_dict("records") if path.is_file() else None


def _val_predictions(path: Path, n_val: int) -> list[int] | None:
    """A run's kept validation predictions (class ids in the val split's order), or None for a run trained before
    they were written."""
    if not path.is_file():
        log.warning("no validation predictions at %s (a run from an older version): picks fall back to the stated "
                    "validation score", path)
        return None
    frame = pd.read_csv(path)
    if len(frame) != n_val:
        raise PipelineError(f"evaluate: {path} has {len(frame)} rows but the validation split has {n_val}; rerun "
                            "its train stage (`dvc repro -f <stage>`)")
    return [int(v) for v in frame.sort_values("row")["predicted"]]


def _record(args, params: Params, labels: list[str], frames, runs, groups, scored, tfidf_pred, tfidf) -> dict:
    """Everything study.json is computed from (see lora_pipeline.record)."""
    n_val = len(frames["val"])
    out_runs = []
    for r in runs:
        variant, tag = r["variant"], r["tag"]
        test = scored.get((variant, tag))
        out_runs.append({**{k: r.get(k) for k in record_lib.RUN_FIELDS},
                         "curve": _csv_rows(Path(args.curves) / variant / tag / "evals.csv") or [],
                         "val_predictions": _val_predictions(Path(args.val_predictions) / variant / f"{tag}.csv",
                                                             n_val),
                         "test_predictions": None if test is None else [int(v) for v in test]})
    spectra, subspace = _adapters(groups, Path(args.models), runs if params.study.test_every_run else ())
    dataset = Path(args.split) / DATASET_FILE
    return {"format": record_lib.FORMAT, "version": record_lib.VERSION, "labels": labels,
            "params": {k: dataclasses.asdict(getattr(params, k)) for k in RECORD_SECTIONS},
            "dataset": read_json(dataset) if dataset.is_file() else None,
            "test": {"labels": [int(v) for v in EncodedSplit.from_frame(frames["test"]).labels]},
            "val": {"labels": [int(v) for v in EncodedSplit.from_frame(frames["val"]).labels]},
            "runs": out_runs, "tfidf": {"test_predictions": [int(v) for v in tfidf_pred], "row": tfidf},
            "spectra": spectra, "subspace": subspace, "energy": ENERGY}


def _evaluate(args: argparse.Namespace) -> None:
    """The study, inside the stage's MLflow run: opened first, so that its duration is the stage's."""
    params = load_params(args.params, sections=["model", "lora", "train", "scratch", "full", "baseline", "study",
                                                "mlflow"])
    with phase("mlflow"):
        tracker = timed_tracker(open_tracker(params.mlflow, "evaluate", {"stage": "evaluate"}))
    with tracker:
        tracker.log_params({"study": dataclasses.asdict(params.study),
                            "baseline": dataclasses.asdict(params.baseline)})
        _study(args, params, tracker)


def _study(args: argparse.Namespace, params: Params, tracker) -> None:
    s = params.study
    with phase("data"):
        labels, frames = read_split(args.split, ("train", "val", "test"))
        test = EncodedSplit.from_frame(frames["test"])
        records = [read_train_record(p).to_json() for p in sorted(Path(args.runs).glob("*.json"))]
    log_split_inputs(tracker, args.split, frames, {"test": "testing"})
    runs = study.grid_runs(records, s)
    groups = study.choose_learning_rates(runs)  # on validation: the choice never reads test
    chosen = [(g.variant, r["tag"]) for g in groups for r in g.records]
    scored = _score_runs([(r["variant"], r["tag"]) for r in runs] if s.test_every_run else chosen, args, params,
                         labels, test)
    preds = {g.name: [scored[(g.variant, r["tag"])] for r in g.records] for g in groups}
    with phase("work"):  # the TF-IDF reference, the record's inputs, the statistics
        tfidf_pred, tfidf = _tfidf(params, frames, test, labels)
        record = _record(args, params, labels, frames, runs, groups, scored, tfidf_pred, tfidf)
        result = record_lib.build_study(record)
    with phase("save"):
        with atomic_file(args.record) as tmp:
            record_lib.write_record(tmp, record)
        result.write(args.study)
        answer, rows, reference = result.answer, result.rows, result.tfidf_logreg
        with atomic_file(args.rank_curve) as tmp:
            pd.DataFrame(study.rank_curve(rows, reference.macro_f1)).to_csv(tmp, index=False)
        _write_predictions(args.predictions, result, record)
        _write_learning_curves(args.learning_curves, result)
        write_json(args.metrics, study.compact_metrics(rows, reference, answer.rank))
    log.info("%s", answer.sentence)
    if answer.equal_cost:
        log.info("%s", answer.equal_cost)
    tracker.set_tags(answer_tags(answer.to_json()))
    tracker.log_metrics(study.tracking_metrics(rows, reference, answer.rank))
    for path in (args.metrics, args.study, args.record, args.rank_curve, args.predictions):
        tracker.log_artifact(path)
    with phase("mlflow"):  # its git and weights digests are for the registry
        _register(tracker, params, groups, rows, preds, answer.row, test, labels, Path(args.models),
                  file_md5(args.study))


def _register(tracker, params: Params, groups, rows: Mapping[str, StudyRow], preds: dict, answer_row: str | None,
              test: EncodedSplit, labels: list[str], models: Path, study_md5: str) -> None:
    """Register the study's pick (its first seed's model) as a new version of ``mlflow.registered_model``; the pick
    is made on validation (answer_lib.registry_pick), the test score is only a tag. No alias moves here, whether
    under ``dvc repro`` or ``dvc exp run``: ``lora-pipeline promote`` moves it to a committed run's version, which
    it recognises by ``study_md5`` (the md5 the committed dvc.lock records for the study file)."""
    name, why = answer_lib.registry_pick(rows, answer_row)
    if name is None:
        log.warning("Model Registry: nothing registered (%s)", why)
        return
    group = next(g for g in groups if g.name == name)
    rec = group.records[0]
    directory = models / group.variant / rec["tag"]
    score = classification_metrics(test.labels, preds[name][0], labels)["macro_f1"]
    tags = {"variant": group.variant, "rank": group.rank, "target_set": group.target_set, "adapter": group.adapter,
            "row": name, "seed": rec["seed"], "lr": rec["lr"], "tag": rec["tag"],
            "test_macro_f1": round(score, 4), "val_macro_f1": round(rows[name].val_macro_f1, 4),
            "selection": why, "git_commit": git_commit(), "dvc_exp_name": os.environ.get("DVC_EXP_NAME"),
            STUDY_TAG: study_md5}
    digest, cfg = model_digest(weights_files(group.variant, directory)), params.mlflow

    def register(mlflow):
        from lora_pipeline import mlflow_model  # imports mlflow.pyfunc: only when tracking is on

        return mlflow_model.register_pick(mlflow, directory, digest, cfg.registered_model, tags)

    version = tracker.use("registry", register)
    if version is not None:
        log.info("Model Registry: %s (%s) is %s version %s; alias %s not moved (`lora-pipeline promote` moves it "
                 "once this run is committed)", name, rec["tag"], cfg.registered_model, version, cfg.alias)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_stage("evaluate", lambda: _evaluate(args))


if __name__ == "__main__":
    raise SystemExit(main())
