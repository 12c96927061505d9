"""Learning curves read as best-so-far, averaged over seeds, and the equal-cost reading on synthetic curves."""

from __future__ import annotations

import pytest

from lora_pipeline.curves import best_so_far, curve_from_rows, equal_cost, mean_curve

RANKS_2_8 = {"lora_r2": "rank 2", "lora_r8": "rank 8"}  # the LoRA rows, as the sentence names them


def _curve(seed, points):
    """points: (step, cpu_seconds, val_macro_f1)."""
    return curve_from_rows([{"step": s, "seconds": c * 0.9, "cpu_seconds": c, "val_macro_f1": f}
                            for s, c, f in points], seed)


def test_best_so_far_is_monotone_and_none_before_the_first_validation():
    c = _curve(1, [(10, 5.0, 0.5), (20, 10.0, 0.7), (30, 15.0, 0.6)])
    assert best_so_far(c, "cpu_seconds", 4.9) is None
    assert best_so_far(c, "cpu_seconds", 5.0) == 0.5
    assert best_so_far(c, "cpu_seconds", 14.0) == 0.7
    assert best_so_far(c, "cpu_seconds", 99.0) == 0.7  # a stopped run carries its kept checkpoint
    assert best_so_far(c, "step", 25) == 0.7


def test_mean_curve_averages_seeds_on_the_union_of_points_with_a_min_max_band():
    a = _curve(1, [(10, 5.0, 0.5), (20, 10.0, 0.7)])
    b = _curve(2, [(10, 6.0, 0.6), (20, 12.0, 0.8), (30, 18.0, 0.9)])
    by_step = mean_curve([a, b], "step")
    assert [p["step"] for p in by_step] == [10, 20, 30]
    assert by_step[2] == pytest.approx({"step": 30, "val_macro_f1": 0.8, "low": 0.7, "high": 0.9, "seeds": 2})
    by_cpu = mean_curve([a, b], "cpu_seconds")
    assert by_cpu[0]["cpu_seconds"] == 6.0  # 5.0: seed 2 has no validation yet, so no mean there


def test_equal_cost_reads_each_rank_at_full_fine_tunings_time_to_its_best():
    full = [_curve(1, [(10, 100.0, 0.80), (20, 200.0, 0.86), (30, 300.0, 0.85)]),
            _curve(2, [(10, 120.0, 0.82), (20, 240.0, 0.88), (30, 360.0, 0.87)])]  # best at 200 and 240 s: 220
    fast = [_curve(1, [(10, 50.0, 0.84), (20, 100.0, 0.86), (30, 150.0, 0.865)]),
            _curve(2, [(10, 50.0, 0.83), (20, 100.0, 0.855), (30, 150.0, 0.87)])]
    slow = [_curve(1, [(10, 200.0, 0.70), (20, 400.0, 0.87)]), _curve(2, [(10, 210.0, 0.72), (20, 420.0, 0.86)])]
    res = equal_cost({"full": full, "lora_r2": slow, "lora_r8": fast}, RANKS_2_8, tolerance=0.01,
                     chosen="lora_r8")
    assert res["budget"] == pytest.approx(220.0) and res["full_best"] == pytest.approx(0.87)
    assert res["at_budget"] == pytest.approx({"lora_r2": 0.71, "lora_r8": 0.8675})
    # mean best-so-far of rank 8 reaches 0.86 (= 0.87 - 0.01) at 150 CPU seconds: 150 / 220 of full's time
    assert res["time_within"] == pytest.approx(150.0) and res["ratio"] == pytest.approx(150 / 220)
    assert "by the 220 CPU-seconds full fine-tuning needed to reach its best (0.870)" in res["sentence"]
    assert "rank 2 at 0.710, rank 8 at 0.867" in res["sentence"]
    assert "Rank 8 came within 1 point of it after 150 CPU-seconds (0.68× full fine-tuning's)" in res["sentence"]


def test_equal_cost_says_when_a_rank_never_comes_within_and_picks_the_closest_without_an_answer():
    full = [_curve(1, [(10, 100.0, 0.9)])]
    low = [_curve(1, [(10, 50.0, 0.6), (20, 300.0, 0.7)])]
    lower = [_curve(1, [(10, 50.0, 0.5)])]
    res = equal_cost({"full": full, "lora_r4": low, "lora_r16": lower}, {"lora_r4": "rank 4", "lora_r16": "rank 16"},
                     tolerance=0.01, chosen=None)
    assert res["rank"] == 4 and res["time_within"] is None and res["ratio"] is None
    assert "Rank 4 never came within 1 point of that best." in res["sentence"]


def test_equal_cost_needs_full_fine_tunings_curve_on_that_clock():
    no_clock = [curve_from_rows([{"step": 10, "val_macro_f1": 0.8}], 1)]  # a run recorded before cpu_seconds
    assert equal_cost({"full": no_clock}, {"lora_r8": "rank 8"}, 0.01, "lora_r8") is None
    assert equal_cost({}, {"lora_r8": "rank 8"}, 0.01, "lora_r8") is None
