"""report: reports/report.md with the comparison table, curves and confusion matrices (PNG)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pandas as pd

from lora_pipeline.config import VARIANTS, load_params
from lora_pipeline.data.summary import DATASET_FILE
from lora_pipeline.files import atomic_dir, atomic_file, read_json
from lora_pipeline.reporting import comparison_table, plot_confusions, plot_curves, render_markdown
from lora_pipeline.tracking import log_stage_run
from stages._cli import run_stage


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--metrics-dir", required=True, help="holds evaluate.json and train_<variant>.json")
    parser.add_argument("--curves", required=True, help="directory of per-epoch CSVs")
    parser.add_argument("--labels", required=True, help="labels.json from the split stage")
    parser.add_argument("--report", required=True, help="the Markdown report file")
    parser.add_argument("--figures", required=True, help="directory for PNG figures, beside the report")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def body() -> None:
        params = load_params(args.params, sections=["model", "train", "scratch", "full", "lora", "mlflow"])
        metrics = Path(args.metrics_dir)
        evaluate = read_json(metrics / "evaluate.json")
        train = {v: read_json(metrics / f"train_{v}.json") for v in VARIANTS}
        curves = {v: pd.read_csv(Path(args.curves) / f"{v}.csv") for v in VARIANTS}
        table = comparison_table(evaluate, train)
        report = Path(args.report)
        rel = Path(args.figures).resolve().relative_to(report.parent.resolve()).as_posix()
        with atomic_dir(args.figures) as tmp:
            plot_curves(curves, tmp / "curves.png")
            plot_confusions(evaluate, read_json(args.labels), tmp / "confusion.png")
        dataset_file = Path(args.labels).parent / DATASET_FILE  # written by the split stage beside labels.json
        dataset = read_json(dataset_file) if dataset_file.is_file() else None
        setup = {name: dataclasses.asdict(getattr(params, name)) for name in ("model", "train", *VARIANTS)}
        text = render_markdown(table, evaluate, {"curves": f"{rel}/curves.png", "confusion": f"{rel}/confusion.png"},
                               dataset=dataset, params=setup)
        with atomic_file(report) as tmp:
            tmp.write_text(text, encoding="utf-8")
        log_stage_run(params.mlflow, "report", artifacts=[report, args.figures],
                      metrics={f"test_macro_f1.{n}": r["macro_f1"] for n, r in evaluate.items()})

    return run_stage("report", body)


if __name__ == "__main__":
    raise SystemExit(main())
