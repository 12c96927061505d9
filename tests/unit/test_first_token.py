"""speedups.first_token_last_layer: the last layer computes only token 0, and nothing else changes.

Reference = the same model without the context. Compared: loss, every gradient, the RNG state after the
step (so later dropout masks stay aligned), eval-mode outputs, and that leaving the context restores the
layer's own forward. Dropout is ON here (0.1 / 0.2), padded rows included, both attention implementations.
"""

from __future__ import annotations

import copy
import types

import pytest
import torch
import torch.nn.functional as F
import transformers
from transformers import AutoModelForSequenceClassification
from transformers.modeling_outputs import SequenceClassifierOutput

from lora_pipeline import training
from lora_pipeline.errors import PipelineError
from lora_pipeline.lora import apply_lora, mark_only_lora_as_trainable
from lora_pipeline.speedups import first_token_last_layer
from lora_pipeline.speedups import first_token
from tests.support.builders import EPOCHS_ONLY
from tests.support.tiny_models import CONFIGS, FIRST_TOKEN_ARCHS, dropout_model, padded_batch

UNSUPPORTED = ("distilbert", "deberta-v2", "gpt2")


def _step(model, batch, seed: int = 11) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """Loss, gradients of the trainable parameters, and the RNG state after one seeded forward/backward."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    loss = model(**batch).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads, torch.get_rng_state()


def _assert_same_step(reference, trimmed) -> None:
    (loss_a, grads_a, rng_a), (loss_b, grads_b, rng_b) = reference, trimmed
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-5, atol=1e-6)
    assert grads_b.keys() == grads_a.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-4, atol=1e-6, msg=name)
    assert torch.equal(rng_b, rng_a), "the trimmed layer must draw exactly the random numbers the full one does"


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("arch", FIRST_TOKEN_ARCHS)
def test_full_fine_tuning_step_is_unchanged_with_dropout_and_padding(arch, attn):
    model, batch = dropout_model(arch, attn), padded_batch(arch)
    reference = _step(model, batch)
    with first_token_last_layer(model) as trimmed:
        assert trimmed
        result = _step(model, batch)
    _assert_same_step(reference, result)
    assert reference[1]["classifier.weight" if arch == "bert" else "classifier.out_proj.weight"].abs().sum() > 0


@pytest.mark.parametrize("targets", [["query", "value"], ["query", "key", "value", "attention.output.dense"],
                                     "all-linear"])
@pytest.mark.parametrize("arch", FIRST_TOKEN_ARCHS)
def test_lora_step_is_unchanged_and_reaches_the_last_layer_adapters(arch, targets):
    model = dropout_model(arch)
    apply_lora(model, targets, rank=4, alpha=8.0, dropout=0.1)
    mark_only_lora_as_trainable(model)
    with torch.no_grad():  # non-zero B, so the adapters' A receive gradient too
        for name, p in model.named_parameters():
            if "lora_b" in name:
                p.normal_(0.0, 0.3)
    batch = padded_batch(arch)
    reference = _step(model, batch)
    with first_token_last_layer(model):
        result = _step(model, batch)
    _assert_same_step(reference, result)
    last = [n for n in result[1] if ".layer.1.attention.self.query.lora_a" in n]
    assert last and result[1][last[0]].abs().sum() > 0


def _last_hidden_shape(model, batch) -> tuple[int, ...]:
    """What the encoder hands the head: (B, 1, C) when the last layer is trimmed, (B, T, C) when it is not."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    return tuple(model.bert(**inputs).last_hidden_state.shape)


