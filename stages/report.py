"""report: reports/report.md presenting the study's answer, with the rank curve, the adapters' spectra, learning
curves and confusion matrices (PNG) beside it — drawn from study.json alone."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any, Mapping

from lora_pipeline.config import load_params
from lora_pipeline.errors import PipelineError
from lora_pipeline.figures import write_report
from lora_pipeline.files import read_json
from lora_pipeline.records import answer_tags
from lora_pipeline.reporting import ordered_rows
from lora_pipeline.tracking import log_stage_run
from stages._cli import phase, run_stage

log = logging.getLogger(__name__)
STUDY_KEYS = ("labels", "rows", "answer", "params")  # what the report cannot do without


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--study", required=True, help="study.json from the evaluate stage")
    parser.add_argument("--report", required=True, help="the Markdown report file")
    parser.add_argument("--figures", required=True, help="directory for PNG figures, beside the report")
    return parser.parse_args(argv)


def read_study(path: str | Path) -> dict:
    """``study.json``, or a one-line error saying how to produce it."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"report: study file '{path}' not found; run the evaluate stage first "
                            "(`dvc repro evaluate`)")
    try:
        study = read_json(path)
    except ValueError as err:  # json.JSONDecodeError: a truncated or hand-edited file
        raise PipelineError(f"report: '{path}' is not valid JSON ({err}); rerun `dvc repro -f evaluate`") from err
    missing = [k for k in STUDY_KEYS if not isinstance(study, dict) or k not in study]
    if missing:
        raise PipelineError(f"report: '{path}' lacks {', '.join(missing)}: it was written by an older evaluate "
                            "stage; rerun it (`dvc repro -f evaluate`)")
    return study


def _metrics(study: Mapping[str, Any]) -> dict[str, float]:
    """What MLflow gets: the answer's rank (0: none within tolerance) and each row's mean test macro-F1."""
    metrics = {"answer_rank": study["answer"].get("rank") or 0}
    metrics.update({f"test_macro_f1.{name}": row["macro_f1"]["mean"] for name, row in ordered_rows(study)})
    if study.get("tfidf_logreg"):
        metrics["test_macro_f1.tfidf_logreg"] = study["tfidf_logreg"]["macro_f1"]
    return metrics


def _report(args: argparse.Namespace) -> None:
    params = load_params(args.params, sections=["mlflow"])
    with phase("data"):
        study = read_study(args.study)
    with phase("save"):  # the Markdown and its figures
        write_report(study, Path(args.report), Path(args.figures))
    log.info("%s", study["answer"].get("sentence", ""))
    with phase("mlflow"):
        log_stage_run(params.mlflow, "report", artifacts=[args.report, args.figures, args.study],
                      metrics=_metrics(study), tags=answer_tags(study["answer"]))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_stage("report", lambda: _report(args))


if __name__ == "__main__":
    raise SystemExit(main())
