"""The answer's procedure and sentences on hand-made rows: fixed sequence, undecided, not converged, post-hoc
closest without an interval, Monte-Carlo borderline, and picks made on validation."""

from __future__ import annotations

import dataclasses

import pytest

from lora_pipeline.answer import answer, rank_status, registry_pick
from tests.support.studies import equal_cost, study_row, vs_full


def _diff(diff, low, high, covers="method", **extra):
    verdict = "better" if low > 0 else "worse" if high < 0 else "indistinguishable"
    need = extra.pop("to_decide", None)
    return vs_full(**{"difference": diff, "low": low, "high": high, "verdict": verdict, "covers": covers,
                      "seeds_a": 5, "seeds_b": 5, "n_examples": 2000, "n_resamples": 1000, **extra,
                      "to_decide": None if need is None else {"note": None, "seeds": None, **need}})


def _row(variant, rank=None, vs=None, *, degenerate=(None,), converged=(True,), val=0.8, **extra):
    seeds = list(range(len(degenerate)))
    return study_row(variant, rank, seeds=seeds, degenerate=degenerate, converged=converged, val_macro_f1=val,
                     planned_steps=3000.0, trainable_params=1000 if variant == "full" else 10 * (rank or 1),
                     trainable_percent=1.0, size_on_disk_mb=80.0 if variant == "full" else 1.0, train_seconds=100.0,
                     cpu_seconds_to_best=400.0 if variant == "full" else 200.0, peak_memory_mb=1000.0, vs_full=vs,
                     **{"degenerate_val": [None] * len(seeds), **extra})


def _rows(**lora):
    rows = {"full": _row("full")}
    rows.update({f"lora_r{r}": _row("lora", r, vs) if isinstance(vs, dict) else vs(r) for r, vs in
                 ((int(k[1:]), v) for k, v in lora.items())})
    return rows


def test_ranks_are_tested_from_the_largest_down_and_the_sequence_stops_at_the_first_failure():
    rows = _rows(r2=_diff(-0.004, -0.009, 0.001), r8=_diff(-0.03, -0.04, -0.02), r32=_diff(-0.002, -0.008, 0.004))
    result = answer(rows, tolerance=0.01)
    # rank 2 passes on its own, but rank 8 failed before it: under the fixed sequence it is not tested
    assert result.rank == 32
    assert [(s.rank, s.status) for s in result.sequence] == [(32, "within"), (8, "worse"), (2, "not tested")]
    assert result.sequence[2].unadjusted == "within"
    assert "the smallest LoRA rank within 1 point of full fine-tuning is 32" in result.sentence
    assert "rank 8 is worse than full fine-tuning by more than 1 point" in result.sentence
    assert "interval over seeds and test examples" in result.sentence
    assert "fixed sequence" in result.procedure


def test_a_rank_that_is_ahead_but_too_uncertain_is_undecided_never_not_within():
    need = {"n_examples": 1600, "seeds": None, "cause": "test-set size"}
    rows = _rows(r32=_diff(0.025, -0.018, 0.070, to_decide=need))
    result = answer(rows, tolerance=0.01)
    assert result.rank is None
    assert result.sentence.startswith("Undecided: testing ranks from the largest down, rank 32 is undecided")
    assert "+2.5 points" in result.sentence and "[-1.8, +7.0]; indistinguishable from full" in result.sentence
    assert "Cause: test-set size" in result.sentence and "about 1,600 test examples" in result.sentence
    assert "not within" not in result.sentence and "No LoRA rank" not in result.sentence


def test_an_undecided_rank_that_is_worse_than_full_says_both():
    """[-2.6, -0.4]: worse than full fine-tuning at 95 %, but not shown to be worse by more than the tolerance."""
    need = {"n_examples": 13556, "seeds": None, "cause": "test-set size"}
    rows = _rows(r16=_diff(-0.015, -0.026, -0.004, to_decide=need, seeds_a=1, seeds_b=1, covers="these models"))
    sentence = answer(rows, tolerance=0.01).sentence
    assert "[-2.6, -0.4]; worse than full fine-tuning at 95 %), too wide to tell whether it is within 1 point" in sentence
    assert "(2,000 test examples, 1 seed)" in sentence and "about 13,556 test examples would decide it" in sentence


