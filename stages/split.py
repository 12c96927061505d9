"""split: stratified train/val/test of the clean data, tokenised once for every train stage."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pandas as pd

from lora_pipeline.config import load_params
from lora_pipeline.data.splitting import label_map, split_frame
from lora_pipeline.data.tokenization import tokenize_frame
from lora_pipeline.io import DATA_FILE, atomic_dir, write_json
from lora_pipeline.pretrained import load_tokenizer
from stages._cli import log_stage_run, run_stage


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
        df = pd.read_parquet(Path(args.clean) / DATA_FILE)
        labels = label_map(df["label"])
        parts = split_frame(df, params.split)
        tokenizer = load_tokenizer(params.model)
        metrics = {"n_labels": len(labels)}
        with atomic_dir(args.out) as tmp:
            for name, part in parts.items():
                tokenize_frame(part, tokenizer, params.model.max_length, labels).to_parquet(tmp / f"{name}.parquet")
                metrics[f"rows_{name}"] = len(part)
            write_json(tmp / "labels.json", labels)
        write_json(args.metrics, metrics)
        log_stage_run(params.mlflow, "split", metrics=metrics, artifacts=[args.metrics],
                      params={"split": dataclasses.asdict(params.split), "model": dataclasses.asdict(params.model)})

    return run_stage("split", body)


if __name__ == "__main__":
    raise SystemExit(main())
