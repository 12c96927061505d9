"""Studies of several (adapter, target set): the answer tests every LoRA configuration in one fixed sequence by
trainable parameters, stops at the first failure and names the cheapest passed configuration; rows, learning-rate
choice and grid keep configurations apart; the report gains the equal-parameter-budget table; and a study of one
(adapter, target set) reads as before."""

from __future__ import annotations

import dataclasses

from lora_pipeline.answer import answer, registry_pick
from lora_pipeline.config import StudyConfig
from lora_pipeline.figures import report_markdown
from lora_pipeline.study import choose_learning_rates, grid_runs, rank_curve, record_row
from tests.support.studies import make_study, study_row, table, vs_full


def _diff(diff: float, low: float, high: float) -> dict:
    verdict = "better" if low > 0 else "worse" if high < 0 else "indistinguishable"
    return vs_full(difference=diff, low=low, high=high, verdict=verdict, covers="method", seeds_a=3, seeds_b=3)


WITHIN, WORSE = _diff(-0.002, -0.008, 0.004), _diff(-0.03, -0.04, -0.02)


def _lora(rank: int, adapter: str, targets: str, params: int, vs: dict, **extra):
    return study_row("lora", rank, target_set=targets, adapter=adapter, trainable_params=params,
                     adapter_params=params - 100, vs_full=vs, **extra)


def _rows(*lora):
    rows = {"full": study_row("full", trainable_params=100_000)}
    rows.update({r.name: r for r in lora})
    return rows


def test_configurations_are_tested_by_trainable_parameters_and_the_cheapest_passed_one_is_the_answer():
    rows = _rows(_lora(8, "lora", "default", 5_000, WITHIN), _lora(2, "lora", "all_linear", 6_000, WITHIN),
                 _lora(2, "dora", "all_linear", 6_500, WITHIN), _lora(2, "lora", "default", 1_300, WITHIN))
    result = answer(rows, tolerance=0.01)
    assert [s.row for s in result.sequence] == ["dora_r2_all_linear", "lora_r2_all_linear", "lora_r8", "lora_r2"]
    assert result.row == "lora_r2" and result.rank == 2
    assert "LoRA configuration with the fewest trainable parameters within 1 point of full fine-tuning is LoRA on " \
           "default at rank 2" in result.sentence
    assert "every LoRA configuration" in result.procedure and "trainable parameters" in result.procedure


def test_the_sequence_stops_at_the_first_configuration_that_fails_even_if_a_cheaper_one_would_pass():
    rows = _rows(_lora(8, "dora", "all_linear", 9_000, WITHIN), _lora(8, "lora", "default", 5_000, WORSE),
                 _lora(2, "lora", "default", 1_300, WITHIN))
    result = answer(rows, tolerance=0.01)
    assert [(s.row, s.status) for s in result.sequence] == [("dora_r8_all_linear", "within"), ("lora_r8", "worse"),
                                                            ("lora_r2", "not tested")]
    assert result.row == "dora_r8_all_linear" and result.rank == 8
    assert "is DoRA on all_linear at rank 8" in result.sentence
    assert "LoRA on default at rank 8 is worse than full fine-tuning" in result.sentence
    assert registry_pick(rows, result.row)[0] == "dora_r8_all_linear"
    assert record_row(rows, result.row, None) == "dora_r8_all_linear"


def test_equal_parameters_tie_to_the_larger_rank_first():
    rows = _rows(_lora(4, "lora", "all_linear", 5_000, WORSE), _lora(8, "lora", "default", 5_000, WITHIN))
    assert [s.row for s in answer(rows, tolerance=0.01).sequence] == ["lora_r8", "lora_r4_all_linear"]


def test_no_configuration_passing_names_the_post_hoc_closest_row():
    rows = _rows(_lora(8, "dora", "default", 9_000, WORSE), _lora(8, "lora", "default", 5_000, _diff(-0.02, -0.03,
                                                                                                      -0.015)))
    result = answer(rows, tolerance=0.01)
    assert result.row is None and result.closest_row == "lora_r8"
    assert result.sentence.startswith("No LoRA configuration is shown within 1 point")
    assert "the configuration closest to full fine-tuning is LoRA on default at rank 8" in result.sentence


def test_a_study_of_one_adapter_and_target_set_keeps_its_words():
    rows = _rows(_lora(8, "lora", "default", 5_000, WITHIN), _lora(2, "lora", "default", 1_300, WITHIN))
    result = answer(rows, tolerance=0.01)
    assert result.sentence.startswith("Testing ranks from the largest down, the smallest LoRA rank within 1 point of "
                                      "full fine-tuning is 2 (ranks 8, 2 pass)")
    assert "ranks tested from the largest down" in result.procedure and result.row == "lora_r2"


def _rec(rank, target_set, adapter, lr, val, seed=1):
    return {"variant": "lora", "rank": rank, "target_set": target_set, "adapter": adapter, "seed": seed, "lr": lr,
            "val_macro_f1": val, "tag": f"{adapter}-{target_set}-r{rank}-s{seed}-lr{lr}"}


def test_two_target_sets_at_one_rank_are_two_rows_each_with_its_own_learning_rate():
    records = [_rec(8, "default", "lora", 1e-3, 0.8), _rec(8, "default", "lora", 2e-3, 0.7),
               _rec(8, "all_linear", "lora", 1e-3, 0.6), _rec(8, "all_linear", "lora", 2e-3, 0.9),
               _rec(8, "default", "dora", 1e-3, 0.5), _rec(8, "default", "dora", 2e-3, 0.4)]
    groups = choose_learning_rates(records)
    assert [(g.name, g.lr) for g in groups] == [("lora_r8", 1e-3), ("lora_r8_all_linear", 2e-3), ("dora_r8", 1e-3)]


