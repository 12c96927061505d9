"""How long a run trains and with what: :class:`FitConfig`, one run's hyper-parameters resolved from ``train``
and the variant's section, and the step budget of :func:`~lora_pipeline.training.fit`.

The length adapts to the data (:func:`plan_steps`): the variant's epochs, raised in whole passes to ``min_steps``
optimizer steps and capped at ``max_steps``, so the last pass may end mid-epoch; that plan is a safety cap.
Validation runs every ``eval_every`` steps (0: a quarter epoch, at least 8 times over the plan,
:func:`eval_interval`) and at the last step.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal, Union

import torch

from .config import Params, TrainConfig
from .errors import PipelineError
from .runtime import resolve_bf16

__all__ = ["FitConfig", "StepPlan", "eval_interval", "plan_steps"]

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
