"""DoRA layers (``use_dora``): the formula, parity with peft's ``use_dora``, merge, adapter files and peft files."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers.pytorch_utils import Conv1D

from lora_pipeline.lora import (
    DEFAULT_TARGET_MODULES,
    DoRAConv1D,
    DoRALinear,
    LoRALayer,
    apply_lora,
    base_fingerprint,
    count_parameters,
    export_peft,
    import_peft,
    load_adapter,
    lora_layers,
    lora_state_dict,
    mark_only_lora_as_trainable,
    merge_and_unload,
    merge_lora,
    save_adapter,
    trainable_summary,
    unmerge_lora,
    wrap_layer,
)
from lora_pipeline.lora.adapter_io import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from tests.support.peft_parity import (TIGHT, assert_same_logits_and_grads, copy_adapters_to_peft, grads,
                                        matched_pair, peft_lora, peft_name_to_ours)
from tests.support.tiny_models import ARCHS, logits, randomize_lora, tiny_batch, tiny_model, train_steps

peft = pytest.importorskip("peft")

EXACT = {"atol": 0.0, "rtol": 0.0}


def dora_layer(kind: str, bias: bool = True) -> LoRALayer:
    base = nn.Linear(12, 7, bias=bias) if kind == "linear" else Conv1D(7, 12)
    layer = wrap_layer(base, rank=3, alpha=6, use_dora=True)
    with torch.no_grad():
        layer.lora_b.normal_()
        layer.lora_magnitude.mul_(torch.rand(7) + 0.5)
    return layer


def dora_model(arch: str, **kwargs) -> nn.Module:
    model = tiny_model(arch)
    apply_lora(model, rank=4, alpha=8, use_dora=True, **kwargs)
    mark_only_lora_as_trainable(model)
    return model


@pytest.mark.parametrize("kind, cls", [("linear", DoRALinear), ("conv1d", DoRAConv1D)])
def test_wrap_layer_with_use_dora_picks_the_dora_class(kind: str, cls: type) -> None:
    layer = dora_layer(kind)
    assert type(layer) is cls and isinstance(layer, LoRALayer) and layer.use_dora
    assert set(layer.adapter_parameters()) == {"lora_a", "lora_b", "lora_magnitude"}


@pytest.mark.parametrize("kind", ["linear", "conv1d"])
def test_forward_is_magnitude_times_the_normalised_adapted_weight(kind: str) -> None:
    """h = m · (W0 + s·B·A) / ||W0 + s·B·A||_c · x + b, the norm per output unit over the input dimension."""
    layer = dora_layer(kind)
    weight = layer.base.weight if kind == "linear" else layer.base.weight.T  # (out, in)
    adapted = weight + layer.scaling * layer.lora_b @ layer.lora_a
    expected_weight = layer.lora_magnitude.view(-1, 1) * adapted / adapted.norm(dim=1, keepdim=True)
    x = torch.randn(5, 12)
    torch.testing.assert_close(layer(x), x @ expected_weight.T + layer.base.bias, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("arch", ARCHS)
def test_output_unchanged_at_init(arch: str) -> None:
    """The magnitude starts at ||W0||_c and B at zero: the model computes exactly what the base does."""
    model, batch = dora_model(arch), tiny_batch()
    for _, layer in lora_layers(model):
        weight = layer.base.weight if isinstance(layer, DoRALinear) else layer.base.weight.T
        torch.testing.assert_close(layer.lora_magnitude, torch.linalg.norm(weight, dim=1), **EXACT)
    torch.testing.assert_close(logits(model, batch), logits(tiny_model(arch), batch), **EXACT)


@pytest.mark.parametrize("arch", ARCHS)
def test_outputs_and_gradients_match_peft(arch: str) -> None:
    """Random A, B and magnitude copied into peft's DoRA: same logits, same gradients (magnitude included)."""
    ours, theirs = matched_pair(arch, list(DEFAULT_TARGET_MODULES[arch]), use_dora=True)
    assert_same_logits_and_grads(ours, theirs, **TIGHT)
    assert any(name.endswith(".lora_magnitude") for name in grads(ours, tiny_batch()))


