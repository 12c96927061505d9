"""evaluate: the study's answer. Per (variant, rank) the learning rate with the best validation macro-F1 is chosen,
only the chosen models are scored on the test split (every seed), and each row gets intervals, a degenerate check
and, for LoRA, the paired difference with full fine-tuning; the adapters' update spectra come along."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from lora_pipeline import study
from lora_pipeline.config import Params, load_params
from lora_pipeline.data.loaders import EncodedSplit
from lora_pipeline.evaluation import classification_metrics, fit_tfidf_baseline, predict, predict_tfidf
from lora_pipeline.files import atomic_dir, atomic_file, read_json, read_split, write_json
from lora_pipeline.lora import adapter_factors
from lora_pipeline.models import load_trained, model_digest, weights_files
from lora_pipeline.pretrained import load_tokenizer
from lora_pipeline.runtime import resolve_bf16, resolve_device
from lora_pipeline.speedups import trim_switch
from lora_pipeline.statistics import bootstrap_metric_ci
from lora_pipeline.tracking import git_commit, open_tracker
from stages._cli import run_stage

log = logging.getLogger(__name__)
ENERGY = 0.9  # effective rank: the singular values holding this share of an update's energy


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--split", required=True, help="directory from the split stage")
    parser.add_argument("--models", required=True, help="directory holding <variant>/<tag>/ of every train instance")
    parser.add_argument("--runs", required=True, help="directory of the train instances' metrics JSON files")
    parser.add_argument("--metrics", required=True, help="compact metrics JSON (dvc metrics diff / exp show)")
    parser.add_argument("--study", required=True, help="the whole study as JSON (the report reads it)")
    parser.add_argument("--rank-curve", required=True, help="CSV of test macro-F1 against LoRA rank (dvc plots)")
    parser.add_argument("--predictions", required=True, help="directory of actual/predicted CSVs (dvc plots)")
    return parser.parse_args(argv)


def _predict_groups(groups, args, params: Params, labels: list[str], test: EncodedSplit) -> dict[str, list]:
    """Test predictions of every seed of every chosen (variant, rank, lr): the only time test is scored."""
    tokenizer = load_tokenizer(params.model)
    device = resolve_device(params.train.device)
    bf16 = resolve_bf16(params.train.precision, device)
    preds = {}
    for group in groups:
        preds[group.name] = []
        for rec in group.records:
            model = load_trained(group.variant, Path(args.models) / group.variant / rec["tag"], params.model, labels,
                                 tokenizer).to(device)
            with trim_switch(model, params.train.first_token_last_layer):  # as validation predicted
                preds[group.name].append(predict(model, test, params.train.eval_batch_size, tokenizer.pad_token_id,
                                                 device, bf16=bf16))
    return preds


def _adapters(groups, models: Path) -> tuple[list[dict], list[dict]]:
    """Spectra of every chosen LoRA adapter, and φ(small, largest rank) per seed (LoRA paper, Figure 3)."""
    lora = [g for g in groups if g.variant == "lora"]
    factors = {(g.rank, rec["seed"]): ({k: (a.float().numpy(), b.float().numpy(), s) for k, (a, b, s)
                                        in adapter_factors(models / "lora" / rec["tag"]).items()}, rec["tag"])
               for g in lora for rec in g.records}
    spectra = [{"rank": rank, "seed": seed, "tag": tag, "layers": study.adapter_spectrum(f, ENERGY)}
               for (rank, seed), (f, tag) in sorted(factors.items())]
    subspace = []
    if len(lora) > 1:
        largest = max(g.rank for g in lora)
        for (rank, seed), (f, _) in sorted(factors.items()):
            if rank != largest and (largest, seed) in factors:
                for layer, grid in study.subspace_overlaps(f, factors[(largest, seed)][0]).items():
                    subspace.append({"seed": seed, "small_rank": rank, "large_rank": largest, "layer": layer,
                                     "grid": grid})
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


def _write_predictions(folder: str, preds: dict, y_true, labels: list[str]) -> None:
    with atomic_dir(folder) as tmp:
        for name, p in preds.items():
            pd.DataFrame({"actual": [labels[i] for i in y_true],
                          "predicted": [labels[i] for i in p]}).to_csv(tmp / f"{name}.csv", index=False)


def _evaluate(args: argparse.Namespace) -> None:
    params = load_params(args.params, sections=["model", "lora", "train", "baseline", "study", "mlflow"])
    s = params.study
    labels, frames = read_split(args.split, ("train", "test"))
    test = EncodedSplit.from_frame(frames["test"])
    records = [read_json(p) for p in sorted(Path(args.runs).glob("*.json"))]
    runs = study.grid_runs(records, s.seeds, {v: s.lrs(v) for v in ("scratch", "full", "lora")}, s.ranks)
    groups = study.choose_learning_rates(runs)
    preds = _predict_groups(groups, args, params, labels, test)
    tfidf_pred, tfidf = _tfidf(params, frames, test, labels)
    rows = study.summarise(groups, preds, test.labels, labels, tfidf_pred, confidence=s.confidence,
                           n_resamples=s.resamples, seed=s.bootstrap_seed)
    answer = study.answer(rows, s.tolerance, s.confidence)
    record = study.record_row(rows, answer["rank"], s.record_rank, answer.get("closest_rank"))
    shown = {n: preds[n][0] for n in ("scratch", "full", record) if n in preds} | {"tfidf_logreg": tfidf_pred}
    detail = {n: {"seed": rows[n]["seeds"][0] if n in rows else None,
                  **{k: v for k, v in classification_metrics(test.labels, p, labels).items()
                     if k in ("per_class", "confusion_matrix")}} for n, p in shown.items()}
    chosen = {(g.variant, g.rank, g.lr) for g in groups}
    run_rows = [{**{k: r.get(k) for k in ("variant", "rank", "seed", "lr", "tag", "val_macro_f1", "steps", "epochs",
                                         "best_step", "stop_reason", "train_seconds")},
                 "chosen": (r["variant"], r.get("rank"), r["lr"]) in chosen} for r in runs]
    spectra, subspace = _adapters(groups, Path(args.models))
    write_json(args.study, {"labels": labels, "n_test": len(test.labels), "confidence": s.confidence,
                            "tolerance": s.tolerance, "rows": rows, "tfidf_logreg": tfidf, "answer": answer,
                            "record": record, "detail": detail, "runs": run_rows, "spectra": spectra,
                            "subspace": subspace, "energy": ENERGY})
    with atomic_file(args.rank_curve) as tmp:
        pd.DataFrame(study.rank_curve(rows, tfidf["macro_f1"])).to_csv(tmp, index=False)
    _write_predictions(args.predictions, shown, test.labels, labels)
    compact = study.compact_metrics(rows, tfidf, answer["rank"])
    write_json(args.metrics, compact)
    log.info("%s", answer["sentence"])
    with open_tracker(params.mlflow, "evaluate", {"stage": "evaluate", "answer": answer["sentence"][:250],
                                                  "answer_rank": answer["rank"]}) as tracker:
        tracker.log_params({"study": dataclasses.asdict(s), "baseline": dataclasses.asdict(params.baseline)})
        tracker.log_metrics({f"{n}.{k}": r[k] for n, r in compact.items() if isinstance(r, dict)
                             for k in ("accuracy", "macro_f1") if k in r})
        for path in (args.metrics, args.study, args.rank_curve, args.predictions):
            tracker.log_artifact(path)
        _register(tracker, params, groups, rows, preds, answer, test, labels, Path(args.models))


def _register(tracker, params: Params, groups, rows: dict, preds: dict, answer: dict, test: EncodedSplit,
              labels: list[str], models: Path) -> None:
    """Register the study's pick (its first seed's model) in the Model Registry under ``mlflow.registered_model``."""
    name, why = study.registry_pick(rows, answer["rank"])
    if name is None:
        log.warning("Model Registry: nothing registered (%s)", why)
        return
    group = next(g for g in groups if g.name == name)
    rec = group.records[0]
    directory = models / group.variant / rec["tag"]
    score = classification_metrics(test.labels, preds[name][0], labels)["macro_f1"]
    tags = {"variant": group.variant, "rank": group.rank, "seed": rec["seed"], "lr": rec["lr"], "tag": rec["tag"],
            "test_macro_f1": round(score, 4), "selection": why, "git_commit": git_commit()}
    digest, cfg = model_digest(weights_files(group.variant, directory)), params.mlflow

    def register(mlflow):
        from lora_pipeline import mlflow_model  # imports mlflow.pyfunc: only when tracking is on

        return mlflow_model.register_pick(mlflow, directory, digest, cfg.registered_model, cfg.alias, tags)

    version = tracker.use("registry", register)
    if version is not None:
        log.info("Model Registry: %s (%s) is %s version %s, alias %s", name, rec["tag"],
                 params.mlflow.registered_model, version, params.mlflow.alias)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_stage("evaluate", lambda: _evaluate(args))


if __name__ == "__main__":
    raise SystemExit(main())
