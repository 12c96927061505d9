"""The ``lora-pipeline`` console command (declared in pyproject.toml): ``lora-pipeline predict`` and
``lora-pipeline rebuild`` (a committed study's report from its record).

The user-facing entry point beside the stage scripts; like them it parses arguments, sets up logging and turns a
known error into one line and exit code 2. The work is :mod:`lora_pipeline.inference`.
"""

from __future__ import annotations

import argparse
import io
import logging
import re
import sys
import tempfile
from pathlib import Path
from typing import Optional

import pandas as pd

from .errors import ConfigError, PipelineError, excerpt
from .inference import CARD, Classifier, load_classifier, predict_frame

__all__ = ["main"]

log = logging.getLogger("lora-pipeline")
EXIT_USER_ERROR = 2
READERS = {".csv": "csv", ".tsv": "tsv", ".txt": "lines", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}
_URI = re.compile(r"^(models|runs|mlflow-artifacts|s3|gs|wasbs|hdfs|dbfs|file):/", re.IGNORECASE)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lora-pipeline", description="Use the models the pipeline trained.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("predict", help="classify texts (or sentence pairs) with a trained model",
                       description="Labels and per-class probabilities for texts given as arguments, in a file "
                                   "(CSV/TSV/JSONL/Parquet/one text per line) or on stdin.")
    p.add_argument("model", help="a model directory (models/<variant>/<tag>, any variant) "
                                 "or an MLflow model URI (models:/lora-pipeline-classifier@champion, runs:/<id>/model)")
    p.add_argument("texts", nargs="*", help="texts to classify (none: read --input, else stdin)")
    p.add_argument("--input", "-i", help="input file, or - for stdin; format from the suffix or --input-format")
    p.add_argument("--input-format", choices=sorted(set(READERS.values())),
                   help="csv | tsv | jsonl | parquet | lines (one text per line; the default for stdin)")
    p.add_argument("--text-column", default="text", help="column of the texts (default: text)")
    p.add_argument("--pair-column", help="column of the second texts of sentence pairs (default: text_pair for a "
                                         "model trained on pairs)")
    p.add_argument("--output", "-o", help="output file (default: stdout)")
    p.add_argument("--format", choices=["csv", "jsonl"], help="output format (default: from --output's suffix, "
                                                              "else csv)")
    p.add_argument("--batch-size", type=int, default=64, help="texts per forward pass (default 64)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] (default auto)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"],
                   help="default: the precision the model was trained with (what the evaluate stage used)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (it shows on a terminal only)")
    r = sub.add_parser("rebuild", help="recompute a committed study's study.json, report.md and figures from its "
                                       "record.json.gz (no model, data or training needed)")
    r.add_argument("folders", nargs="+", help="study folders holding record.json.gz (e.g. docs/results/*)")
    return parser


def _rebuild(args: argparse.Namespace) -> None:
    """Per folder: ``study.json``, ``report.md`` and ``figures/`` recomputed from ``record.json.gz`` alone."""
    from .figures import write_report
    from .files import write_json
    from .record import build_study, read_record

    for folder in map(Path, args.folders):
        study = build_study(read_record(folder / "record.json.gz"))
        write_json(folder / "study.json", study)
        write_report(study, folder / "report.md", folder / "figures")
        print(f"{folder}: {study['answer']['sentence']}")
        if study["answer"].get("equal_cost"):
            print(f"{folder}: {study['answer']['equal_cost']}")


