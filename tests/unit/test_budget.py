"""Parameter budgets: adapter counts equal what the LoRA package trains, equal-budget groups pair different
(adapter, target set) within a ratio, the cheapest configuration within the tolerance, the budget table's rows."""

from __future__ import annotations

import copy
import random

import pytest
import torch
from torch import nn
from transformers import AutoModelForSequenceClassification, BertConfig

from lora_pipeline.adapter_budget import adapter_parameters, configurations
from lora_pipeline.budget import Configuration, cheapest_within, equal_budget_groups, equal_budget_rows
from lora_pipeline.lora import LoRAArgumentError, apply_lora, count_parameters, mark_only_lora_as_trainable
from tests.support.tiny_models import CONFIGS, tiny_model

ATTENTION_QV = ["query", "value"]
ATTENTION_ALL = ["query", "key", "value", "attention.output.dense"]
TARGET_SETS = {"attention_qv": ATTENTION_QV, "attention_all": ATTENTION_ALL, "all_linear": "all-linear"}


def trained_by_package(model: nn.Module, targets, rank: int, use_dora: bool = False,
                       modules_to_save: tuple[str, ...] = ()) -> tuple[int, list[str]]:
    """What apply_lora makes trainable on a copy of ``model`` with nothing else training (no head, no bias)."""
    model = copy.deepcopy(model)
    names = apply_lora(model, targets, rank=rank, use_dora=use_dora, modules_to_save=modules_to_save)
    mark_only_lora_as_trainable(model, also=())
    return count_parameters(model)[0], names


@pytest.mark.parametrize("arch, targets, rank, use_dora, modules_to_save", [
    ("bert", ATTENTION_QV, 1, False, ()),
    ("bert", ATTENTION_QV, 8, True, ()),
    ("bert", ATTENTION_ALL, 4, False, ()),
    ("bert", ATTENTION_ALL, 4, True, ()),
    ("bert", "all-linear", 2, False, ()),
    ("bert", "all-linear", 2, False, ("pooler",)),
    ("bert", "all-linear", 3, True, ("pooler",)),
    ("bert", r".*\.(query|intermediate\.dense)", 5, False, ()),
    ("distilbert", None, 4, True, ()),  # the model type's default targets
    ("gpt2", ["c_attn"], 3, False, ()),  # Conv1D stores its weight (in, out)
    ("gpt2", "all-linear", 2, True, ()),
])
def test_adapter_parameters_equal_what_apply_lora_makes_trainable(arch, targets, rank, use_dora, modules_to_save):
    model = tiny_model(arch)
    expected, _ = trained_by_package(model, targets, rank, use_dora, modules_to_save)
    counted = adapter_parameters(model, targets, rank, use_dora=use_dora, modules_to_save=modules_to_save)
    assert counted == expected > 0


def test_lora_count_is_rank_times_in_plus_out_per_target() -> None:
    config = CONFIGS["bert"]
    hidden, inner, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    model = tiny_model("bert")
    assert adapter_parameters(model, ATTENTION_QV, 4) == layers * 2 * 4 * (hidden + hidden)
    # all-linear: q, k, v, attention output, intermediate (hidden -> inner), output (inner -> hidden), pooler
    per_layer = 4 * (hidden + hidden) + 2 * (hidden + inner)
    assert adapter_parameters(model, "all-linear", 3) == 3 * (layers * per_layer + 2 * hidden)
    assert adapter_parameters(model, "all-linear", 3, modules_to_save=("pooler",)) == 3 * layers * per_layer


@pytest.mark.parametrize("targets", [ATTENTION_QV, ATTENTION_ALL, "all-linear"])
def test_dora_adds_exactly_the_output_widths_of_the_wrapped_layers(targets) -> None:
    model = tiny_model("bert")
    _, names = trained_by_package(model, targets, 4)
    widths = sum(model.get_submodule(name).out_features for name in names)
    assert widths > 0
    assert adapter_parameters(model, targets, 4, use_dora=True) - adapter_parameters(model, targets, 4) == widths
    if targets is ATTENTION_QV:
        config = CONFIGS["bert"]
        assert widths == config.num_hidden_layers * 2 * config.hidden_size


def test_adapter_parameters_refuses_what_apply_lora_refuses() -> None:
    model = tiny_model("bert")
    with pytest.raises(LoRAArgumentError, match="exceeds min"):
        adapter_parameters(model, ATTENTION_QV, CONFIGS["bert"].hidden_size + 1)
    with pytest.raises(LoRAArgumentError, match="match no module"):
        adapter_parameters(model, ["query", "no_such_layer"], 2)
    with pytest.raises(ValueError, match="rank must be >= 1"):
        adapter_parameters(model, ATTENTION_QV, 0)


