"""A GPT-2-style decoder through the pipeline's own stages: its tokenizer has no pad token, its
attention uses transposed ``Conv1D`` weights, and it classifies from the last non-pad token.
No GPT-2 weights are reachable offline, so the test builds a tiny random GPT-2 and a tiny BPE tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from stages import evaluate, split, train_lora
from lora_pipeline.records import RunSpec
from tests.support.builders import LRS, RANK, SEED, instance_args, make_frame, write_clean, write_params


def _tiny_gpt2(path: Path, texts: list[str]) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2ForSequenceClassification, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token="<|endoftext|>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"]))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                  unk_token="<|endoftext|>")
    assert tok.pad_token is None  # like GPT-2's own tokenizer
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=2, n_head=2,
                        eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id)
    GPT2ForSequenceClassification(config).save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path


def _train(variant: str, base: Path, params: Path, lr: float) -> int:
    """One train instance at write_params' seed (and rank), laid out as dvc.yaml lays it out for evaluate."""
    from stages import train_full, train_scratch

    tag = RunSpec(variant, SEED, lr, RANK if variant == "lora" else None).tag
    stage = {"scratch": train_scratch, "full": train_full, "lora": train_lora}[variant]
    return stage.main(["--params", str(params), "--split", str(base / "split"), *instance_args(variant, lr=lr),
                       "--out", str(base / "models" / variant / tag),
                       "--metrics", str(base / "runs" / f"{variant}-{tag}.json"),
                       "--curve", str(base / "curves" / variant / tag),
                       "--predictions", str(base / "val_predictions" / variant / f"{tag}.csv"),
                       "--checkpoints", str(base / "ck" / variant), "--no-progress"])


@pytest.mark.slow
def test_gpt2_trains_with_lora_through_the_stages(tmp_path):
    df = make_frame(150)
    model_dir = _tiny_gpt2(tmp_path / "gpt2", df["text"].tolist())
    lrs = {"scratch": LRS["scratch"], "full": LRS["full"], "lora": 2e-2}
    params = write_params(tmp_path / "params.yaml", model_dir, {
        "lora.epochs": 8, "scratch.epochs": 1, "full.epochs": 1,
        **{f"study.{v}_lrs": [lr] for v, lr in lrs.items()}})
    clean = write_clean(tmp_path / "clean", df)
    assert split.main(["--params", str(params), "--clean", str(clean), "--out", str(tmp_path / "split"),
                       "--metrics", str(tmp_path / "split.json")]) == 0
    for variant, lr in lrs.items():  # evaluate scores the whole grid: scratch and full train one epoch
        assert _train(variant, tmp_path, params, lr) == 0, variant
    lora = tmp_path / "models" / "lora" / RunSpec("lora", SEED, lrs["lora"], RANK).tag
    config = json.loads((lora / "adapter_config.json").read_text())
    assert all(name.endswith("attn.c_attn") for name in config["target_modules"])  # GPT-2 default targets
    assert config["rank"] == RANK
    tensors = load_file(lora / "adapter.safetensors")
    assert any(k.startswith("score.") for k in tensors), "the classification head must be saved"
    metrics = json.loads((tmp_path / "runs" / f"lora-{lora.name}.json").read_text())
    assert metrics["trainable_percent"] < 50 and metrics["val_macro_f1"] > 0.5  # learns the separable toy task
    # evaluate loads the adapter onto a fresh GPT-2, merges it and scores the test split
    assert evaluate.main(["--params", str(params), "--split", str(tmp_path / "split"),
                          "--models", str(tmp_path / "models"), "--runs", str(tmp_path / "runs"),
                          "--metrics", str(tmp_path / "evaluate.json"), "--study", str(tmp_path / "study.json"),
                          "--rank-curve", str(tmp_path / "rank_curve.csv"), "--predictions", str(tmp_path / "pred"),
                          "--curves", str(tmp_path / "curves"), "--val-predictions", str(tmp_path / "val_predictions"),
                          "--record", str(tmp_path / "record.json.gz"),
                          "--learning-curves", str(tmp_path / "learning_curves")]) == 0
    lora_test = json.loads((tmp_path / "evaluate.json").read_text())[f"lora_r{RANK}"]
    assert lora_test["macro_f1"] > 0.7