def _read_input(args: argparse.Namespace) -> pd.DataFrame:
    if args.texts:
        if args.input:
            raise PipelineError("give texts as arguments or --input, not both")
        return pd.DataFrame({args.text_column: args.texts})
    source = args.input or "-"
    kind = args.input_format or ("lines" if source == "-" else READERS.get(Path(source).suffix.lower()))
    if kind is None:
        raise PipelineError(f"--input {excerpt(source)}: unknown suffix; name the format with --input-format "
                            f"({', '.join(sorted(set(READERS.values())))})")
    if source != "-" and not Path(source).is_file():
        raise PipelineError(f"--input {excerpt(source)}: no such file")
    handle = io.StringIO(sys.stdin.read()) if source == "-" and kind != "parquet" else source
    try:
        if kind == "lines":
            lines = (handle.read() if isinstance(handle, io.StringIO) else Path(source).read_text("utf-8"))
            return pd.DataFrame({args.text_column: [t for t in lines.splitlines() if t.strip()]})
        if kind in ("csv", "tsv"):
            return pd.read_csv(handle, sep="\t" if kind == "tsv" else ",", dtype=str, keep_default_na=False,
                               skip_blank_lines=False)  # a blank row is an error, not silently dropped
        if kind == "jsonl":
            return pd.read_json(handle, lines=True, dtype=False)
        return pd.read_parquet(source)
    except (ValueError, OSError, UnicodeDecodeError, pd.errors.ParserError) as err:
        raise PipelineError(f"--input {excerpt(source)}: cannot read it as {kind} "
                            f"({excerpt(str(err).splitlines()[0] if str(err) else type(err).__name__, 200, quote=False)})"
                            ) from None


def _resolve_model(model: str, workdir: Path) -> Path:
    """A local model directory: ``model`` itself, or the classifier directory inside a downloaded MLflow model."""
    if Path(model).exists() or not _URI.match(model):
        return Path(model)
    import mlflow

    from .config import MlflowConfig
    from .tracking import default_tracking_uri

    mlflow.set_tracking_uri(default_tracking_uri(MlflowConfig()))  # MLFLOW_TRACKING_URI, else ./mlflow.db
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model, dst_path=str(workdir)))
    except Exception as err:  # noqa: BLE001 - MLflow raises many types for a missing model or an unreachable store
        raise PipelineError(f"model {excerpt(model)}: cannot download it from MLflow "
                            f"({excerpt(str(err).splitlines()[0] if str(err) else type(err).__name__, 200, quote=False)})"
                            ) from None
    found = sorted(p.parent for p in local.glob(f"artifacts/*/{CARD}"))
    if not found:
        raise PipelineError(f"model {excerpt(model)}: not a lora-pipeline model (no artifacts/*/{CARD} in it)")
    return found[0]


def _write(frame: pd.DataFrame, args: argparse.Namespace) -> None:
    kind = args.format or ("jsonl" if args.output and Path(args.output).suffix.lower() in (".jsonl", ".json")
                           else "csv")
    text = frame.to_json(orient="records", lines=True, force_ascii=False) if kind == "jsonl" \
        else frame.to_csv(index=False)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)


def _predict(args: argparse.Namespace) -> None:
    if args.batch_size < 1:
        raise PipelineError("--batch-size must be >= 1")
    frame = _read_input(args)
    if frame.empty:
        raise PipelineError("no texts to classify (empty input)")
    with tempfile.TemporaryDirectory(prefix="lora-pipeline-model-") as workdir:
        classifier: Classifier = load_classifier(_resolve_model(args.model, Path(workdir)), device=args.device,
                                                 precision=args.precision)
    from tqdm import tqdm

    with tqdm(total=len(frame), unit="text", disable=True if args.no_progress else None, file=sys.stderr) as bar:
        result = predict_frame(classifier, frame, text_column=args.text_column, pair_column=args.pair_column,
                               batch_size=args.batch_size, on_batch=bar.update)
    shown = [c for c in (args.text_column, args.pair_column or ("text_pair" if classifier.card.text_pair else None))
             if c and c in frame.columns]
    _write(pd.concat([frame[shown].reset_index(drop=True), result], axis=1), args)


def main(argv: Optional[list[str]] = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s %(levelname)s %(message)s", stream=sys.stderr)
    try:
        _rebuild(args) if args.command == "rebuild" else _predict(args)
    except (ConfigError, PipelineError) as err:
        print(f"lora-pipeline {args.command}: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
