"""The study report in Markdown: the answer first, then data and setup, the comparison across ranks, the
learning-rate choice, where each run stopped, the adapters' effective ranks and the per-class detail.

Pure text from the study file (:class:`~lora_pipeline.study_file.StudyFile`, ``metrics/study.json``); the figures
live in :mod:`figures`. The Data and Setup sections read the open-ended parts of the study (the split stage's data
summary and the params as the record holds them), where a key a study of another day lacks shows as missing.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence

from .budget import EQUAL_BUDGET_HEADER
from .config import VARIANTS
from .records import VERDICT_PHRASES as _VERDICT
from .report_configurations import VARIANT_TITLES, equal_budget_section, lora_setup, row_title, run_title
from .study_file import StudyFile, StudyRow, VsFull

__all__ = ["VARIANT_TITLES", "comparison_rows", "dataset_section", "effective_rank_rows", "headline", "lr_rows",
           "markdown_table", "render_report", "row_title", "run_rows", "setup_section"]

# --------------------------------------------------------------------------------------------- formatting


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _num(value: Any, fmt: str) -> str:
    """``value`` formatted, or a dash where it was not measured (None / NaN)."""
    return "–" if _missing(value) else format(value, fmt)


def _count(value: Any) -> str:
    """A count with thousands separators; a mean over seeds that is not whole keeps one decimal."""
    if _missing(value):
        return "–"
    return f"{int(round(value)):,}" if float(value).is_integer() else f"{value:,.1f}"


def _interval(low: Any, high: Any, fmt: str = ".4f") -> str:
    return "–" if _missing(low) or _missing(high) else f"[{low:{fmt}}, {high:{fmt}}]"


def _points(diff: VsFull) -> str:
    """A paired difference in macro-F1 points with its interval: ``-0.50 [-1.39, +0.40]``."""
    return f"{100 * diff.difference:+.2f} [{100 * diff.low:+.2f}, {100 * diff.high:+.2f}]"


def _conf(value: Optional[float]) -> str:
    return f"{100 * (value or 0.95):g} %"


def _cell(value: Any) -> str:
    """One Markdown table cell: pipes escaped and line breaks flattened, so a reason cannot break the table."""
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------- headline


def headline(study: StudyFile) -> str:
    """The answer, the equal-cost reading, what the intervals cover, every degenerate model by name and seed (with
    why it could not learn), runs that hit their cap while improving, the TF-IDF notes, and each LoRA rank's
    unadjusted verdict vs full fine-tuning (never a winner the interval does not support)."""
    ans = study.answer
    paragraphs = [f"**{ans.sentence}**"]
    if ans.equal_cost:
        paragraphs.append(f"**{ans.equal_cost}**")
    rows = study.ordered_rows()
    paragraphs.append(_intervals_paragraph(study, rows))
    for name, row in rows:
        for seed, reason in zip(row.seeds, row.degenerate):
            if reason:
                why = f" Why: {row.degenerate_why}." if row.degenerate_why else ""
                paragraphs.append(f"⚠ **{row_title(name)} (seed {seed}) is degenerate**: {reason}; its numbers "
                                  f"are not a result.{why}")
        capped = [str(s) for s in row.capped_seeds]
        if capped:
            paragraphs.append(f"⏱ **{row_title(name)} did not converge** (seed{'s' if len(capped) > 1 else ''} "
                              f"{', '.join(capped)}: still improving at the cap of {_count(row.planned_steps)} "
                              "steps); it is never called worse.")
        notes = [f"seed {s}: {n}" for s, n in zip(row.seeds, row.notes) if n]
        if notes:
            paragraphs.append(f"Note — {row_title(name)}: {'; '.join(notes)}.")
    unsearched = [row_title(name) for name, row in rows if not row.lr_search.searched]
    if unsearched:
        paragraphs.append(f"Learning rates not searched around their optimum ({', '.join(unsearched)}): each was "
                          "chosen at an end of its grid or from one rate (see Learning-rate choice), so a wider grid "
                          "may move these rows.")
    full = study.rows.get("full")
    if full is not None and not full.is_degenerate:  # a degenerate reference supports no verdict
        lines = [_verdict_line(name, row) for name, row in rows if row.vs_full]
        if lines:
            paragraphs.append("Each rank against full fine-tuning, unadjusted (the answer above controls the family; "
                              "these lines do not):\n\n" + "\n".join(f"- {line}" for line in lines))
    return "\n\n".join(paragraphs)


def _intervals_paragraph(study: StudyFile, rows: Sequence[tuple[str, StudyRow]]) -> str:
    covers = {r.macro_f1.covers for _, r in rows}
    what = ("over training seeds and test examples: they are about the methods (a new seed, a new test set)"
            if covers == {"method"} else
            "over test examples only where a row has one seed: about these trained models, not the method; over "
            "seeds and test examples where it has several")
    proc = f" The answer's procedure: {study.answer.procedure}." if study.answer.procedure else ""
    return (f"All rows are scored once, at the checkpoint chosen on validation, on the same held-out test split "
            f"({study.n_test:,} examples). Intervals are {_conf(study.confidence)} {what}; "
            f"differences are paired (same test examples).{proc}")


def _verdict_line(name: str, row: StudyRow) -> str:
    d = row.vs_full
    conf = _conf(d.confidence)
    scope = "seeds and test examples" if d.covers == "method" else "test examples, these models"
    said = f"is {_VERDICT.get(d.verdict, d.verdict)} full fine-tuning at {conf}"
    if _capped_worse(row):
        said = "did not converge, so it is not ranked against full fine-tuning"
    mc = " (borderline: at the Monte-Carlo error)" if d.mc_close else ""
    return (f"{row_title(name)} {said}: paired difference "
            f"{100 * d.difference:+.2f} points, {conf} interval over {scope} [{100 * d.low:+.2f}, "
            f"{100 * d.high:+.2f}] ({d.seeds_a} seed{'s' if d.seeds_a != 1 else ''}){mc}.")


def _capped_worse(row: StudyRow) -> bool:
    """A "worse" verdict on a row with a seed capped while still improving: it is labelled, never called worse."""
    return row.vs_full is not None and row.vs_full.verdict == "worse" and not row.all_converged


# ------------------------------------------------------------------------------------------- data / setup


def dataset_section(dataset: Mapping[str, Any]) -> str:
    """What the numbers are about: source, rows after cleaning, split sizes, label names with counts."""
    splits = dataset.get("rows_per_split", {})
    per_split = dataset.get("rows_per_class_per_split", {})
    lines = [f"- **Source**: {dataset.get('source', 'unknown')}",
             f"- **Rows**: {dataset.get('rows_raw', 0):,} raw, {dataset.get('rows_clean', 0):,} after cleaning"
             + (" → " + ", ".join(f"{n} {c:,}" for n, c in splits.items()) if splits else "")
             + (" (predefined splits, used as given)" if dataset.get("predefined_splits") else " (stratified split)")]
    if dataset.get("max_length"):
        cut = ", ".join(f"{n} {100 * s:.1f} %" for n, s in dataset.get("truncated_share", {}).items())
        lines.append(f"- **Texts cut at max_length {dataset['max_length']}**: {cut}")
    labels = dataset.get("labels", [])
    inferred = " (inferred from the data)" if dataset.get("labels_inferred") else ""
    lines.append(f"- **Labels** ({len(labels)}){inferred}, rows per split:")
    table = markdown_table(["id", "label", *per_split],
                           [[i, label, *(f"{per_split[s].get(label, 0):,}" for s in per_split)]
                            for i, label in enumerate(labels)])
    return "## Data\n\n" + "\n".join(lines) + "\n\n" + table


def _plural(value: float, unit: str) -> str:
    return f"{value:g} {unit}{'' if value == 1 else 's'}"


def _lrs(values: Any) -> str:
    return ", ".join(f"{float(v):g}" for v in values or []) or "–"


def setup_section(params: Mapping[str, Mapping[str, Any]]) -> str:
    """Base model, the shared training settings and what each variant trained (sections model, train, scratch,
    full, lora, study); a missing key shows as ``None`` instead of failing the report."""
    model, train, study = (params.get(k, {}) for k in ("model", "train", "study"))
    seeds = ", ".join(str(s) for s in study.get("seeds") or []) or "–"
    every, max_steps = train.get("eval_every"), train.get("max_steps")
    return (f"## Setup\n\nBase model **{model.get('name')}** (max_length {model.get('max_length')}); batch size "
            f"{train.get('batch_size')}, precision {train.get('precision')}, weight decay "
            f"{train.get('weight_decay')}, warmup ratio {train.get('warmup_ratio')}. Seeds {seeds}: every "
            "trained row is repeated with each.\n\n"
            f"Training length: until validation macro-F1 stops improving — validation "
            f"{f'every {every} steps' if every else 'every quarter epoch (auto)'} and at the last step, stop after "
            f"{train.get('patience')} validations without a gain of more than {train.get('min_delta', 0)} (0: never), "
            f"the best checkpoint kept — capped at the variant's epochs (raised to at least {train.get('min_steps')} "
            f"steps) and at {'no step cap' if max_steps == 0 else f'{max_steps} steps'}. \"Within tolerance\" of "
            f"full fine-tuning: the {_conf(study.get('confidence'))} paired interval of LoRA − full stays above "
            f"−{_plural(100 * (study.get('tolerance') or 0), 'point')} ({study.get('resamples')} bootstrap "
            "resamples, raised near a threshold).\n\n"
            + markdown_table(["variant", "what was trained", "learning-rate grid", "max epochs"], _variant_rows(params)))


def _variant_rows(params: Mapping[str, Mapping[str, Any]]) -> list[list[Any]]:
    """Per variant: what was trained, its learning-rate grid and epochs."""
    scratch, full, lora, study = (params.get(k, {}) for k in ("scratch", "full", "lora", "study"))
    shape = f"{scratch.get('num_layers')} layers × {scratch.get('hidden_size')}, {scratch.get('num_heads')} heads"
    return [
        ["BERT from scratch", shape, _lrs(study.get("scratch_lrs")), scratch.get("epochs")],
        ["full fine-tuning", "every parameter", _lrs(study.get("full_lrs")), full.get("epochs")],
        ["LoRA (ours)", lora_setup(lora, study), _lrs(study.get("lora_lrs")), lora.get("epochs")],
    ]


# ------------------------------------------------------------------------------------------------ tables

COMPARISON_HEADER = ["variant", "test macro-F1 (mean ± std)", "interval", "covers", "accuracy [interval]",
                     "vs full: points [interval]", "verdict (unadjusted)", "answer's test", "chosen lr", "seeds",
                     "trainable params", "% trainable", "CPU s to best", "train time (s)", "peak memory (MB)",
                     "size on disk (MB)", "precision", "steps", "converged", "degenerate"]


def _status(study: StudyFile, row: StudyRow) -> str:
    """The configuration's place in the answer's fixed sequence (within / worse / undecided / … / not tested)."""
    seq = {s.row or f"lora_r{s.rank}": s.status for s in study.answer.sequence}
    return seq.get(row.name, "–") if row.variant == "lora" else "–"


def _converged(row: StudyRow) -> str:
    if all(c is None for c in row.converged):
        return "–"
    capped = [str(s) for s in row.capped_seeds]
    return "yes" if not capped else "⏱ no (seed " + ", ".join(capped) + ")"


def comparison_rows(study: StudyFile) -> list[list[str]]:
    """One row per (variant, rank) and the TF-IDF reference: quality with intervals next to what it cost."""
    out = []
    full = study.rows.get("full")
    ref_ok = full is None or not full.is_degenerate  # a verdict against a degenerate reference means nothing
    for name, row in study.ordered_rows():
        m, a, d = row.macro_f1, row.accuracy, row.vs_full
        spread = "" if _missing(m.std) else f" ± {m.std:.4f}"
        versus = _points(d) if d else ("reference" if name == "full" else "–")
        verdict = "–" if not d else "none: full fine-tuning is degenerate" if not ref_ok \
            else "none: did not converge" if _capped_worse(row) else f"{d.verdict} at {_conf(d.confidence)}"
        bad = [str(s) for s, r in zip(row.seeds, row.degenerate) if r]
        out.append([row_title(name), f"{m.mean:.4f}{spread}", _interval(m.low, m.high), m.covers,
                    f"{a.mean:.4f} {_interval(a.low, a.high)}", versus, verdict, _status(study, row),
                    _num(row.lr, "g"), len(row.seeds), _count(row.trainable_params),
                    _num(row.trainable_percent, ".2f"), _num(row.cpu_seconds_to_best, ",.0f"),
                    _num(row.train_seconds, ",.1f"), _num(row.peak_memory_mb, ",.2f"),
                    _num(row.size_on_disk_mb, ",.2f"), row.precision or "–", _count(row.steps), _converged(row),
                    ("⚠ seed " + ", ".join(bad)) if bad else "no"])
    tfidf = study.tfidf_logreg
    out.append([VARIANT_TITLES["tfidf_logreg"], f"{tfidf.macro_f1:.4f}",
                _interval(tfidf.macro_f1_low, tfidf.macro_f1_high), "these models",
                f"{tfidf.accuracy:.4f} {_interval(tfidf.accuracy_low, tfidf.accuracy_high)}",
                *["–"] * (len(COMPARISON_HEADER) - 5)])
    return out


def lr_rows(study: StudyFile) -> list[list[str]]:
    """Per (variant, rank) and learning rate of its grid: the mean validation macro-F1 and whether it won."""
    out = []
    for name, row in study.ordered_rows():
        for lr, score in sorted(row.val_macro_f1_by_lr.items(), key=lambda kv: float(kv[0])):
            won = math.isclose(float(lr), float(row.lr), rel_tol=1e-6)
            out.append([row_title(name), f"{float(lr):g}", f"{score:.4f}", "✓ chosen" if won else ""])
    return out


def lr_search_notes(study: StudyFile) -> list[str]:
    """One sentence per row whose chosen rate is not inside its grid (what was not searched), and per row holding
    seeds its rates were not compared on (seeds added where the rate was chosen)."""
    out = []
    for name, row in study.ordered_rows():
        search = row.lr_search
        if len(search.grid) > 1 and set(row.seeds) != set(search.seeds):
            out.append(f"{row_title(name)}: the rates were compared on seeds {', '.join(map(str, search.seeds))} "
                       f"(those every rate was trained with); its row holds seeds {', '.join(map(str, row.seeds))} "
                       f"of the chosen rate {row.lr:g}.")
        if search.searched:
            continue
        grid = ", ".join(f"{lr:g}" for lr in search.grid)
        if search.position == "only":
            out.append(f"{row_title(name)}: one rate ({grid}): no learning-rate search.")
        else:
            side, end = ("above", search.grid[-1]) if search.position == "highest" else ("below", search.grid[0])
            out.append(f"{row_title(name)}: chosen at the {search.position} rate of its grid ({grid}): rates "
                       f"{side} {end:g} were not searched.")
    return out


RUN_HEADER = ["variant", "rank", "seed", "lr", "chosen", "validation macro-F1", "steps", "epochs", "best step",
              "CPU s to best", "stopped by", "why"]


def run_rows(study: StudyFile) -> list[list[str]]:
    """Every train instance of the grid: where it stopped, what its best cost, and why it stopped."""
    order = {v: i for i, v in enumerate(VARIANTS)}
    several = len(study.families()) > 1
    rows = {name: i for i, (name, _) in enumerate(study.ordered_rows())}
    runs = sorted(study.runs, key=lambda r: (order.get(r.variant, len(order)), rows.get(r.row, 0) if several else 0,
                                             r.rank or 0, r.lr, r.seed))
    return [[run_title(r.row) if several else VARIANT_TITLES.get(r.variant, r.variant), r.rank or "–", r.seed, _num(r.lr, "g"),
             "✓" if r.chosen else "", _num(r.val_macro_f1, ".4f"), _count(r.steps), _num(r.epochs, ".2f"),
             _count(r.best_step), _num(r.cpu_seconds_to_best, ",.0f"),
             {"plateau": "plateau", "cap": "⏱ cap"}.get(r.stopped_by, r.stopped_by or "–"),
             r.stop_reason or "–"] for r in runs]


def effective_rank_rows(study: StudyFile) -> list[list[str]]:
    """Per LoRA row: the mean effective rank over every targeted layer (of every seed) and its range; the first
    column is the rank, or the row's title in a study of several (adapter, target set)."""
    by_row: dict[tuple, list[int]] = {}
    seeds: dict[tuple, set] = {}
    for spec in study.spectra:
        key = (spec.row or f"lora_r{spec.rank}", spec.rank)
        by_row.setdefault(key, []).extend(v.effective_rank for v in spec.layers.values())
        seeds.setdefault(key, set()).add(spec.seed)
    several = len(study.families()) > 1
    order = {name: i for i, (name, _) in enumerate(study.ordered_rows())}
    return [[row_title(key[0]) if several else key[1], f"{sum(v) / len(v):.1f}", f"{min(v)}–{max(v)}", len(v),
             len(seeds[key])] for key, v in sorted(by_row.items(), key=lambda kv: (order.get(kv[0][0], 0), kv[0][1]))
            if v]


