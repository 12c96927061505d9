"""Adapter files: what is saved, round trips, the base fingerprint check, no pickle."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from lora_pipeline.lora import (
    HEAD_NAMES,
    LoRAArgumentError,
    apply_lora,
    base_fingerprint,
    load_adapter,
    lora_layers,
    lora_state_dict,
    mark_only_lora_as_trainable,
    merge_lora,
    save_adapter,
)
from lora_pipeline.lora.adapter_io import ADAPTER_CONFIG, ADAPTER_WEIGHTS, FORMAT_VERSION
# `seeded` is the autouse fixture that fixes the RNG seeds.
from tests.support.tiny_models import logits, tiny_batch, tiny_model, train_steps

HEAD = {"classifier.weight", "classifier.bias"}  # what a BERT adapter replaces besides LoRA


def trained(arch: str = "bert", bias: str = "none", **kwargs) -> torch.nn.Module:
    model = tiny_model(arch)
    apply_lora(model, rank=4, alpha=8, bias=bias, **kwargs)
    mark_only_lora_as_trainable(model, bias=bias)
    train_steps(model, tiny_batch())
    return model


@pytest.mark.parametrize("bias", ["none", "lora_only", "all"])
def test_lora_state_dict_keys_follow_the_bias_mode(bias: str) -> None:
    model = tiny_model("bert")
    names = apply_lora(model, ["query"], bias=bias)
    state = lora_state_dict(model)  # the bias mode recorded on the layers
    assert set(lora_state_dict(model, bias=bias)) == set(state)
    adapters = {f"{n}.{m}" for n in names for m in ("lora_a", "lora_b")}
    lora_biases = {f"{n}.base.bias" for n in names}
    all_biases = {n for n, _ in model.named_parameters() if n.endswith(".bias")}
    assert set(state) == {"none": adapters, "lora_only": adapters | lora_biases, "all": adapters | all_biases}[bias]


@pytest.mark.parametrize("arch, bias", [("bert", "none"), ("bert", "lora_only"), ("gpt2", "all")])
def test_save_load_round_trip_reproduces_logits(arch: str, bias: str, tmp_path) -> None:
    model, batch = trained(arch, bias), tiny_batch()
    save_adapter(model, tmp_path / "adapter", base_model_name=f"tiny-{arch}", metadata={"run": "test"})

    fresh = tiny_model(arch)
    config = load_adapter(fresh, tmp_path / "adapter")
    torch.testing.assert_close(logits(fresh, batch), logits(model, batch), atol=0, rtol=0)
    assert config["bias"] == bias and config["metadata"] == {"run": "test"}
    assert [n for n, _ in lora_layers(fresh)] == [n for n, _ in lora_layers(model)]


@pytest.mark.parametrize("bias", ["lora_only", "all"])
def test_the_bias_mode_given_to_apply_lora_decides_what_trains_is_saved_and_trains_after_loading(bias, tmp_path):
    """mark_only_lora_as_trainable without ``bias`` trains the biases apply_lora's mode names; the adapter holds
    exactly the trainable tensors, and loading it makes the same set trainable."""
    model = tiny_model("bert")
    apply_lora(model, rank=4, alpha=8, bias=bias)
    mark_only_lora_as_trainable(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(n.endswith(".base.bias") for n in trainable)
    assert ("bert.pooler.dense.bias" in trainable) == (bias == "all")
    save_adapter(model, tmp_path / "adapter", base_model_name="tiny-bert")
    assert set(load_file(str(tmp_path / "adapter" / ADAPTER_WEIGHTS))) == trainable
    fresh = tiny_model("bert")
    load_adapter(fresh, tmp_path / "adapter")
    assert {n for n, p in fresh.named_parameters() if p.requires_grad} == trainable


@pytest.mark.parametrize("call", [mark_only_lora_as_trainable, lora_state_dict])
def test_a_bias_mode_that_contradicts_the_lora_layers_is_refused(call) -> None:
    model = tiny_model("bert")
    apply_lora(model, rank=4, bias="all")
    message = r"\(bias='none'\) contradicts bias='all' given to apply_lora.*drop the bias argument"
    with pytest.raises(LoRAArgumentError, match=message) as err:
        call(model, bias="none")
    assert err.value.argument == "bias"
    call(model, bias="all")  # the same mode, spelled out, is fine


def test_saved_files_hold_only_adapter_and_head(tmp_path) -> None:
    model = trained()
    save_adapter(model, tmp_path / "adapter", base_model_name="tiny-bert")
    assert {p.name for p in (tmp_path / "adapter").iterdir()} == {ADAPTER_CONFIG, ADAPTER_WEIGHTS}
    tensors = load_file(str(tmp_path / "adapter" / ADAPTER_WEIGHTS))
    expected = set(lora_state_dict(model)) | {"classifier.weight", "classifier.bias"}
    assert set(tensors) == expected
    config = json.loads((tmp_path / "adapter" / ADAPTER_CONFIG).read_text())
    names = [n for n, _ in lora_layers(model)]
    assert config["format_version"] == FORMAT_VERSION and config["target_modules"] == names
    assert (config["rank"], config["alpha"], config["rslora"], config["dropout"]) == (4, 8.0, False, 0.0)
    assert config["base_model_name"] == "tiny-bert" and config["trainable_extra"] == ["classifier"]
    assert config["base_fingerprint"] == base_fingerprint(tiny_model("bert"), HEAD)


def test_load_into_a_model_that_already_has_the_same_layers(tmp_path) -> None:
    model, batch = trained(), tiny_batch()
    save_adapter(model, tmp_path / "adapter", base_model_name="tiny-bert")
    fresh = tiny_model("bert")
    apply_lora(fresh, rank=4, alpha=8)
    load_adapter(fresh, tmp_path / "adapter")
    torch.testing.assert_close(logits(fresh, batch), logits(model, batch), atol=0, rtol=0)


def test_load_refuses_other_lora_layers(tmp_path) -> None:
    save_adapter(trained(), tmp_path / "adapter", base_model_name="tiny-bert")
    other = tiny_model("bert")
    apply_lora(other, ["key"])
    with pytest.raises(ValueError, match="already has LoRA"):
        load_adapter(other, tmp_path / "adapter")


def test_base_mismatch_raises_naming_both_fingerprints(tmp_path) -> None:
    model = trained()
    save_adapter(model, tmp_path / "adapter", base_model_name="tiny-bert")
    expected = json.loads((tmp_path / "adapter" / ADAPTER_CONFIG).read_text())["base_fingerprint"]
    other = tiny_model("bert", seed=1)
    actual = base_fingerprint(other, HEAD)
    with pytest.raises(ValueError, match="fingerprint") as err:
        load_adapter(other, tmp_path / "adapter")
    assert expected in str(err.value) and actual in str(err.value) and "tiny-bert" in str(err.value)
    assert not lora_layers(other)  # refused before touching the model


def test_fingerprint_ignores_adapters_and_skipped_tensors_but_not_other_base_weights() -> None:
    model = tiny_model("bert")
    apply_lora(model)
    before = base_fingerprint(model, HEAD)
    assert before == base_fingerprint(tiny_model("bert"), HEAD)  # plain model, same weights
    assert before != base_fingerprint(model)  # the head counts unless skipped
    mark_only_lora_as_trainable(model)
    train_steps(model, tiny_batch())
    assert base_fingerprint(model, HEAD) == before
    for name in ("bert.encoder.layer.0.attention.self.query.base.weight", "bert.embeddings.word_embeddings.weight",
                 "bert.encoder.layer.1.intermediate.dense.weight", "bert.pooler.dense.bias"):
        param = model.get_parameter(name)
        with torch.no_grad():
            param.view(-1)[0] += 1e-3
        assert base_fingerprint(model, HEAD) != before, name
        with torch.no_grad():
            param.view(-1)[0] -= 1e-3
    assert base_fingerprint(model.to(torch.float64), HEAD) != before  # dtype counts


@pytest.mark.parametrize("param", ["bert.embeddings.word_embeddings.weight",
                                   "bert.encoder.layer.1.output.dense.weight", "bert.pooler.dense.weight"])
def test_load_refuses_a_base_that_differs_outside_the_targets(param: str, tmp_path) -> None:
    """The fingerprint covers every frozen base parameter, not only the targeted weights."""
    save_adapter(trained(), tmp_path / "adapter", base_model_name="tiny-bert")
    other = tiny_model("bert")
    with torch.no_grad():
        other.get_parameter(param).view(-1)[0] += 1e-3
    with pytest.raises(ValueError, match="fingerprint"):
        load_adapter(other, tmp_path / "adapter")


@pytest.mark.parametrize("settings, differs", [({"alpha": 32, "rslora": True}, ["alpha 32.0", "rslora True"]),
                                               ({"rank": 4, "alpha": 8, "bias": "lora_only"}, ["bias 'lora_only'"]),
                                               ({"alpha": 8, "dropout": 0.1}, ["dropout 0.1"])])
def test_load_into_lora_layers_with_other_settings_raises(settings: dict, differs: list[str], tmp_path) -> None:
    """An alpha-8 adapter loaded into alpha-32 + rsLoRA layers would keep the wrong scaling (logits off ~4 %)."""
    save_adapter(trained(), tmp_path / "adapter", base_model_name="tiny-bert")
    other = tiny_model("bert")
    apply_lora(other, **{"rank": 4, **settings})
    with pytest.raises(ValueError, match="settings differ") as err:
        load_adapter(other, tmp_path / "adapter")
    assert all(d in str(err.value) for d in differs), str(err.value)


def test_load_makes_trainable_exactly_what_trained(tmp_path) -> None:
    model = tiny_model("bert")
    apply_lora(model, "all-linear", rank=4, modules_to_save=["pooler"])
    mark_only_lora_as_trainable(model, also=HEAD_NAMES + ("pooler",))
    train_steps(model, tiny_batch())
    save_adapter(model, tmp_path / "adapter", base_model_name="tiny-bert")
    fresh = tiny_model("bert")
    config = load_adapter(fresh, tmp_path / "adapter")
    assert config["trainable_extra"] == ["bert.pooler", "classifier"]  # derived from what trained
    assert {n for n, p in fresh.named_parameters() if p.requires_grad} == \
        {n for n, p in model.named_parameters() if p.requires_grad}
    torch.testing.assert_close(logits(fresh, tiny_batch()), logits(model, tiny_batch()), atol=0, rtol=0)


def test_save_refuses_trainable_extra_that_leaves_out_trained_tensors(tmp_path) -> None:
    model = tiny_model("bert")
    apply_lora(model, rank=4)
    mark_only_lora_as_trainable(model, also=HEAD_NAMES + ("pooler",))
    with pytest.raises(ValueError, match=r"trainable_extra=\['classifier'\] leaves out trained tensors "
                                         r"\['bert.pooler.dense.weight', 'bert.pooler.dense.bias'\]"):
        save_adapter(model, tmp_path / "adapter", base_model_name="tiny-bert", trainable_extra=["classifier"])
    assert not (tmp_path / "adapter").exists()


def test_format_version_1_is_refused_with_a_retrain_hint(tmp_path) -> None:
    save_adapter(trained(), tmp_path / "adapter", base_model_name="tiny-bert")
    config_path = tmp_path / "adapter" / ADAPTER_CONFIG
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "format_version": 1}))
    with pytest.raises(ValueError, match="format_version 1 .* retrain"):
        load_adapter(tiny_model("bert"), tmp_path / "adapter")


def _state(model: torch.nn.Module) -> tuple[list, dict]:
    """The module tree (names, module objects) and every parameter's value and requires_grad."""
    return ([(n, m) for n, m in model.named_modules()],
            {n: (p.detach().clone(), p.requires_grad) for n, p in model.named_parameters()})


