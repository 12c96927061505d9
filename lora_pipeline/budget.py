"""Parameter budgets of study configurations: what each (adapter, target set, rank) trains, which configurations
cost about the same, and the cheapest one shown within the tolerance of full fine-tuning.

The LoRA paper (Hu et al., 2021, arXiv:2106.09685, Table 5) compares which weight matrices to adapt at a fixed
number of trainable parameters: W_q, W_v at r=8 against W_q, W_k, W_v, W_o at r=4 and so on. The same reading
here: :func:`equal_budget_groups` pairs configurations of different (adapter, target set) whose adapter
parameter counts are close, and :func:`equal_budget_rows` lays them out as a Markdown table.

Pure functions; no I/O, no torch (the report stage renders the table) and no dependence on the study file's format
(scores and verdicts come in as plain mappings keyed by :attr:`Configuration.label`). The counts themselves are read
from a model's shapes in :mod:`lora_pipeline.adapter_budget`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Optional, Union

import numpy as np
from .config import ADAPTERS  # lora: B·A per target; dora: plus a magnitude per output unit

__all__ = ["EQUAL_BUDGET_HEADER", "EQUAL_BUDGET_RATIO", "Configuration", "cheapest_within", "equal_budget_groups",
           "equal_budget_rows"]

EQUAL_BUDGET_RATIO = 1.25  # the pairing rule: adapter parameter counts within this factor of the group's cheapest


EQUAL_BUDGET_HEADER: tuple[str, ...] = ("budget (adapter params)", "configuration", "adapter params",
                                        "test macro-F1 [interval]", "vs full, points [interval]")

# (macro_f1, low, high, diff, diff_low, diff_high): test macro-F1 with its interval, and the paired difference
# configuration − full fine-tuning with its interval, all as fractions (0.01 = one point); any may be None.
Score = tuple[Optional[float], Optional[float], Optional[float], Optional[float], Optional[float], Optional[float]]


@dataclass(frozen=True)
class Configuration:
    """One point of the study's adapter grid, with what it trains.

    Attributes:
        adapter: one of :data:`~lora_pipeline.config.ADAPTERS`.
        target_set: the name of a ``study.target_sets`` entry (e.g. ``attention_qv``).
        rank: the LoRA rank (>= 1).
        adapter_params: the parameters the adapter adds (:func:`~lora_pipeline.adapter_budget.adapter_parameters`;
            the head is not counted).

    Raises:
        ValueError: an unknown adapter, an empty target set name, a rank below 1 or a negative count.
    """

    adapter: str
    target_set: str
    rank: int
    adapter_params: int

    def __post_init__(self) -> None:
        if self.adapter not in ADAPTERS:
            raise ValueError(f"unknown adapter {self.adapter!r}; expected one of {', '.join(ADAPTERS)}")
        if not self.target_set:
            raise ValueError("target_set must be a non-empty name")
        if self.rank < 1:
            raise ValueError(f"rank must be >= 1, got {self.rank}")
        if self.adapter_params < 0:
            raise ValueError(f"adapter_params must be >= 0, got {self.adapter_params}")

    @property
    def label(self) -> str:
        """``lora · attention_qv · r8``: the key scores and verdicts are given under."""
        return f"{self.adapter} · {self.target_set} · r{self.rank}"

    @property
    def kind(self) -> tuple[str, str]:
        """``(adapter, target_set)``: configurations of one kind differ only in rank."""
        return self.adapter, self.target_set

    def _order(self) -> tuple[int, int, str, str]:
        """Cheapest first; ties by rank, adapter, target set."""
        return self.adapter_params, self.rank, self.adapter, self.target_set


def _check_unique(configs: Sequence[Configuration]) -> None:
    labels = [c.label for c in configs]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise ValueError(f"configurations given more than once: {repeated}")


def equal_budget_groups(configs: Iterable[Configuration], ratio: float = EQUAL_BUDGET_RATIO) -> list[list[Configuration]]:
    """Configurations of different (adapter, target set) that train about as many parameters.

    The rule: sort by (adapter params, rank, adapter, target set). Repeatedly take the cheapest configuration
    not yet in a group as the anchor; its window is every configuration not yet in a group whose count is at
    most ``ratio`` × the anchor's (inclusive, the ratio taken exactly as its decimal spelling: 1.25 is 5/4).
    From the window take the anchor and, for each other (adapter, target set), its cheapest member. With at
    least two (adapter, target set) this is a group and its members leave the pool; otherwise only the anchor
    leaves it. So a group never holds one configuration twice nor two ranks of one (adapter, target set),
    every configuration is in at most one group, and the spread within a group is at most ``ratio``.

    Args:
        configs: distinct configurations (by label).
        ratio: the largest count ÷ smallest count allowed in a group (>= 1).

    Returns:
        Groups, cheapest anchor first; each group cheapest first (ties by rank, adapter, target set).

    Raises:
        ValueError: ``ratio`` below 1 or not finite; a configuration given twice.
    """
    if not np.isfinite(ratio) or ratio < 1:
        raise ValueError(f"ratio must be a finite number >= 1, got {ratio}")
    limit = Fraction(repr(float(ratio)))
    pool = sorted(configs, key=Configuration._order)
    _check_unique(pool)
    groups: list[list[Configuration]] = []
    while pool:
        anchor = pool[0]
        group, kinds = [anchor], {anchor.kind}
        for config in pool[1:]:
            if config.adapter_params > limit * anchor.adapter_params:
                break  # the pool is sorted by count: nothing further fits
            if config.kind not in kinds:
                group.append(config)
                kinds.add(config.kind)
        if len(group) >= 2:
            groups.append(group)
        pool = [c for c in pool if c not in group]
    return groups


def _verdict(value: object, label: str) -> Optional[bool]:
    """A verdict as True/False/None; anything else (a status word, a number) is refused, not read as truthy."""
    if value is None or isinstance(value, (bool, np.bool_)):
        return None if value is None else bool(value)
    raise TypeError(f"verdict for {label!r} must be True, False or None, got {value!r}")


def cheapest_within(configs: Iterable[Configuration],
                    verdicts: Mapping[Union[str, Configuration], Optional[bool]]) -> Optional[Configuration]:
    """The configuration with the fewest adapter parameters among those shown within the tolerance of full
    fine-tuning.

    Args:
        configs: the configurations of the study (distinct labels).
        verdicts: for each configuration (keyed by it or by its label): True when shown within the tolerance,
            False when not, None when undecided. A configuration without a verdict counts as undecided.

    Returns:
        The cheapest configuration whose verdict is True, ties broken by (rank, adapter, target set); None if
        no configuration was shown within.

    Raises:
        ValueError: a verdict for a configuration not among ``configs``, two different verdicts for one
            configuration (by object and by label), or a configuration given twice.
        TypeError: a verdict that is not True, False or None.
    """
    configs = list(configs)
    _check_unique(configs)
    labels = {c.label for c in configs}
    unknown = sorted(k.label if isinstance(k, Configuration) else str(k) for k in verdicts
                     if (k.label if isinstance(k, Configuration) else k) not in labels)
    if unknown:
        raise ValueError(f"verdicts for configurations that are not in the study: {unknown}")
    within = []
    for config in configs:
        found = {_verdict(verdicts[k], config.label) for k in (config, config.label) if k in verdicts}
        if len(found) > 1:
            raise ValueError(f"two different verdicts for {config.label!r}")
        if found == {True}:
            within.append(config)
    return min(within, key=Configuration._order, default=None)


def _missing(value: Optional[float]) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def _f1(score: Score) -> str:
    """``0.9123 [0.9001, 0.9234]``; a dash where not measured."""
    value, low, high = score[:3]
    if _missing(value):
        return "–"
    interval = "" if _missing(low) or _missing(high) else f" [{low:.4f}, {high:.4f}]"
    return f"{value:.4f}{interval}"


def _points(score: Score) -> str:
    """``-0.50 [-1.39, +0.40]``: the paired difference to full fine-tuning in macro-F1 points."""
    diff, low, high = score[3:6]
    if _missing(diff):
        return "–"
    interval = "" if _missing(low) or _missing(high) else f" [{100 * low:+.2f}, {100 * high:+.2f}]"
    return f"{100 * diff:+.2f}{interval}"


def _budget(group: Sequence[Configuration]) -> str:
    """``73,728–82,944``: the range of counts in a group (one number when they are equal)."""
    low, high = min(c.adapter_params for c in group), max(c.adapter_params for c in group)
    return f"{low:,}" if low == high else f"{low:,}–{high:,}"


def equal_budget_rows(groups: Sequence[Sequence[Configuration]],
                      scores: Mapping[str, Optional[Score]]) -> list[list[str]]:
    """Rows of the equal parameter budget table (columns: :data:`EQUAL_BUDGET_HEADER`), one per configuration,
    group after group; each row repeats its group's budget so that it reads on its own.

    Args:
        groups: as :func:`equal_budget_groups` returns them.
        scores: by label: ``(macro_f1, low, high, diff, diff_low, diff_high)`` (see :data:`Score`); a missing
            label, a None score or a None/NaN value prints as a dash.

    Returns:
        Rows of strings, for a Markdown table.

    Raises:
        ValueError: a score tuple that does not have six values.
    """
    rows = []
    for group in groups:
        budget = _budget(group)
        for config in group:
            score = scores.get(config.label)
            if score is not None and len(score) != 6:
                raise ValueError(f"score for {config.label!r} must be (macro_f1, low, high, diff, diff_low, "
                                 f"diff_high), got {len(score)} values")
            score = score if score is not None else (None,) * 6
            rows.append([budget, config.label, f"{config.adapter_params:,}", _f1(score), _points(score)])
    return rows