# ---------------------------------------------------------------------------------------------- sections


def _detail_section(study: StudyFile, confusion: str) -> str:
    shown = study.shown_detail()
    rows = [[row_title(n) + (f" (seed {d.seed})" if d.seed is not None else ""),
             *(f"{d.per_class[c].f1:.4f}" for c in study.labels)] for n, d in shown.items()]
    return ("## Per-class F1 and confusion matrices (test)\n\n"
            + markdown_table(["model", *(f"F1 {c}" for c in study.labels)], rows)
            + f"\n![confusion matrices]({confusion})\n")


def _spectra_section(study: StudyFile, figure: str) -> str:
    rows = effective_rank_rows(study)
    table = markdown_table(["LoRA rank", "mean effective rank", "min–max", "layers", "seeds"], rows) if rows \
        else "No LoRA adapter in the study.\n"
    subspace = (" The bottom row: subspace similarity φ of each smaller rank's A with the largest rank's (1: one "
                "contains the other, 0: orthogonal), as in the LoRA paper's Figure 3." if study.subspace else
                " No subspace similarity: each part of this merged study computed it for the runs it chose itself, "
                "and the runs chosen across the parts are other ones." if study.parts and len(rows) > 1 else "")
    return (f"## What rank the adapters used\n\n![spectra]({figure})\n\n"
            f"Effective rank = singular values holding {100 * study.energy:g} % of the update's energy "
            f"(ΔW = (α/r)·B·A per targeted layer). The figure shows the first seed of each rank.{subspace}\n\n"
            + table)