@pytest.mark.parametrize("arch, targets, kwargs", [
    ("bert", "all-linear", {"bias": "lora_only"}), ("gpt2", "all-linear", {"bias": "all"}),
    ("roberta", ["query", "value"], {"rank": 3, "alpha": 5, "rslora": True}),
    ("deberta-v2", "all-linear", {"modules_to_save": ("pooler",)})])
def test_settings_and_all_linear_match_peft(arch: str, targets, kwargs: dict) -> None:
    ours, theirs = matched_pair(arch, targets, use_dora=True, **kwargs)
    assert_same_logits_and_grads(ours, theirs, **TIGHT)


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_trained_adapter_matches_peft(arch: str) -> None:
    """Adapters after AdamW steps (realistic values), copied into peft: same logits and gradients."""
    ours, theirs = matched_pair(arch, list(DEFAULT_TARGET_MODULES[arch]), use_dora=True)
    for _, layer in lora_layers(ours):
        layer.reset_lora_parameters()
    mark_only_lora_as_trainable(ours, also=())  # the head stays as peft's copy of it
    train_steps(ours, tiny_batch(), steps=5, lr=1e-2)
    mark_only_lora_as_trainable(ours)  # the head trains again, as in peft, for the gradient comparison
    copy_adapters_to_peft(ours, theirs)
    assert_same_logits_and_grads(ours, theirs, **TIGHT)


