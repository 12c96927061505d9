"""build_model / load_trained on a tiny random BERT saved to disk: every documented target form, clear errors,
LoRA targets inside modules trained in full, and one log line instead of transformers' load report."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from torch import nn

from lora_pipeline.config import LoraConfig, ModelConfig
from lora_pipeline.errors import PipelineError
from lora_pipeline.lora import HEAD_NAMES, lora_layers, save_adapter
from lora_pipeline.models import HEAD_MODULES, build_model, load_trained
from tests.support.tiny_models import train_steps

LABELS = ["neg", "pos"]  # the tiny checkpoint has 3 labels: its classifier is replaced (a "newly initialised" head)
LINEAR = [f"bert.encoder.layer.{i}.{m}" for i in range(2) for m in (
    "attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
    "intermediate.dense", "output.dense")]


def _batch() -> dict[str, torch.Tensor]:
    """Eight 12-token rows of ids in the tiny tokenizer's vocabulary, with labels."""
    return {"input_ids": torch.randint(1000, 2000, (8, 12)), "attention_mask": torch.ones(8, 12, dtype=torch.long),
            "labels": torch.tensor([0, 1] * 4)}


def lora_model(tiny_model_dir: Path, tiny_tokenizer, target_modules=None, **lora) -> nn.Module:
    """A LoRA model of rank 4 on the tiny BERT, adapting ``target_modules`` (a target set named "t")."""
    torch.manual_seed(0)
    return build_model("lora", ModelConfig(name=str(tiny_model_dir), max_length=32), LABELS, tiny_tokenizer,
                       lora=LoraConfig(alpha=8, target_sets={"t": target_modules}, **lora), rank=4, target_set="t")


@pytest.mark.parametrize("targets, expected", [
    ("all-linear", LINEAR),  # a string stays a string: not split into characters
    (r"bert\.encoder\.layer\.0\..*(query|value)",  # a regex (full match)
     ["bert.encoder.layer.0.attention.self.query", "bert.encoder.layer.0.attention.self.value"]),
    (("query", "value"), [n for n in LINEAR if n.endswith(("query", "value"))]),  # names
    (("layer.1.attention.self.key", "output.dense"),  # dotted suffixes
     ["bert.encoder.layer.0.attention.output.dense", "bert.encoder.layer.0.output.dense",
      "bert.encoder.layer.1.attention.self.key", "bert.encoder.layer.1.attention.output.dense",
      "bert.encoder.layer.1.output.dense"]),
    (None, [n for n in LINEAR if n.endswith(("query", "value"))]),  # the architecture's default
])
def test_every_documented_target_form(targets, expected, tiny_model_dir, tiny_tokenizer) -> None:
    model = lora_model(tiny_model_dir, tiny_tokenizer, target_modules=targets, modules_to_save=("pooler",))
    assert [name for name, _ in lora_layers(model)] == expected


def test_targets_inside_modules_trained_in_full_are_left_unwrapped_and_round_trip(tiny_model_dir, tiny_tokenizer,
                                                                                   tmp_path) -> None:
    """The pipeline's default modules_to_save [pooler] with target "dense": pooler.dense is not wrapped, no base
    weight trains, and the saved adapter loads back through load_trained (the evaluate stage) to the same logits.
    Before, pooler.dense's "frozen" W0 trained and the fingerprint check refused the adapter."""
    model = lora_model(tiny_model_dir, tiny_tokenizer, target_modules=("dense",), modules_to_save=("pooler",))
    wrapped = [name for name, _ in lora_layers(model)]
    assert "bert.pooler.dense" not in wrapped and len(wrapped) == 6  # 3 dense layers per encoder layer
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert not any(".base." in n for n in trainable)
    assert {"bert.pooler.dense.weight", "classifier.weight"} <= trainable
    batch = _batch()
    train_steps(model, batch, lr=1e-2)
    save_adapter(model, tmp_path / "lora", base_model_name=str(tiny_model_dir),
                 trainable_extra=HEAD_MODULES + ("pooler",))  # as models.save_trained saves it
    loaded = load_trained("lora", tmp_path / "lora", ModelConfig(name=str(tiny_model_dir)), LABELS, tiny_tokenizer)
    with torch.no_grad():
        expected = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        got = loaded(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)  # merged vs unmerged: fp32 rounding only


@pytest.mark.parametrize("settings, message", [
    ({"rank": 10**9}, r"^lora\.rank: rank 1000000000 exceeds min\(in_features, out_features\) = 32 of "
                      r"bert\.encoder\.layer\.0\.attention\.self\.query \(32 -> 32\)"),
    ({"target_modules": ("nonexistent",)}, r"^lora\.target_sets\.t: target_modules=\['nonexistent'\] matched no "
                                           r".*candidate names \(suffixes\): \[.*'query'"),
    ({"target_modules": "classifier"}, r"^lora\.target_sets\.t: .*matched only \['classifier'\]"),
])
def test_bad_lora_settings_are_one_line_pipeline_errors(settings, message, tiny_model_dir, tiny_tokenizer) -> None:
    rank = settings.get("rank", 4)
    lora = LoraConfig(target_sets={"t": settings.get("target_modules")})
    with pytest.raises(PipelineError, match=message) as err:
        build_model("lora", ModelConfig(name=str(tiny_model_dir)), LABELS, tiny_tokenizer, lora=lora, rank=rank,
                    target_set="t")
    assert "\n" not in str(err.value) and len(str(err.value)) < 1000