def minilm_shaped() -> nn.Module:
    """A BERT classifier with all-MiniLM-L6's shapes (hidden 384, intermediate 1536, 6 layers), on the meta
    device: shapes only, no memory, no download."""
    config = BertConfig(vocab_size=1000, hidden_size=384, intermediate_size=1536, num_hidden_layers=6,
                        num_attention_heads=12, num_labels=2)
    with torch.device("meta"):
        return AutoModelForSequenceClassification.from_config(config)


def test_minilm_qv_r8_all_attention_r4_and_all_linear_r2_share_one_budget_group() -> None:
    model = minilm_shaped()
    hidden, inner, layers = 384, 1536, 6
    configs = configurations(model, TARGET_SETS, ranks=[1, 2, 4, 8, 16], modules_to_save=("pooler",))
    by_label = {c.label: c for c in configs}
    qv8, attn4, all2 = (by_label[label] for label in
                        ("lora · attention_qv · r8", "lora · attention_all · r4", "lora · all_linear · r2"))
    assert qv8.adapter_params == 8 * 2 * (hidden + hidden) * layers == 73_728
    assert attn4.adapter_params == 4 * 4 * (hidden + hidden) * layers == qv8.adapter_params
    assert all2.adapter_params == 2 * (4 * (hidden + hidden) + 2 * (hidden + inner)) * layers == 82_944
    groups = equal_budget_groups(configs, ratio=1.25)
    group = next(g for g in groups if qv8 in g)
    assert group == [attn4, qv8, all2]  # cheapest first, the tie by rank
    # every group holds distinct target sets, and no configuration is in two groups
    members = [c for g in groups for c in g]
    assert len(members) == len(set(members))
    assert all(len({c.kind for c in g}) == len(g) >= 2 for g in groups)


def test_configurations_count_dora_and_refuse_unknown_adapters() -> None:
    model = tiny_model("bert")
    configs = configurations(model, {"attention_qv": ATTENTION_QV}, ranks=[2], adapters=["lora", "dora"])
    lora, dora = configs
    assert (lora.label, dora.label) == ("lora · attention_qv · r2", "dora · attention_qv · r2")
    assert dora.adapter_params - lora.adapter_params == 2 * 2 * CONFIGS["bert"].hidden_size
    with pytest.raises(ValueError, match="unknown adapter"):
        configurations(model, {"attention_qv": ATTENTION_QV}, ranks=[2], adapters=["ia3"])


def cfg(target_set: str, rank: int, params: int, adapter: str = "lora") -> Configuration:
    return Configuration(adapter, target_set, rank, params)


def test_a_group_never_pairs_a_configuration_with_itself_or_two_ranks_of_one_target_set() -> None:
    qv4, qv5, attn1 = cfg("qv", 4, 100), cfg("qv", 5, 110), cfg("all", 1, 120)
    assert equal_budget_groups([qv5, attn1, qv4]) == [[qv4, attn1]]  # qv5 alone is no group
    assert equal_budget_groups([qv4, qv5]) == []  # one target set: nothing to compare
    assert equal_budget_groups([qv4, cfg("qv", 4, 100, adapter="dora")]) == [[cfg("qv", 4, 100, "dora"), qv4]]
    with pytest.raises(ValueError, match="more than once"):
        equal_budget_groups([qv4, qv4, attn1])


def test_the_ratio_is_inclusive_and_exact() -> None:
    anchor = cfg("qv", 8, 100)
    assert equal_budget_groups([anchor, cfg("all", 4, 125)], ratio=1.25) == [[anchor, cfg("all", 4, 125)]]
    assert equal_budget_groups([anchor, cfg("all", 4, 126)], ratio=1.25) == []
    # 1.15 * 100 is 114.99999999999999 in floating point; the rule reads 1.15 as 23/20
    assert equal_budget_groups([anchor, cfg("all", 4, 115)], ratio=1.15) == [[anchor, cfg("all", 4, 115)]]
    assert equal_budget_groups([anchor, cfg("all", 4, 101)], ratio=1.0) == []
    assert equal_budget_groups([anchor, cfg("all", 4, 100)], ratio=1.0) == [[cfg("all", 4, 100), anchor]]
    for bad in (0.9, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="ratio"):
            equal_budget_groups([anchor], ratio=bad)


def test_groups_are_anchored_at_their_cheapest_member() -> None:
    a, b, c = cfg("a", 1, 100), cfg("b", 1, 120), cfg("c", 1, 140)
    # c is within 1.25 of b but not of the anchor a; once a and b are grouped, c is left alone
    assert equal_budget_groups([c, b, a]) == [[a, b]]
    d = cfg("d", 1, 160)
    assert equal_budget_groups([a, b, c, d]) == [[a, b], [c, d]]