def _equal_budget(study: StudyFile) -> list[str]:
    """The equal-parameter-budget section, in a study of several (adapter, target set) only."""
    section = equal_budget_section(study)
    if section is None:
        return []
    before, rows, after = section
    table = "\n\n" + markdown_table(EQUAL_BUDGET_HEADER, rows).rstrip() if rows else ""
    return [before + table + (f"\n\n{after}" if after else "")]


def render_report(study: StudyFile, figures: Mapping[str, str],
                  dataset: Optional[Mapping[str, Any]] = None,
                  params: Optional[Mapping[str, Mapping[str, Any]]] = None) -> str:
    """The whole report.

    Args:
        study: the evaluate stage's ``study.json``, read.
        figures: links (relative to the report) of ``rank_curve``, ``spectra``, ``curves`` and ``confusion``.
        dataset: the split stage's ``dataset.json`` (no Data section without it).
        params: params sections as plain dicts, for the Setup section only.
    """
    parts = ["# LoRA vs full fine-tuning: which rank is enough?", headline(study)]
    if dataset:
        parts.append(dataset_section(dataset).rstrip())
    if params:
        parts.append(setup_section(params).rstrip())
    if study.parts:
        runs = "; ".join(f"seeds {', '.join(map(str, p.seeds))}: {p.runs} runs" for p in study.parts)
        parts.append(f"Merged from {len(study.parts)} parts run apart (each part's seeds and the runs it adds to the "
                     f"parts before it: {runs}): a row's seeds column says which seeds it holds.")
    every_run = study.params.get("study", {}).get("test_every_run")  # a record's params of another day may lack it
    scored = ("every run was scored on test (study.test_every_run, so parts can merge), the choice reads validation "
              "only" if every_run else "the test split was scored only for the chosen lr")
    notes = lr_search_notes(study)
    lr_notes = "\n\n" + "\n".join(f"- {n}" for n in notes) if notes else ""
    parts += [
        f"## Rank curve\n\n![rank curve]({figures['rank_curve']})\n\nLeft: test macro-F1 of each LoRA rank (mean and "
        "interval) against full fine-tuning's interval (band); the y axis spans these two, so a reference (scratch, "
        "TF-IDF) outside it is a note with its value at that edge, inside it a dashed line. Right: what each rank "
        "cost, with full fine-tuning's values as flat lines.",
        "## Comparison (test)\n\n" + markdown_table(COMPARISON_HEADER, comparison_rows(study)).rstrip(),
        *_equal_budget(study),
        f"## Learning-rate choice\n\nChosen on validation macro-F1 (mean over the seeds every rate was trained with); {scored}.\n\n"
        + markdown_table(["variant", "lr", "validation macro-F1", "chosen"],
                                                   lr_rows(study)).rstrip()
        + lr_notes,
        "## Where each run stopped\n\n" + markdown_table(RUN_HEADER, run_rows(study)).rstrip(),
        _spectra_section(study, figures["spectra"]).rstrip(),
        _detail_section(study, figures["confusion"]).rstrip(),
        f"## Learning curves (validation)\n\n![learning curves]({figures['curves']})\n\n" + (
            "Left: validation macro-F1 of each run of each chosen (variant, rank) at every validation, against "
            "optimizer steps (one line per seed). " if study.validation_curves else
            "Left: the best validation macro-F1 so far, mean over seeds, against optimizer steps. ") +
        "Right: the best validation macro-F1 so far — the checkpoint a run would keep if stopped there — against "
        "CPU seconds of training (process CPU time: steadier than wall time on a shared machine); mean over seeds, "
        "band min–max. The dotted line: full fine-tuning's mean CPU time to its best, where the "
        "equal-cost reading is taken. Per-step training loss: `dvc plots show` (metrics/curves).",
    ]
    return "\n\n".join(parts) + "\n"
