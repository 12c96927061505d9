"""LoRALinear / LoRAConv1D: formula, init, scaling, merge semantics (peft's test_custom_models, torchtune)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from transformers.pytorch_utils import Conv1D

from lora_pipeline.lora import LoRAConv1D, LoRALinear, wrap_layer
from lora_pipeline.lora.layers import LoRALayer
# `seeded` is the autouse fixture that fixes the RNG seeds.

IN, OUT, RANK = 12, 7, 4


def make_base(kind: str, n_in: int = IN, n_out: int = OUT) -> nn.Module:
    return nn.Linear(n_in, n_out) if kind == "linear" else Conv1D(n_out, n_in)


def base_weight_as_out_in(layer: LoRALayer) -> torch.Tensor:
    weight = layer.base.weight
    return weight if isinstance(layer, LoRALinear) else weight.T


def with_random_b(layer: LoRALayer) -> LoRALayer:
    with torch.no_grad():
        layer.lora_b.normal_()
    return layer


@pytest.fixture(params=["linear", "conv1d"])
def kind(request) -> str:
    return request.param


def test_wrap_layer_picks_the_class_and_rejects_others() -> None:
    assert type(wrap_layer(nn.Linear(3, 2))) is LoRALinear
    assert type(wrap_layer(Conv1D(2, 3))) is LoRAConv1D
    with pytest.raises(TypeError, match="Conv2d"):
        wrap_layer(nn.Conv2d(1, 1, 1))
    with pytest.raises(TypeError):
        LoRALinear(Conv1D(2, 3))


@pytest.mark.parametrize("kwargs, message", [({"rank": 0}, "rank"), ({"alpha": 0}, "alpha"),
                                             ({"dropout": 1.0}, "dropout"), ({"bias": "some"}, "bias")])
def test_bad_arguments_raise(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        wrap_layer(nn.Linear(3, 2), **kwargs)


def test_output_unchanged_at_init(kind: str) -> None:
    base = make_base(kind)
    x = torch.randn(2, 5, IN)
    expected = base(x)
    layer = wrap_layer(base, rank=RANK, alpha=8)
    assert torch.equal(layer(x), expected)
    assert torch.count_nonzero(layer.lora_b) == 0


def test_a_is_initialised_like_peft(kind: str) -> None:
    base = make_base(kind)
    torch.manual_seed(123)
    layer = wrap_layer(base, rank=RANK)
    torch.manual_seed(123)
    reference = torch.empty(RANK, IN)
    nn.init.kaiming_uniform_(reference, a=math.sqrt(5))
    assert torch.equal(layer.lora_a, reference)
    assert layer.lora_a.shape == (RANK, IN) and layer.lora_b.shape == (OUT, RANK)


def test_forward_is_the_lora_formula(kind: str) -> None:
    layer = with_random_b(wrap_layer(make_base(kind), rank=RANK, alpha=6))
    x = torch.randn(3, IN)
    w0 = base_weight_as_out_in(layer)
    expected = x @ w0.T + layer.base.bias + (6 / RANK) * (x @ layer.lora_a.T @ layer.lora_b.T)
    torch.testing.assert_close(layer(x), expected)


@pytest.mark.parametrize("rslora, scaling", [(False, 16 / 4), (True, 16 / 2)])
def test_scaling_and_rslora(rslora: bool, scaling: float) -> None:
    assert wrap_layer(nn.Linear(3, 2), rank=4, alpha=16, rslora=rslora).scaling == scaling


def test_dropout_module_only_when_needed() -> None:
    assert isinstance(wrap_layer(nn.Linear(3, 2), dropout=0.0).dropout, nn.Identity)
    layer = wrap_layer(nn.Linear(3, 2), dropout=0.25)
    assert isinstance(layer.dropout, nn.Dropout) and layer.dropout.p == 0.25


def test_parameter_count_is_rank_times_in_plus_out(kind: str) -> None:
    layer = wrap_layer(make_base(kind), rank=RANK)
    trainable = sum(p.numel() for p in layer.parameters() if p.requires_grad)
    assert trainable == RANK * (IN + OUT)


@pytest.mark.parametrize("bias, bias_trains", [("none", False), ("lora_only", True), ("all", True)])
def test_base_is_frozen_and_bias_follows_the_mode(kind: str, bias: str, bias_trains: bool) -> None:
    layer = wrap_layer(make_base(kind), bias=bias)
    assert not layer.base.weight.requires_grad
    assert layer.base.bias.requires_grad is bias_trains
    assert layer.weight is layer.base.weight and layer.bias is layer.base.bias


def test_gradients_reach_only_the_adapter(kind: str) -> None:
    layer = with_random_b(wrap_layer(make_base(kind), rank=RANK))
    layer(torch.randn(4, IN)).sum().backward()
    assert layer.lora_a.grad is not None and layer.lora_b.grad is not None
    assert layer.base.weight.grad is None and layer.base.bias.grad is None


def test_training_never_materialises_the_delta(kind: str, monkeypatch) -> None:
    layer = with_random_b(wrap_layer(make_base(kind), rank=RANK))
    monkeypatch.setattr(type(layer), "delta_weight", lambda self: pytest.fail("delta_weight in forward"))
    layer(torch.randn(4, IN)).sum().backward()


def test_delta_weight_layout(kind: str) -> None:
    layer = with_random_b(wrap_layer(make_base(kind), rank=RANK, alpha=2))
    delta = layer.delta_weight()
    assert delta.shape == layer.base.weight.shape
    expected = (2 / RANK) * layer.lora_b @ layer.lora_a  # (out, in)
    torch.testing.assert_close(delta if kind == "linear" else delta.T, expected)


def test_merge_unmerge_round_trip(kind: str) -> None:
    layer = with_random_b(wrap_layer(make_base(kind), rank=RANK))
    x = torch.randn(5, IN)
    before, weight = layer(x), layer.base.weight.detach().clone()
    layer.merge()
    assert layer.merged
    torch.testing.assert_close(layer(x), before)
    layer.unmerge()
    assert not layer.merged
    torch.testing.assert_close(layer.base.weight, weight)
    torch.testing.assert_close(layer(x), before)


def test_merged_forward_skips_the_adapter_path(kind: str) -> None:
    layer = with_random_b(wrap_layer(make_base(kind), rank=RANK))
    x = torch.randn(5, IN)
    layer.merge()
    merged = layer(x)
    with torch.no_grad():
        layer.lora_a.fill_(float("nan"))  # would poison the output if the adapter path still ran
    assert torch.equal(layer(x), merged)


def test_merge_twice_and_unmerge_unmerged_raise() -> None:
    layer = wrap_layer(nn.Linear(3, 2))
    with pytest.raises(RuntimeError, match="not merged"):
        layer.unmerge()
    layer.merge()
    with pytest.raises(RuntimeError, match="already merged"):
        layer.merge()


@pytest.mark.parametrize("explicit", [True, False])
def test_merge_refuses_non_finite_by_default_and_leaves_weights(kind: str, explicit: bool) -> None:
    layer = with_random_b(wrap_layer(make_base(kind), rank=RANK))
    with torch.no_grad():
        layer.lora_b[0, 0] = float("inf")
    weight = layer.base.weight.detach().clone()
    with pytest.raises(ValueError, match="not finite.*safe=False"):
        layer.merge(safe=True) if explicit else layer.merge()
    assert torch.equal(layer.base.weight, weight) and not layer.merged
    layer.merge(safe=False)  # the explicit opt-out still merges
    assert layer.merged and not torch.isfinite(layer.base.weight).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_unmerge_restores_the_weight_bit_for_bit(kind: str, dtype: torch.dtype) -> None:
    """W0 + ΔW - ΔW is not W0 in floating point (bf16: ~44 % of elements moved): unmerge restores the original."""
    layer = with_random_b(wrap_layer(make_base(kind, 64, 48).to(dtype), rank=RANK, alpha=7))
    weight = layer.base.weight.detach().clone()
    layer.merge()
    assert not torch.equal(layer.base.weight, weight)
    layer.unmerge()
    assert torch.equal(layer.base.weight, weight)
    assert "original_weight" not in layer.state_dict() and layer.original_weight is None


def test_merge_without_keeping_the_original_unmerges_by_subtraction(kind: str) -> None:
    layer = with_random_b(wrap_layer(make_base(kind, 64, 48), rank=RANK, alpha=7))
    weight = layer.base.weight.detach().clone()
    layer.merge(keep_original=False)
    assert layer.original_weight is None
    layer.unmerge()
    torch.testing.assert_close(layer.base.weight, weight, atol=1e-5, rtol=1e-5)


def test_train_and_eval_never_merge(kind: str) -> None:
    layer = with_random_b(wrap_layer(make_base(kind), rank=RANK))
    weight = layer.base.weight.detach().clone()
    layer.eval()
    layer.train()
    layer.eval()
    assert not layer.merged and torch.equal(layer.base.weight, weight)


def test_dropout_applies_to_the_adapter_input_only() -> None:
    layer = with_random_b(wrap_layer(nn.Linear(IN, OUT), rank=RANK, dropout=0.5))
    x = torch.randn(64, IN)
    layer.eval()
    assert torch.equal(layer(x), layer(x))  # eval: no dropout
    layer.train()
    assert not torch.equal(layer(x), layer(x))


@settings(max_examples=25, deadline=None)
@given(n_in=st.integers(1, 24), n_out=st.integers(1, 24), rank=st.integers(1, 8),
       alpha=st.floats(0.5, 64.0), rslora=st.booleans(), conv=st.booleans(), seed=st.integers(0, 2**16))
def test_merge_invariants_property(n_in: int, n_out: int, rank: int, alpha: float, rslora: bool, conv: bool,
                                   seed: int) -> None:
    torch.manual_seed(seed)
    layer = with_random_b(wrap_layer(make_base("conv1d" if conv else "linear", n_in, n_out), rank=rank,
                                     alpha=alpha, rslora=rslora))
    x = torch.randn(3, n_in)
    unmerged, weight = layer(x), layer.base.weight.detach().clone()
    assert layer.delta_weight().shape == weight.shape
    layer.merge(safe=True)
    torch.testing.assert_close(layer(x), unmerged, atol=1e-4, rtol=1e-4)
    layer.unmerge()
    assert torch.equal(layer.base.weight, weight)  # exact: the original is restored, not recomputed
    assert torch.equal(layer(x), unmerged)
