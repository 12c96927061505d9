"""Training step time: one training step (forward + backward + clipping + AdamW + schedule) of each variant.

All variants run in this process on the same fixed batch, through the training loop's own
``train_step`` and ``make_optimizer``, round-robin, and the median over the timed steps is kept.
"ours" is our LoRA exactly as ``fit`` trains it by default: eager, last layer trimmed to the token the head reads
(``first_token_last_layer``), torch's own dropout (``train.cpu_dropout: torch``). "ours_fast_dropout" adds the
opt-in ``train.cpu_dropout: fast`` (on CPU, dropout masks from ``fast_cpu_dropout``). "ours_untrimmed" is our LoRA
layer alone (no trim). "full" is plain full fine-tuning (the reference the targets are stated against);
"full_ours" is full fine-tuning as our ``train_full`` stage runs it by default (trim, torch's dropout), so the
LoRA/full ratio within our own loop is shown too. "ours_dora" is ours with DoRA layers (``use_dora=True``, trimmed
as ours) and "peft_dora" peft's ``use_dora`` from the same weights: DoRA's extra cost per step (the column norm of
``W0 + s·B·A`` and the rescaled base path in every adapted layer) beside LoRA's. Before every step the RNG is
seeded with the step number, so the variants on aten's dropout kernel (ours, ours_untrimmed, peft) draw the same
masks and, starting from the same weights, follow the same loss curve: the largest loss difference from ours is
reported as the check that they compute the same thing (and peft_dora's from ours_dora). ours_fast_dropout and
ours_compiled draw other masks (same p) by design.

``torch.compile`` is measured here only (:func:`compile_for_training`); the pipeline trains eagerly.

:func:`measure_levers` (run by ``benchmarks/step_profile.py --levers``) times ours with one candidate speed-up at
a time beside ours and peft, and says which of them keep ours' losses and weights bit for bit.
"""

from __future__ import annotations

import contextlib
import math
import time
import types
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn
from transformers import get_linear_schedule_with_warmup

from lora_pipeline.lora import LoRALayer, lora_layers
from lora_pipeline.speedups import fast_cpu_dropout, first_token_last_layer
from lora_pipeline.training import FitConfig, make_optimizer, train_step

from ._common import STEP_BATCH, STEP_LENGTH, Models, fixed_batch, interleaved_medians, ratio, sync


def compile_for_training(model: nn.Module, *, eager_random: bool = False) -> Callable[..., Any]:
    """``torch.compile(model)`` for training steps (inductor; one graph for every batch shape).

    Inductor fuses the element-wise work around the matmuls (GELU, LayerNorm, softmax, dropout, residual adds).
    By default it also draws dropout masks with its own counter-based RNG, vectorised and parallel: on CPU the
    eager ``bernoulli_`` kernel is serial and takes about a sixth of a MiniLM training step. Dropout keeps its
    probability, but the dropped units differ from an eager run's. ``eager_random=True`` runs random ops as the
    eager kernels in the same order instead (inductor's ``fallback_random``): masks are then identical and the
    runs agree up to float rounding, at the cost of most of the CPU speed-up. The first call compiles (tens of
    seconds on 2 CPU cores).

    Returns:
        A callable with the model's signature; the parameters stay those of ``model``.
    """
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "problem_type", "") is None and getattr(config, "num_labels", 0) > 1:
        # HF sets this on the first call with integer labels; a config change after tracing would recompile
        config.problem_type = "single_label_classification"
    return torch.compile(model, dynamic=True, options={"fallback_random": eager_random})


def stepper(model: nn.Module, lr: float, models: Models, batch: dict, device: torch.device,
            compiled: Optional[str] = None, trim: Optional[contextlib.ExitStack] = None, bf16: bool = False,
            fast_dropout: bool = False, make_opt: Callable[..., torch.optim.Optimizer] = make_optimizer
            ) -> tuple[Callable[[], None], list[torch.Tensor]]:
    """A closure doing one seeded step of ``model`` and the list its losses go to (left on the device).

    Args:
        compiled: None (eager), ``"inductor_rng"`` or ``"eager_rng"`` (see ``compile_for_training``).
        trim: enter ``first_token_last_layer(model)`` on this stack (kept until the caller closes it, as in
            ``fit``, which trains inside one such context).
        bf16: bf16 autocast for the forward (every variant of one measurement gets the same).
        fast_dropout: each step inside ``fast_cpu_dropout`` (process-wide while open, so per step here).
        make_opt: builds the optimizer as ``make_optimizer`` does (a lever may swap the implementation).
    """
    t = models.params.train
    model.to(device).train()
    if trim is not None:
        trim.enter_context(first_token_last_layer(model))
    cfg = FitConfig(lr=lr, epochs=1, weight_decay=t.weight_decay, max_grad_norm=t.max_grad_norm)
    optimizer = make_opt(model, cfg, device)
    scheduler = get_linear_schedule_with_warmup(optimizer, 0, 10**9)  # same work as the loop's, ~constant lr
    params = [p for g in optimizer.param_groups for p in g["params"]]
    forward = compile_for_training(model, eager_random=compiled == "eager_rng") if compiled else model
    losses: list[torch.Tensor] = []

    def step() -> None:
        torch.manual_seed(len(losses))  # the same dropout masks for every variant at its n-th step
        with fast_cpu_dropout(fast_dropout and device.type == "cpu"):
            losses.append(train_step(forward, batch, optimizer, scheduler, params, cfg.max_grad_norm, device, bf16))

    return step, losses


