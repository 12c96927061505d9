"""Ingest from a Hugging Face dataset: one split, or the predefined train/val/test splits (``data.splits``)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Optional

import pandas as pd

from ..config import DataConfig
from ..errors import DataError, excerpt, listing
from ..files import sha256_file

__all__ = ["from_hub", "hub_splits"]


def from_hub(cfg: DataConfig, changes: Counter) -> tuple[pd.DataFrame, dict[str, Any], str]:
    """The split ``data.hub_split`` of ``data.hub_name`` (a hub id or a ``save_to_disk`` directory)."""
    frame, files = _load(cfg, cfg.hub_split, "data.hub_split", changes)
    provenance = {"hub_name": cfg.hub_name, "hub_config": cfg.hub_config, "hub_split": cfg.hub_split,
                  "hub_revision": cfg.hub_revision, "files_sha256": files}
    return frame, provenance, f"hub:{cfg.hub_name}"


def hub_splits(cfg: DataConfig, changes: Counter) -> tuple[list[tuple[Optional[str], pd.DataFrame, str]], dict]:
    """Each of ``data.splits`` (our part name → the dataset's split name), used as the dataset defines it."""
    splits = cfg.splits or {}
    pieces, provenance = [], {"hub_name": cfg.hub_name, "hub_config": cfg.hub_config,
                              "hub_revision": cfg.hub_revision, "splits": {}}
    for part in [n for n in ("train", "val", "test") if n in splits]:
        frame, files = _load(cfg, splits[part], f"data.splits.{part}", changes)
        pieces.append((part, frame, f"hub:{cfg.hub_name}[{splits[part]}]"))
        provenance["splits"][part] = {"hub_split": splits[part], "files_sha256": files, "rows": len(frame)}
    return pieces, provenance


def _load(cfg: DataConfig, split: str, key: str, changes: Counter) -> tuple[pd.DataFrame, dict[str, str]]:
    try:
        import datasets  # lazy: optional dependency, slow import
    except ImportError as err:
        raise DataError("data.source 'hub' needs the 'datasets' package: pip install 'lora-pipeline[hub]' "
                        "(or use data.source: file)") from err
    name = cfg.hub_name or ""
    local = Path(name)
    try:
        if local.is_dir():
            loaded = datasets.load_from_disk(str(local))
            if isinstance(loaded, datasets.DatasetDict):
                if split not in loaded:
                    raise DataError(f"{key} '{split}' is not in {name}; "
                                    f"splits: {listing(list(loaded))}")
                loaded = loaded[split]
            files = {p.relative_to(local).as_posix(): sha256_file(p) for p in sorted(local.rglob("*")) if p.is_file()}
        else:
            loaded = datasets.load_dataset(name, cfg.hub_config, split=split, revision=cfg.hub_revision)
            files = {Path(f["filename"]).name: sha256_file(f["filename"]) for f in loaded.cache_files}
    except DataError:
        raise
    except Exception as err:  # datasets raises many types (network, missing split, bad config)
        raise DataError(f"cannot load Hugging Face dataset '{name}' (data.hub_name, {key} "
                        f"'{split}'): {type(err).__name__}: {excerpt(str(err), 300, quote=False)}") from err
    return map_class_labels(loaded.to_pandas(), loaded.features, datasets.ClassLabel, changes), files


def map_class_labels(frame: pd.DataFrame, features: Any, class_label: type,
                     changes: Optional[Counter] = None) -> pd.DataFrame:
    """Replace ClassLabel integers by their names (counted); -1 (unlabelled) and out-of-range become null."""
    changes = Counter() if changes is None else changes
    for column, feature in features.items():
        if isinstance(feature, class_label) and column in frame:
            names = list(feature.names)
            mapped = frame[column].map(
                lambda i: names[int(i)] if pd.notna(i) and 0 <= int(i) < len(names) else None).astype(object)
            changes["class_label_ids_named"] += int(mapped.notna().sum())
            changes["class_label_ids_unlabelled"] += int(mapped.isna().sum() - frame[column].isna().sum())
            frame[column] = mapped
    return frame