@pytest.mark.parametrize("arch", ["bert", "gpt2", "electra"])
def test_dropout_matches_peft_with_the_same_seed(arch: str) -> None:
    """Train mode with dropout: the adapter and the rescaled base path see dropout(x), as in peft."""
    ours, theirs = matched_pair(arch, list(DEFAULT_TARGET_MODULES[arch]), dropout=0.1, use_dora=True)
    batch, runs = tiny_batch(), []
    for model, rename in ((ours, lambda n: n), (theirs, peft_name_to_ours)):
        model.train()
        torch.manual_seed(3)
        runs.append((model(**batch).logits.detach(), grads(model, batch, rename)))
    (our_logits, our_grads), (their_logits, their_grads) = runs
    torch.testing.assert_close(our_logits, their_logits, **TIGHT)
    assert not torch.allclose(our_logits, logits(ours.eval(), batch))  # dropout did act
    for name, grad in our_grads.items():
        torch.testing.assert_close(grad, their_grads[name], **TIGHT, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("arch", ARCHS)
def test_merged_logits_equal_unmerged_and_unmerge_restores_w0_bit_for_bit(arch: str) -> None:
    model, batch = dora_model(arch), tiny_batch()
    randomize_lora(model)
    before = {name: layer.base.weight.clone() for name, layer in lora_layers(model)}
    unmerged = logits(model, batch)
    merge_lora(model)
    torch.testing.assert_close(logits(model, batch), unmerged, atol=1e-5, rtol=1e-5)
    assert not all(torch.equal(layer.base.weight, before[name]) for name, layer in lora_layers(model))
    unmerge_lora(model)
    assert all(torch.equal(layer.base.weight, before[name]) for name, layer in lora_layers(model))
    torch.testing.assert_close(logits(model, batch), unmerged, **EXACT)


@pytest.mark.parametrize("kind", ["linear", "conv1d"])
def test_merge_without_keeping_the_original_unmerges_to_rounding(kind: str) -> None:
    layer = dora_layer(kind)
    w0 = layer.base.weight.clone()
    layer.merge(keep_original=False)
    layer.unmerge()
    torch.testing.assert_close(layer.base.weight, w0, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_merge_and_unload_gives_the_same_logits(arch: str) -> None:
    model, batch = dora_model(arch), tiny_batch()
    train_steps(model, batch)
    trained = logits(model, batch)
    merged = merge_and_unload(model)
    assert not lora_layers(merged)
    torch.testing.assert_close(logits(merged, batch), trained, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_save_load_round_trip_reproduces_logits(arch: str, tmp_path) -> None:
    model, batch = dora_model(arch), tiny_batch()
    train_steps(model, batch)
    save_adapter(model, tmp_path / "adapter", base_model_name="tiny")
    config = json.loads((tmp_path / "adapter" / ADAPTER_CONFIG).read_text())
    tensors = load_file(str(tmp_path / "adapter" / ADAPTER_WEIGHTS))
    assert config["use_dora"] is True
    assert {f"{name}.lora_magnitude" for name, _ in lora_layers(model)} <= set(tensors)

    fresh = tiny_model(arch)
    load_adapter(fresh, tmp_path / "adapter")
    assert all(isinstance(layer, DoRALinear if arch == "bert" else DoRAConv1D) for _, layer in lora_layers(fresh))
    torch.testing.assert_close(logits(fresh, batch), logits(model, batch), **EXACT)
    assert {n for n, p in fresh.named_parameters() if p.requires_grad} == \
        {n for n, p in model.named_parameters() if p.requires_grad}


def test_the_fingerprint_ignores_the_magnitude() -> None:
    """A DoRA model fingerprints like its plain base, so the check can run before DoRA is applied."""
    model = dora_model("bert")
    randomize_lora(model)
    assert base_fingerprint(model) == base_fingerprint(tiny_model("bert"))


def test_an_adapter_config_without_use_dora_loads_as_lora(tmp_path) -> None:
    """Adapters saved before DoRA existed have no use_dora key: they are LoRA adapters."""
    model = tiny_model("bert")
    apply_lora(model, rank=4, alpha=8)
    mark_only_lora_as_trainable(model)
    randomize_lora(model)
    save_adapter(model, tmp_path / "adapter", base_model_name="tiny")
    path = tmp_path / "adapter" / ADAPTER_CONFIG
    config = json.loads(path.read_text())
    assert config.pop("use_dora") is False
    path.write_text(json.dumps(config))
    fresh = tiny_model("bert")
    load_adapter(fresh, tmp_path / "adapter")
    assert not any(layer.use_dora for _, layer in lora_layers(fresh))
    torch.testing.assert_close(logits(fresh, tiny_batch()), logits(model, tiny_batch()), **EXACT)


@pytest.mark.parametrize("saved_dora", [True, False])
def test_load_refuses_an_adapter_of_the_other_kind(saved_dora: bool, tmp_path) -> None:
    model = tiny_model("bert")
    apply_lora(model, rank=4, alpha=8, use_dora=saved_dora)
    mark_only_lora_as_trainable(model)
    save_adapter(model, tmp_path / "adapter", base_model_name="tiny")
    target = tiny_model("bert")
    apply_lora(target, rank=4, alpha=8, use_dora=not saved_dora)
    state = {k: v.clone() for k, v in target.state_dict().items()}
    kinds = ("DoRA", "LoRA") if saved_dora else ("LoRA", "DoRA")
    with pytest.raises(ValueError, match=f"is a {kinds[0]} adapter .*but the model has {kinds[1]} layers"):
        load_adapter(target, tmp_path / "adapter")
    assert all(torch.equal(v, state[k]) for k, v in target.state_dict().items())
    assert all(layer.use_dora is not saved_dora for _, layer in lora_layers(target))


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_export_loads_in_peft_with_same_logits(arch: str, tmp_path) -> None:
    model, batch = dora_model(arch), tiny_batch()
    train_steps(model, batch)
    export_peft(model, tmp_path / "peft", base_model_name=f"tiny-random-{arch}")
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    tensors = load_file(str(tmp_path / "peft" / "adapter_model.safetensors"))
    assert config["use_dora"] is True
    theirs = peft_lora(tiny_model(arch), list(DEFAULT_TARGET_MODULES[arch]), use_dora=True)
    theirs.save_pretrained(tmp_path / "theirs")
    assert set(tensors) == set(load_file(str(tmp_path / "theirs" / "adapter_model.safetensors")))  # peft's names
    assert sum(key.endswith(".lora_magnitude_vector") for key in tensors) == len(lora_layers(model))

    loaded = peft.PeftModel.from_pretrained(tiny_model(arch), tmp_path / "peft").eval()
    torch.testing.assert_close(logits(loaded, batch), logits(model, batch), **TIGHT)
    assert not torch.allclose(logits(tiny_model(arch), batch), logits(model, batch))  # the adapter mattered


@pytest.mark.parametrize("arch", ["bert", "roberta", "distilbert", "gpt2"])
def test_import_of_a_peft_dora_adapter_gives_same_logits(arch: str, tmp_path) -> None:
    theirs = peft_lora(tiny_model(arch), list(DEFAULT_TARGET_MODULES[arch]), r=4, lora_alpha=8, use_dora=True)
    with torch.no_grad():
        for name, param in theirs.named_parameters():
            if param.requires_grad:  # magnitudes stay positive and of their own size
                param.mul_(torch.rand_like(param) + 0.5) if "magnitude" in name else param.normal_(0.0, 0.3)
    theirs.save_pretrained(tmp_path / "peft")
    ours = tiny_model(arch)
    config = import_peft(ours, tmp_path / "peft")
    assert config["use_dora"] is True and all(layer.use_dora for _, layer in lora_layers(ours))
    torch.testing.assert_close(logits(ours, tiny_batch()), logits(theirs.eval(), tiny_batch()), **TIGHT)
    assert any(n.endswith(".lora_magnitude") for n, p in ours.named_parameters() if p.requires_grad)


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_magnitude_trains_and_counts(arch: str) -> None:
    """Per target: rank·(in + out) LoRA parameters plus out magnitudes; the same count as peft's."""
    model = dora_model(arch)
    adapter = sum(p.numel() for p in lora_state_dict(model).values())
    assert adapter == sum(layer.rank * (layer.in_features + layer.out_features) + layer.out_features
                          for _, layer in lora_layers(model))
    trainable, total = count_parameters(model)
    head = sum(p.numel() for n, p in model.named_parameters() if n.startswith(("classifier", "score")))
    assert trainable == adapter + head
    assert total == sum(p.numel() for p in tiny_model(arch).parameters()) + adapter
    assert all(layer.lora_magnitude.requires_grad and not layer.base.weight.requires_grad
               for _, layer in lora_layers(model))
    assert f"trainable params: {trainable:,d}" in trainable_summary(model)
    theirs = peft_lora(tiny_model(arch), list(DEFAULT_TARGET_MODULES[arch]), use_dora=True)
    assert theirs.get_nb_trainable_parameters()[0] == trainable  # (its total counts the head twice: a copy)


def test_training_changes_only_adapters_magnitudes_and_head() -> None:
    model, batch = dora_model("bert"), tiny_batch()
    before = copy.deepcopy(model.state_dict())
    train_steps(model, batch)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert any(k.endswith(".lora_magnitude") for k in changed)
    assert all(k.endswith((".lora_a", ".lora_b", ".lora_magnitude")) or k.startswith("classifier") for k in changed)


def test_import_reads_the_magnitude_under_its_in_memory_name_too(tmp_path) -> None:
    """peft's files name it ``lora_magnitude_vector``; a file keyed ``lora_magnitude_vector.weight`` (peft's module
    attribute) loads the same."""
    theirs = peft_lora(tiny_model("bert"), ["query", "value"], use_dora=True)
    with torch.no_grad():
        for name, param in theirs.named_parameters():
            if "magnitude" in name:
                param.mul_(torch.rand_like(param) + 0.5)
    theirs.save_pretrained(tmp_path / "peft")
    path = tmp_path / "peft" / "adapter_model.safetensors"
    tensors = load_file(str(path))
    save_file({k + ".weight" if k.endswith("_magnitude_vector") else k: v for k, v in tensors.items()}, str(path))
    ours = tiny_model("bert")
    import_peft(ours, tmp_path / "peft")
    torch.testing.assert_close(logits(ours, tiny_batch()), logits(theirs.eval(), tiny_batch()), **TIGHT)
