"""The first-token trim: the last encoder layer computes only the token the head reads.

A BERT-style sequence classifier pools ``last_hidden_state[:, 0]``; the rest of the last layer's rows are
computed (and, in training, back-propagated) for nothing. :func:`first_token_last_layer` swaps in a forward for
that one layer that computes row 0 alone (keys and values still from every token), exact up to float rounding:
same loss, same gradients, same random draws in training, the same logits in eval mode. It applies only to the
stock classes it was verified on.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import types
from typing import Any, Iterator, Optional

import torch
import torch.nn.functional as F
import transformers
from torch import nn

from ..errors import PipelineError

__all__ = ["first_token_last_layer", "trim_switch"]

log = logging.getLogger(__name__)


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


class _RowZeroDropout(nn.Module):
    """Dropout of row 0 of a ``rows``-row input: draws the full ``(B, rows, ...)`` mask and keeps its row 0."""

    def __init__(self, p: float, rows: int):
        super().__init__()
        self.p, self.rows = p, rows

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, 1, ...)
        return x * _dropout_noise((x.shape[0], self.rows, *x.shape[2:]), self.p, x)[:, :1]


def _first_row_linear(linear: nn.Module, first: torch.Tensor, full: tuple[int, ...]) -> torch.Tensor:
    """``linear`` (a plain or adapted projection) applied to row 0 of a ``full``-shaped input.

    The module's own forward runs; an active ``nn.Dropout`` child (a LoRA adapter's) is swapped for the call
    by one that draws the full-size mask, as the untrimmed layer does, so the RNG stream stays aligned.
    """
    active = {name: child for name, child in linear.named_children()
              if isinstance(child, nn.Dropout) and child.training and child.p > 0}
    for name, child in active.items():
        setattr(linear, name, _RowZeroDropout(child.p, full[1]))
    try:
        return linear(first)
    finally:
        for name, child in active.items():
            setattr(linear, name, child)


def _first_token_forward(self: nn.Module, hidden_states: torch.Tensor, attention_mask=None, *args, **kwargs):
    """A BERT layer's forward for token 0 only: keys/values from every token, everything else from one row.

    Every dropout draws its full-size mask in the original order, so the RNG stream (and on CPU every dropped
    unit) is the same as in the full layer; the output row equals the full layer's row 0 up to float rounding.
    """
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
    """Let the last encoder layer compute only the first token, the one the head reads (training and prediction).

    A BERT-style classifier pools ``last_hidden_state[:, 0]``, so in the last layer the queries, attention
    rows, output projection and feed-forward of every other token are computed (and back-propagated) for
    nothing: about 1/7 of a MiniLM training step, 1/10 of a prediction pass (BENCHMARKS.md). Inside the context
    the last layer's forward computes token 0 alone; in training the loss and every gradient are the same up to
    float rounding, and dropout draws the same random numbers in the same order (on CPU the very same masks; with
    CUDA SDPA's fused kernels the last layer's masks come from another kernel); in eval mode the logits are the
    same up to float rounding. Everything outside the context is untouched, and the state dict never changes.
    Only exact stock classes with stock forwards are trimmed (see :func:`_trim_target`): a subclass or a
    same-named class may pool differently.

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
    watched, stock = _reshaped_modules(model, layer), [False]

    def decide(module: nn.Module, args: tuple, kwargs: dict) -> None:  # runs before every base-model call
        stock[0] = _asks_for_outputs(model.config, kwargs) or _hooked(watched, ignore=handle.id)

    def forward(self: nn.Module, *args: Any, **kwargs: Any):
        return type(self).forward(self, *args, **kwargs) if stock[0] else _first_token_forward(self, *args, **kwargs)

    handle = model.base_model.register_forward_pre_hook(decide, with_kwargs=True)
    layer.forward = types.MethodType(forward, layer)
    try:
        yield True
    finally:
        del layer.forward  # back to the class's forward
        handle.remove()


def _reshaped_modules(model: nn.Module, layer: nn.Module) -> list[nn.Module]:
    """The modules whose calls the trim skips or whose inputs/outputs it shortens to one row: the base model, the
    encoder, the last layer and the head, with their submodules (not the embeddings or the earlier layers)."""
    base = model.base_model
    head = base.pooler if getattr(base, "pooler", None) is not None else model.classifier
    return [base, base.encoder, *layer.modules(), *head.modules()]


def _asks_for_outputs(config: Any, kwargs: dict) -> bool:
    """A call (or the config) asks for per-layer outputs (hidden states, attentions): the last layer must be whole."""
    return any(value is not None and value is not False for key, value in kwargs.items()
               if key.startswith("output_")) \
        or any(getattr(config, key, False) for key in ("output_hidden_states", "output_attentions"))


# transformers' output capture: hooks it installs once on every layer and attention module, idle unless a call asks
# for an output (which _asks_for_outputs sees)
_CAPTURE_HOOKS_MODULE = "transformers.utils.output_capturing"


def _hooked(modules: list[nn.Module], ignore: int) -> bool:
    """Whether a forward/backward hook is registered on one of ``modules`` or globally (the trim would skip it or
    hand it one row). torch has no public way to list hooks: the registries read here are ``nn.Module``'s
    (``_forward_hooks`` …, and ``torch.nn.modules.module._global_*_hooks``), stable across torch 2.x."""
    from torch.nn.modules import module as torch_module

    registries = [getattr(torch_module, f"_global_{kind}_hooks", {})
                  for kind in ("forward", "forward_pre", "backward", "backward_pre")]
    for m in modules:
        registries += [m._forward_hooks, m._forward_pre_hooks, m._backward_hooks, m._backward_pre_hooks]
    return any(key != ignore and getattr(hook, "__module__", "") != _CAPTURE_HOOKS_MODULE
               for registry in registries for key, hook in registry.items())


def trim_switch(model: nn.Module, setting: bool | str) -> contextlib.AbstractContextManager:
    """``train.first_token_last_layer`` as a context for training and prediction alike: ``auto`` trims where exact,
    ``True`` requires it (:class:`PipelineError` otherwise), ``False`` changes nothing."""
    return first_token_last_layer(model, required=setting is True) if setting else contextlib.nullcontext()