def test_the_trimmed_layer_returns_one_row_and_the_forward_comes_back():
    model, batch = dropout_model("bert"), padded_batch("bert")
    layer = model.bert.encoder.layer[-1]
    keys = list(model.state_dict())
    with first_token_last_layer(model):
        model(**batch)
        shapes = [_last_hidden_shape(model, batch)]
        model.eval()
        with torch.no_grad():
            inside = model(**batch).logits
            shapes.append(_last_hidden_shape(model, batch))
        model.train()
    assert shapes == [(5, 1, 32), (5, 1, 32)]  # one row in training and in eval mode
    assert "forward" not in vars(layer) and list(model.state_dict()) == keys
    model.eval()
    with torch.no_grad():
        outside = model(**batch).logits
        assert _last_hidden_shape(model, batch) == (5, 11, 32)  # out of the context: every token
    torch.testing.assert_close(inside, outside, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("request_", ["output_hidden_states", "output_attentions"])
def test_outputs_requested_at_call_time_get_the_stock_last_layer(request_):
    """A call that asks for hidden states or attentions gets every token of the last layer and every layer's
    attention map, as without the trim; the calls before and after it stay trimmed."""
    model, batch = dropout_model("bert", attn="eager").eval(), padded_batch("bert")  # SDPA returns no maps
    with torch.no_grad():
        reference = model(**batch, **{request_: True})
        with first_token_last_layer(model) as trimmed:
            assert trimmed and _last_hidden_shape(model, batch) == (5, 1, 32)
            result = model(**batch, **{request_: True})
            assert _last_hidden_shape(model, batch) == (5, 1, 32)
    key = request_.removeprefix("output_")
    assert len(result[key]) == len(reference[key]) == (3 if key == "hidden_states" else 2)
    for got, want in zip(result[key], reference[key]):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(result.logits, reference.logits, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("where", ["bert", "bert.encoder", "bert.encoder.layer.1", "bert.encoder.layer.1.output",
                                   "bert.encoder.layer.1.attention.self.query", "bert.pooler"])
@pytest.mark.parametrize("kind", ["forward", "forward_pre"])
def test_a_hook_on_a_module_the_trim_bypasses_or_reshapes_fires_as_without_it(where, kind):
    model, batch = dropout_model("bert").eval(), padded_batch("bert")
    seen = []
    module = model.get_submodule(where)
    hook = (lambda mod, args, out: seen.append(tuple((out if torch.is_tensor(out) else out[0]).shape))) \
        if kind == "forward" else (lambda mod, args: seen.append(tuple(args[0].shape) if args else None))
    handle = getattr(module, f"register_{kind}_hook")(hook)
    with torch.no_grad():
        model(**batch)
        reference, seen[:] = list(seen), []
        with first_token_last_layer(model):
            model(**batch)
    assert seen == reference and seen  # it fired, on inputs and outputs of the stock shapes
    handle.remove()
    with torch.no_grad(), first_token_last_layer(model):
        assert _last_hidden_shape(model, batch) == (5, 1, 32)  # the hook gone, the trim is back


@pytest.mark.parametrize("lora", [False, True])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("arch", FIRST_TOKEN_ARCHS)
def test_eval_mode_logits_and_predictions_are_unchanged_by_the_trim(arch, attn, lora):
    """Validation and the test predictions run trimmed too: same logits up to rounding, padded rows included."""
    model = dropout_model(arch, attn)
    if lora:
        apply_lora(model, "all-linear", rank=4, alpha=8.0, dropout=0.1)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_b" in name:
                    p.normal_(0.0, 0.3)
    model.eval()
    batch = padded_batch(arch)
    batch.pop("labels")
    with torch.no_grad():
        reference = model(**batch).logits
        with first_token_last_layer(model) as trimmed:
            assert trimmed
            result = model(**batch).logits
    torch.testing.assert_close(result, reference, rtol=1e-5, atol=1e-6)
    assert torch.equal(result.argmax(-1), reference.argmax(-1))


@pytest.mark.parametrize("arch", UNSUPPORTED)
def test_other_heads_are_left_alone(arch):
    model = dropout_model(arch, attn=None)  # each architecture's default attention
    batch = {k: v.clamp(max=CONFIGS[arch].vocab_size - 1) for k, v in padded_batch("bert").items()}
    reference = _step(model, batch)
    with first_token_last_layer(model) as trimmed:
        result = _step(model, batch)
    assert not trimmed
    _assert_same_step(reference, result)


def test_hidden_states_output_is_not_trimmed():
    model = dropout_model("bert")
    model.config.output_hidden_states = True  # a caller reading every layer's tokens needs the full last layer
    with first_token_last_layer(model) as trimmed:
        assert not trimmed


# ------------------------------------------------------------------ exact classes only, and a visible switch


class BertForSequenceClassification(transformers.BertForSequenceClassification):
    """A user's (or remote code's) subclass with the stock name whose head mean-pools every token."""

    def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, C)
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        logits = self.classifier(self.dropout((hidden * mask).sum(1) / mask.sum(1)))  # (B, K)
        return SequenceClassifierOutput(loss=F.cross_entropy(logits, labels), logits=logits)


def _same_named_subclass():
    config = copy.deepcopy(CONFIGS["bert"])
    config.hidden_dropout_prob, config.attention_probs_dropout_prob = 0.1, 0.2
    torch.manual_seed(0)
    return BertForSequenceClassification(config).train()


def test_a_same_named_subclass_that_pools_every_token_is_left_alone():
    model, batch = _same_named_subclass(), padded_batch("bert")
    assert type(model).__name__ == "BertForSequenceClassification"
    reference = _step(model, batch)
    with first_token_last_layer(model) as trimmed:
        result = _step(model, batch)
    assert not trimmed
    _assert_same_step(reference, result)  # trimmed, the mean over one row shifted the loss by ~2 %


@pytest.mark.parametrize("where", ["instance", "class"])
def test_a_last_layer_with_another_forward_is_left_alone(where):
    model, batch = dropout_model("bert"), padded_batch("bert")
    layer = model.bert.encoder.layer[-1]
    calls = []

    def traced(self, *args, **kwargs):
        calls.append(1)
        return type(self).__mro__[1].forward(self, *args, **kwargs) if where == "class" else \
            transformers.models.bert.modeling_bert.BertLayer.forward(self, *args, **kwargs)

    if where == "instance":
        layer.forward = types.MethodType(traced, layer)
    else:
        layer.__class__ = type("BertLayer", (type(layer),), {"forward": traced})
    with first_token_last_layer(model) as trimmed:
        model(**batch)
    assert not trimmed and calls == [1]
    assert (vars(layer).get("forward") is not None) == (where == "instance")  # the user's forward is kept


def test_required_on_an_unsupported_model_is_a_clear_error():
    for model in (dropout_model("distilbert", attn=None), _same_named_subclass()):
        with pytest.raises(PipelineError, match=r"train\.first_token_last_layer.*true.*"
                                                r"auto or false") as info:
            with first_token_last_layer(model, required=True):
                pass
        assert type(model).__name__ in str(info.value) and "\n" not in str(info.value)
    with first_token_last_layer(dropout_model("bert"), required=True) as trimmed:
        assert trimmed


def test_an_unverified_transformers_major_is_not_trimmed(monkeypatch):
    monkeypatch.setattr(first_token, "_transformers_major", lambda: 99)
    with first_token_last_layer(dropout_model("bert")) as trimmed:
        assert not trimmed
    with pytest.raises(PipelineError, match=r"transformers 99"):
        with first_token_last_layer(dropout_model("bert"), required=True):
            pass


@pytest.mark.parametrize("setting, calls", [("auto", [False]), (True, [True]), (False, [])])
def test_fit_follows_the_switch(monkeypatch, setting, calls, tiny_model_dir, split_dir):
    from tests.support.builders import load_encoded

    seen = []
    real = first_token.first_token_last_layer

    def spy(model, required=False):
        seen.append(required)
        return real(model, required=required)

    monkeypatch.setattr(first_token, "first_token_last_layer", spy)  # what trim_switch, fit's switch, calls
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, use_safetensors=True)
    cfg = training.FitConfig(lr=1e-3, epochs=1, batch_size=64, first_token_last_layer=setting, **EPOCHS_ONLY)
    train = load_encoded(split_dir, "train")
    result = training.fit(model, train, load_encoded(split_dir, "val"), cfg, pad_id=0, device=torch.device("cpu"),
                          progress=False)
    assert seen == calls and result.steps == -(-len(train) // 64)  # one epoch: the switch costs no extra steps


def test_fit_refuses_to_run_untrimmed_when_trimming_is_required(monkeypatch, tiny_model_dir, split_dir):
    from tests.support.builders import load_encoded

    monkeypatch.setattr(first_token, "_transformers_major", lambda: 99)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, use_safetensors=True)
    cfg = training.FitConfig(lr=1e-3, epochs=1, batch_size=64, first_token_last_layer=True, **EPOCHS_ONLY)
    with pytest.raises(PipelineError, match="first_token_last_layer"):
        training.fit(model, load_encoded(split_dir, "train"), load_encoded(split_dir, "val"), cfg, pad_id=0,
                     device=torch.device("cpu"), progress=False)
