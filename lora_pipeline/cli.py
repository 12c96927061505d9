"""The ``lora-pipeline`` console command (declared in pyproject.toml): ``lora-pipeline predict``, ``rebuild`` (a
committed study's report from its record), ``merge`` (one record from parts of a study run apart) and ``promote``
(move the registry alias to the version of the run the committed ``dvc.lock`` records).

The user-facing entry point beside the stage scripts; like them it parses arguments, sets up logging and turns a
known error into one line and exit code 2. The work is :mod:`lora_pipeline.inference`.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import tempfile
from pathlib import Path
from typing import Optional

import pandas as pd

from .config import DataConfig, MlflowConfig
from .credentials import install_redaction, redact
from .data.reading import decode_strict, read_table
from .errors import ConfigError, PipelineError, excerpt
from .inference import Classifier, input_columns, load_classifier, predict_frame
from .records import CARD, read_card

__all__ = ["main"]

log = logging.getLogger("lora-pipeline")
EXIT_USER_ERROR = 2
READERS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".txt": "lines", ".jsonl": "jsonl", ".ndjson": "jsonl",
           ".json": "jsonl", ".parquet": "parquet", ".pq": "parquet"}
_URI = re.compile(r"^(models|runs|mlflow-artifacts|s3|gs|wasbs|hdfs|dbfs|file):/", re.IGNORECASE)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lora-pipeline", description="Use the models the pipeline trained.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("predict", help="classify texts (or sentence pairs) with a trained model",
                       description="Labels and per-class probabilities for texts given as arguments, in a file "
                                   "(CSV/TSV/JSONL/Parquet/one text per line) or on stdin.")
    p.add_argument("model", help="a model directory (models/<variant>/<tag>, any variant) "
                                 "or an MLflow model URI (models:/lora-pipeline-classifier@champion, "
                                 "runs:/<id>/<variant>-<tag> e.g. runs:/<id>/lora-r8-s42-lr0_002)")
    p.add_argument("texts", nargs="*", help="texts to classify (none: read --input, else stdin)")
    p.add_argument("--input", "-i", help="input file, or - for stdin; format from the suffix or --input-format")
    p.add_argument("--input-format", choices=sorted(set(READERS.values())),
                   help="csv | tsv | jsonl | parquet | lines (one text per line; the default for stdin)")
    p.add_argument("--text-column", default="text", help="column of the texts (default: text)")
    p.add_argument("--encoding", default="utf-8", help="text encoding of the input, as data.encoding (default utf-8)")
    p.add_argument("--quoting", choices=["minimal", "none"], default="minimal",
                   help="CSV/TSV quoting, as data.quoting: none keeps quote characters as text (default minimal)")
    p.add_argument("--delimiter", help="field delimiter, as data.delimiter (default: , for csv, tab for tsv)")
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
    pr = sub.add_parser("promote", help="move the registry alias to the study's pick of the committed run",
                        description="Point the alias (mlflow.alias, default champion) of the registered model at the "
                                    "version the evaluate stage registered for the run HEAD's dvc.lock records. "
                                    "Refuses a working tree with uncommitted changes and versions of experiments.")
    pr.add_argument("--version", help="the version to promote (default: the newest of HEAD's committed run)")
    pr.add_argument("--name", help="registered model (default: mlflow.registered_model in --params)")
    pr.add_argument("--alias", help="alias to move (default: mlflow.alias in --params)")
    pr.add_argument("--params", default="params.yaml", help="params file at the project root (default params.yaml)")
    r = sub.add_parser("rebuild", help="recompute a committed study's study.json, report.md and figures from its "
                                       "record.json.gz (no model, data or training needed)")
    r.add_argument("folders", nargs="+", help="study folders holding record.json.gz (e.g. docs/results/*)")
    m = sub.add_parser("merge", help="one study record from parts of a study run apart (other seeds, ranks or "
                                     "rates, on other machines or days); then rebuild the folder")
    m.add_argument("folder", help="study folder to write record.json.gz into (created if missing)")
    m.add_argument("parts", nargs="+", help="the parts' record.json.gz files (each a metrics/record.json.gz)")
    return parser


def _rebuild(args: argparse.Namespace) -> None:
    """Per folder: ``study.json``, ``report.md`` and ``figures/`` recomputed from ``record.json.gz`` alone."""
    from .figures import write_report
    from .record import build_study, read_record

    for folder in map(Path, args.folders):
        study = build_study(read_record(folder / "record.json.gz"))
        study.write(folder / "study.json")
        write_report(study, folder / "report.md", folder / "figures")
        print(f"{folder}: {study.answer.sentence}")
        if study.answer.equal_cost:
            print(f"{folder}: {study.answer.equal_cost}")


def _merge(args: argparse.Namespace) -> None:
    """``<folder>/record.json.gz``: the parts' records merged (checked to be parts of one study)."""
    from .record import merge_records, read_record, write_record

    merged = merge_records([read_record(p) for p in args.parts])
    folder = Path(args.folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_record(folder / "record.json.gz", merged)
    print(f"{folder / 'record.json.gz'}: {len(merged['runs'])} runs from {len(args.parts)} "
          f"part{'s' * (len(args.parts) != 1)}; seeds "
          f"{merged['params']['study']['seeds']} (rebuild the folder for its report)")


def _read_input(args: argparse.Namespace) -> pd.DataFrame:
    """The texts to classify, read as the ingest stage reads a file (same readers, quoting checks and encodings)."""
    if args.texts:
        if args.input:
            raise PipelineError("give texts as arguments or --input, not both")
        return pd.DataFrame({args.text_column: args.texts})
    source = args.input or "-"
    kind = args.input_format or ("lines" if source == "-" else READERS.get(_suffix(source)))
    if kind is None:
        raise PipelineError(f"--input {excerpt(source)}: unknown suffix; name the format with --input-format "
                            f"({', '.join(sorted(set(READERS.values())))})")
    if source != "-" and not Path(source).is_file():
        raise PipelineError(f"--input {excerpt(source)}: no such file")
    data = Path(source).read_bytes() if source != "-" else sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") \
        else sys.stdin.read().encode(args.encoding)
    name = "stdin" if source == "-" else source
    if kind == "lines":
        text = decode_strict(data, args.encoding, name)
        return pd.DataFrame({args.text_column: [t for t in text.split("\n") if t.strip()]})
    cfg = DataConfig(source="file", path=name, format=kind, encoding=args.encoding, quoting=args.quoting,
                     delimiter=args.delimiter, text_column=args.text_column)
    frame, _ = read_table(data, name if source != "-" else f"stdin.{kind}", cfg, keep_blank_lines=True)
    return frame


def _suffix(path: str) -> str:
    """``.csv`` of ``x.csv`` and of ``x.csv.gz`` (ingest's decompression applies)."""
    suffixes = [s.lower() for s in Path(path).suffixes]
    return suffixes[-2] if len(suffixes) > 1 and suffixes[-1] in (".gz", ".bz2", ".xz") else \
        (suffixes[-1] if suffixes else "")


def _tracking_uri(cfg: "MlflowConfig", what: str) -> str:
    """``MLFLOW_TRACKING_URI``, else ``cfg``'s store; refused when that is a SQLite file that does not exist (MLflow
    would create an empty store there)."""
    from .tracking.store import sqlite_db
    from .tracking import default_tracking_uri

    uri = default_tracking_uri(cfg)
    db = sqlite_db(uri)
    if db is not None and not db.is_file():
        raise PipelineError(f"{what}: no MLflow store at {db}; run inside the pipeline's project, or set "
                            "MLFLOW_TRACKING_URI to the store or server the model was registered in")
    return uri


def _resolve_model(model: str, workdir: Path) -> Path:
    """A local model directory: ``model`` itself, or the classifier directory inside a downloaded MLflow model."""
    if Path(model).exists() or not _URI.match(model):
        return Path(model)
    import mlflow

    from .tracking.mlflow_shims import http_limits
    from .tracking.store import check_server

    uri = _tracking_uri(MlflowConfig(), f"model {excerpt(model)}")
    mlflow.set_tracking_uri(uri)
    try:
        check_server(uri)  # a server that is down costs seconds, not minutes of retries
        with http_limits():  # and one that goes down during the download too
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model, dst_path=str(workdir)))
    except Exception as err:  # noqa: BLE001 - MLflow raises many types for a missing model or an unreachable store
        raise PipelineError(f"model {excerpt(model)}: cannot download it from MLflow at {uri} "
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
        directory = _resolve_model(args.model, Path(workdir))
        card = read_card(directory)
        input_columns(card, frame, args.text_column, args.pair_column)  # before the load
        taken = [c for c in ["label", *(f"prob_{name}" for name in card.labels)] if c in frame.columns]
        if taken:
            raise PipelineError(f"input already has a column {excerpt(str(taken[0]))}, which the predictions add; "
                                "rename it (every input column is passed through, predictions appended)")
        classifier: Classifier = load_classifier(directory, device=args.device, precision=args.precision)
    from tqdm import tqdm

    with tqdm(total=len(frame), unit="text", disable=True if args.no_progress else None, file=sys.stderr) as bar:
        result = predict_frame(classifier, frame, text_column=args.text_column, pair_column=args.pair_column,
                               batch_size=args.batch_size, on_batch=bar.update)
    if len(result) != len(frame):
        raise PipelineError(f"{len(frame)} rows read but {len(result)} predictions made; nothing was written")
    _write(pd.concat([frame.reset_index(drop=True), result], axis=1), args)  # every input column, then predictions


def _git(root: Path, *args: str) -> str:
    import subprocess

    try:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as err:
        raise PipelineError(f"promote needs git: {excerpt(str(err), 200, quote=False)}") from None
    if out.returncode != 0:
        raise PipelineError(f"promote: `git {' '.join(args)}` in {root} failed: "
                            f"{excerpt(out.stderr.strip(), 200, quote=False)}; run it inside the project's git repository")
    return out.stdout


def _committed_outputs(root: Path) -> tuple[str, set[str]]:
    """HEAD's commit and the md5 of every output its ``dvc.lock`` records; refused on uncommitted changes."""
    import yaml

    dirty = [line[3:] for line in _git(root, "status", "--porcelain", "--untracked-files=no").splitlines()]
    if dirty:
        raise PipelineError(f"uncommitted changes ({excerpt(', '.join(dirty[:5]), 200, quote=False)}): promote moves "
                            "the alias only to a committed run's version; commit them (an experiment: `dvc exp apply` "
                            "it, then `git commit`) or `git restore` them")
    commit = _git(root, "rev-parse", "HEAD").strip()
    lock = root / "dvc.lock"
    stages = (yaml.safe_load(lock.read_text(encoding="utf-8")) or {}).get("stages", {}) if lock.is_file() else {}
    return commit, {out["md5"] for stage in stages.values() for out in stage.get("outs", []) if out.get("md5")}


def _promote(args: argparse.Namespace) -> None:
    """Move the alias to a version of the run HEAD's ``dvc.lock`` records (the newest, or ``--version``)."""
    import mlflow

    from .config import load_params
    from .mlflow_model import committed_version, promote

    root = Path(_git(Path.cwd(), "rev-parse", "--show-toplevel").strip())
    params = Path(args.params) if Path(args.params).is_absolute() else root / args.params
    cfg = load_params(params, sections=["mlflow"]).mlflow if params.is_file() else MlflowConfig()
    name, alias = args.name or cfg.registered_model, args.alias or cfg.alias
    commit, outputs = _committed_outputs(root)
    client = mlflow.MlflowClient(tracking_uri=_tracking_uri(cfg, f"registered model {excerpt(name)}"))
    version = committed_version(client, name, outputs, commit[:7], args.version)
    before = promote(client, name, alias, str(version.version))
    facts = " ".join(f"{k} {version.tags[k]}" for k in ("variant", "rank", "seed", "lr") if version.tags.get(k))
    moved = f"from version {before}" if before else "newly set"
    print(f"{name}@{alias}: version {version.version} ({facts}, commit {commit[:7]}), {moved}")


def main(argv: Optional[list[str]] = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s %(levelname)s %(message)s", stream=sys.stderr)
    install_redaction(streams=("stderr",))  # stdout is the predictions: a text is never changed
    try:
        {"rebuild": _rebuild, "merge": _merge, "predict": _predict, "promote": _promote}[args.command](args)
    except (ConfigError, PipelineError) as err:
        print(f"lora-pipeline {args.command}: {redact(str(err))}", file=sys.stderr)
        return EXIT_USER_ERROR
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
