"""How long ``fit`` trains -- the min_steps floor, the max_steps cap, early stopping on a plateau (patience,
min_delta) and the record of why a run stopped, the validation cadence (eval_every, auto by default) and the
curves (per-step loss, per-validation scores, training wall and CPU seconds)."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from transformers import AutoModelForSequenceClassification

from lora_pipeline import training, training_monitor
from lora_pipeline.data.loaders import EncodedSplit
from lora_pipeline.errors import PipelineError
from lora_pipeline.training import FitConfig, StepPlan, eval_interval, fit, plan_steps
from tests.support.builders import EPOCHS_ONLY, load_encoded
from tests.support.training import RecordingTracker

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def data(split_dir):
    train, val = load_encoded(split_dir, "train"), load_encoded(split_dir, "val")
    assert -(-len(train) // 16) == 8 and -(-len(train) // 32) == 4  # the step counts below rest on these
    return train, val


def _fit(model_dir, data, tracker=None, **cfg):
    torch.manual_seed(5)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, use_safetensors=True)
    cfg = FitConfig(**{"lr": 5e-3, "batch_size": 16, "seed": 9, **cfg})
    return fit(model, *data, cfg, pad_id=0, device=CPU, tracker=tracker or RecordingTracker(), progress=False)


def _scripted(monkeypatch, scores, n_val: int, seen: list | None = None) -> None:
    """Validation scores ``scores`` in turn; the k-th validation predicts class ``k % 3`` for every row."""
    it = iter(enumerate(scores))

    def scripted(model, *_args):
        if seen is not None:
            seen.append({n: p.detach().clone() for n, p in model.named_parameters()})
        k, score = next(it)
        return score, [k % 3] * n_val

    monkeypatch.setattr(training_monitor, "_evaluate", scripted)


# ----------------------------------------------------------------------------------------- the plan


@pytest.mark.parametrize("rows, batch, epochs, min_steps, max_steps, expected", [
    (117, 16, 1, 20, 0, StepPlan(8, 3, 24)),  # floor: whole passes, so 24 >= 20
    (117, 16, 5, 20, 0, StepPlan(8, 5, 40)),  # the epochs already reach the floor
    (117, 16, 1, 240, 240, StepPlan(8, 30, 240)),  # the defaults: exactly 240 steps
    (117, 16, 3, 0, 13, StepPlan(8, 3, 13)),  # the budget cuts the third pass after 5 steps
    (1000, 32, 2, 240, 240, StepPlan(32, 8, 240)),  # raised to 8 passes (256 steps), then capped
    (9684, 32, 3, 240, 0, StepPlan(303, 3, 909)),  # the embedded corpus without a cap: the epochs rule
])
def test_plan_clamps_the_epochs_between_the_floor_and_the_budget(rows, batch, epochs, min_steps, max_steps,
                                                                   expected):
    cfg = FitConfig(lr=1e-3, epochs=epochs, batch_size=batch, min_steps=min_steps, max_steps=max_steps)
    plan = plan_steps(rows, cfg)
    assert plan == expected
    assert plan.capped == (plan.steps < plan.epochs * plan.steps_per_epoch)


def test_an_empty_training_split_is_a_one_line_error(tiny_model_dir, split_dir, data):
    """Without rows there are no steps to plan: say so, instead of dividing by zero steps per epoch."""
    empty = EncodedSplit.from_frame(pd.read_parquet(split_dir / "train.parquet").iloc[:0])
    with pytest.raises(PipelineError, match="training split is empty") as info:
        _fit(tiny_model_dir, (empty, data[1]), epochs=1)
    assert "\n" not in str(info.value)


def test_a_plan_without_a_step_is_a_one_line_error():
    with pytest.raises(PipelineError, match="nothing to train: epochs 0 and min_steps 0") as info:
        plan_steps(117, FitConfig(lr=1e-3, epochs=0, min_steps=0))
    assert "\n" not in str(info.value)
    assert plan_steps(117, FitConfig(lr=1e-3, epochs=0, min_steps=1, max_steps=0)) == StepPlan(4, 1, 4)


# ------------------------------------------------------------------------------------ floor and cap


def test_small_data_gets_more_passes_to_reach_min_steps(tiny_model_dir, data):
    result = _fit(tiny_model_dir, data, epochs=1, min_steps=20, max_steps=0, patience=0, eval_every=8)
    assert (result.steps, result.planned_steps) == (24, 24)
    assert [(row["step"], row["epoch"]) for row in result.history] == [(8, 1.0), (16, 2.0), (24, 3.0)]
    assert result.stop_reason == ("cap: completed 3 epochs (24 steps; raised from 1 to reach train.min_steps 20) "
                                  f"with early stopping off (best at step {result.best_step})")
    assert (result.stopped_by, result.converged, result.validations) == ("cap", False, 3)


def test_the_budget_stops_mid_epoch_and_the_schedule_ends_at_zero(tiny_model_dir, data, monkeypatch):
    taken = []
    real_step = training.train_step_norm
    monkeypatch.setattr(training, "train_step_norm", lambda *a, **k: taken.append(1) or real_step(*a, **k))
    tracker = RecordingTracker()
    result = _fit(tiny_model_dir, data, tracker, lr=1e-3, epochs=3, warmup_ratio=0.25, log_every=1, min_steps=0,
                  max_steps=13, patience=0, eval_every=8)
    assert len(taken) == result.steps == result.planned_steps == 13
    lrs = [row["lr"] for row in result.steps_log]  # the lr the *next* step would use
    warmup = int(0.25 * 13)
    assert lrs == pytest.approx([1e-3 * (s / warmup if s < warmup else (13 - s) / (13 - warmup))
                                 for s in range(1, 14)], abs=1e-12)
    assert lrs[-1] == 0.0  # the linear decay spans the 13 planned steps, not the 24 of three passes
    assert [(row["step"], row["epoch"]) for row in result.history] == [(8, 1.0), (13, 1.625)]  # last step scored
    assert tracker.steps_with("val_macro_f1") == [8, 13]
    assert result.stop_reason == f"cap: reached max_steps 13 (1.62 epochs) with early stopping off (best at step " \
                                 f"{result.best_step})"


# ---------------------------------------------------------------------------------- early stopping


def test_early_stopping_after_patience_validations_without_a_new_best(tiny_model_dir, data, monkeypatch):
    at_validation: list[dict[str, torch.Tensor]] = []
    _scripted(monkeypatch, [0.3, 0.5, 0.4, 0.5, 0.9], len(data[1]), at_validation)  # 0.5 again is no gain
    torch.manual_seed(5)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, use_safetensors=True)
    cfg = FitConfig(lr=5e-3, epochs=10, batch_size=32, min_steps=0, max_steps=0, patience=2, eval_every=4)
    result = fit(model, *data, cfg, pad_id=0, device=CPU, progress=False)  # 4 steps per epoch
    assert [row["val_macro_f1"] for row in result.history] == [0.3, 0.5, 0.4, 0.5]
    assert (result.steps, result.planned_steps, result.best_step, result.best_epoch) == (16, 40, 8, 2.0)
    assert result.stop_reason == ("plateau: no gain > 0.001 in validation macro-F1 for 2 validations "
                                  "(best at step 8, epoch 2.00)")
    assert (result.stopped_by, result.converged, result.validations) == ("plateau", True, 4)
    assert result.best_predictions == [1] * len(data[1])  # what the second validation predicted
    for name, param in model.named_parameters():  # the model holds the best validation's weights
        assert torch.equal(param, at_validation[1][name]), name


@pytest.mark.parametrize("min_delta, best_step, steps, reason", [
    # 0.5005 and 0.5009 are within 0.001 of the best 0.5: no gain, so patience runs out at the 4th validation
    (0.001, 8, 16, "plateau: no gain > 0.001 in validation macro-F1 for 2 validations (best at step 8, epoch 2.00)"),
    # every rise is a gain: 0.9 at step 20 is the best, two equal scores after it stop the run
    (0.0, 20, 28, "plateau: no gain > 0 in validation macro-F1 for 2 validations (best at step 20, epoch 5.00)"),
])
def test_a_gain_within_min_delta_is_no_new_best(tiny_model_dir, data, monkeypatch, min_delta, best_step, steps,
                                                reason):
    """Keras' EarlyStopping: a new best must beat the best so far (not the last score) by more than min_delta."""
    scores = [0.3, 0.5, 0.5005, 0.5009, 0.9, 0.9, 0.9]
    _scripted(monkeypatch, scores, len(data[1]))
    result = _fit(tiny_model_dir, data, epochs=10, batch_size=32, min_steps=0, max_steps=0, patience=2,
                  eval_every=4, min_delta=min_delta)
    assert (result.best_step, result.steps, result.stop_reason) == (best_step, steps, reason)
    assert result.best_val_macro_f1 == scores[best_step // 4 - 1]
    assert [row["val_macro_f1"] for row in result.history] == scores[:steps // 4]
    assert result.best_predictions == [(best_step // 4 - 1) % 3] * len(data[1])


def test_gains_add_up_against_the_best_not_the_last_score(tiny_model_dir, data, monkeypatch):
    """0.5008 is no gain over 0.5, but 0.5016 is (+0.0016): it resets the patience and becomes the best."""
    _scripted(monkeypatch, [0.5, 0.5008, 0.5016, 0.5, 0.5], len(data[1]))
    result = _fit(tiny_model_dir, data, epochs=10, batch_size=32, min_steps=0, max_steps=0, patience=2,
                  eval_every=4, min_delta=0.001)
    assert (result.best_step, result.best_val_macro_f1, result.steps, result.stopped_by) == (12, 0.5016, 20, "plateau")


def test_a_model_that_cannot_improve_stops_after_patience_validations(tiny_model_dir, data):
    """lr 0: the weights never move, so every validation scores the same and only the first is a new best."""
    result = _fit(tiny_model_dir, data, lr=0.0, epochs=5, eval_every=3, patience=3, min_steps=0, max_steps=0)
    assert [row["step"] for row in result.history] == [3, 6, 9, 12]
    assert len({row["val_macro_f1"] for row in result.history}) == 1
    assert (result.steps, result.best_step, result.stopped_by, result.converged) == (12, 3, "plateau", True)
    assert result.stop_reason == ("plateau: no gain > 0.001 in validation macro-F1 for 3 validations "
                                  "(best at step 3, epoch 0.38)")


def test_early_stopping_waits_for_min_steps(tiny_model_dir, data):
    """A flat start (a one-class model scores the same for a while) cannot end a run before train.min_steps."""
    result = _fit(tiny_model_dir, data, lr=0.0, epochs=50, eval_every=3, patience=1, min_steps=15, max_steps=0)
    assert [row["step"] for row in result.history] == [3, 6, 9, 12, 15]
    assert result.stopped_by == "plateau" and result.steps == 15


@pytest.mark.parametrize("patience, eval_every, stopped_by, reason", [
    # patience 0: no early stopping at all
    (0, 3, "cap", "cap: completed 2 epochs (16 steps) with early stopping off (best at step 3)"),
    # the patience runs out exactly at the last step: the run converged, it was not cut by its plan
    (1, 8, "plateau", "plateau: no gain > 0.001 in validation macro-F1 for 1 validation (best at step 8, epoch 1.00)"),
])
def test_a_plateau_at_the_last_step_is_a_plateau_and_patience_0_never_stops(tiny_model_dir, data, patience,
                                                                            eval_every, stopped_by, reason):
    result = _fit(tiny_model_dir, data, lr=0.0, epochs=2, eval_every=eval_every, patience=patience, min_steps=0,
                  max_steps=0)
    assert (result.steps, result.stopped_by, result.stop_reason) == (16, stopped_by, reason)


@pytest.mark.parametrize("max_steps, reason", [
    (13, "cap: reached max_steps 13 (1.62 epochs) while still improving (last gain at step 10)"),
    (0, "cap: completed 2 epochs (16 steps) while still improving (last gain at step 10)"),
])
def test_a_run_cut_by_its_cap_while_improving_is_not_converged(tiny_model_dir, data, monkeypatch, max_steps,
                                                               reason):
    """Validations at 5, 10 (the best), then 13, or 15 and 16: no gain after step 10, but fewer than patience 3."""
    _scripted(monkeypatch, [0.3, 0.5, 0.4, 0.45], len(data[1]))
    result = _fit(tiny_model_dir, data, epochs=2, eval_every=5, patience=3, min_steps=0, max_steps=max_steps)
    assert [row["step"] for row in result.history][:2] == [5, 10]
    assert (result.stopped_by, result.converged, result.best_step, result.stop_reason) == \
           ("cap", False, 10, reason)


# ------------------------------------------------------------------------------------ the cadence


@pytest.mark.parametrize("plan, eval_every, expected", [
    (StepPlan(8, 2, 16), 0, 2),  # a quarter epoch (2 steps) gives 8 validations
    (StepPlan(8, 1, 8), 0, 1),  # a short plan: every step, 8 validations
    (StepPlan(4, 1, 4), 0, 1),  # fewer planned steps than 8: every step
    (StepPlan(303, 3, 40), 0, 5),  # cut to 40 steps: every 5, not every 76
    (StepPlan(303, 10, 3030), 0, 76),  # a long run: a quarter epoch, ceil(303 / 4)
    (StepPlan(303, 10, 3030), 100, 100),  # an explicit cadence keeps its meaning
    (StepPlan(8, 2, 16), 5, 5),
])
def test_auto_eval_every_is_a_quarter_epoch_with_at_least_8_validations(plan, eval_every, expected):
    assert eval_interval(plan, eval_every) == expected
    if not eval_every:
        assert plan.steps // expected >= min(8, plan.steps)


@pytest.mark.parametrize("batch, epochs, max_steps, every", [
    (16, 3, 0, 2),  # 8 steps per epoch, 24 planned: min(2, 3)
    (16, 3, 12, 1),  # capped at 12: min(2, 1)
    (4, 3, 0, 8),  # 30 steps per epoch, 90 planned: a quarter epoch, min(8, 11)
])
def test_fit_validates_at_the_auto_cadence_and_the_last_step(tiny_model_dir, data, monkeypatch, batch, epochs,
                                                             max_steps, every):
    _scripted(monkeypatch, [0.5] * 100, len(data[1]))
    result = _fit(tiny_model_dir, data, batch_size=batch, epochs=epochs, min_steps=0, max_steps=max_steps,
                  patience=0)
    steps = [row["step"] for row in result.history]
    assert steps == sorted({*range(every, result.planned_steps + 1, every), result.planned_steps})
    assert len(steps) >= 8


# ------------------------------------------------------------------------------------ the curves


def test_validation_cadence_and_loss_curve_rows(tiny_model_dir, data):
    """eval_every 5 over 16 steps: validations at 5, 10, 15 and the last step; the loss of each row is the mean
    of the per-step losses since the previous row (log_every 1 gives those per-step losses)."""
    per_step = _fit(tiny_model_dir, data, epochs=2, eval_every=5, log_every=1, **EPOCHS_ONLY)
    losses = {row["step"]: row["train_loss"] for row in per_step.steps_log}
    assert sorted(losses) == list(range(1, 17))
    assert [(row["step"], row["epoch"]) for row in per_step.history] == [(5, 0.625), (10, 1.25), (15, 1.875),
                                                                         (16, 2.0)]
    for prev, row in zip([0, 5, 10, 15], per_step.history):
        assert row["train_loss"] == pytest.approx(sum(losses[s] for s in range(prev + 1, row["step"] + 1))
                                                  / (row["step"] - prev), rel=1e-6)

    tracker = RecordingTracker()
    every3 = _fit(tiny_model_dir, data, tracker, epochs=2, eval_every=5, log_every=3, **EPOCHS_ONLY)
    for row, ref in zip(every3.history, per_step.history, strict=True):  # same run: only the bookkeeping differs
        assert {**row, "seconds": 0, "cpu_seconds": 0} == \
               {**ref, "train_loss": pytest.approx(ref["train_loss"], rel=1e-6), "seconds": 0, "cpu_seconds": 0}
    assert [(row["step"], row["epoch"]) for row in every3.steps_log] == [(3, 0.375), (6, 0.75), (9, 1.125),
                                                                        (12, 1.5), (15, 1.875)]
    lrs = {row["step"]: row["lr"] for row in per_step.steps_log}
    for row in every3.steps_log:
        window = range(row["step"] - 2, row["step"] + 1)
        assert row["train_loss"] == pytest.approx(sum(losses[s] for s in window) / 3, rel=1e-6)
        assert row["lr"] == lrs[row["step"]]
    assert tracker.steps_with("train_loss") == tracker.steps_with("lr") == [3, 6, 9, 12, 15]
    assert tracker.steps_with("val_macro_f1") == [5, 10, 15, 16]
    assert list(every3.steps_log[0]) == ["step", "epoch", "train_loss", "lr", "seconds", "cpu_seconds"]
    assert list(every3.history[0]) == ["step", "epoch", "train_loss", "val_macro_f1", "seconds", "cpu_seconds"]


def test_curves_carry_cumulative_training_wall_and_cpu_seconds(tiny_model_dir, data):
    """Both curves get the training time so far (validations excluded); the run's totals and time to its best
    validation are read off the same clocks."""
    result = _fit(tiny_model_dir, data, epochs=2, eval_every=3, log_every=2, **EPOCHS_ONLY)
    for rows in (result.steps_log, result.history):
        for key in ("seconds", "cpu_seconds"):
            values = [row[key] for row in rows]
            assert values[0] > 0 and values == sorted(values), (key, values)
    last = result.history[-1]
    assert (last["step"], last["seconds"], last["cpu_seconds"]) == (16, result.train_seconds, result.train_cpu_seconds)
    best = next(row for row in result.history if row["step"] == result.best_step)
    assert (result.seconds_to_best, result.cpu_seconds_to_best) == (best["seconds"], best["cpu_seconds"])
    assert result.steps_log[-1]["seconds"] == result.train_seconds  # step 16 is both a curve row and a validation
