"""The Great Expectations (GX Core 1.x) suite on the raw table: each check one built-in GX expectation, its
severity, and the message that explains a failure with counts and example rows; run in a throwaway GX context.

Each check is *hard* (fails the stage) or *soft* (logs a warning); a check whose rows a cleaning policy drops is
soft. Class checks (count, declared labels present, rows per class) run on the rows that *survive* cleaning (a GX
``row_condition``), so cleaning cannot hide a violation; the label-set and null-label checks run on all raw rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional
from urllib.parse import unquote, urlparse

import pandas as pd

from ..config import ValidateConfig
from ..errors import excerpt, listing
from .cleaning import BLANK_REGEX

__all__ = ["Check", "SUITE_NAME", "build_checks", "report_entry", "run_gx"]

SUITE_NAME = "raw_text_data"
MAX_EXAMPLES = 3
_PARTIAL_COUNT = 20  # unexpected rows GX reports per expectation; examples are picked from these

Describe = Callable[[dict, pd.DataFrame], str]


@dataclass(frozen=True)
class Check:
    """One named GX expectation, its severity and how to explain a failure."""

    name: str
    expectation: Any  # a great_expectations.expectations.Expectation
    hard: bool
    describe: Describe


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


def run_gx(frame: pd.DataFrame, checks: list[Check], root: Path, build_docs: bool) -> tuple[dict, Optional[Path]]:
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


def report_entry(check: Check, result: Any, frame: pd.DataFrame) -> dict[str, Any]:
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
