"""ONE training loop for all three variants (scratch, full, LoRA).

AdamW (no decay on biases/LayerNorm), linear warm-up then decay over the planned steps, gradient clipping,
length-grouped dynamically padded batches. How long a run trains adapts to the data (:func:`plan_steps`): the
variant's epochs, raised in whole passes to ``min_steps`` optimizer steps and capped at ``max_steps``, so the
last pass may end mid-epoch; that plan is a safety cap. Validation runs every ``eval_every`` steps (0: a quarter
epoch, at least 8 times over the plan, :func:`eval_interval`) and at the last step. Early stopping follows Keras'
``EarlyStopping``: a validation is a new best only when its macro-F1 beats the best so far by more than
``min_delta``; the best keeps its weights and predictions, and ``patience`` validations in a row without one stop
the run ("plateau") once it has trained ``min_steps``; a run that reaches the end of its plan stopped by its "cap". The loop does no file I/O: it
reports through a tracker and an optional checkpointer, so stage scripts decide what lands on disk.

A run is resumable: the checkpoint holds the trainable weights, optimizer, scheduler, RNG state and the loop
state (position, loss sums, wall and CPU seconds, curves, best so far with its predictions, the early-stopping
counter); batch order is a pure function of (seed, epoch), so on CPU a resumed run ends with exactly the metrics,
best step, stop reason and predictions of an uninterrupted one.

Device, precision and seeding are resolved in :mod:`lora_pipeline.runtime`; the speed tricks the loop switches on
(:mod:`lora_pipeline.speedups`) live apart from it. Under torchrun the same loop is data-parallel
(:mod:`lora_pipeline.distributed`): the model is wrapped in DDP, each rank trains on its shard of every global
batch, validation gathers the ranks' predictions, and only rank 0 saves checkpoints.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Optional, Union

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.lr_scheduler import LambdaLR
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from .checkpoint import Checkpointer
from .config import Params, TrainConfig
from .data.loaders import EncodedSplit, collate, train_batches
from .distributed import SINGLE, World, all_sum, broadcast_object, gather_objects, shard
from .errors import PipelineError
from .evaluation import macro_f1, predict
from .runtime import resolve_bf16, seed_rank_stream
from .speedups import fast_cpu_dropout, trim_switch
from .tracking import NullTracker, Tracker

__all__ = ["FitConfig", "StepPlan", "TrainResult", "eval_interval", "fit", "make_optimizer", "plan_steps",
           "train_step", "train_step_norm"]

log = logging.getLogger(__name__)

_TRAIN = TrainConfig()  # the defaults of the fields FitConfig shares with params.yaml's train section


@dataclass(frozen=True)
class FitConfig:
    """Hyper-parameters of one run: ``train`` + the variant's section, resolved (see :meth:`from_params`).

    Fields named as in :class:`~lora_pipeline.config.TrainConfig` take its defaults, so one source holds them.
    """

    lr: float
    epochs: int
    batch_size: int = _TRAIN.batch_size
    eval_batch_size: int = _TRAIN.eval_batch_size
    weight_decay: float = _TRAIN.weight_decay
    warmup_ratio: float = _TRAIN.warmup_ratio
    max_grad_norm: float = _TRAIN.max_grad_norm
    seed: int = 42  # no train.seed: each stage instance takes its seed from study.seeds
    checkpoint_every: int = _TRAIN.checkpoint_every
    # last encoder layer computes only the token the head reads: "auto" where exact, True required, False off
    first_token_last_layer: Union[Literal["auto"], bool] = _TRAIN.first_token_last_layer
    # training length (plan_steps): epochs raised in whole passes to min_steps, then capped at max_steps (0: none)
    min_steps: int = _TRAIN.min_steps
    max_steps: int = _TRAIN.max_steps
    patience: int = _TRAIN.patience  # validations in a row without a new best before stopping (0: off)
    min_delta: float = _TRAIN.min_delta  # a new best beats the best so far by more than this
    eval_every: int = _TRAIN.eval_every  # steps between validations (0: auto, eval_interval); the last step always
    log_every: int = _TRAIN.log_every  # steps between points of the per-step loss curve
    bf16: bool = False  # bf16 autocast for forward passes (fp32 weights, gradients and optimizer state)
    # on CPU, dropout masks from speedups.fast_cpu_dropout (same p, other units): train.cpu_dropout: fast
    fast_cpu_dropout: bool = _TRAIN.cpu_dropout == "fast"

    @classmethod
    def from_params(cls, params: Params, variant: str, device: torch.device, *, lr: float,
                    seed: int) -> "FitConfig":
        """The run of ``variant`` at ``lr`` and ``seed`` (one point of the study grid): epochs from its section,
        the rest from ``train``; precision and ``cpu_dropout`` resolved for ``device``."""
        section, train = getattr(params, variant), params.train
        own = {"lr", "epochs", "seed", "bf16", "fast_cpu_dropout"}
        shared = {f.name: getattr(train, f.name) for f in dataclasses.fields(cls)
                  if f.name not in own and hasattr(train, f.name)}
        return cls(lr=lr, epochs=section.epochs, seed=seed, bf16=resolve_bf16(train.precision, device),
                   fast_cpu_dropout=train.cpu_dropout == "fast", **shared)


@dataclass(frozen=True)
class StepPlan:
    """How long a run trains (see :func:`plan_steps`)."""

    steps_per_epoch: int
    epochs: int  # whole passes: the variant's epochs, raised to reach min_steps
    steps: int  # the optimizer steps planned (capped at max_steps); the LR schedule spans exactly these

    @property
    def capped(self) -> bool:
        """Whether ``max_steps`` cut the passes short."""
        return self.steps < self.epochs * self.steps_per_epoch


def plan_steps(n_rows: int, cfg: FitConfig) -> StepPlan:
    """clamp(epochs × steps_per_epoch, min_steps, max_steps), the floor reached by whole passes.

    Raises:
        PipelineError: the training split has no rows, or the plan has no step (epochs 0, min_steps 0).
    """
    if n_rows < 1:
        raise PipelineError("training split is empty: nothing to fit; check the split stage's output "
                            "(metrics/split.json) and the data filters before it")
    per_epoch = -(-n_rows // cfg.batch_size)
    epochs = max(cfg.epochs, -(-cfg.min_steps // per_epoch))
    if epochs < 1:
        raise PipelineError(f"nothing to train: epochs {cfg.epochs} and min_steps {cfg.min_steps} plan no "
                            "optimizer step; set epochs >= 1")
    steps = epochs * per_epoch
    return StepPlan(per_epoch, epochs, min(steps, cfg.max_steps) if cfg.max_steps else steps)


def eval_interval(plan: StepPlan, eval_every: int) -> int:
    """Optimizer steps between validations: ``eval_every`` when > 0, else (auto) a quarter epoch, shortened so that
    the planned steps hold at least 8 validations: ``max(1, min(ceil(steps_per_epoch / 4), steps // 8))``."""
    return eval_every or max(1, min(-(-plan.steps_per_epoch // 4), plan.steps // 8))


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


def make_optimizer(model: nn.Module, cfg: FitConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters; no weight decay on biases and LayerNorm; fused on CUDA, single-tensor
    on CPU (the same floats as the multi-tensor kernel, ~3 % of a LoRA step faster there: BENCHMARKS.md).

    Returns:
        The optimizer (two param groups: with and without decay).
    """
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 or "LayerNorm" in name or "layer_norm" in name else decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = device.type == "cuda"
    return torch.optim.AdamW(groups, lr=cfg.lr, fused=fused or None, foreach=None if fused else False)


def train_step(forward: Callable[..., Any], batch: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
               scheduler: Any, params: list[torch.Tensor], max_grad_norm: float,
               device: torch.device, bf16: bool = False, weight: float = 1.0) -> torch.Tensor:
    """One optimiser step: forward (bf16 autocast if asked), backward, clipping, AdamW, schedule.

    Args:
        forward: the model (or a compiled version of it, as benchmarks/step_time.py times).
        batch: tensors already on ``device``, with ``labels``.
        params: the optimised parameters (clipped together).
        bf16: autocast the forward to bf16; weights, gradients and optimizer state stay fp32.
        weight: factor on the batch's mean loss (a data-parallel rank's share, :func:`~.distributed.shard`).

    Returns:
        The (weighted) loss, detached and left on the device (no host sync).
    """
    return train_step_norm(forward, batch, optimizer, scheduler, params, max_grad_norm, device, bf16, weight)[0]


def train_step_norm(forward: Callable[..., Any], batch: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
                    scheduler: Any, params: list[torch.Tensor], max_grad_norm: float, device: torch.device,
                    bf16: bool = False, weight: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`train_step`, returning ``(loss, grad_norm)``: the gradients' total norm before clipping, a 0-d
    tensor left on the device like the loss (no host sync)."""
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        loss = forward(**batch).loss
    if weight != 1.0:
        loss = loss * weight
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)  # the norm before clipping
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach(), grad_norm.detach()


def _trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _rng_state(device: torch.device, world: World = SINGLE) -> dict[str, Any]:
    """This process's random state; under torchrun (a collective: every rank calls it) rank 0's, plus every
    rank's under ``by_rank``."""
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    if world.distributed:
        ranks = gather_objects(state, world)
        return {**ranks[0], "by_rank": ranks}
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device, world: World = SINGLE, seed: int = 0,
                   step: int = 0) -> None:
    """Restore this rank's saved random state; a rank the checkpoint has none for (it was written by fewer
    processes) starts a stream of its own at ``step`` (:func:`~lora_pipeline.runtime.seed_rank_stream`)."""
    ranks = state.get("by_rank") or [state]
    if world.rank >= len(ranks):
        seed_rank_stream(seed, world.rank, step)
        return
    own = ranks[world.rank]
    torch.set_rng_state(own["torch"])
    if device.type == "cuda" and "cuda" in own:
        torch.cuda.set_rng_state(own["cuda"], device)


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


def linear_warmup_schedule(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int) -> LambdaLR:
    """The learning rate rises linearly from 0 over ``warmup_steps``, then falls linearly to 0 at ``total_steps``.

    The formula and floats of transformers' ``get_linear_schedule_with_warmup`` (a ``LambdaLR`` of a partial),
    so checkpoints resume under either; importing that one loads transformers' trainer modules (and peft where
    installed), seconds of a train stage's start-up.
    """
    return LambdaLR(optimizer, functools.partial(_linear_warmup, warmup_steps=warmup_steps, total_steps=total_steps))


def _linear_warmup(step: int, *, warmup_steps: int, total_steps: int) -> float:
    if step < warmup_steps:
        return float(step) / float(max(1, warmup_steps))
    return max(0.0, float(total_steps - step) / float(max(1, total_steps - warmup_steps)))


def _console_logging_to_tqdm(progress: bool) -> contextlib.AbstractContextManager:
    """Route console log records through ``tqdm.write`` while a bar is shown, so a line never lands on the bar."""
    console = any(isinstance(h, logging.StreamHandler) and h.stream in (sys.stdout, sys.stderr)
                  for h in logging.getLogger().handlers)
    return logging_redirect_tqdm(tqdm_class=tqdm) if progress and console else contextlib.nullcontext()


def fit(model: nn.Module, train: EncodedSplit, val: EncodedSplit, cfg: FitConfig, *, pad_id: int,
        device: torch.device, tracker: Tracker = NullTracker(),
        checkpointer: Optional[Checkpointer] = None, progress: bool = True, world: World = SINGLE,
        timings: Optional[dict[str, float]] = None) -> TrainResult:
    """Train ``model`` in place for the planned steps (:func:`plan_steps`) and leave it holding the weights of
    its best validation.

    Validation runs every :func:`eval_interval` steps and at the last step; with ``cfg.patience``, the run stops
    after that many validations in a row without a new best macro-F1 (one above the best by more than
    ``cfg.min_delta``).

    Args:
        model: any HF sequence classifier; only parameters with ``requires_grad`` are optimised.
        train, val: tokenised splits.
        cfg: hyper-parameters.
        pad_id: the tokenizer's pad token id.
        device: where to train (``cfg.bf16``: bf16 autocast, fp32 master weights).
        tracker: receives the loss, lr and gradient norm (before clipping) every ``cfg.log_every`` steps and
            each validation's scores.
        checkpointer: when given, state is saved every ``cfg.checkpoint_every`` steps and after every
            validation, and a saved state is resumed from.
        progress: show a tqdm progress bar.
        world: this process's place in a torchrun launch (process group joined): DDP over the ranks; the
            checkpointer is only read and written by rank 0 (the state reaches the others by broadcast).
        timings: when given, gets the wall seconds this call spent validating (``forward``) and saving checkpoints
            (``checkpoint``), for the stage's timing line.

    Returns:
        TrainResult with the per-validation history, the per-step loss curve, why it stopped, the best
        validation's predictions, and throughput.

    Raises:
        PipelineError: the training split is empty.
    """
    model.to(device).train()
    plan = plan_steps(len(train), cfg)
    optimizer = make_optimizer(model, cfg, device)
    scheduler = linear_warmup_schedule(optimizer, int(cfg.warmup_ratio * plan.steps), plan.steps)
    st = _resume(checkpointer, model, optimizer, scheduler, device, world, cfg.seed)
    resumed = st["global_step"]
    keeps = broadcast_object(checkpointer is not None, world, device)  # rank 0's say: the others hold none
    save = _saver(checkpointer, model, optimizer, scheduler, device, st, world) if keeps else lambda: None
    loop = _Loop(model, val, cfg, plan, st, pad_id, device, tracker, save, lambda: scheduler.get_last_lr()[0],
                 world)
    lengths = train.lengths()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    forward = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None) \
        if world.distributed else model
    bar = tqdm(total=plan.steps, initial=resumed, disable=not (progress and world.is_main), mininterval=5,
               desc="train", unit="step", file=sys.stderr)
    with _console_logging_to_tqdm(progress), trim_switch(model, cfg.first_token_last_layer), \
            fast_cpu_dropout(cfg.fast_cpu_dropout and device.type == "cpu"):
        while not loop.finished():
            batches = train_batches(lengths, cfg.batch_size, cfg.seed, st["epoch"])
            for rows in batches[st["step_in_epoch"]:]:
                mine, weight = shard(rows, world)  # all rows, weight 1, in a single process
                batch = {k: v.to(device, non_blocking=True) for k, v in collate(train, mine, pad_id).items()}
                loss, grad_norm = train_step_norm(forward, batch, optimizer, scheduler, params, cfg.max_grad_norm,
                                                  device, cfg.bf16, weight)
                bar.update(1)
                if loop.after_step(loss, len(rows), grad_norm):
                    break
    bar.close()
    if timings is not None:
        timings.update(loop.spent)
    model.load_state_dict(st["best_state"], strict=False)
    return loop.result(resumed)


def _fresh_state() -> dict[str, Any]:
    """The loop state a run starts from; a checkpoint holds it (plain numbers, strings, lists and tensors)."""
    return {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "seconds": 0.0, "cpu_seconds": 0.0, "samples": 0,
            "log_sum": 0.0, "log_n": 0, "eval_sum": 0.0, "eval_n": 0,  # loss sums since the last row / validation
            "history": [], "steps_log": [], "best_f1": -1.0, "best_step": 0, "best_state": None, "best_preds": [],
            "stale": 0, "early_stop": ""}  # validations in a row without a new best; the plateau reason once stopped


def _resume(checkpointer: Optional[Checkpointer], model: nn.Module, optimizer: torch.optim.Optimizer,
            scheduler: Any, device: torch.device, world: World = SINGLE, seed: int = 0) -> dict[str, Any]:
    """The loop state to start from: a fresh one, or the checkpoint's (model, optimizer, schedule and RNG restored).

    Under torchrun rank 0 reads the checkpoint and every rank gets its copy; the state holds no trace of the world
    size (global batches, global step), so a run resumes under any number of processes. Each rank draws its
    dropout masks from a stream of its own, seeded from (``seed``, rank) on a fresh start and restored per rank
    on a resume; a single process keeps the stream :func:`~lora_pipeline.runtime.seed_everything` started.
    """
    saved = checkpointer.load() if checkpointer is not None and world.is_main else None
    saved = broadcast_object(saved, world, device)
    if saved is not None and set(saved["loop"]) != set(_fresh_state()):  # written by another version of this loop
        log.warning("ignoring a checkpoint whose loop state has other fields (an older version); starting afresh")
        saved = None
    if saved is None:
        if world.distributed:
            seed_rank_stream(seed, world.rank)
        return _fresh_state()
    model.load_state_dict(saved["model"], strict=False)
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    _set_rng_state(saved["rng"], device, world, seed, saved["loop"]["global_step"])
    st = saved["loop"]
    log.info("resuming from checkpoint at step %d (epoch %d)", st["global_step"], st["epoch"] + 1)
    return st


def _saver(checkpointer: Optional[Checkpointer], model: nn.Module, optimizer: torch.optim.Optimizer,
           scheduler: Any, device: torch.device, st: dict[str, Any], world: World = SINGLE) -> Callable[[], None]:
    """Saves everything a resumed run needs to continue exactly; under torchrun every rank calls it (the random
    states are gathered) and rank 0 writes with its ``checkpointer``."""
    def save() -> None:
        rng = _rng_state(device, world)
        if world.is_main and checkpointer is not None:
            checkpointer.save({"model": _trainable_state(model), "optimizer": optimizer.state_dict(),
                               "scheduler": scheduler.state_dict(), "rng": rng, "loop": st})
    return save


class _Loop:
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
            st.update(best_f1=f1, best_step=step, best_state=_trainable_state(self.model), best_preds=preds, stale=0)
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
