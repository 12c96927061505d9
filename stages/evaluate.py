"""evaluate: every variant and a TF-IDF + logistic-regression reference on the same test split, each with a
95 % bootstrap interval, a degenerate-model check, and LoRA against full fine-tuning as a paired difference."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pandas as pd
import torch

from lora_pipeline.config import VARIANTS, load_params
from lora_pipeline.data.loaders import EncodedSplit
from lora_pipeline.evaluation import classification_metrics, fit_tfidf_baseline, predict, predict_tfidf
from lora_pipeline.files import atomic_dir, read_split, write_json
from lora_pipeline.models import load_trained
from lora_pipeline.pretrained import load_tokenizer
from lora_pipeline.runtime import resolve_bf16, resolve_device
from lora_pipeline.statistics import bootstrap_metric_ci, degenerate_reason, paired_difference
from lora_pipeline.tracking import log_stage_run
from stages._cli import run_stage


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--split", required=True, help="directory from the split stage")
    parser.add_argument("--models", required=True, help="directory holding scratch/, full/, lora/")
    parser.add_argument("--metrics", required=True, help="metrics JSON file, keyed by variant")
    parser.add_argument("--predictions", required=True, help="directory of actual/predicted CSVs (dvc plots)")
    return parser.parse_args(argv)


def _add_uncertainty(results: dict, preds: dict, y_true, labels: list[str], seed: int) -> None:
    """Intervals over test examples, degenerate flags (one class, ≤ majority, not better than TF-IDF) and the
    paired LoRA − full difference with its verdict: what the report may claim, and no more."""
    for name, p in preds.items():
        for metric in ("macro_f1", "accuracy"):
            ci = bootstrap_metric_ci(y_true, p, labels, metric=metric, seed=seed)
            results[name][f"{metric}_low"], results[name][f"{metric}_high"] = ci.low, ci.high
        if name != "tfidf_logreg":
            results[name]["degenerate"] = degenerate_reason(y_true, p, labels, tfidf_pred=preds["tfidf_logreg"],
                                                            seed=seed)
    results["lora"]["vs_full"] = paired_difference(y_true, [preds["lora"]], [preds["full"]], labels,
                                                   seed=seed).to_dict()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def body() -> None:
        params = load_params(args.params, sections=["model", "train", "baseline", "mlflow"])
        torch.manual_seed(params.train.seed)
        labels, frames = read_split(args.split, ("train", "test"))
        train_df, test_df = frames["train"], frames["test"]
        test = EncodedSplit.from_frame(test_df)
        tokenizer = load_tokenizer(params.model)
        device = resolve_device(params.train.device)
        bf16 = resolve_bf16(params.train.precision, device)
        preds = {}
        for variant in VARIANTS:
            model = load_trained(variant, Path(args.models) / variant, params.model, labels, tokenizer).to(device)
            preds[variant] = predict(model, test, params.train.eval_batch_size, tokenizer.pad_token_id, device,
                                     bf16=bf16)
        preds["tfidf_logreg"] = predict_tfidf(fit_tfidf_baseline(train_df, params.baseline, params.train.seed),
                                              test_df)
        results = {name: classification_metrics(test.labels, p, labels) for name, p in preds.items()}
        _add_uncertainty(results, preds, test.labels, labels, seed=params.train.seed)
        with atomic_dir(args.predictions) as tmp:
            for name, p in preds.items():
                pd.DataFrame({"actual": [labels[i] for i in test.labels],
                              "predicted": [labels[i] for i in p]}).to_csv(tmp / f"{name}.csv", index=False)
        write_json(args.metrics, results)
        log_stage_run(params.mlflow, "evaluate", params={"baseline": dataclasses.asdict(params.baseline)},
                      metrics={f"{n}.{k}": r[k] for n, r in results.items() for k in ("accuracy", "macro_f1")},
                      artifacts=[args.metrics, args.predictions], tags={"seed": params.train.seed})

    return run_stage("evaluate", body)


if __name__ == "__main__":
    raise SystemExit(main())
