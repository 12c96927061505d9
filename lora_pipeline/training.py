"""ONE training loop for all three variants (scratch, full, LoRA).

AdamW (no decay on biases/LayerNorm), linear warm-up then decay, gradient clipping, evaluation
on the validation split after every epoch, best epoch kept by validation macro-F1, length-grouped
dynamically padded batches. The loop does no file I/O: it reports through a tracker and an
optional checkpointer, so stage scripts decide what lands on disk.

A run is resumable: the checkpoint holds the trainable weights, optimizer, scheduler, RNG state
and position; batch order is a pure function of (seed, epoch), so on CPU a resumed run ends with
exactly the metrics of an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import logging
import math
import resource
import sys
import time
import types
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Literal, Optional, Protocol, Union

import torch
import torch.nn.functional as F
import transformers
from torch import nn
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm
from transformers import get_linear_schedule_with_warmup

from .data.loaders import EncodedSplit, iterate, train_batches
from .errors import PipelineError
from .evaluation import macro_f1, predict
from .fast_dropout import fast_cpu_dropout
from .lora.layers import LoRALinear
from .tracking import NullTracker, Tracker

__all__ = ["FitConfig", "TrainResult", "Checkpointer", "fit", "resolve_device", "peak_memory_mb", "make_optimizer",
           "train_step", "compile_for_training", "first_token_last_layer", "resolve_bf16", "peak_rss_mb"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FitConfig:
    """Hyper-parameters of one run (assembled by the stage from ``train`` + the variant's section)."""

    lr: float
    epochs: int
    batch_size: int = 32
    eval_batch_size: int = 128
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    max_grad_norm: float = 1.0
    seed: int = 42
    checkpoint_every: int = 0
    log_every: int = 20
    compile: bool = False  # torch.compile the model for training (see compile_for_training)
    compile_eager_random: bool = False  # with compile: draw dropout masks exactly as eager mode does
    # last encoder layer computes only the token the head reads: "auto" where exact, True required, False off
    first_token_last_layer: Union[Literal["auto"], bool] = "auto"
    bf16: bool = False  # bf16 autocast for forward passes (fp32 weights, gradients and optimizer state)
    fast_cpu_dropout: bool = True  # on CPU, dropout masks from fast_dropout.fast_cpu_dropout (same p, other units)


@dataclass
class TrainResult:
    """What a run produced: the model holds the best epoch's weights when ``fit`` returns."""

    best_epoch: int
    best_val_macro_f1: float
    history: list[dict[str, float]]
    train_seconds: float
    samples_per_second: float
    steps: int
    resumed_from_step: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class Checkpointer(Protocol):
    """Persists resumable state; the stage provides one backed by a DVC ``persist`` directory."""

    def load(self) -> Optional[dict[str, Any]]: ...
    def save(self, state: dict[str, Any]) -> None: ...


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cpu`` and ``cuda[:N]`` as given.

    Raises:
        PipelineError: CUDA is asked for where torch has none, or ``cuda:N`` names a GPU that is not visible.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type != "cuda":
        return device
    if not torch.cuda.is_available():
        why = f"this torch build ({torch.__version__}) has no CUDA" if torch.version.cuda is None \
            else "no CUDA GPU is visible (driver, CUDA_VISIBLE_DEVICES)"
        raise PipelineError(f"params: 'train.device' is '{name}' but {why}; set train.device to auto or cpu, "
                            "or install a CUDA build of torch")
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise PipelineError(f"params: 'train.device' is '{name}' but only {count} CUDA devices are visible "
                            f"(cuda:0..cuda:{count - 1}); pick one of those or auto")
    return device


def resolve_bf16(precision: str, device: torch.device) -> bool:
    """Whether ``precision`` (auto | fp32 | bf16) means bf16 autocast on ``device``.

    ``auto`` picks bf16 where the hardware runs it natively: a CUDA GPU with bf16 support, or a CPU that
    oneDNN can run bf16 GEMMs on (AVX-512/AMX); else fp32. An explicit ``bf16`` is honoured everywhere.
    """
    if precision != "auto":
        return precision == "bf16"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and torch.backends.mkldnn.is_available() \
        and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def peak_rss_mb() -> float:
    """Peak resident set size of this process, in MiB.

    On Linux from ``VmHWM`` in ``/proc/self/status``: ``getrusage``'s ``ru_maxrss`` of a child started by
    fork + exec also counts the parent's resident size at the fork (the kernel folds the forked copy's
    high-water mark in at exec), so every child of a big parent would report at least the parent's size.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**10  # kB
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def peak_memory_mb(device: torch.device) -> float:
    """Peak CUDA memory allocated on GPU; peak resident set size of this process on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return peak_rss_mb()


def make_optimizer(model: nn.Module, cfg: FitConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters; no weight decay on biases and LayerNorm; fused on CUDA.

    Returns:
        The optimizer (two param groups: with and without decay).
    """
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 or "LayerNorm" in name or "layer_norm" in name else decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = device.type == "cuda"
    return torch.optim.AdamW(groups, lr=cfg.lr, fused=fused or None, foreach=None if fused else True)


_optimizer = make_optimizer  # the name older tests use


def compile_for_training(model: nn.Module, *, eager_random: bool = False) -> Callable[..., Any]:
    """``torch.compile(model)`` for the training loop (inductor; one graph for every batch shape).

    Inductor fuses the element-wise work around the matmuls (GELU, LayerNorm, softmax, dropout, residual adds).
    By default it also draws dropout masks with its own counter-based RNG, vectorised and parallel: on CPU the
    eager ``bernoulli_`` kernel is serial and takes about a sixth of a MiniLM training step. Dropout keeps its
    probability and a seeded run stays reproducible (inductor seeds itself from torch's generator, which
    checkpoints save), but the dropped units differ from an eager run's, so compiled and eager runs are not
    equal bit for bit. ``eager_random=True`` runs random ops as the eager kernels in the same order instead
    (inductor's ``fallback_random``): masks are then identical and the runs agree up to float rounding, at the
    cost of most of the CPU speed-up. The first call compiles (tens of seconds on 2 CPU cores, less with a
    warm inductor cache).

    Returns:
        A callable with the model's signature; the parameters stay those of ``model``.
    """
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "problem_type", "") is None and getattr(config, "num_labels", 0) > 1:
        # HF sets this on the first call with integer labels; a config change after tracing would recompile
        config.problem_type = "single_label_classification"
    return torch.compile(model, dynamic=True, options={"fallback_random": eager_random})


# transformers major versions whose BERT-family layer forward _first_token_forward was checked against
_VERIFIED_TRANSFORMERS_MAJORS = (5,)


def _transformers_major() -> int:
    return int(transformers.__version__.split(".", 1)[0])


def _stock(module: Any, cls: type) -> bool:
    """``module`` is exactly a ``cls`` whose forward is the class's own, unpatched on the class or instance."""
    forward = getattr(cls, "forward", None)
    return type(module) is cls and "forward" not in vars(module) \
        and getattr(forward, "__qualname__", "") == f"{cls.__name__}.forward" \
        and getattr(forward, "__module__", "") == cls.__module__


def _first_token_models() -> dict[type, tuple[str, str]]:
    """Sequence classifiers whose head reads only token 0 of the last layer, with BERT's layer layout.

    Maps the exact class to (its modeling module's class-name prefix, the head module that reads token 0).
    """
    from transformers.models.bert import modeling_bert
    from transformers.models.electra import modeling_electra
    from transformers.models.roberta import modeling_roberta
    from transformers.models.xlm_roberta import modeling_xlm_roberta

    return {modeling_bert.BertForSequenceClassification: ("Bert", "pooler"),
            modeling_roberta.RobertaForSequenceClassification: ("Roberta", "classifier"),
            modeling_xlm_roberta.XLMRobertaForSequenceClassification: ("XLMRoberta", "classifier"),
            modeling_electra.ElectraForSequenceClassification: ("Electra", "classifier")}


def _dropout_noise(shape: tuple[int, ...], p: float, like: torch.Tensor) -> torch.Tensor:
    """The ``(1 - p)``-scaled keep mask dropout would draw for a tensor of ``shape``, from the same RNG draws."""
    if like.device.type == "cpu":  # aten's CPU dropout: empty_like(input).bernoulli_(1 - p).div_(1 - p)
        return torch.empty(shape, dtype=like.dtype).bernoulli_(1 - p).div_(1 - p)
    return F.dropout(torch.ones(shape, dtype=like.dtype, device=like.device), p, True)


def _first_row_dropout(x: torch.Tensor, module: nn.Module, full: tuple[int, ...]) -> torch.Tensor:
    """``module`` (an ``nn.Dropout``) applied to row 0 of a ``full``-shaped input: a full mask is drawn, as there."""
    if not module.training or module.p == 0:
        return x
    return x * _dropout_noise(full, module.p, x)[:, :1]  # (B, 1, ...)


def _first_row_linear(linear: nn.Module, first: torch.Tensor, full: tuple[int, ...]) -> torch.Tensor:
    """``linear`` applied to row 0 of a ``full``-shaped input; a LoRA adapter's dropout draws a full mask."""
    drop = getattr(linear, "dropout", None)
    if not isinstance(linear, LoRALinear) or linear.merged or not isinstance(drop, nn.Dropout) \
            or not drop.training or drop.p == 0:
        return linear(first)
    update = F.linear(F.linear(first * _dropout_noise(full, drop.p, first)[:, :1], linear.lora_a), linear.lora_b)
    return torch.add(linear.base(first), update, alpha=linear.scaling)  # as LoRALinear.forward


def _first_token_forward(self: nn.Module, hidden_states: torch.Tensor, attention_mask=None, *args, **kwargs):
    """A BERT layer's forward for token 0 only: keys/values from every token, everything else from one row.

    Every dropout draws its full-size mask in the original order, so the RNG stream (and on CPU every dropped
    unit) is the same as in the full layer; the output row equals the full layer's row 0 up to float rounding.
    """
    if not self.training:
        return type(self).forward(self, hidden_states, attention_mask, *args, **kwargs)
    att, (b, t, hidden) = self.attention.self, hidden_states.shape
    heads, size = att.num_attention_heads, att.attention_head_size
    first = hidden_states[:, :1]  # (B, 1, C)
    q = _first_row_linear(att.query, first, (b, t, hidden)).view(b, 1, heads, size).transpose(1, 2)  # (B, h, 1, d)
    k = att.key(hidden_states).view(b, t, heads, size).transpose(1, 2)  # (B, h, T, d)
    v = att.value(hidden_states).view(b, t, heads, size).transpose(1, 2)  # (B, h, T, d)
    if att.config._attn_implementation == "sdpa":  # SDPA's math path scales q and k by sqrt(scale) each
        root = math.sqrt(att.scaling)
        scores = torch.matmul(q * root, k.transpose(-2, -1) * root)  # (B, h, 1, T)
    else:
        scores = torch.matmul(q, k.transpose(-2, -1)) * att.scaling  # (B, h, 1, T)
    if attention_mask is not None:  # (B, 1, T or 1, T): bool (SDPA, True = attend) or additive
        mask = attention_mask[:, :, :1]
        scores = scores + (torch.where(mask, 0.0, float("-inf")) if mask.dtype == torch.bool else mask)
    probs = torch.softmax(scores, dim=-1)  # (B, h, 1, T); token 0 always attends to itself
    if att.training and att.dropout.p > 0:
        probs = probs * _dropout_noise((b, heads, t, t), att.dropout.p, probs)[:, :, :1]
    context = torch.matmul(probs, v).transpose(1, 2).reshape(b, 1, hidden)  # (B, 1, C)
    out, mid, ffn = self.attention.output, self.intermediate, self.output
    full = (b, t, hidden)
    attended = out.LayerNorm(_first_row_dropout(_first_row_linear(out.dense, context, full), out.dropout, full)
                             + first)  # (B, 1, C)
    inner = mid.intermediate_act_fn(_first_row_linear(mid.dense, attended, full))  # (B, 1, I)
    projected = _first_row_linear(ffn.dense, inner, (b, t, inner.shape[-1]))  # (B, 1, C)
    return ffn.LayerNorm(_first_row_dropout(projected, ffn.dropout, full) + attended)  # (B, 1, C)


def _trim_target(model: nn.Module) -> tuple[Optional[nn.Module], str]:
    """The last encoder layer if trimming it is exact for ``model``, else None and the reason why not.

    Exact means: a verified transformers major version, the stock classifier class itself (not a subclass or a
    same-named class), and stock, unpatched forwards from the model down to the last layer and the head.
    """
    major = _transformers_major()
    if major not in _VERIFIED_TRANSFORMERS_MAJORS:
        verified = " and ".join(f"{m}.x" for m in _VERIFIED_TRANSFORMERS_MAJORS)
        return None, f"it is verified against transformers {verified} only, not transformers {major} " \
                     f"({transformers.__version__})"
    spec = _first_token_models().get(type(model))
    if spec is None:
        return None, f"{type(model).__module__}.{type(model).__name__} is not one of the stock classifiers " \
                     "whose head reads only token 0 (BERT, RoBERTa, XLM-R, ELECTRA)"
    prefix, head = spec
    config = model.config
    unsupported = ("is_decoder", "add_cross_attention", "chunk_size_feed_forward", "output_hidden_states",
                   "output_attentions")  # each changes what the last layer must return
    if any(getattr(config, key, False) for key in unsupported) \
            or getattr(config, "_attn_implementation", None) not in ("sdpa", "eager"):
        return None, f"{type(model).__name__}'s config asks for more than the head's token " \
                     f"(one of {', '.join(unsupported)} is set, or attention is not sdpa/eager)"
    classes = vars(sys.modules[type(model).__module__])  # the classes of the model's own modeling module
    base, layer = model.base_model, model.base_model.encoder.layer[-1]
    head_class = f"{prefix}Pooler" if head == "pooler" else f"{prefix}ClassificationHead"
    parts = [("classifier", model, type(model).__name__), ("base model", base, f"{prefix}Model"),
             ("encoder", base.encoder, f"{prefix}Encoder"), ("last layer", layer, f"{prefix}Layer"),
             ("attention", layer.attention, f"{prefix}Attention"),
             ("self-attention", layer.attention.self, f"{prefix}SelfAttention"),
             ("attention output", layer.attention.output, f"{prefix}SelfOutput"),
             ("intermediate", layer.intermediate, f"{prefix}Intermediate"), ("output", layer.output, f"{prefix}Output"),
             ("head", getattr(base if head == "pooler" else model, head), head_class)]
    for what, module, cls in parts:
        if not _stock(module, classes[cls]):
            return None, f"{type(model).__name__}'s {what} is not a stock {cls} with its own forward"
    return layer, ""


@contextlib.contextmanager
def first_token_last_layer(model: nn.Module, required: bool = False) -> Iterator[bool]:
    """While training, let the last encoder layer compute only the first token, the one the head reads.

    A BERT-style classifier pools ``last_hidden_state[:, 0]``, so in the last layer the queries, attention
    rows, output projection and feed-forward of every other token are computed and back-propagated for
    nothing: about 1/7 of a MiniLM step. Inside the context the last layer's forward (training mode only)
    computes token 0 alone; the loss and every gradient are the same up to float rounding, and dropout draws
    the same random numbers in the same order (on CPU the very same masks; with CUDA SDPA's fused kernels the
    last layer's masks come from another kernel). ``eval()`` and everything outside the context are untouched,
    and the state dict never changes. Only exact stock classes with stock forwards are trimmed (see
    :func:`_trim_target`): a subclass or a same-named class may pool differently.

    Args:
        required: raise instead of leaving an unsupported model alone (``train.first_token_last_layer: true``).

    Yields:
        Whether the last layer is trimmed; if not, nothing is changed.

    Raises:
        PipelineError: ``required`` and the model is not supported (the message says why).
    """
    layer, why = _trim_target(model)
    if layer is None:
        if required:
            raise PipelineError(f"params: 'train.first_token_last_layer' is true but cannot apply: {why}; "
                                "set it to auto or false")
        log.info("first_token_last_layer: off (%s)", why)
        yield False
        return
    layer.forward = types.MethodType(_first_token_forward, layer)
    try:
        yield True
    finally:
        del layer.forward  # back to the class's forward


def train_step(forward: Callable[..., Any], batch: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
               scheduler: Any, params: list[torch.Tensor], max_grad_norm: float,
               device: torch.device, bf16: bool = False) -> torch.Tensor:
    """One optimiser step: forward (bf16 autocast if asked), backward, clipping, AdamW, schedule.

    Args:
        forward: the model or its :func:`compile_for_training` version.
        batch: tensors already on ``device``, with ``labels``.
        params: the optimised parameters (clipped together).
        bf16: autocast the forward to bf16; weights, gradients and optimizer state stay fp32.

    Returns:
        The loss, detached and left on the device (no host sync).
    """
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        loss = forward(**batch).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def _trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _rng_state(device: torch.device) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _evaluate(model, val: EncodedSplit, cfg: FitConfig, pad_id: int, device: torch.device) -> float:
    """Validation macro-F1 over the model's declared classes (``config.num_labels``), as the evaluate stage scores."""
    preds = predict(model, val, cfg.eval_batch_size, pad_id, device, bf16=cfg.bf16)
    return macro_f1(val.labels, preds, model.config.num_labels)


def _console_logging_to_tqdm(progress: bool) -> contextlib.AbstractContextManager:
    """Route console log records through ``tqdm.write`` while a bar is shown, so a line never lands on the bar."""
    console = any(isinstance(h, logging.StreamHandler) and h.stream in (sys.stdout, sys.stderr)
                  for h in logging.getLogger().handlers)
    return logging_redirect_tqdm(tqdm_class=tqdm) if progress and console else contextlib.nullcontext()


def fit(model: nn.Module, train: EncodedSplit, val: EncodedSplit, cfg: FitConfig, *, pad_id: int,
        device: torch.device, tracker: Tracker = NullTracker(),
        checkpointer: Optional[Checkpointer] = None, progress: bool = True) -> TrainResult:
    """Train ``model`` in place and leave it holding the best epoch's weights.

    Args:
        model: any HF sequence classifier; only parameters with ``requires_grad`` are optimised.
        train, val: tokenised splits.
        cfg: hyper-parameters.
        pad_id: the tokenizer's pad token id.
        device: where to train (``cfg.bf16``: bf16 autocast, fp32 master weights).
        tracker: receives per-step loss/lr and per-epoch metrics.
        checkpointer: when given, state is saved every ``cfg.checkpoint_every`` steps and at every
            epoch end, and a saved state is resumed from.
        progress: show a tqdm progress bar.

    Returns:
        TrainResult with per-epoch history (train_loss, val_macro_f1) and throughput.
    """
    model.to(device).train()
    steps_per_epoch = -(-len(train) // cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    optimizer = make_optimizer(model, cfg, device)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total_steps), total_steps)
    st = {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "seconds": 0.0, "samples": 0,
          "loss_sum": 0.0, "history": [], "best_f1": -1.0, "best_epoch": -1, "best_state": None}
    resumed = 0
    saved = checkpointer.load() if checkpointer is not None else None
    if saved is not None:
        model.load_state_dict(saved["model"], strict=False)
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        _set_rng_state(saved["rng"], device)
        st = saved["loop"]
        resumed = st["global_step"]
        log.info("resuming from checkpoint at step %d (epoch %d)", resumed, st["epoch"] + 1)

    def checkpoint() -> None:
        if checkpointer is not None:
            checkpointer.save({"model": _trainable_state(model), "optimizer": optimizer.state_dict(),
                               "scheduler": scheduler.state_dict(), "rng": _rng_state(device), "loop": st})

    lengths = train.lengths()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    forward = compile_for_training(model, eager_random=cfg.compile_eager_random) if cfg.compile else model
    bar = tqdm(total=total_steps, initial=st["global_step"], disable=not progress, mininterval=5,
               desc="train", unit="step", file=sys.stderr)
    trim = first_token_last_layer(model, required=cfg.first_token_last_layer is True) \
        if cfg.first_token_last_layer else contextlib.nullcontext()
    with _console_logging_to_tqdm(progress), trim, fast_cpu_dropout(cfg.fast_cpu_dropout and device.type == "cpu"):
        while st["epoch"] < cfg.epochs:
            batches = train_batches(lengths, cfg.batch_size, cfg.seed, st["epoch"])
            loss_acc = torch.zeros((), device=device)  # summed on device: no host sync per step
            t0 = time.perf_counter()
            for rows, batch in iterate(train, batches, pad_id, skip=st["step_in_epoch"]):
                batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
                loss = train_step(forward, batch, optimizer, scheduler, params, cfg.max_grad_norm, device, cfg.bf16)
                loss_acc += loss
                st["step_in_epoch"] += 1
                st["global_step"] += 1
                st["samples"] += len(rows)
                bar.update(1)
                if st["global_step"] % cfg.log_every == 0:
                    tracker.log_metrics({"train_loss": loss.item(), "lr": scheduler.get_last_lr()[0]},
                                        step=st["global_step"])
                if cfg.checkpoint_every and st["global_step"] % cfg.checkpoint_every == 0 \
                        and st["step_in_epoch"] < len(batches):
                    st["loss_sum"] += loss_acc.item()
                    loss_acc.zero_()
                    st["seconds"] += time.perf_counter() - t0
                    t0 = time.perf_counter()
                    checkpoint()
            st["seconds"] += time.perf_counter() - t0
            st["loss_sum"] += loss_acc.item()
            _end_epoch(model, val, cfg, pad_id, device, st, len(batches), tracker)
            checkpoint()
    bar.close()
    model.load_state_dict(st["best_state"], strict=False)
    return TrainResult(best_epoch=st["best_epoch"], best_val_macro_f1=st["best_f1"], history=st["history"],
                       train_seconds=st["seconds"], samples_per_second=st["samples"] / max(st["seconds"], 1e-9),
                       steps=st["global_step"], resumed_from_step=resumed)


def _end_epoch(model, val, cfg, pad_id, device, st: dict, n_batches: int, tracker: Tracker) -> None:
    f1 = _evaluate(model, val, cfg, pad_id, device)
    epoch = st["epoch"] + 1
    row = {"epoch": epoch, "train_loss": st["loss_sum"] / n_batches, "val_macro_f1": f1}
    st["history"].append(row)
    tracker.log_metrics({"epoch_train_loss": row["train_loss"], "val_macro_f1": f1}, step=st["global_step"])
    log.info("epoch %d: train_loss %.4f  val_macro_f1 %.4f", epoch, row["train_loss"], f1)
    if f1 > st["best_f1"]:
        st["best_f1"], st["best_epoch"], st["best_state"] = f1, epoch, _trainable_state(model)
    st["epoch"], st["step_in_epoch"], st["loss_sum"] = epoch, 0, 0.0
