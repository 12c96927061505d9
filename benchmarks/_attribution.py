"""Attributing a profiled training step to parts and places (``benchmarks/step_profile.py``): every top-level forward op
goes to the module it ran in (profiler ranges opened by forward hooks around frozen ``nn.Linear`` layers, the LoRA
wrappers, the head, and each encoder layer) or to its kind (attention, dropout, LayerNorm/GELU/residual, reshapes);
every backward node to the part of the forward op that made it (autograd sequence numbers)."""

from __future__ import annotations

import contextlib
import re
from collections import defaultdict
from typing import Any, Iterator, Optional

from torch import nn
from torch.autograd.profiler import record_function

from lora_pipeline.lora import LoRALayer
from lora_pipeline.models import HEAD_MODULES

_ATTENTION_OPS = ("aten::scaled_dot_product_attention", "aten::matmul", "aten::bmm", "aten::softmax",
                  "aten::_softmax", "aten::baddbmm")
_DROPOUT_OPS = ("aten::dropout", "aten::feature_dropout", "aten::native_dropout", "aten::bernoulli_")
_ELEMENTWISE_OPS = ("aten::layer_norm", "aten::gelu", "aten::add", "aten::add_", "aten::tanh", "aten::mul",
                    "aten::div", "aten::sub", "aten::where", "aten::rsub")
_LAYOUT_OPS = ("aten::view", "aten::reshape", "aten::transpose", "aten::permute", "aten::contiguous",
               "aten::clone", "aten::copy_", "aten::expand", "aten::t", "aten::select", "aten::slice",
               "aten::unsqueeze", "aten::to", "aten::_to_copy", "aten::squeeze", "aten::narrow",
               "aten::detach", "aten::alias", "aten::as_strided", "aten::empty", "aten::ones", "aten::zeros")


def _module_kind(name: str, module: nn.Module) -> Optional[str]:
    """Which part a module's forward is accounted to: the LoRA wrapper, a frozen linear, or the head."""
    leaf = name.rsplit(".", 1)[-1]
    if leaf in HEAD_MODULES or leaf in ("pooler",):
        return "head"
    if isinstance(module, LoRALayer) or type(module).__module__.startswith("peft.tuners.lora"):
        return "lora" if hasattr(module, "lora_a") or hasattr(module, "lora_A") else None
    if isinstance(module, nn.Linear) and not module.weight.requires_grad:
        return "frozen"
    return None


@contextlib.contextmanager
def module_ranges(model: nn.Module) -> Iterator[None]:
    """Profiler ranges ``module:<kind>`` around the forward of the head, LoRA wrappers and frozen linears, and
    ``layer:<i>`` around each encoder layer."""
    handles, stack = [], []
    for name, module in model.named_modules():
        layer = re.search(r"encoder\.layer\.(\d+)$", name)
        label = f"layer:{layer.group(1)}" if layer else _module_kind(name, module)
        if label is None:
            continue
        label = label if layer else f"module:{label}"

        def pre(_m, _args, label=label):
            rf = record_function(label)
            rf.__enter__()
            stack.append(rf)

        def post(_m, _args, _out):
            stack.pop().__exit__(None, None, None)

        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _ours(evt) -> bool:
    return evt.name.startswith(("phase:", "module:", "layer:"))


def _top_op(evt) -> tuple[Any, Optional[str], str]:
    """The outermost aten op above ``evt`` (itself if none), the innermost module range around it and the encoder
    layer it ran in (``"outside the encoder"`` if none)."""
    top, module, layer, node = evt, None, "outside the encoder", evt.cpu_parent
    while node is not None:
        if node.name.startswith("module:"):
            module = module or node.name[len("module:"):]
        elif node.name.startswith("layer:"):
            layer = "encoder layer " + node.name[len("layer:"):]
        elif not _ours(node) and not node.name.startswith("autograd::"):
            top = node
        node = node.cpu_parent
    return top, module, layer


def _classify_forward(top, module: Optional[str], _layer: str = "") -> str:
    """The part a top-level forward op belongs to."""
    name = top.name
    if name in _DROPOUT_OPS:
        return "dropout"
    if module in ("head", "lora", "frozen"):
        return {"head": "head (pooler + classifier)", "lora": "LoRA path", "frozen": "frozen GEMMs"}[module]
    if name in _ATTENTION_OPS:
        return "attention"
    if name in ("aten::embedding",):
        return "embeddings"
    if "cross_entropy" in name or "nll_loss" in name or "log_softmax" in name:
        return "loss"
    if name in _LAYOUT_OPS:
        return "reshapes & copies"
    if name in _ELEMENTWISE_OPS:
        return "LayerNorm, GELU, residual adds"
    return "other ops"


def _phase(evt) -> Optional[str]:
    node = evt
    while node is not None:
        if node.name.startswith("phase:"):
            return node.name[len("phase:"):]
        node = node.cpu_parent
    return None


def attribute(events) -> tuple[dict[str, float], dict[str, float]]:
    """Microseconds of one profiled step per part (``<part> fwd`` / ``<part> bwd`` and the step phases), and per
    place (each encoder layer, forward + backward; outside the encoder; the phases after backward)."""
    by_seq: dict[int, Any] = {}
    for evt in events:  # the outermost forward op that recorded each autograd sequence number
        if evt.sequence_nr >= 0 and not evt.name.startswith("autograd::") and _phase(evt) == "forward":
            by_seq.setdefault(evt.sequence_nr, _top_op(evt))
    parts: dict[str, float] = defaultdict(float)
    places: dict[str, float] = defaultdict(float)
    for evt in events:
        if not evt.name.startswith("phase:"):
            continue
        phase = evt.name[len("phase:"):]
        covered = 0.0
        for child in _descend_ops(evt):
            us = child.cpu_time_total
            covered += us
            if phase == "forward":
                found = _top_op(child)
                parts[_classify_forward(*found) + " fwd"] += us
                places[found[2]] += us
            elif phase == "backward":
                part, place = _classify_backward(child, by_seq)
                parts[part] += us
                places[place] += us
            else:
                parts[phase] += us
                places["clip, AdamW, schedule, zero_grad"] += us
        rest = evt.cpu_time_total - covered
        parts[{"forward": "Python & dispatch fwd", "backward": "autograd engine bwd"}.get(phase, phase)] += rest
        places["outside the encoder" if phase in ("forward", "backward") else
               "clip, AdamW, schedule, zero_grad"] += rest
    return dict(parts), dict(places)


def _descend_ops(evt) -> Iterator[Any]:
    """The top-level ops under a phase range, looking through module and layer ranges."""
    for child in evt.cpu_children:
        if child.name.startswith(("module:", "layer:")):
            yield from _descend_ops(child)
        else:
            yield child


def _classify_backward(evt, by_seq: dict[int, Any]) -> tuple[str, str]:
    """A backward node's part (that of the forward op that made it) and place."""
    if "AccumulateGrad" in evt.name:
        return "grad accumulation bwd", "outside the encoder"
    if not evt.name.startswith("autograd::engine::evaluate_function"):
        return "autograd engine bwd", "outside the encoder"
    found = by_seq.get(evt.sequence_nr)
    if found is None:
        return "other bwd", "outside the encoder"
    part = _classify_forward(*found)
    return part + (" input-grad bwd" if part == "frozen GEMMs" else " bwd"), found[2]