def measure(split: Path, models: Models, device: torch.device, repeats: int, warmup: int,
            compiled: bool = True, extra: bool = False, bf16: bool = False) -> dict:
    """Median step seconds of full, ours, peft, ours_dora, peft_dora and (``compiled``) ours compiled; ratios; loss
    agreement.

    ``extra`` adds ours compiled with eager dropout masks and peft compiled (what compile alone gives peft).
    """
    batch = fixed_batch(split, models.tokenizer, STEP_BATCH, STEP_LENGTH, device)
    p = models.params
    ours, dora = models.ours(), models.ours_dora()
    build = {"full": (models.full, p.study.full_lrs[0], None, False, False),
             "full_ours": (models.full, p.study.full_lrs[0], None, True, False),
             "ours": (lambda: ours, p.study.lora_lrs[0], None, True, False),
             "ours_fast_dropout": (models.ours, p.study.lora_lrs[0], None, True, True),
             "ours_untrimmed": (models.ours, p.study.lora_lrs[0], None, False, False),
             "peft": (lambda: models.peft(like=ours), p.study.lora_lrs[0], None, False, False),
             "ours_dora": (lambda: dora, p.study.lora_lrs[0], None, True, False),
             "peft_dora": (lambda: models.peft(like=dora, use_dora=True), p.study.lora_lrs[0], None, False,
                           False)}
    if compiled:
        build["ours_compiled"] = (models.ours, p.study.lora_lrs[0], "inductor_rng", True, False)
    if compiled and extra:
        build["ours_compiled_eager_rng"] = (models.ours, p.study.lora_lrs[0], "eager_rng", True, False)
        build["peft_compiled"] = (lambda: models.peft(like=ours), p.study.lora_lrs[0], "inductor_rng", False, False)
    steps, losses, first_ms = {}, {}, {}
    with contextlib.ExitStack() as stack:
        for name, (make, lr, mode, trim, fast) in build.items():  # every model before any step: peft copies ours
            steps[name], losses[name] = stepper(make(), lr, models, batch, device, compiled=mode,
                                                trim=stack if trim else None, bf16=bf16, fast_dropout=fast)
        for name in build:
            start = time.perf_counter()
            steps[name]()  # the first step (compilation for the compiled variants) is timed on its own
            sync(device)
            first_ms[name] = round((time.perf_counter() - start) * 1000, 1)
        seconds = interleaved_medians(steps, repeats, device, warmup=warmup)
    ms = {name: round(s * 1000, 1) for name, s in seconds.items()}
    result = {"batch": STEP_BATCH, "length": STEP_LENGTH, "repeats": repeats,
              "precision": "bf16" if bf16 else "fp32", "median_ms": ms,
              "first_step_ms": first_ms, "ours_over_peft_step": ratio(ms["ours"], ms["peft"]),
              "ours_over_full_step": ratio(ms["ours"], ms["full"]),
              "peft_over_full_step": ratio(ms["peft"], ms["full"]),
              "ours_untrimmed_over_peft_step": ratio(ms["ours_untrimmed"], ms["peft"]),
              "ours_fast_dropout_over_peft_step": ratio(ms["ours_fast_dropout"], ms["peft"]),
              "ours_fast_dropout_over_full_step": ratio(ms["ours_fast_dropout"], ms["full"]),
              "ours_over_full_ours_step": ratio(ms["ours"], ms["full_ours"]),
              "full_ours_over_full_step": ratio(ms["full_ours"], ms["full"]),
              "ours_dora_over_ours_step": ratio(ms["ours_dora"], ms["ours"]),
              "peft_dora_over_peft_step": ratio(ms["peft_dora"], ms["peft"]),
              "ours_dora_over_peft_dora_step": ratio(ms["ours_dora"], ms["peft_dora"])}
    best = "ours_compiled" if compiled and ms["ours_compiled"] < ms["ours"] else "ours"
    result.update(ours_best=best, ours_best_over_peft_step=ratio(ms[best], ms["peft"]),
                  ours_best_over_full_step=ratio(ms[best], ms["full"]))
    for name in ms:
        if name.endswith("_compiled") or name.endswith("_eager_rng"):
            result[f"{name}_over_peft_step"] = ratio(ms[name], ms["peft"])
    reference = torch.stack(losses["ours"]).float().cpu()
    result["max_loss_diff_vs_ours"] = {  # the variants drawing aten's masks, as peft does
        name: float((torch.stack(ls).float().cpu() - reference).abs().max())
        for name, ls in losses.items() if name in ("ours_untrimmed", "peft", "ours_compiled_eager_rng")}
    dora_losses = [torch.stack(losses[name]).float().cpu() for name in ("ours_dora", "peft_dora")]
    result["max_loss_diff_peft_dora_vs_ours_dora"] = float((dora_losses[1] - dora_losses[0]).abs().max())
    return result


