"""The report's words for LoRA configurations (adapter, target set, rank): their titles, what the Setup section
says LoRA trained, and the equal-parameter-budget section (in a study of several (adapter, target set), the
configurations that train about as many parameters side by side).

Pure text from the study file (:class:`~lora_pipeline.study_file.StudyFile`); :mod:`lora_pipeline.reporting`
assembles the report.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

from .budget import EQUAL_BUDGET_RATIO, Configuration, equal_budget_groups, equal_budget_rows
from .config import DEFAULT_TARGET_SET
from .records import row_configuration
from .study_file import StudyFile, StudyRow

__all__ = ["ADAPTER_TITLES", "VARIANT_TITLES", "equal_budget_section", "lora_setup", "row_title", "run_title"]

VARIANT_TITLES = {"scratch": "BERT from scratch", "full": "full fine-tuning", "lora": "LoRA (ours)",
                  "tfidf_logreg": "TF-IDF + logistic regression"}
ADAPTER_TITLES = {"lora": "LoRA", "dora": "DoRA"}


def row_title(name: str) -> str:
    """``lora_r8`` → ``LoRA r=8 (ours)``, ``dora_r2_all_linear`` → ``DoRA r=2 on all_linear (ours)``; other rows by
    their variant's title."""
    config = row_configuration(name)
    if config is None:
        return VARIANT_TITLES.get(name, name)
    adapter, targets, rank = config
    on = "" if targets == DEFAULT_TARGET_SET else f" on {targets}"
    return f"{ADAPTER_TITLES.get(adapter, adapter)} r={rank}{on} (ours)"


def run_title(row: str) -> str:
    """A run's variant cell in a study of several (adapter, target set): ``DoRA on all_linear (ours)``."""
    config = row_configuration(row)
    if config is None:
        return VARIANT_TITLES.get(row, row)
    return f"{ADAPTER_TITLES.get(config[0], config[0])} on {config[1]} (ours)"


