"""Validation of the raw table: the Great Expectations suite (:mod:`.expectations`) on the columns the cleaning
policy derives (:mod:`.cleaning`), then the clean rows, the label set and the report.

Every check is one built-in GX expectation, either on a standard column or on a column derived with
pandas (stripped length, duplicate/conflict flags, rows per class after cleaning). Each is *hard*
(fails the stage with :class:`ValidationFailed`) or *soft* (logs a warning). A cleaning policy
(``drop_empty``, ``dedupe``, ``drop_conflicting``) makes its matching check soft: the rows are dropped
and counted. With the policy off the check is hard. Class checks (count, declared labels present, rows
per class) run on the rows that *survive* cleaning (a GX ``row_condition``), so cleaning cannot hide a
violation; the label-set and null-label checks run on all raw rows.
"""

from __future__ import annotations

import html
import logging
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional

import pandas as pd

from ..config import ValidateConfig
from ..errors import ValidationFailed, excerpt, listing
from .cleaning import derive_columns
from .expectations import SUITE_NAME, Check, build_checks, report_entry, run_gx

__all__ = ["Check", "validate", "build_checks", "derive_columns", "flat_metrics", "write_html_index", "label_order"]

log = logging.getLogger(__name__)


def validate(df: pd.DataFrame, cfg: ValidateConfig,
             docs_dir: Optional[Path] = None) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Run the suite on the raw table, apply the cleaning policy and summarise.

    Args:
        df: raw table with string columns ``text``, ``label`` (+ ``text_pair``).
        cfg: the ``validate`` params section.
        docs_dir: if given and no hard check fails, the GX Data Docs site (``index.html``) is copied here.

    Returns:
        The cleaned table (same standard columns, fresh index) and a report dict (counts, rows per
        class, one entry per expectation).

    Raises:
        ValidationFailed: one or more hard checks failed; the message names each with counts and
            up to three examples.
    """
    required = ["text"] + (["text_pair"] if "text_pair" in df.columns else []) + ["label"]
    required += ["split"] if "split" in df.columns else []  # predefined splits: every file is checked
    frame = derive_columns(df, cfg, required)
    checks = build_checks(cfg, required, [c for c in required if c not in frame.columns])
    with tempfile.TemporaryDirectory(prefix="lora-pipeline-gx-") as root:
        results, site = run_gx(frame, checks, Path(root), build_docs=docs_dir is not None)
        entries = [report_entry(check, results[check.name], frame) for check in checks]
        hard = [e for e in entries if not e["success"] and e["severity"] == "hard"]
        for entry in entries:
            if not entry["success"] and entry["severity"] == "soft":
                log.warning("soft expectation failed (rows are cleaned): %s", entry["message"])
        if hard:
            lines = "\n  - ".join(e["message"] for e in hard)
            raise ValidationFailed(f"{len(hard)} hard data expectation(s) failed:\n  - {lines}")
        if docs_dir is not None and site is not None:
            shutil.copytree(site, Path(docs_dir) / "gx", dirs_exist_ok=True)
    clean = frame.loc[frame["kept"], required].reset_index(drop=True)
    report = _report(frame, clean, entries)
    clean = _name_labels(clean, cfg, report)
    if docs_dir is not None:
        write_html_index(Path(docs_dir), report)
    return clean, report


def write_html_index(docs_dir: Path, report: dict[str, Any]) -> None:
    """Write ``index.html``: a static (no JavaScript) summary linking to the GX Data Docs under ``gx/``.

    GX's own ``gx/index.html`` lists results with JavaScript from CDNs; this page works offline.
    """
    esc = html.escape
    pages = sorted((docs_dir / "gx" / "validations").rglob("*.html"))
    links = [(p.relative_to(docs_dir).as_posix(), "GX validation result") for p in pages]
    links += [("gx/expectations/" + SUITE_NAME + ".html", "GX expectation suite"), ("gx/index.html", "GX Data Docs")]
    counts = {k: v for k, v in report.items() if not isinstance(v, (list, dict))}
    counts.update({f"rows in class {k!r}": v for k, v in report["rows_per_class"].items()})
    rows = "".join(
        f"<tr class={'ok' if e['success'] else e['severity']}><td>{esc(e['name'])}</td><td>{esc(e['expectation'])}"
        f"</td><td>{e['severity']}</td><td>{'pass' if e['success'] else 'FAIL'}</td><td>{esc(e['message'])}</td></tr>"
        for e in report["expectations"])
    page = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>Data validation</title><style>"
        "body{font-family:sans-serif;margin:2em}td,th{border:1px solid #ccc;padding:4px;vertical-align:top}"
        "table{border-collapse:collapse}.hard{background:#fdd}.soft{background:#ffd}</style></head><body>"
        "<h1>Data validation (Great Expectations suite " + esc(SUITE_NAME) + ")</h1><ul>"
        + "".join(f"<li><a href='{esc(href)}'>{esc(text)}</a></li>" for href, text in links)
        + "</ul><h2>Counts</h2><table>"
        + "".join(f"<tr><th>{esc(str(k))}</th><td>{esc(str(v))}</td></tr>" for k, v in counts.items())
        + "</table><h2>Expectations</h2><table><tr><th>check</th><th>GX expectation</th><th>severity</th>"
        "<th>status</th><th>detail</th></tr>" + rows + "</table></body></html>\n")
    (docs_dir / "index.html").write_text(page, encoding="utf-8")



def label_order(labels: Any) -> list[str]:
    """Distinct labels in class-id order: numerically when all are integers ("2" before "10"), else sorted."""
    distinct = sorted({str(v) for v in labels})
    if distinct and all(re.fullmatch(r"-?\d+", v) for v in distinct):
        return sorted(distinct, key=int)
    return distinct


def _name_labels(clean: pd.DataFrame, cfg: ValidateConfig, report: dict[str, Any]) -> pd.DataFrame:
    """Record the label set (inferred or declared) and apply ``validate.label_names`` to the clean rows."""
    raw = label_order(clean["label"])
    names = cfg.label_names or {}
    unnamed = [label for label in raw if label not in names]
    if names and unnamed:
        raise ValidationFailed(f"validate.label_names has no name for label(s) {listing(unnamed)} (named: "
                               f"{listing(list(names))}); add them, e.g. {excerpt(unnamed[0], 40)}: <name>")
    report.update(labels=[names.get(label, label) for label in raw], labels_inferred=cfg.labels is None,
                  label_names={label: names[label] for label in raw} if names else None,
                  labels_renamed=int(clean["label"].isin(list(names)).sum()) if names else 0)
    if names:
        report["rows_per_class"] = {names[k]: v for k, v in report["rows_per_class"].items()}
        clean = clean.assign(label=clean["label"].map(names))
    return clean


def _report(frame: pd.DataFrame, clean: pd.DataFrame, entries: list[dict]) -> dict[str, Any]:
    reasons = frame["drop_reason"].value_counts()
    rows = len(frame)
    splits = {}
    if "split" in clean:
        splits = {f"rows_{name}": int(n) for name, n in clean["split"].value_counts().items()}
        splits["texts_across_splits"] = int(frame.loc[frame["leaked"], "text"].nunique())
    return {**splits,
        "rows_raw": rows, "rows_clean": len(clean),
        "dropped_empty": int(reasons.get("empty", 0)), "dropped_conflicting": int(reasons.get("conflicting", 0)),
        "dropped_duplicates": int(reasons.get("duplicate", 0)),
        "invisible_only_texts": int(frame["invisible_only"].sum()),
        "texts_with_edge_whitespace": int(clean["text"].ne(clean["text"].str.strip()).sum()),
        "duplicate_rate": round(float(frame["is_duplicate"].sum()) / rows, 6) if rows else 0.0,
        "conflicting_texts": int(frame.loc[frame["has_conflict"], "text"].nunique()),
        "n_classes": int(clean["label"].nunique()),
        "rows_per_class": {str(k): int(v) for k, v in sorted(clean["label"].value_counts().items())},
        "expectations": entries,
        "expectations_passed": sum(e["success"] for e in entries),
        "expectations_failed_soft": sum(not e["success"] and e["severity"] == "soft" for e in entries),
    }


def flat_metrics(report: dict[str, Any]) -> dict[str, Any]:
    """Flatten a :func:`validate` report into ``metrics/validate.json`` (scalars only, DVC-friendly)."""
    flat = {k: v for k, v in report.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    for label, n in report["rows_per_class"].items():
        flat[f"rows_per_class_{re.sub(r'[^0-9A-Za-z_.-]', '_', label)}"] = n
    flat["expectations_total"] = len(report["expectations"])
    return flat