def test_head_names_have_one_source() -> None:
    assert HEAD_MODULES is HEAD_NAMES


def test_load_report_is_one_log_line(tiny_model_dir, tiny_tokenizer, caplog, capfd) -> None:
    with caplog.at_level(logging.INFO):
        build_model("full", ModelConfig(name=str(tiny_model_dir)), LABELS, tiny_tokenizer)
        build_model("lora", ModelConfig(name=str(tiny_model_dir)), LABELS, tiny_tokenizer, lora=LoraConfig(), rank=8)
    out, err = capfd.readouterr()
    assert "LOAD REPORT" not in out + err and "Loading weights" not in out + err
    fresh = [r.getMessage() for r in caplog.records if "newly initialised" in r.getMessage()]
    assert fresh == [f"model.name {tiny_model_dir}: newly initialised (not in the checkpoint, trained here): "
                     "classifier"] * 2
    assert not any("LOAD REPORT" in r.getMessage() for r in caplog.records)


def test_load_trained_refuses_a_non_finite_adapter_in_one_line(tiny_model_dir, tiny_tokenizer, tmp_path) -> None:
    model = lora_model(tiny_model_dir, tiny_tokenizer)
    with torch.no_grad():
        lora_layers(model)[0][1].lora_b.fill_(float("inf"))
        lora_layers(model)[0][1].lora_a.fill_(1.0)
    save_adapter(model, tmp_path / "lora", base_model_name="tiny")
    with pytest.raises(PipelineError, match="cannot use this LoRA adapter: merge_and_unload refused: .*not finite"):
        load_trained("lora", tmp_path / "lora", ModelConfig(name=str(tiny_model_dir)), LABELS, tiny_tokenizer)


@pytest.fixture(scope="module")
def bf16_model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """The tiny BERT saved in bf16, as many hub checkpoints are (config.json says dtype bfloat16)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = tmp_path_factory.mktemp("bf16_bert")
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model.to(torch.bfloat16).save_pretrained(path, safe_serialization=True)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(path)
    return path


@pytest.mark.parametrize("variant", ["full", "lora"])
def test_a_half_precision_checkpoint_trains_in_fp32(variant, bf16_model_dir, tiny_tokenizer) -> None:
    """A bf16 checkpoint is loaded in fp32: every parameter (frozen base, adapters, head) is fp32, so small updates
    are not rounded away and `train.precision` alone decides the compute dtype (autocast)."""
    torch.manual_seed(0)
    model = build_model(variant, ModelConfig(name=str(bf16_model_dir), max_length=32), LABELS, tiny_tokenizer,
                        lora=LoraConfig(alpha=8) if variant == "lora" else None,
                        rank=4 if variant == "lora" else None)
    dtypes = {p.dtype for p in model.parameters()}
    assert dtypes == {torch.float32}
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    batch = _batch()
    train_steps(model, batch, steps=2, lr=5e-5)
    changed = [(p.detach() != before[n]).float().mean().item() for n, p in model.named_parameters()
               if p.requires_grad and p.dim() == 2 and n.startswith("bert.") and "lora_b" not in n]
    assert min(changed) > 0.99  # in bf16, a 5e-5 step leaves about half of the entries where they were


def test_the_dora_adapter_builds_dora_layers_that_save_and_load_to_the_same_logits(tiny_model_dir, tiny_tokenizer,
                                                                                  tmp_path) -> None:
    """A run of the study's dora adapter gives every adapted layer a trained magnitude; the saved adapter records
    it and load_trained (the evaluate stage) rebuilds the same model."""
    from lora_pipeline.records import ModelCard
    from lora_pipeline.models import save_trained

    lora = LoraConfig(alpha=8)
    torch.manual_seed(0)
    model = build_model("lora", ModelConfig(name=str(tiny_model_dir), max_length=32), LABELS, tiny_tokenizer, lora=lora,
                        rank=4, adapter="dora")
    layers = lora_layers(model)
    assert layers and all(layer.use_dora for _, layer in layers)
    assert all(layer.lora_magnitude.requires_grad for _, layer in layers)
    batch = _batch()
    train_steps(model, batch, lr=1e-2)
    card = ModelCard(variant="lora", labels=tuple(LABELS), max_length=32, text_pair=False, precision="fp32",
                     base_model=str(tiny_model_dir))
    save_trained("lora", model, tiny_tokenizer, tmp_path / "dora", card=card, lora=lora)
    loaded = load_trained("lora", tmp_path / "dora", ModelConfig(name=str(tiny_model_dir)), LABELS, tiny_tokenizer)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(**inputs).logits, model.eval()(**inputs).logits,
                                   rtol=1e-5, atol=1e-6)
