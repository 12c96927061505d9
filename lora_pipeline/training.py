"""ONE training loop for all three variants (scratch, full, LoRA).

AdamW (no decay on biases/LayerNorm), linear warm-up then decay over the planned steps, gradient clipping
(:mod:`lora_pipeline.training_optim`), length-grouped dynamically padded batches. How long a run trains adapts to
the data (:mod:`lora_pipeline.training_plan`): the variant's epochs, raised in whole passes to ``min_steps``
optimizer steps and capped at ``max_steps``; validation runs at a fixed cadence and at the last step, and early
stopping (:mod:`lora_pipeline.training_monitor`) ends a run whose validation macro-F1 stopped improving. The loop
does no file I/O: it reports through a tracker and an optional checkpointer, so stage scripts decide what lands
on disk.

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
import logging
import sys
from typing import Any, Callable, Optional

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from .checkpoint import Checkpointer
from .data.loaders import EncodedSplit, collate, train_batches
from .distributed import SINGLE, World, broadcast_object, gather_objects, shard
from .runtime import seed_rank_stream
from .speedups import fast_cpu_dropout, trim_switch
from .tracking import NullTracker, Tracker
# the loop's parts; FitConfig, TrainResult and the step helpers are imported from here too
from .training_monitor import RunMonitor, TrainResult, trainable_state
from .training_optim import linear_warmup_schedule, make_optimizer, train_step, train_step_norm
from .training_plan import FitConfig, StepPlan, eval_interval, plan_steps

__all__ = ["FitConfig", "StepPlan", "TrainResult", "eval_interval", "fit", "make_optimizer", "plan_steps",
           "train_step", "train_step_norm"]

log = logging.getLogger(__name__)


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
    loop = RunMonitor(model, val, cfg, plan, st, pad_id, device, tracker, save,
                      lambda: scheduler.get_last_lr()[0], world)
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
            checkpointer.save({"model": trainable_state(model), "optimizer": optimizer.state_dict(),
                               "scheduler": scheduler.state_dict(), "rng": rng, "loop": st})
    return save
