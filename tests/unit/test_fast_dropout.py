"""fast_dropout: same dropout law as aten's CPU kernel, masks keyed by torch's seed, restored on exit."""

from __future__ import annotations

import logging
import math

import pytest
import torch
import torch.nn.functional as F

from lora_pipeline.speedups import fast_bernoulli_, fast_cpu_dropout
from lora_pipeline.speedups import fast_dropout
from lora_pipeline.training import FitConfig, fit
from tests.support.builders import EPOCHS_ONLY
from tests.support.training import parameter_state, pretrained_classifier

CPU = torch.device("cpu")


def _seeded_dropout(n: int = 4096, p: float = 0.5, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    torch.manual_seed(seed)
    return F.dropout(torch.ones(n, dtype=dtype), p, training=True)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dropout_law_is_unchanged(p, dtype):
    n = 200_000
    with fast_cpu_dropout() as active:
        out = _seeded_dropout(n, p, dtype=dtype).float()
    assert active
    scale = torch.tensor(1 / (1 - p), dtype=dtype).float()  # aten scales by 1/(1-p) in the tensor's dtype
    assert set(out.unique().tolist()) == {0.0, scale.item()}
    dropped = (out == 0).float().mean().item()
    assert abs(dropped - p) < 5 * math.sqrt(p * (1 - p) / n), dropped  # 5 sigma of a binomial share


def test_masks_follow_torch_seed_and_differ_from_aten():
    stock = _seeded_dropout(seed=0)
    with fast_cpu_dropout():
        fast = [_seeded_dropout(seed=0), _seeded_dropout(seed=0), _seeded_dropout(seed=1)]
        torch.manual_seed(0)
        first, second = F.dropout(torch.ones(64), 0.5, True), F.dropout(torch.ones(64), 0.5, True)
    assert torch.equal(fast[0], fast[1])  # a function of torch's RNG state
    assert not torch.equal(fast[0], fast[2])
    assert not torch.equal(fast[0], stock)  # the override was really dispatched to
    assert not torch.equal(first, second)  # every call draws a new seed from the stream


def test_aten_kernel_is_back_after_exit_and_after_an_error():
    stock = _seeded_dropout(seed=3)
    with fast_cpu_dropout():
        pass
    assert torch.equal(_seeded_dropout(seed=3), stock)
    with pytest.raises(KeyError):
        with fast_cpu_dropout():
            raise KeyError("boom")
    assert torch.equal(_seeded_dropout(seed=3), stock)
    with fast_cpu_dropout(enabled=False) as active:
        assert not active
        assert torch.equal(_seeded_dropout(seed=3), stock)


def test_sdpa_dropout_is_covered_and_reproducible():
    q = torch.randn(2, 2, 16, 8)

    def attend(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        return F.scaled_dot_product_attention(q, q, q, dropout_p=0.3)

    stock = attend(0)
    with fast_cpu_dropout():
        fast = attend(0)
        assert torch.equal(fast, attend(0))
    assert not torch.allclose(fast, stock)


def test_explicit_generator_and_odd_inputs():
    gen = torch.Generator().manual_seed(5)
    state = torch.get_rng_state()
    a = fast_bernoulli_(torch.empty(1000), 0.3, generator=gen)
    b = fast_bernoulli_(torch.empty(1000), 0.3, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    assert torch.equal(torch.get_rng_state(), state)  # the default stream was not used
    strided = torch.empty(8, 6, 4, dtype=torch.bfloat16).permute(2, 0, 1)  # as empty_like of a transposed input
    out = fast_bernoulli_(strided, 0.25)
    assert out is strided and set(out.unique().tolist()) <= {0.0, 1.0}
    assert fast_bernoulli_(torch.empty(0), 0.5).numel() == 0
    with pytest.raises(ValueError, match=r"p to be in \[0, 1\]"):
        fast_bernoulli_(torch.empty(3), 1.5)
    assert fast_bernoulli_(torch.empty(100), 1.0).eq(1).all() and fast_bernoulli_(torch.empty(100), 0.0).eq(0).all()


def test_fit_uses_it_on_cpu_and_stays_deterministic(tiny_model_dir, split_dir):
    from tests.support.builders import load_encoded

    train, val = load_encoded(split_dir, "train"), load_encoded(split_dir, "val")
    stock = _seeded_dropout(seed=2)
    runs = {}
    for name, fast in (("fast", True), ("fast_again", True), ("torch", False)):
        model = pretrained_classifier(tiny_model_dir, seed=11)
        cfg = FitConfig(lr=5e-3, epochs=1, batch_size=16, seed=3, fast_cpu_dropout=fast,
                        eval_every=-(-len(train) // 16), **EPOCHS_ONLY)
        result = fit(model, train, val, cfg, pad_id=0, device=CPU, progress=False)
        assert result.steps == -(-len(train) // 16) and len(result.history) == 1  # one whole epoch
        runs[name] = (result.history[0]["train_loss"], parameter_state(model))
    assert runs["fast"][0] == runs["fast_again"][0]
    assert all(torch.equal(runs["fast"][1][k], runs["fast_again"][1][k]) for k in runs["fast"][1])
    assert runs["fast"][0] != runs["torch"][0]  # other dropped units, so another loss curve
    assert torch.equal(_seeded_dropout(seed=2), stock)  # and fit left aten's kernel in place


def _drop_destroy(monkeypatch):
    monkeypatch.delattr(torch.library.Library, "_destroy")


def _no_overload(monkeypatch):
    monkeypatch.setattr(fast_dropout, "_OVERLOAD", "bernoulli_.no_such_overload")


def _impl_refused(monkeypatch):
    def refuse(self, *args, **kwargs):
        raise RuntimeError("impl is not allowed here")

    monkeypatch.setattr(torch.library.Library, "impl", refuse)


@pytest.mark.parametrize("break_api, why", [(_drop_destroy, "_destroy is missing"),
                                            (_no_overload, "overload bernoulli_.no_such_overload is missing"),
                                            (_impl_refused, "override failed (RuntimeError: impl is not allowed")])
def test_a_missing_private_api_falls_back_to_torch_with_one_log_line(monkeypatch, caplog, break_api, why):
    """The override needs torch.library internals; without them, stock dropout and one warning."""
    stock = _seeded_dropout(seed=4)
    break_api(monkeypatch)
    with caplog.at_level(logging.INFO, logger="lora_pipeline"):
        with fast_cpu_dropout() as active:
            masks = _seeded_dropout(seed=4)
    assert active is False
    assert torch.equal(masks, stock)  # aten's kernel ran
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("lora_pipeline")]
    assert len(lines) == 1 and why in lines[0] and "torch's own dropout kernel" in lines[0], lines
    monkeypatch.undo()
    with fast_cpu_dropout() as active:  # nothing was left registered
        assert active
    assert torch.equal(_seeded_dropout(seed=4), stock)
