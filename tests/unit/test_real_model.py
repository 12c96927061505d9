"""The real default encoder (all-MiniLM-L6-v2 from its PyPI package) through the project's own code."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from lora_pipeline.config import LoraConfig, ModelConfig
from lora_pipeline.data.loaders import EncodedSplit
from lora_pipeline.data.tokenization import tokenize_frame
from lora_pipeline.models import build_model
from lora_pipeline.pretrained import load_tokenizer
from lora_pipeline.training import FitConfig, fit
from tests.support.builders import EPOCHS_ONLY
from tests.support.tiny_models import train_steps

pytestmark = pytest.mark.slow
LABELS = ["neg", "pos"]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(ModelConfig())


def _split(tokenizer, n: int) -> EncodedSplit:
    texts = ["a wonderful, moving film", "dull and far too long", "the cast is superb",
             "a tedious mess of a script"] * (n // 4)
    df = pd.DataFrame({"text": texts, "label": ["pos", "neg", "pos", "neg"] * (n // 4)})
    return EncodedSplit.from_frame(tokenize_frame(df, tokenizer, 32, LABELS))


def test_minilm_loads_with_a_fresh_head(tokenizer):
    model = build_model("full", ModelConfig(), LABELS, tokenizer)
    assert model.config.model_type == "bert" and model.config.num_hidden_layers == 6
    assert model.config.hidden_size == 384 and model.num_labels == 2


def test_minilm_lora_trains_a_few_steps(tokenizer):
    torch.manual_seed(0)
    model = build_model("lora", ModelConfig(), LABELS, tokenizer, lora=LoraConfig(alpha=8), rank=4)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    total = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for n, p in model.named_parameters() if n in trainable) / total < 0.01
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    data = _split(tokenizer, 16)
    result = fit(model, data, data, FitConfig(lr=5e-3, epochs=3, batch_size=8, warmup_ratio=0.0, eval_every=2,
                                              **EPOCHS_ONLY),
                 pad_id=tokenizer.pad_token_id, device=torch.device("cpu"), progress=False)
    assert [row["epoch"] for row in result.history] == [1.0, 2.0, 3.0] and result.planned_steps == 3 * 2
    assert result.stop_reason.startswith("cap: completed 3 epochs (6 steps)") and result.stopped_by == "cap"
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}
    assert changed <= trainable, f"frozen parameters changed: {sorted(changed - trainable)[:5]}"
    assert len(changed) == len(trainable), f"trainable but unchanged: {sorted(trainable - changed)[:5]}"


def test_minilm_first_token_last_layer_gives_the_same_step(tokenizer):
    """The trimmed last layer on the real encoder, LoRA dropout on: same loss, gradients and RNG stream."""
    from lora_pipeline.speedups import first_token_last_layer

    torch.manual_seed(0)
    model = build_model("lora", ModelConfig(), LABELS, tokenizer, lora=LoraConfig(alpha=16, dropout=0.1), rank=8)
    model.train()
    texts = tokenizer(["a wonderful, moving film", "dull"] * 4, padding=True, return_tensors="pt")
    batch = {**texts, "labels": torch.tensor([1, 0] * 4)}
    runs = []
    for trimmed in (False, True):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(5)
        if trimmed:
            with first_token_last_layer(model) as active:
                assert active
                loss = model(**batch).loss
        else:
            loss = model(**batch).loss
        loss.backward()
        runs.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None},
                     torch.get_rng_state()))
    (loss_a, grads_a, rng_a), (loss_b, grads_b, rng_b) = runs
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-5, atol=1e-6)
    for name, grad in grads_a.items():
        torch.testing.assert_close(grads_b[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    assert torch.equal(rng_a, rng_b)


def test_minilm_trained_adapter_round_trips_through_peft(tokenizer, tmp_path):
    """The pipeline's shape (q/v adapters + head + pooler trained in full) on the real encoder: what train_lora
    saves, loaded back and exported, gives peft the same logits (before, export dropped the pooler: ~0.9 off)."""
    peft = pytest.importorskip("peft")
    from lora_pipeline.lora import export_peft, load_adapter, save_adapter
    from lora_pipeline.models import HEAD_MODULES

    torch.manual_seed(0)
    lora = LoraConfig(alpha=8, modules_to_save=("pooler",))
    model = build_model("lora", ModelConfig(), LABELS, tokenizer, lora=lora, rank=4)
    texts = tokenizer(["a wonderful, moving film", "dull and far too long", "the cast is superb",
                       "a tedious mess"] * 2, padding=True, return_tensors="pt")
    batch = {**texts, "labels": torch.tensor([1, 0, 1, 0] * 2)}
    train_steps(model, batch, lr=5e-3)
    save_adapter(model, tmp_path / "lora", base_model_name=ModelConfig().name,
                 trainable_extra=HEAD_MODULES + lora.modules_to_save)  # as models.save_trained does
    ours = build_model("full", ModelConfig(), LABELS, tokenizer)
    load_adapter(ours, tmp_path / "lora")
    export_peft(ours, tmp_path / "peft", base_model_name=ModelConfig().name)
    theirs = peft.PeftModel.from_pretrained(build_model("full", ModelConfig(), LABELS, tokenizer), tmp_path / "peft")
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        expected, got = model(**inputs).logits, theirs.eval()(**inputs).logits
    assert theirs.peft_config["default"].modules_to_save[:2] == ["bert.pooler", "classifier"]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_minilm_fingerprint_covers_all_weights_cheaply(tokenizer):
    """Every base parameter (22.7 M, 91 MB) is hashed once; it must stay cheap next to loading the model."""
    import time

    from lora_pipeline.lora import base_fingerprint

    model = build_model("full", ModelConfig(), LABELS, tokenizer)
    start = time.perf_counter()
    digest = base_fingerprint(model, {"classifier.weight", "classifier.bias"})
    elapsed = time.perf_counter() - start
    assert len(digest) == 64 and elapsed < 2.0, f"fingerprint took {elapsed:.2f} s"