def _and(words: Sequence[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return " and ".join([", ".join(words[:-1]), words[-1]] if len(words) > 2 else words)


def _modules(targets: Any) -> str:
    """A target set's modules as params hold them: the model's default (empty), a list of names or suffixes, or a
    string (all-linear, a regex)."""
    if not targets:
        return "model default"
    return targets if isinstance(targets, str) else ", ".join(map(str, targets))


def lora_setup(lora: Mapping[str, Any], study: Mapping[str, Any]) -> str:
    """What the Setup table says LoRA trained: ranks, alpha, dropout, each target set the study trained with its
    modules (``default (model default) and all_linear (all-linear)``) and the adapters, what else was trained, and
    rsLoRA. Params of a study from before the target-set and adapter axes (``lora.target_modules``,
    ``lora.use_dora``) read as they always did."""
    ranks = ", ".join(str(r) for r in study.get("ranks") or []) or "–"
    saved = ", ".join(lora.get("modules_to_save") or []) or "head only"
    head = f"ranks {ranks}, alpha {lora.get('alpha')}, dropout {lora.get('dropout')}, "
    rslora = ", rsLoRA" if lora.get("rslora") else ""
    if "target_sets" not in lora and "target_sets" not in study:  # a study of another day: its single set
        return (head + f"targets {lora.get('target_modules') or 'model default'}, also trained {saved}" + rslora
                + (", DoRA" if lora.get("use_dora") else ""))
    sets, names = lora.get("target_sets") or {}, list(study.get("target_sets") or [DEFAULT_TARGET_SET])
    adapters = [ADAPTER_TITLES.get(a, a) for a in study.get("adapters") or ["lora"]]
    targets = _and([f"{n} ({_modules(sets[n])})" if n in sets else n for n in names])
    return (head + f"target set{'s' if len(names) > 1 else ''} {targets}, adapter{'s' if len(adapters) > 1 else ''} "
            f"{_and(adapters)}, also trained {saved}" + rslora)


RULE = (f"Configurations of different (adapter, target set) are paired when their adapter parameters (the A, B and "
        f"DoRA magnitudes the adapter layers add; the head is not counted) are within {EQUAL_BUDGET_RATIO:g}× of each "
        "other: the cheapest configuration not yet paired anchors a group, and each other (adapter, target set) joins "
        f"it with its cheapest configuration within {EQUAL_BUDGET_RATIO:g}× the anchor's count (the LoRA paper's "
        "Table 5 reading: which modules to adapt at a fixed number of trainable parameters).")


def _configuration(row: StudyRow) -> Configuration:
    adapter, targets = row.family
    return Configuration(adapter, targets, row.rank, row.adapter_params)


def _score(row: StudyRow) -> tuple:
    m, d = row.macro_f1, row.vs_full
    return (m.mean, m.low, m.high, *((d.difference, d.low, d.high) if d else (None,) * 3))


def _better(a: StudyRow, b: StudyRow) -> bool:
    """``a`` did better than ``b``: their differences from full fine-tuning (paired on the same test examples and
    reference) have intervals that do not overlap, ``a``'s above."""
    return a.vs_full is not None and b.vs_full is not None and a.vs_full.low > b.vs_full.high


def _group_sentence(group: Sequence[StudyRow]) -> str:
    """Which configuration did best at this budget, only where the intervals support it."""
    counts = [r.adapter_params for r in group]
    budget = f"{min(counts):,}" if min(counts) == max(counts) else f"{min(counts):,}–{max(counts):,}"
    if any(r.is_degenerate for r in group):
        return f"At {budget} adapter parameters: a degenerate configuration is no result, so none is ranked."
    if any(not r.all_converged for r in group):
        return f"At {budget} adapter parameters: a configuration did not converge, so none is ranked."
    best = [a for a in group if all(_better(a, b) for b in group if b is not a)]
    if best:
        others = ", ".join(row_title(b.name) for b in group if b is not best[0])
        return (f"At {budget} adapter parameters, {row_title(best[0].name)} did better than {others}: the intervals "
                "of their differences from full fine-tuning do not overlap.")
    return (f"At {budget} adapter parameters, no configuration is shown better than another: the intervals of their "
            "differences from full fine-tuning overlap.")


def equal_budget_section(study: StudyFile) -> Optional[tuple[str, list[list[str]], str]]:
    """The ``## Equal parameter budget`` section as (text before the table, the table's rows — columns
    :data:`~lora_pipeline.budget.EQUAL_BUDGET_HEADER`, empty: no table — text after it): the configurations paired by
    adapter parameters, each with its test macro-F1 and its difference from full fine-tuning (intervals), and per
    group which one did best only where the intervals support it. None in a study of one (adapter, target set) (its
    ranks differ in budget by design)."""
    if len(study.families()) < 2:
        return None
    head = "## Equal parameter budget\n\n"
    lora = [r for r in study.lora_rows() if r.adapter_params is not None]
    lacking = [row_title(r.name) for r in study.lora_rows() if r.adapter_params is None]
    if len({r.family for r in lora}) < 2:
        return (head + f"No table: {', '.join(lacking)} {'have' if len(lacking) > 1 else 'has'} no adapter parameter "
                "count (a run recorded before the count, or seeds that disagree), so configurations cannot be paired "
                "by budget; retrain them with this lora-pipeline (`dvc repro -f train_lora`).", [], "")
    left_out = (f" Left out (no adapter parameter count: a run recorded before the count, or seeds that disagree): "
                f"{', '.join(lacking)}." if lacking else "")
    by_label = {_configuration(r).label: r for r in lora}
    groups = equal_budget_groups([_configuration(r) for r in lora])
    if not groups:
        return (head + RULE + " No two configurations of different (adapter, target set) are that close: no table."
                + left_out, [], "")
    rows = equal_budget_rows(groups, {label: _score(row) for label, row in by_label.items()})
    sentences = " ".join(_group_sentence([by_label[c.label] for c in g]) for g in groups)
    return (head + RULE + " Intervals as in the comparison; \"did better\" needs non-overlapping intervals of the "
            "differences from full fine-tuning (a conservative reading: no paired interval between two "
            "configurations is computed)." + left_out, rows, sentences)
