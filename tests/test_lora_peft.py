"""Parity and file interoperability with peft (a dev dependency, imported here only)."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch
from torch import nn

from lora_pipeline.lora import (
    DEFAULT_TARGET_MODULES,
    apply_lora,
    export_peft,
    import_peft,
    lora_layers,
    mark_only_lora_as_trainable,
)
# `seeded` is the autouse fixture that fixes the RNG seeds.
from tests.lora_tiny_models import seeded  # noqa: F401
from tests.lora_tiny_models import logits, randomize_lora, tiny_batch, tiny_model, train_steps

peft = pytest.importorskip("peft")

PARITY_ARCHS = ("bert", "roberta", "distilbert", "gpt2")
TIGHT = {"atol": 1e-6, "rtol": 1e-6}


def peft_lora(model: nn.Module, targets: list[str], **kwargs) -> nn.Module:
    """peft's LoRA on ``model`` with the same hyper-parameters as ours (rank 4, alpha 8 by default)."""
    config = peft.LoraConfig(r=kwargs.pop("r", 4), lora_alpha=kwargs.pop("lora_alpha", 8), target_modules=targets,
                             task_type="SEQ_CLS", lora_dropout=0.0, **kwargs)
    return peft.get_peft_model(model, config)


def copy_adapters_to_peft(ours: nn.Module, theirs: nn.Module) -> None:
    inner = theirs.base_model.model
    with torch.no_grad():
        for name, layer in lora_layers(ours):
            target = inner.get_submodule(name)
            target.lora_A["default"].weight.copy_(layer.lora_a)
            target.lora_B["default"].weight.copy_(layer.lora_b)


def peft_name_to_ours(name: str) -> str:
    """Map a peft parameter name onto ours: this is the format we claim to mirror."""
    name = name.removeprefix("base_model.model.")
    for peft_part, our_part in ((".lora_A.default.weight", ".lora_a"), (".lora_B.default.weight", ".lora_b"),
                                (".modules_to_save.default.", "."), (".base_layer.", ".base.")):
        name = name.replace(peft_part, our_part)
    return name


def grads(model: nn.Module, batch: dict[str, torch.Tensor], rename=lambda n: n) -> dict[str, torch.Tensor]:
    model.zero_grad()
    model(**batch).loss.backward()
    return {rename(n): p.grad for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("arch, rslora, bias", [(arch, False, "none") for arch in PARITY_ARCHS]
                         + [("bert", True, "lora_only"), ("gpt2", True, "all")])
def test_outputs_and_gradients_match_peft(arch: str, rslora: bool, bias: str) -> None:
    base = tiny_model(arch)
    ours, theirs_base = copy.deepcopy(base), copy.deepcopy(base)
    names = apply_lora(ours, rank=4, alpha=8, rslora=rslora, bias=bias)
    mark_only_lora_as_trainable(ours, bias=bias)
    randomize_lora(ours)
    targets = sorted({n.rsplit(".", 1)[1] for n in names})
    theirs = peft_lora(theirs_base, targets, use_rslora=rslora, bias=bias).eval()
    copy_adapters_to_peft(ours, theirs)
    batch = tiny_batch()

    torch.testing.assert_close(logits(ours, batch), logits(theirs, batch), **TIGHT)
    our_grads, their_grads = grads(ours, batch), grads(theirs, batch, peft_name_to_ours)
    assert set(our_grads) == set(their_grads)
    assert any(n.endswith(".lora_a") for n in our_grads) and any(n.startswith(("classifier", "score"))
                                                                 for n in our_grads)
    for name, grad in our_grads.items():
        torch.testing.assert_close(grad, their_grads[name], **TIGHT, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("arch, bias", [("bert", "none"), ("bert", "lora_only"), ("bert", "all"),
                                        ("gpt2", "lora_only")])
def test_export_loads_in_peft_with_same_logits(arch: str, bias: str, tmp_path) -> None:
    model = tiny_model(arch)
    apply_lora(model, rank=4, alpha=8, bias=bias, rank_pattern={"layer.1.*": 2} if arch == "bert" else None)
    mark_only_lora_as_trainable(model, bias=bias)
    batch = tiny_batch()
    train_steps(model, batch)
    export_peft(model, tmp_path / "peft", base_model_name=f"tiny-random-{arch}")

    loaded = peft.PeftModel.from_pretrained(tiny_model(arch), tmp_path / "peft").eval()
    torch.testing.assert_close(logits(loaded, batch), logits(model, batch), **TIGHT)
    assert not torch.allclose(logits(tiny_model(arch), batch), logits(model, batch))  # the adapter mattered


@pytest.mark.parametrize("arch, bias", [("bert", "all"), ("roberta", "none"), ("distilbert", "lora_only"),
                                        ("gpt2", "lora_only")])
def test_import_of_peft_save_pretrained_gives_same_logits(arch: str, bias: str, tmp_path) -> None:
    theirs = peft_lora(tiny_model(arch), list(DEFAULT_TARGET_MODULES[arch]), r=4, lora_alpha=16, use_rslora=True,
                       bias=bias)
    with torch.no_grad():
        for name, param in theirs.named_parameters():
            if param.requires_grad:
                param.normal_(0.0, 0.3)
    theirs.save_pretrained(tmp_path / "peft")

    ours = tiny_model(arch)
    config = import_peft(ours, tmp_path / "peft")
    assert config["r"] == 4 and config["use_rslora"] is True
    assert all(layer.rslora and layer.scaling == 8.0 for _, layer in lora_layers(ours))
    batch = tiny_batch()
    torch.testing.assert_close(logits(ours, batch), logits(theirs.eval(), batch), **TIGHT)


def test_import_refuses_a_model_that_already_has_lora(tmp_path) -> None:
    peft_lora(tiny_model("bert"), ["query"]).save_pretrained(tmp_path / "peft")
    model = tiny_model("bert")
    apply_lora(model)
    with pytest.raises(ValueError, match="without LoRA layers"):
        import_peft(model, tmp_path / "peft")


def test_import_refuses_unsupported_peft_options(tmp_path) -> None:
    peft_lora(tiny_model("bert"), ["query"], use_dora=True).save_pretrained(tmp_path / "peft")
    with pytest.raises(ValueError, match="use_dora"):
        import_peft(tiny_model("bert"), tmp_path / "peft")


def test_package_does_not_import_peft() -> None:
    code = "import sys, lora_pipeline.lora; assert 'peft' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
