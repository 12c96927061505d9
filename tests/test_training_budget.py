"""Issue 13: how long ``fit`` trains -- the min_steps floor, the max_steps budget, early stopping, the
validation cadence (eval_every) and the per-step loss curve (log_every)."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from transformers import AutoModelForSequenceClassification

from lora_pipeline import training
from lora_pipeline.data.loaders import EncodedSplit
from lora_pipeline.errors import PipelineError
from lora_pipeline.training import FitConfig, StepPlan, fit, plan_steps
from tests.conftest import load_encoded
from tests.test_training import EPOCHS_ONLY, RecordingTracker

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
    result = _fit(tiny_model_dir, data, epochs=1, min_steps=20, max_steps=0, patience=0)
    assert (result.steps, result.planned_steps) == (24, 24)
    assert [(row["step"], row["epoch"]) for row in result.history] == [(8, 1.0), (16, 2.0), (24, 3.0)]
    assert result.stop_reason == "completed 3 epochs (24 steps; raised from 1 to reach train.min_steps 20)"


def test_the_budget_stops_mid_epoch_and_the_schedule_ends_at_zero(tiny_model_dir, data, monkeypatch):
    taken = []
    real_step = training.train_step
    monkeypatch.setattr(training, "train_step", lambda *a, **k: taken.append(1) or real_step(*a, **k))
    tracker = RecordingTracker()
    result = _fit(tiny_model_dir, data, tracker, lr=1e-3, epochs=3, warmup_ratio=0.25, log_every=1, min_steps=0,
                  max_steps=13, patience=0)
    assert len(taken) == result.steps == result.planned_steps == 13
    lrs = [row["lr"] for row in result.steps_log]  # the lr the *next* step would use
    warmup = int(0.25 * 13)
    assert lrs == pytest.approx([1e-3 * (s / warmup if s < warmup else (13 - s) / (13 - warmup))
                                 for s in range(1, 14)], abs=1e-12)
    assert lrs[-1] == 0.0  # the linear decay spans the 13 planned steps, not the 24 of three passes
    assert [(row["step"], row["epoch"]) for row in result.history] == [(8, 1.0), (13, 1.625)]  # last step scored
    assert tracker.steps_with("val_macro_f1") == [8, 13]
    assert result.stop_reason == "step budget reached (13 of 13 planned steps, 1.62 epochs)"


# ---------------------------------------------------------------------------------- early stopping


def test_early_stopping_after_patience_validations_without_a_new_best(tiny_model_dir, data, monkeypatch):
    scores = iter([0.3, 0.5, 0.4, 0.5, 0.9])  # 0.5 again is no gain; 0.9 is never reached
    at_validation: list[dict[str, torch.Tensor]] = []

    def scripted(model, *_args):
        at_validation.append({n: p.detach().clone() for n, p in model.named_parameters()})
        return next(scores)

    monkeypatch.setattr(training, "_evaluate", scripted)
    torch.manual_seed(5)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, use_safetensors=True)
    cfg = FitConfig(lr=5e-3, epochs=10, batch_size=32, min_steps=0, max_steps=0, patience=2)  # 4 steps/epoch
    result = fit(model, *data, cfg, pad_id=0, device=CPU, progress=False)
    assert [row["val_macro_f1"] for row in result.history] == [0.3, 0.5, 0.4, 0.5]
    assert (result.steps, result.planned_steps, result.best_step, result.best_epoch) == (16, 40, 8, 2.0)
    assert result.stop_reason == ("early stopping: no gain in validation macro-F1 for 2 validations "
                                  "(best at step 8, epoch 2.00)")
    for name, param in model.named_parameters():  # the model holds the best validation's weights
        assert torch.equal(param, at_validation[1][name]), name


def test_a_model_that_cannot_improve_stops_after_patience_validations(tiny_model_dir, data):
    """lr 0: the weights never move, so every validation scores the same and only the first is a new best."""
    result = _fit(tiny_model_dir, data, lr=0.0, epochs=5, eval_every=3, patience=3, min_steps=0, max_steps=0)
    assert [row["step"] for row in result.history] == [3, 6, 9, 12]
    assert len({row["val_macro_f1"] for row in result.history}) == 1
    assert (result.steps, result.best_step) == (12, 3)
    assert result.stop_reason == ("early stopping: no gain in validation macro-F1 for 3 validations "
                                  "(best at step 3, epoch 0.38)")


@pytest.mark.parametrize("patience, eval_every, reason", [
    (0, 3, "completed 2 epochs (16 steps)"),  # patience 0: no early stopping at all
    (1, 8, "completed 2 epochs (16 steps)"),  # no gain at the last validation: the run ended anyway
])
def test_no_early_stop_without_patience_or_at_the_last_step(tiny_model_dir, data, patience, eval_every, reason):
    result = _fit(tiny_model_dir, data, lr=0.0, epochs=2, eval_every=eval_every, patience=patience, min_steps=0,
                  max_steps=0)
    assert (result.steps, result.stop_reason) == (16, reason)


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
        assert row == {**ref, "train_loss": pytest.approx(ref["train_loss"], rel=1e-6)}
    assert [(row["step"], row["epoch"]) for row in every3.steps_log] == [(3, 0.375), (6, 0.75), (9, 1.125),
                                                                        (12, 1.5), (15, 1.875)]
    lrs = {row["step"]: row["lr"] for row in per_step.steps_log}
    for row in every3.steps_log:
        window = range(row["step"] - 2, row["step"] + 1)
        assert row["train_loss"] == pytest.approx(sum(losses[s] for s in window) / 3, rel=1e-6)
        assert row["lr"] == lrs[row["step"]]
    assert tracker.steps_with("train_loss") == tracker.steps_with("lr") == [3, 6, 9, 12, 15]
    assert tracker.steps_with("val_macro_f1") == [5, 10, 15, 16]
    assert set(every3.steps_log[0]) == {"step", "epoch", "train_loss", "lr"}
    assert set(every3.history[0]) == {"step", "epoch", "train_loss", "val_macro_f1"}
