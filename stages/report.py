"""report: reports/report.md presenting the study's answer, with the rank curve, the adapters' spectra, learning
curves and confusion matrices (PNG) beside it — drawn from study.json alone."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from lora_pipeline.config import load_params
from lora_pipeline.figures import write_report
from lora_pipeline.records import answer_tags
from lora_pipeline.study_file import StudyFile, read_study
from lora_pipeline.tracking import log_stage_run
from stages._cli import phase, run_stage

log = logging.getLogger(__name__)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--study", required=True, help="study.json from the evaluate stage")
    parser.add_argument("--report", required=True, help="the Markdown report file")
    parser.add_argument("--figures", required=True, help="directory for PNG figures, beside the report")
    return parser.parse_args(argv)


def _metrics(study: StudyFile) -> dict[str, float]:
    """What MLflow gets: the answer's rank (0: none within tolerance) and each row's mean test macro-F1."""
    metrics = {"answer_rank": study.answer.rank or 0}
    metrics.update({f"test_macro_f1.{name}": row.macro_f1.mean for name, row in study.ordered_rows()})
    metrics["test_macro_f1.tfidf_logreg"] = study.tfidf_logreg.macro_f1
    return metrics


def _report(args: argparse.Namespace) -> None:
    params = load_params(args.params, sections=["mlflow"])
    with phase("data"):
        study = read_study(args.study)
    with phase("save"):  # the Markdown and its figures
        write_report(study, Path(args.report), Path(args.figures))
    log.info("%s", study.answer.sentence)
    with phase("mlflow"):
        log_stage_run(params.mlflow, "report", artifacts=[args.report, args.figures, args.study],
                      metrics=_metrics(study), tags=answer_tags(study.answer.to_json()))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_stage("report", lambda: _report(args))


if __name__ == "__main__":
    raise SystemExit(main())
