"""One object per variant builds, saves and loads its model: the registry follows config.VARIANTS, each variant
names its own weights files, an unknown name is a one-line error naming the known ones, and a saved model of
every variant loads back with the weights it was saved with."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from lora_pipeline.config import VARIANTS, LoraConfig, ModelConfig, ScratchConfig
from lora_pipeline.errors import PipelineError
from lora_pipeline.lora import merge_and_unload
from lora_pipeline.models import build_model, load_trained, save_trained, weights_files
from lora_pipeline.records import ModelCard
from lora_pipeline.variants import MODEL_VARIANTS, Full, Lora, Scratch, model_variant
from tests.support.builders import LABELS

WEIGHTS = {"scratch": ("model.safetensors", "config.json"), "full": ("model.safetensors", "config.json"),
           "lora": ("adapter.safetensors", "adapter_config.json")}
UNKNOWN = r"^unknown variant 'mystery'; expected scratch, full or lora$"


def test_the_registry_holds_one_object_per_variant_in_stage_order() -> None:
    assert tuple(MODEL_VARIANTS) == VARIANTS == ("scratch", "full", "lora")
    assert [type(v) for v in MODEL_VARIANTS.values()] == [Scratch, Full, Lora]
    assert all(model_variant(name).name == name for name in VARIANTS)


@pytest.mark.parametrize("variant", VARIANTS)
def test_each_variant_names_its_weights_files_and_lists_those_present(variant, tmp_path) -> None:
    assert model_variant(variant).weight_names == WEIGHTS[variant]
    every = sorted({n for names in WEIGHTS.values() for n in names}) + ["tokenizer.json", "classifier.json"]
    for name in every:
        (tmp_path / name).write_text("{}")
    assert weights_files(variant, tmp_path) == [tmp_path / n for n in WEIGHTS[variant]]
    (tmp_path / WEIGHTS[variant][0]).unlink()
    assert weights_files(variant, tmp_path) == [tmp_path / WEIGHTS[variant][1]]


@pytest.mark.parametrize("call", [
    lambda d, tok: build_model("mystery", ModelConfig(name=str(d)), LABELS, tok),
    lambda d, tok: save_trained("mystery", torch.nn.Linear(1, 1), tok, d.parent / "out", card=None),
    lambda d, tok: load_trained("mystery", d, ModelConfig(name=str(d)), LABELS, tok),
    lambda d, tok: weights_files("mystery", d),
], ids=["build_model", "save_trained", "load_trained", "weights_files"])
def test_an_unknown_variant_is_one_line_naming_the_known_ones(call, tiny_model_dir, tiny_tokenizer, tmp_path) -> None:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    with pytest.raises(PipelineError, match=UNKNOWN):
        call(model_dir, tiny_tokenizer)
    assert not (tmp_path / "out").exists()


def _built(variant: str, model_dir: Path, tokenizer) -> tuple[torch.nn.Module, LoraConfig]:
    """The variant on the tiny base, every trainable weight moved off its initial value (a LoRA B included)."""
    lora = LoraConfig(alpha=8.0)
    model = build_model(variant, ModelConfig(name=str(model_dir), max_length=32), LABELS, tokenizer,
                        scratch=ScratchConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64),
                        lora=lora, rank=4 if variant == "lora" else None)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    return model, lora


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_saved_model_of_each_variant_loads_back_with_the_same_weights(variant, tiny_model_dir, tiny_tokenizer,
                                                                        tmp_path) -> None:
    """scratch and full load the very tensors they saved; lora loads the adapter onto a fresh base, merged: the
    weights of the trained model merged the same way."""
    model, lora = _built(variant, tiny_model_dir, tiny_tokenizer)
    card = ModelCard(variant=variant, labels=tuple(LABELS), max_length=32, text_pair=False, precision="fp32",
                     base_model=str(tiny_model_dir) if variant == "lora" else None)
    save_trained(variant, model, tiny_tokenizer, tmp_path / variant, card=card, lora=lora)
    assert [p.name for p in weights_files(variant, tmp_path / variant)] == list(WEIGHTS[variant])
    loaded = load_trained(variant, tmp_path / variant, ModelConfig(name=str(tiny_model_dir)), LABELS, tiny_tokenizer)
    expected = (merge_and_unload(copy.deepcopy(model)) if variant == "lora" else model).state_dict()
    got = loaded.state_dict()
    assert list(got) == list(expected)
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, rtol=0, atol=0, msg=name)
    assert loaded.config.id2label == dict(enumerate(LABELS))
