"""The study's answer: which LoRA rank is within the tolerance of full fine-tuning, decided as a family of tests.

Procedure (fixed sequence; Maurer, Hothorn & Lehmacher 1995, Westfall & Krishen 2001): the ranks are tested
from the largest down (in a study of several adapters or target sets, every LoRA configuration in one sequence,
by trainable parameters from the most down — ties: the larger rank first, then adapter, then target set — an order
fixed before the data), each by non-inferiority — the lower end of the paired interval of LoRA − full is at or
above −tolerance — and testing stops at the first rank that does not pass. Because every test runs at the full
one-sided level (1 + confidence) / 2 and a rank is only tested once all larger ones passed, the chance of
wrongly calling any rank within the tolerance stays at that level for the whole family, without a Bonferroni
split. The answer is the smallest rank that passed (the configuration with the fewest trainable parameters that
passed). A rank that fails is one of:

- **worse**: the whole interval lies below −tolerance;
- **undecided**: the interval straddles −tolerance, too wide to tell (the cause and what would decide it are
  named: more test examples or more seeds);
- **not converged**: it hit its step cap while still improving, so it is never called worse;
- **degenerate**: a seed predicts one class or scores at/below the majority class.

Intervals cover the method (seeds and test examples) where each arm has ≥ 2 seeds, else these trained models
only; the sentences say which. A rank picked post hoc as "closest" is printed without an interval.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

from .config import ADAPTERS
from .records import VERDICT_PHRASES as _VERDICT
from .study import REFERENCE
from .study_file import Answer, CostRatios, EqualCost, SequenceStep, StudyRow, VsFull

__all__ = ["PROCEDURE", "PROCEDURE_CONFIGURATIONS", "answer", "configuration_words", "rank_status", "registry_pick",
           "sequence_order"]

PROCEDURE = ("fixed sequence: ranks tested from the largest down by non-inferiority at the stated confidence, "
             "stopping at the first that does not pass (family-wise error controlled without splitting the level)")
PROCEDURE_CONFIGURATIONS = (
    "fixed sequence: every LoRA configuration (adapter, target set, rank) tested in one sequence, by trainable "
    "parameters from the most down (ties: the larger rank first, then adapter, then target set; an order fixed "
    "before the data), by non-inferiority at the stated confidence, stopping at the first that does not pass "
    "(family-wise error controlled without splitting the level); the answer is the passed configuration with the "
    "fewest trainable parameters")
ADAPTER_WORDS = {"lora": "LoRA", "dora": "DoRA"}


def configuration_words(row: StudyRow, several: bool) -> str:
    """How a sentence names a LoRA row: ``rank 8`` in a study of ranks only (one (adapter, target set)), else
    ``DoRA on all_linear at rank 2``."""
    if not several:
        return f"rank {row.rank}"
    adapter, targets = row.family
    return f"{ADAPTER_WORDS.get(adapter, adapter)} on {targets} at rank {row.rank}"


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def sequence_order(row: StudyRow) -> tuple:
    """The fixed sequence's order: trainable parameters from the most down, ties by the larger rank, then adapter
    (ADAPTERS order), then target set (by name). Within one (adapter, target set) it is the ranks from the largest
    down."""
    adapter, targets = row.family
    return (-(row.trainable_params or 0), -row.rank, ADAPTERS.index(adapter) if adapter in ADAPTERS else len(ADAPTERS),
            targets)


def _pts(tolerance: float) -> str:
    return f"{100 * tolerance:g} point{'s' if tolerance != 0.01 else ''}"


def _covers(d: VsFull) -> str:
    if d.covers == "method":
        return "interval over seeds and test examples"
    return "interval over test examples: these trained models only, one seed"


def _iv(d: VsFull) -> str:
    return f"[{100 * d.low:+.1f}, {100 * d.high:+.1f}]"


def rank_status(row: StudyRow, tolerance: float) -> str:
    """``within`` | ``worse`` | ``undecided`` | ``not converged`` | ``degenerate`` for one LoRA row."""
    if row.is_degenerate:
        return "degenerate"
    d = row.vs_full
    if d.low >= -tolerance:
        return "within"
    if not row.all_converged:
        return "not converged"
    return "worse" if d.high < -tolerance else "undecided"


def _sequence(lora: Sequence[StudyRow], tolerance: float) -> list[SequenceStep]:
    """Each configuration in the sequence's order (:func:`sequence_order`) with its status; those after the first
    failure are ``not tested``."""
    out, stopped = [], False
    for row in sorted(lora, key=sequence_order):
        status = "not tested" if stopped else rank_status(row, tolerance)
        stopped = stopped or status != "within"
        out.append(SequenceStep(row.rank, status, rank_status(row, tolerance), row.vs_full.mc_close, row.name))
    return out


def _steps_cap(row: StudyRow) -> str:
    cap = row.planned_steps
    return f"{cap:,.0f} steps" if cap else "its step cap"


def _failure(row: StudyRow, status: str, tolerance: float, conf: str, several: bool) -> str:
    """Why the sequence stopped at ``row``, in words."""
    d, r = row.vs_full, configuration_words(row, several)
    if status == "degenerate":
        reason = next(x for x in row.degenerate if x)
        return f"{r} is degenerate ({reason})"
    if status == "not converged":
        return (f"{r} did not converge within {_steps_cap(row)} (still improving at the cap), so it is not "
                "called worse; raise train.max_steps or lora.epochs")
    if status == "worse":
        return (f"{r} is worse than full fine-tuning by more than {_pts(tolerance)} "
                f"({100 * d.difference:+.1f} points, {conf} {_covers(d)} {_iv(d)})")
    need = d.to_decide
    what = []
    if need and need.n_examples:
        what.append(f"about {need.n_examples:,} test examples")
    if need and need.seeds:
        what.append(f"about {need.seeds} seeds per method")
    fix = f"; {' or '.join(what)} would decide it" if what else ""
    seeds = d.seeds_a
    cause = (f" Cause: {need.cause} ({d.n_examples:,} test examples, {seeds} "
             f"seed{'s' if seeds != 1 else ''})") if need and need.cause else ""
    return (f"{r} is undecided: it differs from full fine-tuning by {100 * d.difference:+.1f} points "
            f"({conf} {_covers(d)} {_iv(d)}; {_VERDICT[d.verdict]} full fine-tuning at {conf}), too wide to tell "
            f"whether it is within {_pts(tolerance)}.{cause}{fix}")


def _closest(lora: Sequence[StudyRow]) -> Optional[StudyRow]:
    usable = [r for r in lora if not r.is_degenerate]
    return max(usable, key=lambda r: (r.vs_full.difference, -r.rank)) if usable else None


def _mc_note(seq: Sequence[SequenceStep], rows: Sequence[StudyRow], several: bool) -> str:
    close = [s for s in seq if s.mc_close and s.status != "not tested"]
    if not close:
        return ""
    n = max(r.vs_full.n_resamples for r in rows)
    if several:
        by_row = {r.name: r for r in rows}
        named = "; ".join(configuration_words(by_row[s.row], True) for s in close)
        return (f" Borderline: for {named} the deciding interval end lies within the Monte-Carlo error of the "
                f"threshold even at {n:,} resamples.")
    return (f" Borderline: for rank{'s' if len(close) > 1 else ''} {', '.join(str(s.rank) for s in close)} the "
            f"deciding interval end lies within the Monte-Carlo error of the threshold even at {n:,} resamples.")


def _ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return None if not a or not b else a / b


def _time(row: StudyRow) -> Optional[float]:
    """Training cost to the kept checkpoint: CPU seconds to the best validation, else wall train seconds."""
    return row.cpu_seconds_to_best or row.train_seconds


def answer(rows: Mapping[str, StudyRow], tolerance: float, confidence: float = 0.95,
           equal_cost: Optional[EqualCost] = None) -> Answer:
    """The smallest LoRA rank within ``tolerance`` of full fine-tuning under the fixed-sequence procedure; in a
    study of several (adapter, target set), the passed configuration with the fewest trainable parameters.

    Returns:
        ``rank`` and ``row`` (None when nothing passed), ``sentence``, ``sequence`` (per configuration: status,
        unadjusted status, whether its deciding end is within Monte-Carlo error), ``procedure``, ``closest_rank``
        and ``closest_row`` (post hoc, no interval), ``equal_cost`` (the equal-cost sentence, when curves were
        given), and for a passing configuration its ``difference`` and ``cost_ratios``.
    """
    full = rows.get(REFERENCE)
    lora = sorted((r for r in rows.values() if r.variant == "lora"), key=lambda r: r.rank)
    several = len({r.family for r in lora}) > 1
    conf = f"{100 * confidence:g} %"
    none = {"rank": None, "procedure": PROCEDURE_CONFIGURATIONS if several else PROCEDURE, "sequence": (),
            "closest_rank": None, "equal_cost": equal_cost.sentence if equal_cost else None, "cost_ratios": None,
            "difference": None}
    if full is None or not lora:
        return Answer(**none, sentence="The study needs full fine-tuning and at least one LoRA rank.")
    if full.is_degenerate:
        bad = next(d for d in full.degenerate if d)
        return Answer(**none, sentence=f"Full fine-tuning is degenerate ({bad}), so it is no reference: no "
                                       "comparison is stated.")
    if not full.all_converged:
        return Answer(**none, sentence=f"Full fine-tuning did not converge within {_steps_cap(full)} (still "
                                       f"improving at the cap), so no {'configuration' if several else 'rank'} is "
                                       "compared with it; raise train.max_steps or full.epochs.")
    seq = _sequence(lora, tolerance)
    by_row = {r.name: r for r in lora}
    passed = [by_row[s.row] for s in seq if s.status == "within"]
    stop = next((s for s in seq if s.status not in ("within", "not tested")), None)
    why = _failure(by_row[stop.row], stop.status, tolerance, conf, several) if stop else ""
    mc = _mc_note(seq, lora, several)
    order = "configurations by trainable parameters from the most down" if several else "ranks from the largest down"
    if not passed:
        closest = _closest(lora)
        post = ""
        if closest and several:
            post = (f" Post hoc, the configuration closest to full fine-tuning is {configuration_words(closest, True)} "
                    f"({100 * closest.vs_full.difference:+.1f} points; no interval: a post-hoc pick).")
        elif closest:
            post = (f" Post hoc, the rank closest to full fine-tuning is {closest.rank} "
                    f"({100 * closest.vs_full.difference:+.1f} points; no interval: a post-hoc pick).")
        lead = "Undecided" if stop.status == "undecided" else \
            f"No LoRA {'configuration' if several else 'rank'} is shown within {_pts(tolerance)} of full " \
            f"fine-tuning at {conf}"
        return Answer(**{**none, "sequence": seq, "closest_rank": closest.rank if closest else None,
                         "closest_row": closest.name if closest else None},
                      sentence=f"{lead}: testing {order}, {why}.{post}{mc}")
    return _within(passed[-1], full, passed, why, tolerance, conf, mc, {**none, "sequence": seq}, several)


def _within(r: StudyRow, full: StudyRow, passed: Sequence[StudyRow], why: str, tolerance: float, conf: str, mc: str,
            base: Mapping[str, object], several: bool) -> Answer:
    d, m, f = r.vs_full, r.macro_f1, full.macro_f1
    costs = CostRatios(trainable_params=_ratio(r.trainable_params, full.trainable_params),
                       train_time=_ratio(_time(r), _time(full)),
                       peak_memory_mb=_ratio(r.peak_memory_mb, full.peak_memory_mb),
                       size_on_disk_mb=_ratio(r.size_on_disk_mb, full.size_on_disk_mb))
    if several:
        listed = "; ".join(configuration_words(p, True) for p in passed)
        others = f" ({listed} pass" + (f"; {why}" if why else "") + ")" if len(passed) > 1 or why else ""
        lead = (f"Testing configurations by trainable parameters from the most down, the LoRA configuration with the "
                f"fewest trainable parameters within {_pts(tolerance)} of full fine-tuning is "
                f"{configuration_words(r, True)}{others}")
    else:
        others = f" (ranks {', '.join(str(p.rank) for p in passed)} pass" + (f"; {why}" if why else "") + ")" \
            if len(passed) > 1 or why else ""
        lead = (f"Testing ranks from the largest down, the smallest LoRA rank within {_pts(tolerance)} of full "
                f"fine-tuning is {r.rank}{others}")
    clock = "CPU time to its best checkpoint" if r.cpu_seconds_to_best else "train time"
    tt = f"{costs.train_time:.2f}× the {clock}" if costs.train_time else "an unmeasured train time"
    mem = f" and {costs.peak_memory_mb:.2f}× the peak memory" if costs.peak_memory_mb else ""
    sentence = (
        f"{lead}: test macro-F1 {m.mean:.3f} [{m.low:.3f}, {m.high:.3f}] vs "
        f"{f.mean:.3f} [{f.low:.3f}, {f.high:.3f}], a difference of {100 * d.difference:+.1f} points "
        f"({conf} {_covers(d)} {_iv(d)}; {_VERDICT[d.verdict]} full fine-tuning at {conf}), training "
        f"{r.trainable_percent:.2f} % of the parameters ({r.trainable_params:,} vs "
        f"{full.trainable_params:,}), in {tt}{mem}, with {r.size_on_disk_mb:.2f} MB on disk vs "
        f"{full.size_on_disk_mb:.1f} MB.{mc}")
    return Answer(**{**base, "rank": r.rank, "row": r.name, "cost_ratios": costs, "difference": d},
                  sentence=sentence)


def registry_pick(rows: Mapping[str, StudyRow], answer_row: Optional[str]) -> tuple[Optional[str], str]:
    """The row whose model the Model Registry gets, and why — chosen on **validation**, never on test.

    The answer's LoRA row when there is one; else the row with the best mean validation macro-F1 among those
    with no seed degenerate on validation (a deployment pick, not a claim that it beats the others). None when
    every row is degenerate.
    """
    if answer_row is not None and answer_row in rows:
        return answer_row, "the study's answer: smallest LoRA rank within tolerance of full"
    usable = [(name, r) for name, r in rows.items() if not any(r.degenerate_val or [])]
    if not usable:
        return None, "every trained model is degenerate on validation"
    name = max(usable, key=lambda item: (item[1].val_macro_f1, item[0]))[0]
    return name, "best mean validation macro-F1 (no LoRA rank within tolerance; not a significance claim)"
