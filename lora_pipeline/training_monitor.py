"""What :func:`~lora_pipeline.training.fit` does between optimizer steps: loss-curve rows, validation at its
cadence (:func:`~lora_pipeline.training_plan.eval_interval`), early stopping, saves, and the run's
:class:`TrainResult`.

Early stopping follows Keras' ``EarlyStopping``: a validation is a new best only when its macro-F1 beats the best
so far by more than ``min_delta``; the best keeps its weights and predictions, and ``patience`` validations in a
row without one stop the run ("plateau") once it has trained ``min_steps``; a run that reaches the end of its
plan stopped by its "cap".
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from torch import nn

from .data.loaders import EncodedSplit
from .distributed import SINGLE, World, all_sum
from .evaluation import macro_f1, predict
from .tracking import Tracker
from .training_plan import FitConfig, StepPlan, eval_interval

__all__ = ["RunMonitor", "TrainResult", "trainable_state"]

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a run produced: the model holds the best validation's weights when ``fit`` returns.

    Epochs are floats (``step / steps_per_epoch``, 3 decimals): validations and the last step may fall mid-epoch.
    """

    best_epoch: float
    best_step: int
    best_val_macro_f1: float
    # per validation: step, epoch, train_loss (mean since the last), val_macro_f1, seconds, cpu_seconds (training
    # wall and process CPU time so far: validations and saves excluded)
    history: list[dict[str, float]]
    steps_log: list[dict[str, float]]  # every log_every steps: step, epoch, train_loss, lr, seconds, cpu_seconds
    train_seconds: float
    samples_per_second: float
    steps: int
    planned_steps: int
    stop_reason: str  # e.g. "plateau: no gain > 0.001 in validation macro-F1 for 2 validations (…)", "cap: …"
    stopped_by: str  # "plateau" (early stopping fired) or "cap" (the planned steps ran out first)
    train_cpu_seconds: float  # process CPU time of the training steps (all threads), as train_seconds
    best_predictions: list[int]  # class ids the best validation predicted, in the val split's row order
    resumed_from_step: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def converged(self) -> bool:
        """Whether the run stopped because validation stopped improving, not because its plan ran out."""
        return self.stopped_by == "plateau"

    @property
    def validations(self) -> int:
        return len(self.history)

    @property
    def seconds_to_best(self) -> float:
        """Training wall seconds up to the best validation."""
        return self._at_best("seconds")

    @property
    def cpu_seconds_to_best(self) -> float:
        """Training process CPU seconds up to the best validation."""
        return self._at_best("cpu_seconds")

    def _at_best(self, key: str) -> float:
        return next((row[key] for row in self.history if row["step"] == self.best_step), 0.0)


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _evaluate(model, val: EncodedSplit, cfg: FitConfig, pad_id: int, device: torch.device,
              world: World) -> tuple[float, list[int]]:
    """Validation macro-F1 over the model's declared classes (``config.num_labels``), as the evaluate stage scores,
    and the predicted class ids in row order; under torchrun each rank predicts every ``world.size``-th batch
    with the bare model (never its DDP wrapper: ranks run different batch counts) and all ranks score the sum of
    their arrays (each row predicted by exactly one rank)."""
    preds = predict(model, val, cfg.eval_batch_size, pad_id, device, bf16=cfg.bf16,
                    batches=slice(world.rank, None, world.size))
    if world.distributed:
        preds = all_sum(torch.from_numpy(preds).to(device), world).cpu().numpy()
    return macro_f1(val.labels, preds, model.config.num_labels), preds.tolist()


