"""Files stages pass each other: atomic outputs (a stage writes all of an output or none of it) and the
layout of the directory outs (file names inside ``data/raw``, ``data/clean`` and ``data/split``).

Named ``files`` rather than ``io`` so that it never shadows the standard library module it is imported beside.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Optional, Sequence

from .errors import PipelineError

if TYPE_CHECKING:
    import pandas as pd


def _umask_mode(base: int) -> int:
    mask = os.umask(0)
    os.umask(mask)
    return base & ~mask


# File names inside the directory outs that pass tables between stages (ingest → validate → split).
DATA_FILE = "data.parquet"
MANIFEST_FILE = "manifest.json"
# The split stage's out: labels.json (class names, index = label id) and one tokenised parquet per part.
LABELS_FILE = "labels.json"
SPLIT_PARTS = ("train", "val", "test")

__all__ = ["DATA_FILE", "MANIFEST_FILE", "LABELS_FILE", "SPLIT_PARTS", "split_part_file", "read_split",
           "write_split", "split_digests", "atomic_dir", "atomic_file", "write_json", "read_json", "sha256_file",
           "sha256_bytes", "is_disk_full", "disk_full_is_an_error"]


_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def is_disk_full(err: Optional[BaseException]) -> bool:
    """Whether ``err``, or an error it was raised from or while handling, is a write that failed for want of space
    (no space, quota, file-size limit). torch's writer raises a RuntimeError of its own after the OSError."""
    seen = 0
    while err is not None and seen < 10:
        if isinstance(err, OSError) and err.errno in _FULL:
            return True
        err, seen = err.__cause__ or err.__context__, seen + 1
    return False


@contextlib.contextmanager
def disk_full_is_an_error(path: str | Path, what: str) -> Iterator[None]:
    """Turn a write that runs out of space inside the block into one :class:`PipelineError` naming ``what``,
    the folder of ``path`` and its free space."""
    try:
        yield
    except (OSError, RuntimeError) as err:
        if not is_disk_full(err):
            raise
        folder = Path(path).parent
        try:
            free = f"{shutil.disk_usage(folder).free / 2**20:,.0f} MB free"
        except OSError:
            free = "free space unknown"
        raise PipelineError(f"cannot write {what} {path}: no space left on device in {folder} ({free}); "
                            "free space there, then rerun") from None


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path; on success it replaces ``path``, on error it is deleted."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, _umask_mode(0o666))  # mkstemp makes 0600; outputs get normal permissions
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary sibling directory; on success it replaces ``path`` whole.

    On error the temporary directory is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, _umask_mode(0o777))  # mkdtemp makes 0700
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / "x")  # move aside first so the swap is two renames
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def read_json(path: str | Path) -> Any:
    """Read a JSON file."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def split_part_file(part: str) -> str:
    """File name of one split part inside the split directory (``train`` -> ``train.parquet``)."""
    return f"{part}.parquet"


def _require_split(directory: Path, parts: Sequence[str]) -> None:
    names = [LABELS_FILE] + [split_part_file(p) for p in parts]
    missing = [n for n in names if not (directory / n).is_file()]
    if missing:
        raise PipelineError(f"{directory} lacks {', '.join(missing)}: run the split stage first (dvc repro split)")


def read_split(directory: str | Path, parts: Sequence[str] = ("train", "val"),
               columns: Sequence[str] | None = None) -> tuple[list[str], dict[str, "pd.DataFrame"]]:
    """The split stage's labels and the frames of ``parts``.

    Returns:
        ``(labels, {part: frame})``: class names (index = label id) and each part's tokenised rows.

    Raises:
        PipelineError: a file is missing (named, with the command that makes it).
    """
    import pandas as pd

    directory = Path(directory)
    _require_split(directory, parts)
    frames = {p: pd.read_parquet(directory / split_part_file(p), columns=list(columns) if columns else None)
              for p in parts}
    return read_json(directory / LABELS_FILE), frames


def write_split(directory: str | Path, labels: list[str], frames: dict[str, "pd.DataFrame"]) -> None:
    """Write what :func:`read_split` reads into ``directory`` (the split stage's ``atomic_dir``)."""
    directory = Path(directory)
    for part, frame in frames.items():
        frame.to_parquet(directory / split_part_file(part))
    write_json(directory / LABELS_FILE, labels)


def split_digests(directory: str | Path, parts: Sequence[str] = ("train", "val")) -> list[str]:
    """sha256 of each part's file, in order (run keys of checkpoints).

    Raises:
        PipelineError: a file is missing.
    """
    directory = Path(directory)
    _require_split(directory, parts)
    return [sha256_file(directory / split_part_file(p)) for p in parts]