def _break(adapter, case: str) -> torch.nn.Module:
    """A model that ``adapter`` does not fit, for each reason load_adapter refuses one; edits the files if needed."""
    config_path, weights = adapter / ADAPTER_CONFIG, adapter / ADAPTER_WEIGHTS
    config = json.loads(config_path.read_text())
    model = tiny_model("bert")
    if case == "fingerprint":
        model = tiny_model("bert", seed=1)
    elif case == "architecture":
        model.config.layer_norm_eps = 1e-5
    elif case == "settings":
        apply_lora(model, rank=4, alpha=32)
    elif case == "shape":
        config_path.write_text(json.dumps({**config, "rank": 3}))
    elif case == "unknown key":
        save_file({**load_file(str(weights)), "bert.encoder.extra.weight": torch.zeros(2)}, str(weights))
    return model


@pytest.mark.parametrize("case", ["fingerprint", "architecture", "settings", "shape", "unknown key"])
def test_a_refused_load_leaves_the_model_as_it_was(case: str, tmp_path) -> None:
    save_adapter(trained(), tmp_path / "adapter", base_model_name="tiny-bert")
    model = _break(tmp_path / "adapter", case)
    (modules, params) = _state(model)
    with pytest.raises(ValueError):
        load_adapter(model, tmp_path / "adapter")
    after_modules, after_params = _state(model)
    assert [(n, id(m)) for n, m in after_modules] == [(n, id(m)) for n, m in modules]
    assert after_params.keys() == params.keys()
    for name, (value, grad) in params.items():
        assert torch.equal(after_params[name][0], value) and after_params[name][1] == grad, name