class RunMonitor:
    """What happens between optimizer steps: loss bookkeeping, curve rows, validation, early stopping, saves.

    Losses are summed on the device and read back (one host sync) only at a boundary step: a curve row, a
    validation or a checkpoint. Those steps depend on ``cfg`` alone, so with or without a checkpointer, and
    resumed or not, the sums are taken in the same order and give the same floats.
    """

    def __init__(self, model: nn.Module, val: EncodedSplit, cfg: FitConfig, plan: StepPlan, st: dict[str, Any],
                 pad_id: int, device: torch.device, tracker: Tracker, save: Callable[[], None],
                 lr: Callable[[], float], world: World = SINGLE) -> None:
        self.model, self.val, self.cfg, self.plan, self.st = model, val, cfg, plan, st
        self.pad_id, self.device, self.tracker, self.save, self.lr = pad_id, device, tracker, save, lr
        self.world, self.eval_every = world, eval_interval(plan, cfg.eval_every)
        self.acc = torch.zeros((), device=device)  # loss summed since the last boundary step
        self.t0, self.c0 = time.perf_counter(), time.process_time()
        self.spent = {"forward": 0.0, "checkpoint": 0.0}  # wall seconds of validations and saves

    def finished(self) -> bool:
        return self.st["global_step"] >= self.plan.steps or bool(self.st["early_stop"])

    def epoch(self, step: int) -> float:
        return round(step / self.plan.steps_per_epoch, 3)

    def after_step(self, loss: torch.Tensor, rows: int, grad_norm: Optional[torch.Tensor] = None) -> bool:
        """Account one optimizer step (``grad_norm``: its gradients' norm before clipping, on the device); returns
        whether the run is over."""
        st, cfg = self.st, self.cfg
        self.acc += loss
        st["global_step"] += 1
        st["step_in_epoch"] += 1
        st["samples"] += rows
        st["log_n"] += 1
        st["eval_n"] += 1
        if st["step_in_epoch"] == self.plan.steps_per_epoch:
            st["epoch"], st["step_in_epoch"] = st["epoch"] + 1, 0
        step = st["global_step"]
        log_now = step % cfg.log_every == 0
        eval_now = step == self.plan.steps or step % self.eval_every == 0
        save_now = eval_now or bool(cfg.checkpoint_every and step % cfg.checkpoint_every == 0)
        if log_now or save_now:
            # the host sync, at boundary steps only; ranks hold weighted shares of each global mean
            summed, norm = all_sum(self.acc, self.world), None
            if log_now and grad_norm is not None:  # one read-back for both; every rank holds the same norm
                summed, norm = torch.stack([summed, grad_norm.to(summed.dtype)]).tolist()
            total = float(summed) / self.world.size
            self.acc.zero_()
            st["log_sum"] += total
            st["eval_sum"] += total
            st["seconds"] += time.perf_counter() - self.t0  # training time: validation and saves excluded
            st["cpu_seconds"] += time.process_time() - self.c0
            if log_now:
                self._log_row(norm)
            if eval_now:
                self._validate()
            if save_now:
                start = time.perf_counter()
                self.save()
                self.spent["checkpoint"] += time.perf_counter() - start
            self.t0, self.c0 = time.perf_counter(), time.process_time()
        return self.finished()

    def _log_row(self, grad_norm: Optional[float]) -> None:
        st, step = self.st, self.st["global_step"]
        row = {"step": step, "epoch": self.epoch(step), "train_loss": st["log_sum"] / st["log_n"], "lr": self.lr(),
               "seconds": st["seconds"], "cpu_seconds": st["cpu_seconds"]}
        st["steps_log"].append(row)
        st["log_sum"], st["log_n"] = 0.0, 0
        extra = {} if grad_norm is None else {"grad_norm": grad_norm}  # logged, not in the curve's rows
        self.tracker.log_metrics({"train_loss": row["train_loss"], "lr": row["lr"], **extra}, step=step)

    def _validate(self) -> None:
        st, step, cfg = self.st, self.st["global_step"], self.cfg
        start = time.perf_counter()
        f1, preds = _evaluate(self.model, self.val, cfg, self.pad_id, self.device, self.world)
        self.spent["forward"] += time.perf_counter() - start
        row = {"step": step, "epoch": self.epoch(step), "train_loss": st["eval_sum"] / st["eval_n"],
               "val_macro_f1": f1, "seconds": st["seconds"], "cpu_seconds": st["cpu_seconds"]}
        st["history"].append(row)
        st["eval_sum"], st["eval_n"] = 0.0, 0
        self.tracker.log_metrics({"epoch_train_loss": row["train_loss"], "val_macro_f1": f1}, step=step)
        log.info("step %d (epoch %.2f): train_loss %.4f  val_macro_f1 %.4f", step, row["epoch"],
                 row["train_loss"], f1)
        if f1 > st["best_f1"] + cfg.min_delta:  # Keras' EarlyStopping: a gain within min_delta is none
            st.update(best_f1=f1, best_step=step, best_state=trainable_state(self.model), best_preds=preds, stale=0)
            return
        st["stale"] += 1
        # never before min_steps (a one-class start is flat for a while); at the last step too: the run converged
        if cfg.patience and st["stale"] >= cfg.patience and step >= cfg.min_steps:
            n, best = st["stale"], st["best_step"]
            st["early_stop"] = (f"plateau: no gain > {cfg.min_delta:g} in validation macro-F1 for {n} validation"
                                f"{'s' if n != 1 else ''} (best at step {best}, epoch {self.epoch(best):.2f})")

    def stop_reason(self) -> str:
        st, plan, cfg = self.st, self.plan, self.cfg
        if st["early_stop"]:
            return st["early_stop"]
        steps = st["global_step"]
        if plan.capped:
            reason = f"cap: reached max_steps {plan.steps} ({steps / plan.steps_per_epoch:.2f} epochs)"
        else:
            reason = f"cap: completed {plan.epochs} epoch{'s' if plan.epochs != 1 else ''} ({steps} steps)"
            if plan.epochs > cfg.epochs:
                reason = reason[:-1] + f"; raised from {cfg.epochs} to reach train.min_steps {cfg.min_steps})"
        if not cfg.patience:
            return reason + f" with early stopping off (best at step {st['best_step']})"
        return reason + f" while still improving (last gain at step {st['best_step']})"

    def result(self, resumed: int) -> TrainResult:
        st = self.st
        return TrainResult(best_epoch=self.epoch(st["best_step"]), best_step=st["best_step"],
                           best_val_macro_f1=st["best_f1"], history=st["history"], steps_log=st["steps_log"],
                           train_seconds=st["seconds"], samples_per_second=st["samples"] / max(st["seconds"], 1e-9),
                           steps=st["global_step"], planned_steps=self.plan.steps, stop_reason=self.stop_reason(),
                           stopped_by="plateau" if st["early_stop"] else "cap", train_cpu_seconds=st["cpu_seconds"],
                           best_predictions=st["best_preds"], resumed_from_step=resumed)