def test_grouping_is_deterministic_and_keeps_its_invariants_on_a_random_grid() -> None:
    rng = random.Random(7)
    configs = [cfg(name, rank, rng.randrange(1_000, 5_000), adapter) for adapter in ("lora", "dora")
               for name in ("qv", "attn", "all") for rank in (1, 2, 4, 8)]
    groups = equal_budget_groups(configs, ratio=1.2)
    assert groups  # 24 counts in [1000, 5000) do form groups
    for _ in range(5):
        rng.shuffle(configs)
        assert equal_budget_groups(configs, ratio=1.2) == groups
    members = [c for g in groups for c in g]
    assert len(members) == len(set(members))
    for group in groups:
        counts = [c.adapter_params for c in group]
        assert counts == sorted(counts) and counts[-1] <= 1.2 * counts[0]
        assert len({c.kind for c in group}) == len(group) >= 2
    anchors = [g[0].adapter_params for g in groups]
    assert anchors == sorted(anchors)


def test_cheapest_within_ignores_undecided_and_not_within() -> None:
    undecided, worse, missing = cfg("qv", 1, 10), cfg("qv", 2, 20), cfg("qv", 3, 25)
    cheap, dear = cfg("all", 1, 30), cfg("attn", 4, 40)
    configs = [dear, cheap, missing, worse, undecided]
    verdicts = {undecided.label: None, worse.label: False, cheap.label: True, dear: True}
    assert cheapest_within(configs, verdicts) is cheap
    assert cheapest_within(configs, {**verdicts, cheap.label: False}) is dear
    assert cheapest_within(configs, {undecided: None, worse: False}) is None
    assert cheapest_within([], {}) is None


def test_cheapest_within_breaks_ties_by_rank_adapter_and_target_set() -> None:
    r2, r4 = cfg("qv", 2, 50), cfg("attn", 4, 50)
    assert cheapest_within([r4, r2], {r4: True, r2: True}) is r2
    lora, dora = cfg("qv", 2, 50), cfg("qv", 2, 50, adapter="dora")
    assert cheapest_within([lora, dora], {lora: True, dora: True}) is dora
    b, a = cfg("b", 2, 50), cfg("a", 2, 50)
    assert cheapest_within([b, a], {b.label: True, a.label: True}) is a


def test_cheapest_within_refuses_unclear_verdicts() -> None:
    qv = cfg("qv", 8, 100)
    with pytest.raises(TypeError, match="True, False or None"):
        cheapest_within([qv], {qv.label: "worse"})  # a truthy word must not read as within
    with pytest.raises(ValueError, match="not in the study"):
        cheapest_within([qv], {"lora · qv · r4": True})
    with pytest.raises(ValueError, match="two different verdicts"):
        cheapest_within([qv], {qv: True, qv.label: False})


def test_configuration_label_and_validation() -> None:
    assert cfg("attention_qv", 8, 73_728).label == "lora · attention_qv · r8"
    with pytest.raises(ValueError, match="unknown adapter"):
        Configuration("adalora", "qv", 8, 1)
    with pytest.raises(ValueError, match="rank"):
        Configuration("lora", "qv", 0, 1)
    with pytest.raises(ValueError, match="adapter_params"):
        Configuration("lora", "qv", 1, -1)


def test_equal_budget_rows_print_counts_scores_and_points() -> None:
    attn4, qv8, all2 = cfg("attention_all", 4, 73_728), cfg("attention_qv", 8, 73_728), cfg("all_linear", 2, 82_944)
    scores = {attn4.label: (0.91234, 0.90012, 0.92345, -0.005, -0.0139, 0.004),
              qv8.label: (0.9, None, None, None, None, None),
              all2.label: None}
    rows = equal_budget_rows([[attn4, qv8, all2], [cfg("a", 1, 500), cfg("b", 1, 500)]], scores)
    assert rows == [
        ["73,728–82,944", "lora · attention_all · r4", "73,728", "0.9123 [0.9001, 0.9234]", "-0.50 [-1.39, +0.40]"],
        ["73,728–82,944", "lora · attention_qv · r8", "73,728", "0.9000", "–"],
        ["73,728–82,944", "lora · all_linear · r2", "82,944", "–", "–"],
        ["500", "lora · a · r1", "500", "–", "–"],
        ["500", "lora · b · r1", "500", "–", "–"],
    ]
    with pytest.raises(ValueError, match="six|macro_f1, low, high"):
        equal_budget_rows([[attn4, qv8]], {attn4.label: (0.9, 0.8, 1.0)})