def test_rank_and_alpha_patterns_round_trip(tmp_path) -> None:
    model = trained(rank_pattern={"layer.1.*": 2}, alpha_pattern={"value": 3.0})
    save_adapter(model, tmp_path / "adapter", base_model_name="tiny-bert")
    fresh = tiny_model("bert")
    config = load_adapter(fresh, tmp_path / "adapter")
    assert config["rank_pattern"] == {"bert.encoder.layer.1.attention.self.query": 2,
                                      "bert.encoder.layer.1.attention.self.value": 2}
    assert {n: (l.rank, l.alpha) for n, l in lora_layers(fresh)} == {n: (l.rank, l.alpha)
                                                                      for n, l in lora_layers(model)}
    torch.testing.assert_close(logits(fresh, tiny_batch()), logits(model, tiny_batch()), atol=0, rtol=0)


def test_saving_a_merged_model_raises(tmp_path) -> None:
    model = trained()
    merge_lora(model)
    with pytest.raises(ValueError, match="merged"):
        save_adapter(model, tmp_path / "adapter", base_model_name="tiny-bert")


def test_missing_or_foreign_directory_raises(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        load_adapter(tiny_model("bert"), tmp_path)
    (tmp_path / ADAPTER_CONFIG).write_text(json.dumps({"format_version": 99}))
    with pytest.raises(ValueError, match="format_version"):
        load_adapter(tiny_model("bert"), tmp_path)


def test_tensors_that_do_not_fit_raise(tmp_path) -> None:
    save_adapter(trained(), tmp_path / "adapter", base_model_name="tiny-bert")
    config_path = tmp_path / "adapter" / ADAPTER_CONFIG
    config = json.loads(config_path.read_text())
    config["rank"] = 3
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="wrong shape"):
        load_adapter(tiny_model("bert"), tmp_path / "adapter")


