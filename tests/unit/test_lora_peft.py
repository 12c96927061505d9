"""Parity and file interoperability with peft (a dev dependency: the tests import it, the package never does)."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from lora_pipeline.lora import (
    DEFAULT_TARGET_MODULES,
    HEAD_NAMES,
    apply_lora,
    export_peft,
    import_peft,
    lora_layers,
    mark_only_lora_as_trainable,
    merge_lora,
)
from tests.support.peft_parity import (
    TIGHT,
    assert_same_logits_and_grads,
    copy_adapters_to_peft,
    grads,
    matched_pair,
    peft_lora,
    peft_name_to_ours,
    peft_wrapped,
)
from tests.support.tiny_models import (
    ARCHS,
    HEAD_CASES,
    logits,
    randomize_lora,
    tiny_batch,
    tiny_model,
    train_steps,
)

peft = pytest.importorskip("peft")

PARITY_ARCHS = ARCHS  # bert, roberta, deberta-v2, distilbert, gpt2, electra, xlm-roberta
# peft 0.21 cannot build DistilBERT with all-linear: it wraps pre_classifier with LoRA and then fails to make it
# a modules_to_save copy (TypeError); ours leaves pre_classifier to train in full (test below).
ALL_LINEAR_ARCHS = tuple(a for a in ARCHS if a != "distilbert")


def randomize_lora_peft(model: nn.Module) -> None:
    """Give every trainable peft tensor a non-zero value, so the adapters change the output."""
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.normal_(0.0, 0.3)


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


def test_a_refused_import_leaves_the_model_as_it_was(tmp_path) -> None:
    peft_lora(tiny_model("bert"), ["query"]).save_pretrained(tmp_path / "peft")
    config_path = tmp_path / "peft" / "adapter_config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "r": 3}))  # tensors have rank 4
    model = tiny_model("bert")
    modules = [(n, id(m)) for n, m in model.named_modules()]
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    with pytest.raises(ValueError, match="wrong shape"):
        import_peft(model, tmp_path / "peft")
    assert [(n, id(m)) for n, m in model.named_modules()] == modules
    assert {n: p.requires_grad for n, p in model.named_parameters()} == grads


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_export_of_a_merged_model_writes_what_the_unmerged_one_writes(arch: str, tmp_path) -> None:
    """Export writes LoRA factors and trained modules, never a base weight: merging before it changes nothing."""
    model, batch = tiny_model(arch), tiny_batch()
    apply_lora(model, rank=3, alpha=7, bias="lora_only")
    mark_only_lora_as_trainable(model)
    train_steps(model, batch)
    export_peft(model, tmp_path / "unmerged", base_model_name="tiny")
    merge_lora(model)
    export_peft(model, tmp_path / "merged", base_model_name="tiny")
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        assert (tmp_path / "merged" / name).read_bytes() == (tmp_path / "unmerged" / name).read_bytes()
    tensors = load_file(str(tmp_path / "merged" / "adapter_model.safetensors"))
    assert not any(key.endswith(".weight") and ".base_layer." in key for key in tensors)


def test_import_of_a_peft_adapter_whose_target_list_has_an_entry_matching_nothing(tmp_path) -> None:
    """peft ignores such an entry when it trains, so the file it wrote is complete: import it as peft loads it."""
    theirs = peft_lora(tiny_model("bert"), ["query", "q_proj"])
    randomize_lora_peft(theirs)
    theirs.save_pretrained(tmp_path / "peft")
    ours = tiny_model("bert")
    import_peft(ours, tmp_path / "peft")
    assert {n for n, _ in lora_layers(ours)} == peft_wrapped(theirs)
    torch.testing.assert_close(logits(ours, tiny_batch()), logits(theirs.eval(), tiny_batch()), **TIGHT)


def test_import_refuses_unsupported_peft_options(tmp_path) -> None:
    peft_lora(tiny_model("bert"), ["query"], lora_bias=True).save_pretrained(tmp_path / "peft")
    with pytest.raises(ValueError, match="lora_bias"):
        import_peft(tiny_model("bert"), tmp_path / "peft")


def test_package_does_not_import_peft() -> None:
    code = "import sys, lora_pipeline.lora; assert 'peft' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("arch", ALL_LINEAR_ARCHS)
def test_all_linear_wraps_the_same_modules_and_matches_peft(arch: str) -> None:
    ours, theirs = matched_pair(arch, "all-linear")
    assert_same_logits_and_grads(ours, theirs, **TIGHT)


def test_all_linear_on_distilbert_trains_pre_classifier_in_full() -> None:
    model = tiny_model("distilbert")
    names = apply_lora(model, "all-linear")
    assert not any("classifier" in n for n in names)
    with pytest.raises(TypeError, match="modules_to_save cannot be applied"):  # why it is not in the parity set
        peft_lora(tiny_model("distilbert"), "all-linear")


@pytest.mark.parametrize("arch, targets", [("bert", "all-linear"), ("bert", ["query", "value", "dense"]),
                                           ("deberta-v2", "all-linear")])
def test_modules_to_save_matches_peft(arch: str, targets) -> None:
    """A pooler trained in full (the pipeline's default): never wrapped, same logits and gradients as peft."""
    ours, theirs = matched_pair(arch, targets, modules_to_save=("pooler",))
    assert not any(".pooler." in n for n, _ in lora_layers(ours))
    assert_same_logits_and_grads(ours, theirs, **TIGHT)


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_rank_and_alpha_patterns_match_peft(arch: str) -> None:
    layer1 = "layer.1.attention.self.value" if arch == "bert" else "h.1.attn.c_attn"
    ours, theirs = matched_pair(arch, None if arch == "gpt2" else ["query", "value"], rank_pattern={layer1: 2},
                                alpha_pattern={"h.0.attn.c_attn" if arch == "gpt2" else "query": 16})
    assert {(2, 4.0), (4, 4.0)} <= {(layer.rank, layer.scaling) for _, layer in lora_layers(ours)}  # both applied
    assert_same_logits_and_grads(ours, theirs, **TIGHT)


@pytest.mark.parametrize("arch", ["bert", "gpt2", "electra"])
def test_lora_dropout_matches_peft_with_the_same_seed(arch: str) -> None:
    """Train mode, dropout 0.1 on the adapter input: both draw the same masks in the same order."""
    ours, theirs = matched_pair(arch, "all-linear", dropout=0.1)
    batch, runs = tiny_batch(), []
    for model, rename in ((ours, lambda n: n), (theirs, peft_name_to_ours)):
        model.train()
        torch.manual_seed(3)
        runs.append((model(**batch).logits.detach(), grads(model, batch, rename)))
    (our_logits, _), (their_logits, _) = runs
    torch.testing.assert_close(our_logits, their_logits, **TIGHT)
    assert not torch.allclose(our_logits, logits(ours.eval(), batch))  # dropout did act
    (_, our_grads), (_, their_grads) = runs
    for name, grad in our_grads.items():  # grads() ran a second forward right after: RNG streams still in step
        torch.testing.assert_close(grad, their_grads[name], **TIGHT, msg=lambda m: f"{name}: {m}")


# fp32 rounding of a fused scale (ours: torch.add(h, u, alpha=s)) and an unfused one (peft: h + u * s) differs for
# non-power-of-two s, so the two fp32 results are not bit-equal (up to ~1e-6 apart here). Both are compared with
# a float64 run of the same model instead: on these tiny models both stay within 5e-6 (max seen 2.1e-6), and ours
# is never worse than twice peft's error (+ 1e-6).
FP64_ATOL = 5e-6


@pytest.mark.parametrize("arch", ["bert", "gpt2", "deberta-v2"])
@pytest.mark.parametrize("rank, alpha, rslora", [(3, 5, False), (3, 7, True), (5, 12, False), (6, 10, True)])
def test_non_power_of_two_scalings_against_a_float64_reference(arch: str, rank: int, alpha: float,
                                                               rslora: bool) -> None:
    ours, theirs = matched_pair(arch, "all-linear", rank=rank, alpha=alpha, rslora=rslora)
    batch = tiny_batch()
    reference = logits(copy.deepcopy(ours).double(), batch)
    torch.testing.assert_close(logits(copy.deepcopy(theirs).double(), batch), reference, atol=1e-12, rtol=0)
    errors = [(logits(model, batch).double() - reference).abs().max().item() for model in (ours, theirs)]
    assert max(errors) <= FP64_ATOL, errors
    assert errors[0] <= 2 * errors[1] + 1e-6, errors


EXPECTED_SAVED = {"bert": ["bert.pooler", "classifier"], "roberta": ["classifier"],
                  "distilbert": ["pre_classifier", "classifier"], "gpt2": ["score"]}


@pytest.mark.parametrize("arch", list(HEAD_CASES))
def test_export_of_each_head_type_round_trips_through_peft(arch: str, tmp_path) -> None:
    """BERT pooler (modules_to_save), RoBERTa classifier.dense (hit by target "dense"), DistilBERT
    pre_classifier, GPT-2 score: export writes every trained module, peft loads it to the same logits, and
    import_peft brings it back."""
    model, batch = tiny_model(arch), tiny_batch()
    extra = HEAD_CASES[arch]
    apply_lora(model, ["dense"] if arch == "roberta" else None, rank=4, alpha=8, modules_to_save=extra)
    mark_only_lora_as_trainable(model, also=HEAD_NAMES + extra)
    train_steps(model, batch)
    export_peft(model, tmp_path / "peft", base_model_name=f"tiny-random-{arch}")
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert config["modules_to_save"] == EXPECTED_SAVED[arch]

    loaded = peft.PeftModel.from_pretrained(tiny_model(arch), tmp_path / "peft").eval()
    torch.testing.assert_close(logits(loaded, batch), logits(model, batch), **TIGHT)
    back = tiny_model(arch)
    import_peft(back, tmp_path / "peft")
    torch.testing.assert_close(logits(back, batch), logits(model, batch), atol=0, rtol=0)
    assert {n for n, p in back.named_parameters() if p.requires_grad} == \
        {n for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("arch, given", [("bert", ["pooler"]), ("gpt2", [])])
def test_export_adds_the_task_heads_to_a_given_modules_to_save_as_peft_does(arch: str, given: list[str],
                                                                             tmp_path) -> None:
    """For SEQ_CLS peft adds classifier and score to modules_to_save itself: a list without them is complete."""
    model, batch = tiny_model(arch), tiny_batch()
    apply_lora(model, rank=4, alpha=8, modules_to_save=given)
    mark_only_lora_as_trainable(model, also=HEAD_NAMES + tuple(given))
    train_steps(model, batch)
    export_peft(model, tmp_path / "peft", base_model_name=f"tiny-random-{arch}", modules_to_save=given)
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert config["modules_to_save"] == [*given, "classifier", "score"]  # what peft's save_pretrained writes
    loaded = peft.PeftModel.from_pretrained(tiny_model(arch), tmp_path / "peft").eval()
    torch.testing.assert_close(logits(loaded, batch), logits(model, batch), **TIGHT)


def test_export_refuses_modules_to_save_that_leave_out_a_trained_module(tmp_path) -> None:
    model = tiny_model("bert")
    apply_lora(model, modules_to_save=["pooler"])
    mark_only_lora_as_trainable(model, also=HEAD_NAMES + ("pooler",))
    message = r"modules_to_save=\['classifier', 'score'\] leaves out .*bert.pooler.dense.weight"
    with pytest.raises(ValueError, match=message):
        export_peft(model, tmp_path / "peft", base_model_name="tiny", modules_to_save=["classifier"])


@pytest.mark.parametrize("arch", ALL_LINEAR_ARCHS)
def test_import_of_a_peft_all_linear_adapter_gives_same_logits(arch: str, tmp_path) -> None:
    """peft records all-linear's targets before it drops the head (e.g. classifier.dense): import drops them too."""
    extra = HEAD_CASES.get(arch, ()) or (("pooler",) if arch == "deberta-v2" else ())
    theirs = peft_lora(tiny_model(arch), "all-linear", r=4, lora_alpha=8, modules_to_save=list(extra) or None)
    with torch.no_grad():
        for param in theirs.parameters():
            if param.requires_grad:
                param.normal_(0.0, 0.3)
    theirs.save_pretrained(tmp_path / "peft")
    ours = tiny_model(arch)
    import_peft(ours, tmp_path / "peft")
    assert {n for n, _ in lora_layers(ours)} == peft_wrapped(theirs)
    torch.testing.assert_close(logits(ours, tiny_batch()), logits(theirs.eval(), tiny_batch()), **TIGHT)
