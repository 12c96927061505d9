"""The step profiler's attribution and the prescaled-LoRA lever of ``benchmarks/step_time.py``, on tiny models."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.profiler import ProfilerActivity, profile
from transformers import BertConfig, BertForSequenceClassification

from benchmarks._attribution import attribute, module_ranges
from benchmarks.step_profile import Variant, phased_step
from benchmarks.step_time import prescale_lora
from lora_pipeline.lora import apply_lora, lora_layers, mark_only_lora_as_trainable


def _tiny_lora(rank: int, alpha: float, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=24, max_position_embeddings=32, num_labels=3)
    model = BertForSequenceClassification(config)
    apply_lora(model, target_modules=["query", "value"], rank=rank, alpha=alpha)
    mark_only_lora_as_trainable(model, also=("classifier", "pooler"))
    with torch.no_grad():  # B is zero at init: make the update non-zero
        for _, layer in lora_layers(model):
            layer.lora_b.normal_(0, 0.5)
    return model.train()


def _batch() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return {"input_ids": torch.randint(0, 50, (3, 7), generator=gen), "labels": torch.tensor([0, 2, 1])}


def _loss_and_grads(model: torch.nn.Module) -> tuple[torch.Tensor, list[torch.Tensor]]:
    torch.manual_seed(3)  # the same dropout masks in both runs
    loss = model(**_batch()).loss
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]


@pytest.mark.parametrize("rank, alpha", [(8, 16.0), (4, 16.0), (16, 16.0)])
def test_prescaled_lora_is_bit_identical_for_power_of_two_scaling(rank: int, alpha: float) -> None:
    """Folding s = 2**k (k >= 0) into B gives exactly the loss and gradients of the stock LoRA forward."""
    stock = _tiny_lora(rank, alpha)
    patched = prescale_lora(copy.deepcopy(stock))
    assert all("forward" in vars(layer) for _, layer in lora_layers(patched))
    loss, grads = _loss_and_grads(stock)
    loss_p, grads_p = _loss_and_grads(patched)
    assert torch.equal(loss, loss_p)
    assert all(torch.equal(g, gp) for g, gp in zip(grads, grads_p))


def test_prescaled_lora_leaves_other_scalings_alone() -> None:
    """A scaling that is no power of two >= 1 (16 / 6, or 4 / 8 = 0.5) keeps the stock forward."""
    for rank, alpha in ((6, 16.0), (8, 4.0)):
        model = prescale_lora(_tiny_lora(rank, alpha))
        assert not any("forward" in vars(layer) for _, layer in lora_layers(model))


def test_attribute_splits_a_step_into_parts_and_layers() -> None:
    """Frozen GEMMs, the LoRA path and the optimizer each get time, every encoder layer is a place, and the parts
    add up to the phases' total (nothing is counted twice or lost)."""
    model = _tiny_lora(4, 8.0)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3, foreach=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    variant = Variant(model, optimizer, scheduler, params, 1.0)
    with module_ranges(model), profile(activities=[ProfilerActivity.CPU]) as prof:
        phased_step(variant, _batch())
    parts, places = attribute(prof.profiler.function_events)
    for part in ("frozen GEMMs fwd", "frozen GEMMs input-grad bwd", "LoRA path fwd", "LoRA path bwd",
                 "attention fwd", "optimizer"):
        assert parts.get(part, 0.0) > 0, part
    assert {"encoder layer 0", "encoder layer 1", "outside the encoder"} <= set(places)
    phases = sum(e.cpu_time_total for e in prof.profiler.function_events if e.name.startswith("phase:"))
    assert sum(parts.values()) == pytest.approx(phases, rel=1e-6)
    assert sum(places.values()) == pytest.approx(phases, rel=1e-6)
    assert not any(h for m in model.modules() for h in (m._forward_hooks, m._forward_pre_hooks))


@pytest.mark.parametrize("targets, expected", [(None, None), ("all-linear", "all-linear"),
                                               (r".*\.(query|value)", r".*\.(query|value)"),
                                               (("query", "value"), ["query", "value"])])
def test_benchmarks_give_peft_the_lora_targets_as_params_say(targets, expected):
    """A string (a regex or all-linear) stays one string, a list stays a list of names, null is peft's default."""
    from benchmarks._common import peft_target_modules
    from lora_pipeline.config import LoraConfig

    assert peft_target_modules(LoraConfig(target_sets={"t": targets}), "t") == expected
