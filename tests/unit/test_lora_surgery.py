"""apply_lora targeting, trainability, counting, merging and unloading on tiny random HF models."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn
from transformers import GPT2LMHeadModel
from transformers.pytorch_utils import Conv1D

from lora_pipeline.lora import (
    DEFAULT_TARGET_MODULES,
    HEAD_NAMES,
    LoRAArgumentError,
    LoRALayer,
    apply_lora,
    count_parameters,
    lora_layers,
    mark_only_lora_as_trainable,
    merge_and_unload,
    merge_lora,
    trainable_summary,
    unmerge_lora,
)
from lora_pipeline.lora.surgery import module_under
# `seeded` is the autouse fixture that fixes the RNG seeds.
from tests.support.tiny_models import ARCHS, CONFIGS, logits, randomize_lora, tiny_batch, tiny_model, train_steps

LAYERS = 2  # num_hidden_layers of every tiny config


@pytest.mark.parametrize("arch", ARCHS)
def test_per_architecture_defaults(arch: str) -> None:
    model = tiny_model(arch)
    names = apply_lora(model)
    targets = DEFAULT_TARGET_MODULES[arch]
    assert len(names) == LAYERS * len(targets)
    assert {name.rsplit(".", 1)[1] for name in names} == set(targets)
    assert [name for name, _ in lora_layers(model)] == names


@pytest.mark.parametrize("arch", ARCHS)
def test_output_unchanged_at_init(arch: str) -> None:
    model, batch = tiny_model(arch), tiny_batch()
    before = logits(model, batch)
    apply_lora(model, "all-linear", rank=4, alpha=8)
    assert torch.equal(logits(model, batch), before)


def test_unknown_model_type_without_targets_raises() -> None:
    with pytest.raises(ValueError, match="no default LoRA target_modules"):
        apply_lora(nn.Sequential(nn.Linear(4, 4)))


def test_suffix_matching_is_by_whole_name_parts() -> None:
    model = nn.ModuleDict({"query": nn.Linear(2, 2), "query_proj": nn.Linear(2, 2),
                           "block": nn.ModuleDict({"query": nn.Linear(2, 2), "subquery": nn.Linear(2, 2)})})
    assert apply_lora(model, ["query"], rank=1) == ["query", "block.query"]


def test_regex_target_must_match_the_full_name() -> None:
    model = tiny_model("bert")
    names = apply_lora(model, r".*layer\.0\.attention\.self\.(query|key)")
    assert names == ["bert.encoder.layer.0.attention.self.query", "bert.encoder.layer.0.attention.self.key"]
    with pytest.raises(ValueError, match="matched no"):
        apply_lora(tiny_model("bert"), r"query")  # a search would match, a full match does not


@pytest.mark.parametrize("targets, named", [
    (r".*layer\.0\.attention.*", "bert.encoder.layer.0.attention (BertAttention)"),
    (r"bert\.encoder\.layer\.\d\.(attention\.self\.query|output\.LayerNorm)",
     "bert.encoder.layer.1.output.LayerNorm (LayerNorm)"),
    (["query", "LayerNorm"], "bert.embeddings.LayerNorm (LayerNorm)"),
])
def test_targets_that_match_modules_other_than_linear_ones_are_refused_naming_them(targets, named) -> None:
    """As peft: LoRA wraps nn.Linear/Conv1D only, and a target that also selects other modules is an error, not a
    silent narrowing."""
    model = tiny_model("bert")
    with pytest.raises(LoRAArgumentError, match="not nn.Linear/Conv1D") as err:
        apply_lora(model, targets)
    assert named in str(err.value) and err.value.argument == "target_modules"
    assert not lora_layers(model)


def test_list_entries_that_match_no_module_are_refused_naming_them() -> None:
    model = tiny_model("bert")
    with pytest.raises(LoRAArgumentError, match=r"entries \['q_proj', 'v_proj'\] match no module of "
                                                r"BertForSequenceClassification.*'query'") as err:
        apply_lora(model, ["query", "q_proj", "value", "v_proj"])
    assert err.value.argument == "target_modules" and not lora_layers(model)


def test_a_refused_target_list_names_at_most_eight_entries() -> None:
    with pytest.raises(LoRAArgumentError, match=r"'missing_7'\] … and 12 more match no module") as err:
        apply_lora(tiny_model("bert"), ["query", *(f"missing_{i}" for i in range(20))])
    assert "missing_8" not in str(err.value) and "\n" not in str(err.value) and len(str(err.value)) < 1000


@pytest.mark.parametrize("arch", ARCHS)
def test_the_default_target_list_given_explicitly_matches_on_every_architecture(arch: str) -> None:
    assert apply_lora(tiny_model(arch), list(DEFAULT_TARGET_MODULES[arch])) == apply_lora(tiny_model(arch))


@pytest.mark.parametrize("arch, excluded", [
    ("bert", {"classifier"}), ("roberta", {"classifier.dense", "classifier.out_proj"}),
    ("xlm-roberta", {"classifier.dense", "classifier.out_proj"}), ("deberta-v2", {"classifier"}),
    ("electra", {"classifier.dense", "classifier.out_proj"}), ("distilbert", {"pre_classifier", "classifier"}),
    ("gpt2", {"score"})])
def test_all_linear_skips_the_head(arch: str, excluded: set[str]) -> None:
    model = tiny_model(arch)
    linear = {n for n, m in model.named_modules() if isinstance(m, (nn.Linear, Conv1D))}
    assert set(apply_lora(model, "all-linear")) == linear - excluded


def test_all_linear_skips_a_tied_lm_head() -> None:
    model = GPT2LMHeadModel(CONFIGS["gpt2"])
    assert "lm_head" not in apply_lora(model, "all-linear")


@pytest.mark.parametrize("arch, targets, modules_to_save, skipped", [
    ("bert", "all-linear", ["pooler"], {"bert.pooler.dense", "classifier"}),
    ("roberta", ["dense"], [], {"classifier.dense"}),
    ("electra", ["dense"], [], {"classifier.dense"}),
    ("distilbert", ["pre_classifier", "q_lin"], [], {"pre_classifier"}),
])
def test_targets_under_the_head_or_modules_to_save_are_never_wrapped(arch, targets, modules_to_save, skipped,
                                                                     caplog) -> None:
    """As peft: a module that trains in full never gets an adapter (its "frozen" W0 would train too)."""
    model = tiny_model(arch)
    linear = {n for n, m in model.named_modules() if isinstance(m, (nn.Linear, Conv1D))}
    with caplog.at_level("INFO", logger="lora_pipeline.lora.surgery"):
        names = apply_lora(model, targets, rank=4, modules_to_save=modules_to_save)
    assert not set(names) & skipped and names
    assert not any(module_under(n, HEAD_NAMES + tuple(modules_to_save)) for n in names)
    if targets == "all-linear":
        assert set(names) == linear - skipped
    logged = [r.getMessage() for r in caplog.records if "not wrapping" in r.getMessage()]
    reported = skipped - {"classifier"} if targets == "all-linear" else skipped  # all-linear drops heads itself
    assert len(logged) == 1 and all(n in logged[0] for n in reported)


def test_targets_only_under_the_head_raise_saying_why() -> None:
    with pytest.raises(LoRAArgumentError, match=r"matched only \['classifier.out_proj'\].*train in full") as err:
        apply_lora(tiny_model("roberta"), ["out_proj"])
    assert err.value.argument == "target_modules"


def test_mark_only_never_trains_a_wrapped_base_weight() -> None:
    """Even when ``also`` names a module that holds a LoRA layer, its base weight (and bias, with bias="none")
    stays frozen: the adapter file and its base fingerprint rely on it."""
    model, batch = tiny_model("bert"), tiny_batch()
    names = apply_lora(model, ["dense"], rank=4)  # no modules_to_save given: pooler.dense is wrapped
    assert "bert.pooler.dense" in names
    mark_only_lora_as_trainable(model, also=HEAD_NAMES + ("pooler",))
    pooler = model.get_submodule("bert.pooler.dense")
    assert not pooler.base.weight.requires_grad and not pooler.base.bias.requires_grad
    assert pooler.lora_a.requires_grad and pooler.lora_b.requires_grad
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train_steps(model, batch)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert not any(".base." in n for n in changed) and "classifier.weight" in changed


def test_rank_above_the_layer_size_raises_naming_the_layer_before_allocating() -> None:
    model = tiny_model("bert")  # hidden 32
    with pytest.raises(LoRAArgumentError, match=r"rank 33 exceeds .* = 32 of bert\.encoder\.layer\.0\.attention"
                                                r"\.self\.query \(32 -> 32\); use rank <= 32") as err:
        apply_lora(model, rank=33)
    assert err.value.argument == "rank" and not lora_layers(model)  # nothing was wrapped
    with pytest.raises(LoRAArgumentError, match="rank 1000000 exceeds"):  # refused before a 128 MB allocation
        apply_lora(model, rank=10**6)
    with pytest.raises(LoRAArgumentError, match="rank 40 exceeds .* of bert.encoder.layer.1.attention.self.value"):
        apply_lora(model, rank=4, rank_pattern={"layer.1.attention.self.value": 40})
    assert apply_lora(model, rank=32)  # min(in, out) itself is allowed


def test_no_match_raises_listing_candidates() -> None:
    with pytest.raises(ValueError, match="candidate") as err:
        apply_lora(tiny_model("bert"), ["q_proj"])
    assert "'query'" in str(err.value) and "'dense'" in str(err.value)


@pytest.mark.parametrize("second", [["query"], "all-linear", r".*\.query"])
def test_applying_twice_raises(second) -> None:
    model = tiny_model("bert")
    apply_lora(model, ["query"])
    with pytest.raises(ValueError, match="already applied"):
        apply_lora(model, second)


def test_empty_targets_raise() -> None:
    with pytest.raises(ValueError, match="empty"):
        apply_lora(tiny_model("bert"), [])


def test_rank_and_alpha_patterns() -> None:
    model = tiny_model("bert")
    apply_lora(model, rank=4, alpha=8, rank_pattern={"layer.1.attention.self.query": 2},
               alpha_pattern={r"value": 1.0})
    settings = {name: (layer.rank, layer.alpha) for name, layer in lora_layers(model)}
    assert settings["bert.encoder.layer.1.attention.self.query"] == (2, 8.0)
    assert settings["bert.encoder.layer.0.attention.self.query"] == (4, 8.0)
    assert settings["bert.encoder.layer.0.attention.self.value"] == (4, 1.0)


@pytest.mark.parametrize("arch", ARCHS)
def test_parameter_count_is_rank_times_in_plus_out_plus_head(arch: str) -> None:
    model = tiny_model(arch)
    apply_lora(model, rank=4)
    mark_only_lora_as_trainable(model, also=())
    expected = sum(4 * (layer.in_features + layer.out_features) for _, layer in lora_layers(model))
    assert count_parameters(model)[0] == expected
    mark_only_lora_as_trainable(model)
    head = sum(p.numel() for n, p in model.named_parameters() if n.startswith(("classifier", "pre_classifier",
                                                                                 "score")))
    trainable, total = count_parameters(model)
    assert trainable == expected + head and total == sum(p.numel() for p in model.parameters())


def test_trainable_summary_format() -> None:
    model = tiny_model("bert")
    apply_lora(model)
    mark_only_lora_as_trainable(model)
    trainable, total = count_parameters(model)
    summary = trainable_summary(model)
    assert summary == (f"trainable params: {trainable:,d} || all params: {total:,d} || "
                       f"trainable%: {100 * trainable / total:.4f}")
    assert re.fullmatch(r"trainable params: [\d,]+ \|\| all params: [\d,]+ \|\| trainable%: \d+\.\d{4}", summary)


def test_mark_only_needs_lora_layers() -> None:
    with pytest.raises(ValueError, match="apply_lora"):
        mark_only_lora_as_trainable(tiny_model("bert"))


def _trainable(model: nn.Module, bias: str) -> set[str]:
    """Names expected to train: adapters, head, and biases per mode — computed by type, not by name."""
    wrapped = {name for name, _ in lora_layers(model)}
    names = set()
    for name, _ in model.named_parameters():
        owner, _, leaf = name.rpartition(".")
        in_lora = owner in wrapped or owner.removesuffix(".base") in wrapped
        if (leaf in ("lora_a", "lora_b") and owner in wrapped) or name.startswith(("classifier", "score")) \
                or (leaf == "bias" and (bias == "all" or (bias == "lora_only" and in_lora))):
            names.add(name)
    return names


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
@pytest.mark.parametrize("bias", ["none", "lora_only", "all"])
def test_only_adapter_head_and_chosen_biases_change_in_training(arch: str, bias: str) -> None:
    model, batch = tiny_model(arch), tiny_batch()
    apply_lora(model, rank=4, bias=bias)
    mark_only_lora_as_trainable(model, bias=bias)
    expected = _trainable(model, bias)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == expected
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train_steps(model, batch)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == expected


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_merged_equals_unmerged_and_unmerge_restores(arch: str) -> None:
    model, batch = tiny_model(arch), tiny_batch()
    apply_lora(model, "all-linear", rank=4)
    randomize_lora(model)
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    unmerged = logits(model, batch)
    assert len(merge_lora(model)) == len(lora_layers(model))
    assert all(layer.merged for _, layer in lora_layers(model))
    torch.testing.assert_close(logits(model, batch), unmerged)
    assert merge_lora(model) == []  # nothing left to merge
    unmerge_lora(model)
    for name, param in model.named_parameters():
        assert torch.equal(param, weights[name]), name  # exact: a saved adapter still matches the pristine base


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_merge_and_unload_gives_plain_modules_and_same_logits(arch: str) -> None:
    model, batch = tiny_model(arch), tiny_batch()
    originals = {name: model.get_submodule(name).base for name in apply_lora(model)}
    randomize_lora(model)
    expected = logits(model, batch)
    assert merge_and_unload(model) is model
    assert not lora_layers(model) and not any(isinstance(m, LoRALayer) for m in model.modules())
    for name, base in originals.items():
        assert model.get_submodule(name) is base and type(base) in (nn.Linear, Conv1D)
    torch.testing.assert_close(logits(model, batch), expected)


@pytest.mark.parametrize("merge", [merge_and_unload, merge_lora])
def test_merge_refuses_non_finite_by_default_all_or_nothing(merge) -> None:
    model = tiny_model("bert")
    apply_lora(model)
    randomize_lora(model)
    last = lora_layers(model)[-1][1]
    with torch.no_grad():
        last.lora_b[0, 0] = float("nan")
    weights = {name: layer.base.weight.detach().clone() for name, layer in lora_layers(model)}
    with pytest.raises(ValueError, match="not finite"):
        merge(model)  # safe is the default
    assert not any(layer.merged for _, layer in lora_layers(model)) and len(lora_layers(model)) == 4
    for name, layer in lora_layers(model):
        assert torch.equal(layer.base.weight, weights[name])  # bit for bit, also for the rolled-back layers


def test_merge_and_unload_keeps_no_copy_of_the_weights() -> None:
    model = tiny_model("bert")
    apply_lora(model)
    merge_lora(model)  # keeps W0 for an exact unmerge ...
    assert all(layer.original_weight is not None for _, layer in lora_layers(model))
    layers = [layer for _, layer in lora_layers(model)]
    merge_and_unload(model)  # ... which unloading drops
    assert all(layer.original_weight is None for layer in layers)


def test_train_and_eval_never_merge() -> None:
    model = tiny_model("bert")
    apply_lora(model)
    randomize_lora(model)
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.train()
    model.eval()
    assert not any(layer.merged for _, layer in lora_layers(model))
    assert all(torch.equal(p, weights[n]) for n, p in model.named_parameters())


def test_gpt2_classifier_trains_merges_and_backpropagates() -> None:
    model, batch = tiny_model("gpt2"), tiny_batch()
    names = apply_lora(model, rank=4)
    assert all(isinstance(model.get_submodule(n).base, Conv1D) for n in names)
    mark_only_lora_as_trainable(model)
    model(**batch).loss.backward()
    assert all(layer.lora_a.grad is not None and layer.lora_b.grad is not None for _, layer in lora_layers(model))
    assert model.score.weight.grad is not None
    model.zero_grad()
    train_steps(model, batch)
    trained = logits(model, batch)
    assert not torch.allclose(trained, logits(tiny_model("gpt2"), batch))
    merge_lora(model)
    torch.testing.assert_close(logits(model, batch), trained)