def test_a_record_without_the_new_keys_is_the_default_set_with_lora():
    old = {k: v for k, v in _rec(8, "default", "lora", 1e-3, 0.8).items() if k not in ("target_set", "adapter")}
    assert [g.name for g in choose_learning_rates([old])] == ["lora_r8"]


def test_grid_runs_keep_target_sets_and_adapters_apart():
    grid = StudyConfig(seeds=(1,), ranks=(8,), scratch_lrs=(4e-4,), full_lrs=(5e-5,), lora_lrs=(2e-3,),
                       target_sets=("default", "all_linear"), adapters=("lora", "dora"))
    base = [{"variant": v, "rank": None, "seed": 1, "lr": lr, "val_macro_f1": 0.5, "tag": v}
            for v, lr in (("scratch", 4e-4), ("full", 5e-5))]
    lora = [_rec(8, t, a, 2e-3, 0.8) for t in ("default", "all_linear") for a in ("lora", "dora")]
    runs = grid_runs(base + lora, grid)
    assert [(r.get("target_set"), r.get("adapter")) for r in runs[2:]] == [
        ("default", "lora"), ("default", "dora"), ("all_linear", "lora"), ("all_linear", "dora")]
    try:
        grid_runs(base + lora[:3], grid)
    except Exception as err:  # noqa: BLE001 - the message names the missing configuration
        assert "dora all_linear r8 seed 1 lr 0.002" in str(err)
    else:
        raise AssertionError("a missing configuration was not reported")


def _several_families():
    """make_study's study with a second (adapter, target set): DoRA on all_linear at the same ranks."""
    study = make_study(ranks=(2, 32), seeds=(42, 43))
    rows = dict(study.rows)
    for name in ("lora_r2", "lora_r32"):
        row = rows[name]
        rows[name] = dataclasses.replace(row, adapter_params=row.trainable_params - 1000)
        dora = dataclasses.replace(row, adapter="dora", target_set="all_linear",
                                   trainable_params=int(row.trainable_params * 1.1),
                                   adapter_params=int((row.trainable_params - 1000) * 1.1))
        rows[dora.name] = dora
    result = answer(rows, tolerance=0.01)
    return dataclasses.replace(study, rows=rows, answer=result, equal_cost=None)


def test_the_report_of_several_configurations_shows_each_row_and_the_equal_budget_table():
    study = _several_families()
    text = report_markdown(study)
    comparison = [r[0] for r in table(text, "variant | test macro-F1 (mean ± std)")]
    assert comparison[:6] == ["BERT from scratch", "full fine-tuning", "LoRA r=2 (ours)", "LoRA r=32 (ours)",
                              "DoRA r=2 on all_linear (ours)", "DoRA r=32 on all_linear (ours)"]
    assert "## Equal parameter budget" in text and "within 1.25×" in text
    budget = table(text, "budget (adapter params)")
    assert [r[1] for r in budget] == ["lora · default · r2", "dora · all_linear · r2", "lora · default · r32",
                                      "dora · all_linear · r32"]
    assert "no configuration is shown better than another" in text  # the synthetic intervals overlap
    assert study.answer.row in study.rows and " at rank " in study.answer.sentence


def test_the_equal_budget_sentence_names_a_winner_only_when_the_intervals_do_not_overlap():
    study = _several_families()
    rows = dict(study.rows)
    low = rows["dora_r2_all_linear"]
    rows["dora_r2_all_linear"] = dataclasses.replace(low, vs_full=dataclasses.replace(
        low.vs_full, difference=-0.08, low=-0.09, high=-0.07))
    text = report_markdown(dataclasses.replace(study, rows=rows))
    assert "LoRA r=2 (ours) did better than DoRA r=2 on all_linear (ours)" in text


def test_rows_without_adapter_parameter_counts_get_no_table_and_the_reason():
    study = _several_families()
    rows = {n: dataclasses.replace(r, adapter_params=None) for n, r in study.rows.items()}
    text = report_markdown(dataclasses.replace(study, rows=rows))
    assert "## Equal parameter budget\n\nNo table:" in text and "no adapter parameter count" in text
    assert "| budget (adapter params) |" not in text


def test_rows_with_counts_are_paired_and_those_without_are_named_as_left_out():
    study = _several_families()
    rows = dict(study.rows)
    rows["lora_r32"] = dataclasses.replace(rows["lora_r32"], adapter_params=None)
    text = report_markdown(dataclasses.replace(study, rows=rows))
    budget = table(text, "budget (adapter params)")
    assert [r[1] for r in budget] == ["lora · default · r2", "dora · all_linear · r2"]
    assert "Left out (no adapter parameter count: a run recorded before the count, or seeds that disagree): LoRA " \
           "r=32 (ours)." in text


def test_a_study_of_one_family_has_no_budget_table_and_one_rank_curve_series():
    study = make_study(ranks=(2, 32))
    assert "Equal parameter budget" not in report_markdown(study)
    assert "adapter" not in rank_curve(study.rows, 0.8)[0]
    curve = rank_curve(_several_families().rows, 0.8)
    assert [(c["adapter"], c["target_set"], c["rank"]) for c in curve] == [
        ("lora", "default", 2), ("lora", "default", 32), ("dora", "all_linear", 2), ("dora", "all_linear", 32)]


def test_the_figures_draw_a_study_of_several_configurations(tmp_path):
    from lora_pipeline.figures import save_figures

    paths = save_figures(_several_families(), tmp_path)
    assert all(p.stat().st_size > 0 for p in paths.values())