def adamw(**flags: Any) -> Callable[..., torch.optim.Optimizer]:
    """``make_optimizer``'s AdamW (same groups, lr, decay) with other implementation ``flags`` (foreach, fused)."""
    def make(model: nn.Module, cfg: FitConfig, device: torch.device) -> torch.optim.Optimizer:
        groups = [{"params": g["params"], "weight_decay": g["weight_decay"]}
                  for g in make_optimizer(model, cfg, device).param_groups]
        return torch.optim.AdamW(groups, lr=cfg.lr, **flags)
    return make


def _prescaled_forward(self: LoRALayer, x: torch.Tensor) -> torch.Tensor:
    """``W0·x + B·A·x`` with ``s`` folded into ``B``: exact for ``s = 2**k`` (k >= 0), and the backward pass then
    scales the (out, r) gradient of ``B`` instead of the (..., out) gradient of the update."""
    result = self.base(x)  # (..., out); first, as in LoRALayer.forward (the same autograd order)
    if self.merged:
        return result
    return result + F.linear(F.linear(self.dropout(x), self.lora_a), self.lora_b * self.scaling)


def prescale_lora(model: nn.Module) -> nn.Module:
    """Give every LoRA layer whose scaling is a power of two >= 1 :func:`_prescaled_forward` (instance-level)."""
    for _, layer in lora_layers(model):
        mantissa, exponent = math.frexp(layer.scaling)
        if mantissa == 0.5 and exponent >= 1:
            layer.forward = types.MethodType(_prescaled_forward, layer)
    return model


def measure_levers(models: Models, batch: dict, device: torch.device, repeats: int, warmup: int) -> dict:
    """Median step seconds of ours as ``fit`` runs it, each lever on top of it, and peft, round-robin.

    Every variant starts from the same weights and draws the same masks (seeded per step), so a lever that keeps
    the numbers gives bit-identical losses and trainable weights to ours: ``bit_identical`` says whether it did
    over all the steps run (warm-up and timed).
    """
    lr = models.params.study.lora_lrs[0]
    ours = models.ours()
    levers = {"ours": {}, "adamw_foreach": {"make_opt": adamw(foreach=True)},
              "adamw_fused": {"make_opt": adamw(fused=True)}, "lora_prescaled_b": {"patch": prescale_lora},
              "ours_fast_dropout": {"fast_dropout": True}, "ours_untrimmed": {"trim": False}}
    steps, losses, trained = {}, {}, {}
    with contextlib.ExitStack() as stack:
        for name, lever in levers.items():
            model = lever.get("patch", lambda m: m)(ours if name == "ours" else models.ours())
            trained[name] = model
            steps[name], losses[name] = stepper(
                model, lr, models, batch, device, trim=stack if lever.get("trim", True) else None,
                fast_dropout=lever.get("fast_dropout", False), make_opt=lever.get("make_opt", make_optimizer))
        steps["peft"], losses["peft"] = stepper(models.peft(like=ours), lr, models, batch, device)
        seconds = interleaved_medians(steps, repeats, device, warmup=warmup)
    ms = {name: round(s * 1000, 1) for name, s in seconds.items()}
    reference = {n: p for n, p in trained["ours"].named_parameters() if p.requires_grad}
    same = {name: torch.equal(torch.stack(losses[name]), torch.stack(losses["ours"]))
            and all(torch.equal(p, reference[n]) for n, p in model.named_parameters() if p.requires_grad)
            for name, model in trained.items() if name != "ours"}
    return {"repeats": repeats, "steps_compared": len(losses["ours"]), "median_ms": ms,
            "over_peft": {name: ratio(t, ms["peft"]) for name, t in ms.items()},
            "over_ours": {name: ratio(t, ms["ours"]) for name, t in ms.items()}, "bit_identical": same}