def test_the_post_hoc_closest_rank_gets_no_interval():
    rows = _rows(r8=_diff(-0.03, -0.04, -0.02), r32=_diff(-0.02, -0.03, -0.015))
    result = answer(rows, tolerance=0.01)
    assert result.rank is None and result.closest_rank == 32
    post = result.sentence.split("Post hoc")[1]
    assert "-2.0 points; no interval" in post and "[" not in post


def test_a_rank_capped_while_improving_is_not_called_worse():
    rows = _rows(r32=lambda r: _row("lora", r, _diff(-0.03, -0.04, -0.02), converged=(True, False),
                                    degenerate=(None, None)))
    result = answer(rows, tolerance=0.01)
    assert result.sequence[0].status == "not converged"
    assert "rank 32 did not converge within 3,000 steps" in result.sentence
    assert "is worse" not in result.sentence
    assert rank_status(rows["lora_r32"], 0.01) == "not converged"


def test_a_rank_within_the_tolerance_passes_even_before_it_converged():
    rows = _rows(r8=lambda r: _row("lora", r, _diff(0.0, -0.005, 0.005), converged=(False,)))
    assert answer(rows, tolerance=0.01).rank == 8


def test_full_fine_tuning_that_did_not_converge_is_no_reference():
    rows = _rows(r8=_diff(0.0, -0.005, 0.005))
    rows["full"] = _row("full", converged=(False,))
    result = answer(rows, tolerance=0.01)
    assert result.rank is None and result.sentence.startswith("Full fine-tuning did not converge")


def test_a_degenerate_rank_stops_the_sequence_with_its_reason():
    rows = _rows(r32=lambda r: _row("lora", r, _diff(0.0, -0.005, 0.005), degenerate=("predicts only 'a'",)))
    result = answer(rows, tolerance=0.01)
    assert result.rank is None and "rank 32 is degenerate (predicts only 'a')" in result.sentence


def test_a_verdict_at_its_monte_carlo_error_is_labelled_borderline():
    rows = _rows(r8=_diff(0.0, -0.0101, 0.01, mc_close=True, n_resamples=10000))
    result = answer(rows, tolerance=0.01)
    assert result.sequence[0].mc_close
    assert "Borderline: for rank 8" in result.sentence and "10,000 resamples" in result.sentence


def test_the_cost_of_the_answer_uses_cpu_time_to_the_best_checkpoint():
    result = answer(_rows(r8=_diff(0.0, -0.005, 0.005)), tolerance=0.01)
    assert result.cost_ratios.train_time == pytest.approx(0.5)
    assert "0.50× the CPU time to its best checkpoint" in result.sentence


def test_the_equal_cost_sentence_rides_along():
    result = answer(_rows(r8=_diff(0.0, -0.005, 0.005)), 0.01, equal_cost=equal_cost("At equal cost: …"))
    assert result.equal_cost == "At equal cost: …"


def test_registry_pick_without_an_answer_uses_validation_not_test():
    rows = _rows(r8=_diff(-0.03, -0.04, -0.02))
    for name, val, test in (("full", 0.80, 0.90), ("lora_r8", 0.82, 0.70)):  # full best on test, r8 on validation
        row = rows[name]
        rows[name] = dataclasses.replace(row, val_macro_f1=val, macro_f1=dataclasses.replace(row.macro_f1, mean=test))
    rows["scratch"] = _row("scratch", val=0.99, degenerate_val=["predicts only 'a'"])
    assert registry_pick(rows, None)[0] == "lora_r8"
    assert "validation" in registry_pick(rows, None)[1]
    assert registry_pick(rows, "lora_r8") == ("lora_r8", "the study's answer: smallest LoRA rank within tolerance of full")