@pytest.mark.parametrize("kwargs", [{}, {"rslora": True}, {"rank_pattern": {"layer.1.*": 2}, "alpha_pattern": {"value": 3.0}}])
def test_adapter_factors_rebuild_each_layers_update(kwargs: dict, tmp_path) -> None:
    """What the study's spectra read from disk: scaling·B·A equals each layer's own delta_weight()."""
    from lora_pipeline.lora import adapter_factors

    model = trained(**kwargs)
    save_adapter(model, tmp_path / "adapter", base_model_name="tiny-bert")
    factors = adapter_factors(tmp_path / "adapter")
    layers = dict(lora_layers(model))
    assert set(factors) == set(layers)
    for name, (a, b, scaling) in factors.items():
        assert a.shape[0] == layers[name].rank and scaling == layers[name].scaling
        torch.testing.assert_close(scaling * b.float() @ a.float(), layers[name].delta_weight().detach(),
                                   atol=1e-7, rtol=1e-5)
    assert any(float((b.float() @ a.float()).abs().max()) > 0 for a, b, _ in factors.values())


def test_peft_given_our_adapter_folder_fails_with_a_pointer_to_the_peft_export(tmp_path) -> None:
    """`PeftModel.from_pretrained(base, <our adapter folder>)` is the obvious first try: peft's error must say the
    folder is this project's format and where the peft export is, not a bare KeyError: 'peft_type'."""
    from peft import PeftModel

    model = tiny_model("bert")
    apply_lora(model, rank=4, alpha=8)
    save_adapter(model, tmp_path / "adapter", base_model_name="tiny-bert")
    with pytest.raises(KeyError) as err:
        PeftModel.from_pretrained(tiny_model("bert"), str(tmp_path / "adapter"))
    assert "lora-pipeline" in str(err.value) and "peft/" in str(err.value) and "export_peft" in str(err.value)
    load_adapter(tiny_model("bert"), tmp_path / "adapter")  # our own loader is not bothered by the key
