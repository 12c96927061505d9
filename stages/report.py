"""report: reports/report.md presenting the study's answer, with the rank curve, the adapters' spectra, training
curves and confusion matrices (PNG) beside it."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
from pathlib import Path
from typing import Any, Mapping, Optional

import pandas as pd

from lora_pipeline.config import load_params
from lora_pipeline.errors import PipelineError
from lora_pipeline.figures import FIGURE_FILES, save_figures
from lora_pipeline.files import atomic_dir, atomic_file, read_json
from lora_pipeline.reporting import curve_runs, ordered_rows, render_report
from lora_pipeline.tracking import log_stage_run
from stages._cli import run_stage

log = logging.getLogger(__name__)
SETUP_SECTIONS = ("model", "train", "scratch", "full", "lora", "study")  # what the Setup section shows
STUDY_KEYS = ("labels", "rows", "answer")  # what the report cannot do without


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--study", required=True, help="study.json from the evaluate stage")
    parser.add_argument("--curves", required=True, help="folder of <variant>/<tag>/{steps,evals}.csv")
    parser.add_argument("--dataset", required=True, help="dataset.json from the split stage (skipped if missing)")
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


def read_curves(folder: str | Path, study: Mapping[str, Any]) -> dict[str, tuple]:
    """Per chosen (variant, rank), first seed: its ``(steps, evals)`` frames; a missing folder is skipped."""
    out = {}
    for title, run in curve_runs(study).items():
        where = Path(folder) / str(run.get("variant")) / str(run.get("tag"))
        if not where.is_dir():
            log.warning("no training curves for %s at %s: left out of curves.png", title, where)
            continue
        out[title] = tuple(_csv(where / name) for name in ("steps.csv", "evals.csv"))
    return out


def _csv(path: Path) -> Optional[pd.DataFrame]:
    if not path.is_file():
        log.warning("curve file %s is missing: left out of curves.png", path)
        return None
    return pd.read_csv(path)


def _setup(params: Any) -> dict:
    """The params sections the Setup section shows, as dicts (``lora.rank`` is not a study key: ranks are)."""
    setup = {name: dataclasses.asdict(getattr(params, name)) for name in SETUP_SECTIONS if hasattr(params, name)}
    setup.get("lora", {}).pop("rank", None)
    return setup


def _metrics(study: Mapping[str, Any]) -> dict[str, float]:
    """What MLflow gets: the answer's rank (0: none within tolerance) and each row's mean test macro-F1."""
    metrics = {"answer_rank": study["answer"].get("rank") or 0}
    metrics.update({f"test_macro_f1.{name}": row["macro_f1"]["mean"] for name, row in ordered_rows(study)})
    if study.get("tfidf_logreg"):
        metrics["test_macro_f1.tfidf_logreg"] = study["tfidf_logreg"]["macro_f1"]
    return metrics


def _report(args: argparse.Namespace) -> None:
    params = load_params(args.params, sections=["model", "train", "scratch", "full", "lora", "study", "mlflow"])
    study = read_study(args.study)
    dataset = read_json(args.dataset) if Path(args.dataset).is_file() else None
    report = Path(args.report)
    with atomic_dir(args.figures) as tmp:
        save_figures(study, read_curves(args.curves, study), tmp)
    rel = Path(os.path.relpath(Path(args.figures).resolve(), report.parent.resolve())).as_posix()
    links = {key: f"{rel}/{name}" for key, name in FIGURE_FILES.items()}
    with atomic_file(report) as tmp:
        tmp.write_text(render_report(study, links, dataset=dataset, params=_setup(params)), encoding="utf-8")
    log.info("%s", study["answer"].get("sentence", ""))
    log_stage_run(params.mlflow, "report", artifacts=[report, args.figures, args.study], metrics=_metrics(study),
                  tags={"answer": str(study["answer"].get("sentence", ""))[:250]})


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_stage("report", lambda: _report(args))


if __name__ == "__main__":
    raise SystemExit(main())
