"""split: stratified train/val/test of the clean data (or the predefined splits as given), tokenised once for
every train stage. Reports per split how many texts ``model.max_length`` truncates and which texts two splits
share, and completes ``dataset.json`` for the report."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path
from typing import Any

import pandas as pd

from lora_pipeline.config import load_params
from lora_pipeline.data.splitting import label_map, shared_texts, split_frame
from lora_pipeline.data.summary import DATASET_FILE
from lora_pipeline.data.tokenization import tokenize_frame, truncation_stats
from lora_pipeline.files import DATA_FILE, LABELS_FILE, atomic_dir, read_json, write_json, write_split
from lora_pipeline.pretrained import load_tokenizer
from stages._cli import log_stage_run, phase, run_stage

log = logging.getLogger("split")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--clean", required=True, help="directory with data.parquet from validate")
    parser.add_argument("--out", required=True, help="output directory (train/val/test parquet, labels.json)")
    parser.add_argument("--metrics", required=True, help="metrics JSON file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def body() -> None:
        params = load_params(args.params, sections=["split", "model", "mlflow"])
        clean = Path(args.clean)
        with phase("data"):
            df = pd.read_parquet(clean / DATA_FILE)
            # validate writes the class order (numeric labels numerically, names from validate.label_names)
            labels = read_json(clean / LABELS_FILE) if (clean / LABELS_FILE).is_file() else label_map(df["label"])
        with phase("work"):
            parts = split_frame(df, params.split)
        with phase("model"):
            tokenizer = load_tokenizer(params.model)
        metrics: dict[str, Any] = {"n_labels": len(labels)}
        with phase("work"):
            for name, part in parts.items():
                metrics[f"rows_{name}"] = len(part)
                stats = truncation_stats(part, tokenizer, params.model.max_length)
                metrics.update({f"{key}_{name}": value for key, value in stats.items()})
                _warn_truncation(name, stats, params.model.max_length, params.split.max_truncated_share)
            metrics.update({f"shared_texts_{pair}": n for pair, n in shared_texts(parts).items()})
        summary = read_json(clean / DATASET_FILE) if (clean / DATASET_FILE).is_file() else {}
        summary.update(labels=labels, rows_per_split={n: len(p) for n, p in parts.items()},
                       rows_per_class_per_split={n: _counts(p, labels) for n, p in parts.items()},
                       max_length=params.model.max_length,
                       truncated_share={n: metrics.get(f"truncated_share_{n}", 0.0) for n in parts})
        with atomic_dir(args.out) as tmp, phase("save"):
            with phase("work"):
                encoded = {n: tokenize_frame(p, tokenizer, params.model.max_length, labels) for n, p in parts.items()}
            write_split(tmp, labels, encoded)
            write_json(tmp / DATASET_FILE, summary)
        write_json(args.metrics, metrics)
        with phase("mlflow"):
            log_stage_run(params.mlflow, "split", metrics=metrics, artifacts=[args.metrics],
                          params={"split": dataclasses.asdict(params.split), "model": dataclasses.asdict(params.model)})

    return run_stage("split", body)


def _warn_truncation(name: str, stats: dict[str, Any], max_length: int, threshold: float) -> None:
    if stats["truncated_share"] > threshold:
        log.warning("%s: %d texts (%.1f %%) are longer than model.max_length=%d tokens and lose their end (length "
                    "p50 %s, p95 %s, max %s); raise model.max_length, or split.max_truncated_share to accept it",
                    name, stats["truncated"], 100 * stats["truncated_share"], max_length, stats.get("tokens_p50"),
                    stats.get("tokens_p95"), stats.get("tokens_max"))


def _counts(part: pd.DataFrame, labels: list[str]) -> dict[str, int]:
    counts = part["label"].astype(str).value_counts()
    return {label: int(counts.get(label, 0)) for label in labels}


if __name__ == "__main__":
    raise SystemExit(main())
