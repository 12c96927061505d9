"""validate: Great Expectations suite + cleaning policy (params section ``validate``) on the raw data.

Writes ``<out>/data.parquet`` (clean; labels named by ``validate.label_names``), ``<out>/labels.json`` (class
names in id order), ``<out>/dataset.json`` (what the report says about the data), the flat ``--metrics`` JSON and
the HTML ``--report`` directory (``index.html``, GX Data Docs under ``gx/``, ``summary.json``). A hard failure
writes none of them.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

import pandas as pd

from lora_pipeline.config import load_params
from lora_pipeline.data.summary import DATASET_FILE, dataset_summary
from lora_pipeline.data.validation import flat_metrics, validate
from lora_pipeline.errors import DataError, listing
from lora_pipeline.files import DATA_FILE, LABELS_FILE, MANIFEST_FILE, atomic_dir, read_json, write_json
from stages._cli import log_stage_run, phase, run_stage


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml", help="params file (section 'validate')")
    parser.add_argument("--raw", required=True, help="directory with data.parquet from ingest")
    parser.add_argument("--out", required=True, help="output directory for the clean data.parquet")
    parser.add_argument("--metrics", required=True, help="flat metrics JSON file")
    parser.add_argument("--report", required=True, help="HTML report directory (index.html)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def body() -> None:
        params = load_params(args.params, sections=["validate", "mlflow"])
        raw_file = Path(args.raw) / DATA_FILE
        if not raw_file.is_file():
            raise DataError(f"{raw_file} not found: run the ingest stage first (--raw points at its output)")
        with phase("data"):
            raw = pd.read_parquet(raw_file)
        with atomic_dir(args.report) as report_tmp, phase("save"):  # discarded if validation raises
            with phase("work"):  # the expectation suite and its Data Docs
                clean, report = validate(raw, params.validate, docs_dir=report_tmp)
            write_json(report_tmp / "summary.json", report)
            manifest_file = Path(args.raw) / MANIFEST_FILE
            manifest = read_json(manifest_file) if manifest_file.is_file() else {}
            with atomic_dir(args.out) as out_tmp:
                clean.to_parquet(out_tmp / DATA_FILE, index=False)
                write_json(out_tmp / LABELS_FILE, report["labels"])
                write_json(out_tmp / DATASET_FILE, dataset_summary(manifest, report))
            metrics = flat_metrics(report)
            write_json(args.metrics, metrics)
        logging.getLogger("validate").info("kept %d of %d rows: %s (labels %s)", report["rows_clean"],
                                           report["rows_raw"], listing(report["rows_per_class"]),
                                           "inferred" if report["labels_inferred"] else "as declared")
        with phase("mlflow"):
            log_stage_run(params.mlflow, "validate", params={"validate": dataclasses.asdict(params.validate)},
                          metrics=metrics, artifacts=[args.metrics, Path(args.report) / "summary.json"])

    return run_stage("validate", body)


if __name__ == "__main__":
    raise SystemExit(main())
