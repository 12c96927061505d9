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
from tests.conftest import make_frame, write_clean, write_params


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


@pytest.mark.slow
def test_gpt2_trains_with_lora_through_the_stages(tmp_path):
    df = make_frame(150)
    model_dir = _tiny_gpt2(tmp_path / "gpt2", df["text"].tolist())
    params = write_params(tmp_path / "params.yaml", model_dir, {"lora.epochs": 8, "lora.lr": 2e-2,
                                                                "lora.target_modules": None})
    clean = write_clean(tmp_path / "clean", df)
    assert split.main(["--params", str(params), "--clean", str(clean), "--out", str(tmp_path / "split"),
                       "--metrics", str(tmp_path / "split.json")]) == 0
    out = tmp_path / "models"
    assert train_lora.main(["--params", str(params), "--split", str(tmp_path / "split"), "--out", str(out / "lora"),
                            "--metrics", str(tmp_path / "train_lora.json"), "--curve", str(tmp_path / "c.csv"),
                            "--checkpoints", str(tmp_path / "ck"), "--no-progress"]) == 0
    config = json.loads((out / "lora" / "adapter_config.json").read_text())
    assert all(name.endswith("attn.c_attn") for name in config["target_modules"])  # GPT-2 default targets
    tensors = load_file(out / "lora" / "adapter.safetensors")
    assert any(k.startswith("score.") for k in tensors), "the classification head must be saved"
    metrics = json.loads((tmp_path / "train_lora.json").read_text())
    assert metrics["trainable_percent"] < 50 and metrics["val_macro_f1"] > 0.5  # learns the separable toy task
    # evaluate loads the adapter onto a fresh GPT-2, merges it and scores the test split; the other two
    # variants are stood in for by the untrained base (evaluate always scores all three)
    for variant in ("scratch", "full"):
        (out / variant).symlink_to(model_dir)
    assert evaluate.main(["--params", str(params), "--split", str(tmp_path / "split"), "--models", str(out),
                          "--metrics", str(tmp_path / "evaluate.json"),
                          "--predictions", str(tmp_path / "pred")]) == 0
    lora_test = json.loads((tmp_path / "evaluate.json").read_text())["lora"]
    assert lora_test["macro_f1"] > 0.7
