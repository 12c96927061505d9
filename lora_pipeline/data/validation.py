"""Great Expectations (GX Core 1.x) suite on the raw table, and the cleaning policy of ``ValidateConfig``.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional
from urllib.parse import unquote, urlparse

import pandas as pd

from ..config import ValidateConfig
from ..errors import ValidationFailed, excerpt, listing

__all__ = ["Check", "validate", "build_checks", "derive_columns", "flat_metrics", "write_html_index", "label_order"]

log = logging.getLogger(__name__)

SUITE_NAME = "raw_text_data"
MAX_EXAMPLES = 3
_PARTIAL_COUNT = 20  # unexpected rows GX reports per expectation; examples are picked from these
# Unicode default-ignorable code points (zero-width space/joiners, BOM, bidi and variation-selector
# marks, soft hyphen, Hangul fillers, tags): they render as nothing, so a text made only of these and
# whitespace is blank, though Python's str.strip() and regex \s keep them.
_INVISIBLE = ((0x00AD, 0x00AD), (0x034F, 0x034F), (0x061C, 0x061C), (0x115F, 0x1160), (0x17B4, 0x17B5),
              (0x180B, 0x180F), (0x200B, 0x200F), (0x202A, 0x202E), (0x2060, 0x206F), (0x3164, 0x3164),
              (0xFE00, 0xFE0F), (0xFEFF, 0xFEFF), (0xFFA0, 0xFFA0), (0xFFF0, 0xFFF8), (0x1BCA0, 0x1BCA3),
              (0x1D173, 0x1D17A), (0xE0000, 0xE0FFF))


def _escape(a: int, b: int) -> str:
    one = (lambda c: f"\\u{c:04x}" if c <= 0xFFFF else f"\\U{c:08x}")
    return one(a) if a == b else f"{one(a)}-{one(b)}"


BLANK_REGEX = "^[\\s" + "".join(_escape(a, b) for a, b in _INVISIBLE) + "]*$"  # the GX text_not_blank check
_STRIP_CHARS = "".join(c for c in map(chr, range(0x3001)) if c.isspace()) + "".join(
    chr(c) for a, b in _INVISIBLE for c in range(a, b + 1))
Describe = Callable[[dict, pd.DataFrame], str]


@dataclass(frozen=True)
class Check:
    """One named GX expectation, its severity and how to explain a failure."""

    name: str
    expectation: Any  # a great_expectations.expectations.Expectation
    hard: bool
    describe: Describe


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
        results, site = _run_gx(frame, checks, Path(root), build_docs=docs_dir is not None)
        entries = [_entry(check, results[check.name], frame) for check in checks]
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


def derive_columns(df: pd.DataFrame, cfg: ValidateConfig, required: list[str]) -> pd.DataFrame:
    """Add the pandas-derived columns the suite checks; ``kept`` marks rows the policy keeps.

    Derived: ``chars`` (longest raw text length), ``chars_stripped`` (shortest length without edge
    whitespace and invisible characters; null when empty), ``empty``, ``invisible_only`` (empty only
    because of invisible characters such as U+200B), ``has_conflict`` (text occurs with >1 label),
    ``is_duplicate`` (repeats an earlier (text, label) row), ``kept`` and ``class_rows`` (rows of the
    label among kept rows).
    """
    frame = df.reset_index(drop=True).copy()
    if any(c not in frame.columns for c in required):
        return frame
    texts = [c for c in required if c not in ("label", "split")]
    within = texts + (["split"] if "split" in required else [])  # duplicates/conflicts count within each file
    for column in required:
        frame[column] = frame[column].astype("str")
    stripped = pd.concat([frame[c].str.strip(_STRIP_CHARS).str.len() for c in texts], axis=1)
    frame["empty"] = (stripped.isna() | stripped.eq(0)).any(axis=1)
    visible_space = pd.concat([frame[c].str.strip().str.len().gt(0) for c in texts], axis=1)
    frame["invisible_only"] = (stripped.eq(0) & visible_space).any(axis=1)  # blank only by the rule above
    frame["chars"] = pd.concat([frame[c].str.len() for c in texts], axis=1).max(axis=1).astype(float)
    frame["chars_stripped"] = stripped.min(axis=1).where(~frame["empty"]).astype(float)
    valid = ~frame["empty"] & frame["label"].notna()
    labels_per_text = frame[valid].groupby(within)["label"].transform("nunique")
    frame["has_conflict"] = labels_per_text.reindex(frame.index).fillna(0).gt(1)
    frame["is_duplicate"] = valid & frame.duplicated(within + ["label"], keep="first")
    if "split" in required:
        _derive_split_columns(frame, texts, valid)
    drop_empty = frame["empty"] & cfg.drop_empty
    drop_conflict = frame["has_conflict"] & cfg.drop_conflicting & ~drop_empty
    drop_dup = frame["is_duplicate"] & cfg.dedupe & ~drop_empty & ~drop_conflict
    frame["drop_reason"] = None
    for mask, reason in ((drop_empty, "empty"), (drop_conflict, "conflicting"), (drop_dup, "duplicate")):
        frame.loc[mask, "drop_reason"] = reason
    frame["kept"] = frame["drop_reason"].isna()
    sizes = frame.loc[frame["kept"]].groupby("label")["label"].transform("size")
    frame["class_rows"] = sizes.reindex(frame.index).astype(float)
    return frame


def _derive_split_columns(frame: pd.DataFrame, texts: list[str], valid: pd.Series) -> None:
    """``label_in_train`` (a val/test label the train file has too) and ``leaked`` (the stripped text also
    occurs in another split file: scores on it are not held-out scores)."""
    train_labels = set(frame.loc[valid & frame["split"].eq("train"), "label"])
    frame["label_in_train"] = frame["label"].isna() | frame["label"].isin(train_labels)
    key = frame[texts].apply(lambda col: col.str.strip(_STRIP_CHARS)).fillna("").agg("\x1f".join, axis=1)
    frame["leaked"] = valid & (frame.assign(key=key)[valid].groupby("key")["split"].transform("nunique")
                               .reindex(frame.index).fillna(1).gt(1))


def build_checks(cfg: ValidateConfig, required: list[str], missing: list[str]) -> list[Check]:
    """The suite: structure checks always; content checks only when the required columns exist."""
    import great_expectations as gx  # lazy: slow import

    E = gx.expectations
    checks = [_check(f"column_exists_{c}", E.ExpectColumnToExist(column=c), True, "column must exist",
                     lambda r, f, c=c: f"column '{c}' is missing; columns: {listing(f.columns)}") for c in required]
    checks.append(_check("row_count", E.ExpectTableRowCountToBeBetween(min_value=1), True, "at least one row",
                         lambda r, f: f"the data has {r.get('observed_value')} rows (need >= 1)"))
    if missing:
        return checks
    policy = "validate.drop_empty"
    for c in [c for c in required if c not in ("label", "split")]:
        checks += [
            _check(f"{c}_not_null", E.ExpectColumnValuesToNotBeNull(column=c), not cfg.drop_empty,
                   f"{c} is not null", _rows(f"rows with a null {c}", policy, cfg.drop_empty)),
            _check(f"{c}_not_blank", E.ExpectColumnValuesToNotMatchRegex(column=c, regex=BLANK_REGEX),
                   not cfg.drop_empty, f"{c} is not blank (whitespace or invisible characters only)",
                   _rows(f"rows with a blank {c} (whitespace or invisible characters such as U+200B only)",
                         policy, cfg.drop_empty)),
        ]
    checks += [
        _check("label_not_null", E.ExpectColumnValuesToNotBeNull(column="label"), True, "label is not null",
               _rows("rows with a null label")),
        _check("text_min_chars", E.ExpectColumnValuesToBeBetween(column="chars_stripped", min_value=cfg.min_text_chars),
               True, f"at least {cfg.min_text_chars} chars after stripping",
               _rows(f"texts shorter than validate.min_text_chars={cfg.min_text_chars} chars after stripping")),
        _check("text_max_chars", E.ExpectColumnValuesToBeBetween(column="chars", max_value=cfg.max_text_chars),
               True, f"at most {cfg.max_text_chars} chars",
               _rows(f"texts longer than validate.max_text_chars={cfg.max_text_chars} chars")),
        _check("duplicate_rate", E.ExpectColumnValuesToBeInSet(column="is_duplicate", value_set=[False],
                                                               mostly=1.0 - cfg.max_duplicate_rate),
               not cfg.dedupe, f"share of repeated (text, label) rows at most {cfg.max_duplicate_rate}",
               _rows(f"rows repeating an earlier (text, label) row, above validate.max_duplicate_rate="
                     f"{cfg.max_duplicate_rate}", "validate.dedupe", cfg.dedupe)),
        _check("no_conflicting_labels", E.ExpectColumnValuesToBeInSet(column="has_conflict", value_set=[False]),
               not cfg.drop_conflicting, "identical texts carry one label",
               _rows("rows whose text also occurs with another label", "validate.drop_conflicting",
                     cfg.drop_conflicting)),
    ]
    if "split" in required:
        checks += _split_checks(E)
    return checks + _label_checks(cfg, E, Column=_condition_column())


def _split_checks(E: Any) -> list[Check]:
    """Predefined splits: val/test labels the model can predict (hard); texts shared across files (soft: the
    files are used as given, so the overlap is reported, not removed)."""
    return [
        _check("split_labels_in_train", E.ExpectColumnValuesToBeInSet(column="label_in_train", value_set=[True]),
               True, "every val/test label occurs in the train file",
               _rows("val/test rows whose label the train file does not have (the model cannot predict it)")),
        _check("no_text_across_splits", E.ExpectColumnValuesToBeInSet(column="leaked", value_set=[False]),
               False, "no text occurs in two split files (leakage)",
               _rows("rows whose text (stripped) also occurs in another split file; they are kept as given")),
    ]


def _label_checks(cfg: ValidateConfig, E: Any, Column: Any) -> list[Check]:
    kept = Column("kept") == True  # noqa: E712 -- builds a GX row condition, not a comparison
    max_classes = len(cfg.labels) if cfg.labels else cfg.max_classes
    checks = []
    if cfg.labels:
        checks.append(_check("label_in_set", E.ExpectColumnValuesToBeInSet(column="label", value_set=list(cfg.labels)),
                             True, f"labels in {listing(cfg.labels)}",
                             _rows(f"rows with a label outside validate.labels={listing(cfg.labels)}")))
        checks.append(_check(
            "declared_labels_present",
            E.ExpectColumnDistinctValuesToContainSet(column="label", value_set=list(cfg.labels), row_condition=kept),
            True, "every declared label has rows after cleaning",
            lambda r, f: f"declared labels with no rows after cleaning: {listing(_missing(cfg.labels, f))} "
                         f"(present: {listing(_labels(f))}); fix the data or validate.labels"))
    else:
        checks.append(_check(
            "max_classes", E.ExpectColumnUniqueValueCountToBeBetween(column="label", max_value=cfg.max_classes),
            True, f"at most {cfg.max_classes} distinct labels",
            lambda r, f: f"{r.get('observed_value')} distinct labels, more than validate.max_classes="
                         f"{cfg.max_classes}; e.g. {listing(_labels(f, kept_only=False), MAX_EXAMPLES)}"))
    checks.append(_check(
        "n_classes", E.ExpectColumnUniqueValueCountToBeBetween(column="label", min_value=2, max_value=max_classes,
                                                               row_condition=kept),
        True, "2 or more classes after cleaning",
        lambda r, f: f"{r.get('observed_value')} distinct label(s) {listing(_labels(f))} left after cleaning (need 2.."
                     f"{max_classes}); {_drop_summary(f)}"))
    checks.append(_check(
        "min_rows_per_class",
        E.ExpectColumnValuesToBeBetween(column="class_rows", min_value=cfg.min_rows_per_class, row_condition=kept),
        True, f"at least {cfg.min_rows_per_class} rows per class after cleaning",
        lambda r, f: f"classes with fewer than validate.min_rows_per_class={cfg.min_rows_per_class} rows after "
                     f"cleaning: {_small_classes(f, cfg.min_rows_per_class)}"))
    return checks


def _condition_column() -> Any:
    from great_expectations.expectations.row_conditions import Column

    return Column


def _check(name: str, expectation: Any, hard: bool, what: str, describe: Describe) -> Check:
    severity = "hard" if hard else "soft"
    expectation.meta = {"check": name, "severity": severity}
    expectation.description = f"[{severity}] {name}: {what}"
    return Check(name, expectation, hard, describe)


def _rows(problem: str, policy: Optional[str] = None, policy_on: bool = False) -> Describe:
    """Describe a column-map failure: counts plus up to three example rows."""
    def describe(result: dict, frame: pd.DataFrame) -> str:
        examples: list[str] = []
        for index in result.get("partial_unexpected_index_list") or []:
            text = _example(frame, index)
            if text not in examples:
                examples.append(text)
            if len(examples) == MAX_EXAMPLES:
                break
        hint = "" if policy is None else (f" (dropped: {policy} is true)" if policy_on
                                          else f" (set {policy}: true to drop them)")
        return (f"{result.get('unexpected_count')} of {result.get('element_count')} {problem}{hint}; "
                f"e.g. {'; '.join(examples)}")
    return describe


def _example(frame: pd.DataFrame, index: Any) -> str:
    row = frame.loc[index]
    text, label = row["text"], row["label"]
    shown = "<null>" if not isinstance(text, str) else excerpt(text, 60)
    where = f"{row['split']} " if "split" in frame else ""  # which file of predefined splits
    return f"{where}row {index}: text={shown} label={'<null>' if pd.isna(label) else excerpt(label, 40)}"


def _labels(frame: pd.DataFrame, kept_only: bool = True) -> list[str]:
    rows = frame.loc[frame["kept"]] if kept_only and "kept" in frame else frame
    return sorted(rows["label"].dropna().unique().tolist())


def _missing(declared: tuple[str, ...], frame: pd.DataFrame) -> list[str]:
    """Declared labels without kept rows, in declared order (GX reports only an unordered sample)."""
    present = set(_labels(frame))
    return [label for label in declared if label not in present]


def _small_classes(frame: pd.DataFrame, minimum: int) -> str:
    counts = frame.loc[frame["kept"], "label"].value_counts()
    small = counts[counts < minimum].sort_values()
    return ", ".join(f"{excerpt(label, 40)} ({n} rows)" for label, n in small.head(MAX_EXAMPLES).items()) + (
        f" and {len(small) - MAX_EXAMPLES} more" if len(small) > MAX_EXAMPLES else "")


def _drop_summary(frame: pd.DataFrame) -> str:
    reasons = frame["drop_reason"].value_counts()
    return (f"{int(frame['kept'].sum())} of {len(frame)} rows kept (dropped {int(reasons.get('empty', 0))} empty, "
            f"{int(reasons.get('conflicting', 0))} conflicting, {int(reasons.get('duplicate', 0))} duplicate)")


def _run_gx(frame: pd.DataFrame, checks: list[Check], root: Path, build_docs: bool) -> tuple[dict, Optional[Path]]:
    """Run the suite through a Checkpoint in a throwaway file context; return results by check name."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="file", project_root_dir=str(root))
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch = (context.data_sources.add_pandas("raw_data").add_dataframe_asset("raw_table")
             .add_batch_definition_whole_dataframe("whole_table"))
    suite = context.suites.add(gx.ExpectationSuite(name=SUITE_NAME))
    for check in checks:
        suite.add_expectation(check.expectation)
    definition = context.validation_definitions.add(gx.ValidationDefinition(name="validate_raw", data=batch, suite=suite))
    actions = [gx.checkpoint.UpdateDataDocsAction(name="data_docs")] if build_docs else []
    checkpoint = context.checkpoints.add(gx.Checkpoint(
        name="validate", validation_definitions=[definition], actions=actions,
        result_format={"result_format": "SUMMARY", "partial_unexpected_count": _PARTIAL_COUNT}))
    outcome = checkpoint.run(batch_parameters={"dataframe": frame})
    results = {r.expectation_config.meta["check"]: r for run in outcome.run_results.values() for r in run.results}
    site = None
    if build_docs:
        site = Path(unquote(urlparse(context.get_docs_sites_urls()[0]["site_url"]).path)).parent
    return results, site


def _entry(check: Check, result: Any, frame: pd.DataFrame) -> dict[str, Any]:
    raw = dict(result.result or {})
    info = result.exception_info or {}
    success = bool(result.success) and not info.get("raised_exception")
    detail = "" if success else (f"GX raised: {info.get('exception_message')}" if info.get("raised_exception")
                                 else check.describe(raw, frame))
    severity = "hard" if check.hard else "soft"
    kind = check.expectation.expectation_type
    return {"name": check.name, "expectation": kind, "severity": severity, "success": success,
            "unexpected_count": raw.get("unexpected_count"), "observed_value": _plain(raw.get("observed_value")),
            "message": f"{check.name} [{severity}, {kind}]: {detail}" if detail else ""}


def _plain(value: Any) -> Any:
    """A JSON scalar for the report; long values (e.g. the distinct labels GX observed) are cut."""
    if isinstance(value, (int, float, bool, type(None))):
        return value
    return excerpt(value if isinstance(value, str) else str(value), 300, quote=False)


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
