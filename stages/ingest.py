"""ingest: fetch the raw data (params section ``data``) into ``<out>/data.parquet`` + ``manifest.json``."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

from lora_pipeline.config import load_params
from lora_pipeline.data.sources import MANIFEST_FILE, ingest
from lora_pipeline.errors import listing
from stages._cli import log_stage_run, phase, run_stage


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml", help="params file (section 'data')")
    parser.add_argument("--out", required=True, help="output directory (data.parquet, manifest.json)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def body() -> None:
        params = load_params(args.params, sections=["data", "mlflow"])
        with phase("data"):  # fetch, parse, check and write
            manifest = ingest(params.data, Path(args.out))
        logging.getLogger("ingest").info("wrote %d rows to %s (columns %s)", manifest["rows"], args.out,
                                         listing(manifest["columns"]))
        with phase("mlflow"):
            log_stage_run(params.mlflow, "ingest", params={"data": dataclasses.asdict(params.data)},
                          metrics={"rows": manifest["rows"]}, artifacts=[Path(args.out) / MANIFEST_FILE])

    return run_stage("ingest", body)


if __name__ == "__main__":
    raise SystemExit(main())
