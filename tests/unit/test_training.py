"""training.fit: learns, keeps the best epoch, touches only trainable weights, follows the schedule."""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoModelForSequenceClassification

from lora_pipeline import training, training_monitor
from lora_pipeline.checkpoint import DirCheckpointer
from lora_pipeline.config import ModelConfig, ScratchConfig
from lora_pipeline.data.loaders import EncodedSplit
from lora_pipeline.errors import PipelineError
from lora_pipeline.evaluation import classification_metrics
from lora_pipeline.models import build_model
from lora_pipeline.runtime import resolve_bf16, resolve_device
from lora_pipeline.training import FitConfig, fit
from tests.support.builders import EPOCHS_ONLY, LABELS, load_encoded, save_tiny_bert
from tests.support.training import RecordingTracker, parameter_state, pretrained_classifier

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def data(split_dir):
    return load_encoded(split_dir, "train"), load_encoded(split_dir, "val")


def test_fit_learns_the_toy_task(tiny_model_dir, data, tiny_tokenizer):
    train, val = data
    model = pretrained_classifier(tiny_model_dir)
    cfg = FitConfig(lr=2e-2, epochs=4, batch_size=16, warmup_ratio=0.1, seed=1, eval_every=8, **EPOCHS_ONLY)
    result = fit(model, train, val, cfg, pad_id=tiny_tokenizer.pad_token_id, device=CPU, progress=False)
    losses = [row["train_loss"] for row in result.history]
    assert [row["epoch"] for row in result.history] == [1.0, 2.0, 3.0, 4.0]
    assert [row["step"] for row in result.history] == [8, 16, 24, 32]
    assert losses[-1] < 0.7 * losses[0], losses
    assert result.best_val_macro_f1 > 0.6  # 3 balanced classes: chance is ~0.33
    scores = {row["step"]: row["val_macro_f1"] for row in result.history}
    assert result.best_val_macro_f1 == scores[result.best_step]
    assert max(scores.values()) <= result.best_val_macro_f1 + cfg.min_delta  # no later score beat it by more
    assert result.steps == result.planned_steps == 4 * -(-len(train) // 16)
    assert result.stop_reason == f"cap: completed 4 epochs (32 steps) with early stopping off (best at step " \
                                 f"{result.best_step})"
    assert result.resumed_from_step == 0
    assert result.train_seconds > 0 and result.samples_per_second > 0


def test_fit_restores_the_best_epoch(monkeypatch, tiny_model_dir, data):
    train, val = data
    scores = iter([0.2, 0.9, 0.5])
    at_epoch_end: list[dict[str, torch.Tensor]] = []

    def scripted(model, *_args):
        at_epoch_end.append(parameter_state(model))
        return next(scores), [0] * len(val)

    monkeypatch.setattr(training_monitor, "_evaluate", scripted)
    model = pretrained_classifier(tiny_model_dir)
    result = fit(model, train, val, FitConfig(lr=5e-3, epochs=3, batch_size=32, eval_every=4, **EPOCHS_ONLY),
                 pad_id=0, device=CPU, progress=False)
    assert (result.best_epoch, result.best_step, result.best_val_macro_f1) == (2.0, 8, 0.9)  # 4 steps per epoch
    assert [row["val_macro_f1"] for row in result.history] == [0.2, 0.9, 0.5]
    final = parameter_state(model)
    for name, value in at_epoch_end[1].items():
        torch.testing.assert_close(final[name], value, rtol=0, atol=0, msg=name)
    assert any(not torch.equal(final[n], v) for n, v in at_epoch_end[2].items())  # epoch 3 really differed


def test_only_trainable_parameters_change(tiny_model_dir, data):
    train, val = data
    model = pretrained_classifier(tiny_model_dir)
    for name, param in model.named_parameters():
        param.requires_grad = name.startswith("classifier.")
    before = parameter_state(model)
    fit(model, train, val, FitConfig(lr=1e-2, epochs=1, batch_size=32, weight_decay=0.1, **EPOCHS_ONLY), pad_id=0,
        device=CPU, progress=False)
    after = parameter_state(model)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed == {"classifier.weight", "classifier.bias"}


def test_no_weight_decay_on_biases_and_layer_norms(tiny_model_dir):
    model = pretrained_classifier(tiny_model_dir)
    opt = training.make_optimizer(model, FitConfig(lr=1e-3, epochs=1, weight_decay=0.05), CPU)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed, plain = ({names[id(p)] for p in g["params"]} for g in opt.param_groups)
    assert opt.param_groups[0]["weight_decay"] == 0.05 and opt.param_groups[1]["weight_decay"] == 0.0
    assert decayed | plain == set(names.values()) and not decayed & plain
    assert all(n.endswith(".bias") or "LayerNorm" in n for n in plain)
    assert "classifier.weight" in decayed and "bert.embeddings.word_embeddings.weight" in decayed


def test_cpu_adamw_runs_per_tensor_and_steps_exactly_as_the_multi_tensor_kernel(tiny_model_dir):
    """On CPU the optimizer is single-tensor AdamW (a few % faster there); its weights after several steps are
    bit for bit those of the multi-tensor (foreach) kernel."""
    batch = {"input_ids": torch.randint(1000, 2000, (8, 12)), "attention_mask": torch.ones(8, 12, dtype=torch.long),
             "labels": torch.tensor([0, 1, 2, 0] * 2)}
    cfg = FitConfig(lr=1e-3, epochs=1, weight_decay=0.05)
    states = []
    for foreach in (None, True):
        model = pretrained_classifier(tiny_model_dir).train()
        opt = training.make_optimizer(model, cfg, CPU)
        if foreach:
            opt = torch.optim.AdamW(opt.param_groups, lr=cfg.lr, foreach=True)
        else:
            assert opt.defaults["foreach"] is False and not opt.defaults["fused"]
        for _ in range(4):
            opt.zero_grad()
            model(**batch).loss.backward()
            opt.step()
        states.append(parameter_state(model))
    for name, value in states[1].items():
        assert torch.equal(states[0][name], value), name


def test_linear_warmup_then_linear_decay_to_zero(tiny_model_dir, data):
    train, val = data
    tracker = RecordingTracker()
    cfg = FitConfig(lr=1e-3, epochs=2, batch_size=16, warmup_ratio=0.25, log_every=1, eval_every=8, **EPOCHS_ONLY)
    fit(pretrained_classifier(tiny_model_dir), train, val, cfg, pad_id=0, device=CPU, tracker=tracker, progress=False)
    total = 2 * -(-len(train) // 16)
    warmup = int(0.25 * total)
    lrs = {step: m["lr"] for step, m in tracker.metrics if "lr" in m}
    assert sorted(lrs) == list(range(1, total + 1))
    for step, lr in lrs.items():  # the lr that the *next* step will use
        expected = cfg.lr * (step / warmup if step < warmup else (total - step) / (total - warmup))
        assert lr == pytest.approx(expected, abs=1e-12), step
    assert max(lrs.values()) == pytest.approx(cfg.lr) and lrs[total] == 0.0
    epochs = [(step, m) for step, m in tracker.metrics if "val_macro_f1" in m]
    assert [step for step, _ in epochs] == [total // 2, total]
    assert all("epoch_train_loss" in m for _, m in epochs)


def test_two_fits_with_the_same_seed_are_identical(tiny_model_dir, data):
    train, val = data
    cfg = FitConfig(lr=5e-3, epochs=2, batch_size=16, seed=3, **EPOCHS_ONLY)
    runs = []
    for _ in range(2):
        model = pretrained_classifier(tiny_model_dir, seed=11)  # dropout draws from the global RNG
        result = fit(model, train, val, cfg, pad_id=0, device=CPU, progress=False)
        curves = [[{k: v for k, v in row.items() if k not in ("seconds", "cpu_seconds")} for row in rows]
                  for rows in (result.history, result.steps_log)]  # all but the clocks
        runs.append(((curves, result.best_predictions), parameter_state(model)))
    assert runs[0][0] == runs[1][0] and runs[0][0][0][1] and len(runs[0][0][1]) == len(val)
    for name in runs[0][1]:
        assert torch.equal(runs[0][1][name], runs[1][1][name]), name


def test_fit_config_from_params_takes_every_shared_default_of_the_train_section():
    """FitConfig's defaults of the train fields are TrainConfig's (fast_cpu_dropout once drifted to True)."""
    import types

    from lora_pipeline.config import LoraConfig, TrainConfig

    params = types.SimpleNamespace(train=TrainConfig(), lora=LoraConfig())
    built = FitConfig.from_params(params, "lora", CPU, lr=2e-3, seed=7)
    assert built == FitConfig(lr=2e-3, epochs=params.lora.epochs, seed=7,
                              bf16=resolve_bf16(params.train.precision, CPU))
    assert FitConfig(lr=1e-3, epochs=1).fast_cpu_dropout is False
    assert (built.min_steps, built.max_steps, built.patience, built.min_delta, built.eval_every, built.log_every) == \
           (300, 6000, 4, 0.001, 0, 10)


def test_fit_config_from_params_copies_every_train_field_it_shares():
    """The run length knobs come from ``train`` like the others; lr and seed from the study grid point."""
    import dataclasses
    import types

    from lora_pipeline.config import FullConfig, TrainConfig

    train = TrainConfig(batch_size=8, eval_batch_size=16, weight_decay=0.2, warmup_ratio=0.3, max_grad_norm=0.5,
                        checkpoint_every=7, first_token_last_layer=False, min_steps=11, max_steps=50, patience=4,
                        min_delta=0.02, eval_every=9, log_every=3, cpu_dropout="fast")
    built = FitConfig.from_params(types.SimpleNamespace(train=train, full=FullConfig(epochs=5)), "full", CPU,
                                  lr=1e-4, seed=123)
    shared = [f.name for f in dataclasses.fields(FitConfig) if hasattr(train, f.name)]
    assert {"min_steps", "max_steps", "patience", "min_delta", "eval_every", "log_every"} <= set(shared)
    assert {name: getattr(built, name) for name in shared} == {name: getattr(train, name) for name in shared}
    assert (built.lr, built.seed, built.epochs, built.fast_cpu_dropout) == (1e-4, 123, 5, True)


def test_resolve_device():
    assert resolve_device("cpu") == CPU
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("name", ["cuda", "cuda:0"])
def test_a_cuda_request_without_cuda_is_a_one_line_error(monkeypatch, name):
    """`train.device: cuda` on a CPU-only torch is a one-line error, not a traceback deep inside training."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(PipelineError, match=rf"'train\.device' is '{name}' but .*no CUDA.*auto or cpu") as info:
        resolve_device(name)
    assert "\n" not in str(info.value)
    assert resolve_device("auto") == CPU


def test_a_cuda_index_beyond_the_visible_gpus_is_a_one_line_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(PipelineError, match=r"'train\.device' is 'cuda:2' but only 2 CUDA devices"):
        resolve_device("cuda:2")


def test_best_epoch_selection_scores_with_the_declared_label_set(monkeypatch, tiny_model_dir, split_dir):
    """A class absent from the val split and the predictions still counts (as 0), exactly as
    in the reported metric; without the declared set, selection scored 1.0 where the report says 2/3."""
    frame = pd.read_parquet(split_dir / "val.parquet")
    val = EncodedSplit.from_frame(frame[frame["label_id"] < 2].reset_index(drop=True))  # no class 2
    monkeypatch.setattr(training_monitor, "predict", lambda model, split, *a, **k: np.asarray(split.labels))  # all right
    result = fit(pretrained_classifier(tiny_model_dir), load_encoded(split_dir, "train"), val,
                 FitConfig(lr=1e-3, epochs=1, batch_size=32, **EPOCHS_ONLY), pad_id=0, device=CPU, progress=False)
    reported = classification_metrics(val.labels, val.labels, LABELS)["macro_f1"]
    assert reported == pytest.approx(2 / 3)
    assert result.history[0]["val_macro_f1"] == pytest.approx(reported)
    assert result.best_val_macro_f1 == pytest.approx(reported)
    assert result.best_predictions == val.labels  # the best validation's predictions, in row order


def test_epoch_log_lines_are_not_glued_onto_the_progress_bar(tiny_model_dir, data, capsys):
    """With the bar on, each validation summary starts its own line (tqdm's logging redirection)."""
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)  # capsys's stderr, as run_stage's handler is the real one
    handler.setFormatter(logging.Formatter("LOG %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    fit(pretrained_classifier(tiny_model_dir), *data, FitConfig(lr=1e-3, epochs=2, batch_size=16, eval_every=8, **EPOCHS_ONLY),
        pad_id=0, device=CPU, progress=True)
    assert handler in root.handlers  # the redirection is undone
    err = capsys.readouterr().err
    assert "train:" in err  # the bar was drawn
    epoch_lines = [line for line in re.split(r"[\r\n]", err) if re.search(r"\(epoch [\d.]+\): train_loss", line)]
    assert len(epoch_lines) == 2 and all(line.startswith("LOG step") for line in epoch_lines), epoch_lines


def test_full_variant_loads_a_classifier_checkpoint_with_another_label_count(tmp_path, tiny_tokenizer):
    """A fine-tuned 2-label checkpoint as the base of a 3-label task: the head is replaced, the body kept."""
    src = save_tiny_bert(tmp_path / "two_labels", num_labels=2)
    reference = AutoModelForSequenceClassification.from_pretrained(src, use_safetensors=True)
    model = build_model("full", ModelConfig(name=str(src), max_length=32), LABELS, tiny_tokenizer)
    assert model.classifier.out_features == 3
    assert model.config.id2label == dict(enumerate(LABELS))
    torch.testing.assert_close(model.bert.embeddings.word_embeddings.weight,
                               reference.bert.embeddings.word_embeddings.weight)


def test_scratch_variant_uses_the_tokenizer_vocabulary(tiny_model_dir, tiny_tokenizer):
    cfg = ScratchConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
    model = build_model("scratch", ModelConfig(name=str(tiny_model_dir), max_length=32), LABELS, tiny_tokenizer,
                        scratch=cfg)
    assert model.config.vocab_size == len(tiny_tokenizer)
    assert model.config.num_hidden_layers == 1 and model.config.num_labels == 3
    assert model.config.pad_token_id == tiny_tokenizer.pad_token_id


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="VmHWM is Linux-only")
def test_peak_rss_of_a_child_is_its_own_not_the_parents():
    """getrusage's ru_maxrss in a fork+exec child includes the parent's size; peak_rss_mb must not."""
    import subprocess
    import sys

    ballast = torch.ones(512 * 2**20 // 4 * 4)  # 2 GiB resident in this (parent) process
    code = ("import resource; from lora_pipeline.runtime import peak_rss_mb; "
            "print(peak_rss_mb(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)")  # rusage: 2 GiB+
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    own, _rusage = map(float, out.stdout.split())
    assert ballast.sum() > 0
    assert 50 < own < 1500, own  # torch + transformers imported, nothing else


def test_resolve_bf16():
    assert resolve_bf16("fp32", CPU) is False
    assert resolve_bf16("bf16", CPU) is True
    assert resolve_bf16("auto", CPU) is False  # fp32 on every CPU, whatever its bf16 flags (runtime.resolve_bf16)


def test_bf16_fit_learns_and_keeps_fp32_weights(tiny_model_dir, data, tiny_tokenizer, monkeypatch):
    """bf16 autocast reaches the forward passes (train and eval); weights and optimizer state stay fp32."""
    train, val = data
    model = pretrained_classifier(tiny_model_dir)
    seen = []
    model.classifier.register_forward_hook(lambda mod, args, out: seen.append((mod.training, out.dtype)))
    cfg = FitConfig(lr=2e-2, epochs=4, batch_size=16, warmup_ratio=0.1, seed=1, bf16=True, **EPOCHS_ONLY)
    result = fit(model, train, val, cfg, pad_id=tiny_tokenizer.pad_token_id, device=CPU, progress=False)
    assert result.best_val_macro_f1 > 0.6
    assert {dtype for _, dtype in seen} == {torch.bfloat16} and {mode for mode, _ in seen} == {True, False}
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_lora_modules_to_save_trains_the_pooler_and_round_trips(tiny_model_dir, tiny_tokenizer, tmp_path, caplog):
    """lora.modules_to_save: the pooler trains with the head, is saved with the adapter, reloads exactly."""
    from lora_pipeline.config import LoraConfig
    from lora_pipeline.lora import save_adapter
    from lora_pipeline.models import HEAD_MODULES, load_trained

    cfg = ModelConfig(name=str(tiny_model_dir), max_length=32)
    lora = LoraConfig(alpha=4.0, modules_to_save=("pooler",))
    model = build_model("lora", cfg, LABELS, tiny_tokenizer, lora=lora, rank=2)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {"bert.pooler.dense.weight", "bert.pooler.dense.bias", "classifier.weight"} <= trainable
    assert not any("encoder" in n and "lora_" not in n for n in trainable)
    plain = build_model("lora", cfg, LABELS, tiny_tokenizer, lora=LoraConfig(alpha=4.0, modules_to_save=()), rank=2)
    assert not any("pooler" in n for n, p in plain.named_parameters() if p.requires_grad)
    with torch.no_grad():
        model.bert.pooler.dense.weight.add_(0.5)  # as if trained
        for name, p in model.named_parameters():
            if "lora_b" in name:
                p.normal_(0.0, 0.5)
    save_adapter(model, tmp_path / "a", base_model_name=cfg.name, trainable_extra=HEAD_MODULES + ("pooler",))
    batch = tiny_tokenizer(["a great film", "dull"], padding=True, return_tensors="pt")
    model.eval()
    with torch.no_grad():
        expected = model(**batch).logits
        got = load_trained("lora", tmp_path / "a", cfg, LABELS, tiny_tokenizer).eval()(**batch).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    with caplog.at_level("WARNING"):
        build_model("lora", cfg, LABELS, tiny_tokenizer, lora=LoraConfig(modules_to_save=("nopool",)), rank=2)
    assert "no module named nopool" in caplog.text


class _Crash(Exception):
    pass


class _CrashingCheckpointer(DirCheckpointer):
    """Dies right after its ``crash_after``-th save, like a process killed there."""

    def __init__(self, directory, crash_after: int | None):
        super().__init__(directory, "k")
        self.crash_after, self.saves = crash_after, 0

    def save(self, state):
        super().save(state)
        self.saves += 1
        if self.saves == self.crash_after:
            raise _Crash


def _grad_norm_fit(tiny_model_dir, data, tracker, checkpointer=None):
    cfg = FitConfig(lr=5e-3, epochs=2, batch_size=16, seed=3, log_every=2, checkpoint_every=3, max_grad_norm=0.01,
                    **EPOCHS_ONLY)
    return fit(pretrained_classifier(tiny_model_dir, seed=11), *data, cfg, pad_id=0, device=CPU, tracker=tracker,
               checkpointer=checkpointer, progress=False)


def test_grad_norm_before_clipping_is_logged_with_the_loss_every_log_step(tiny_model_dir, data):
    tracker = RecordingTracker()
    result = _grad_norm_fit(tiny_model_dir, data, tracker)
    assert tracker.steps_with("grad_norm") == tracker.steps_with("train_loss") == list(range(2, result.steps + 1, 2))
    norms = [m["grad_norm"] for _, m in tracker.metrics if "grad_norm" in m]
    assert all(isinstance(n, float) and 0.01 < n < float("inf") for n in norms)  # the norm clipping started from


def test_a_resumed_fit_logs_the_grad_norms_of_an_uninterrupted_one(tiny_model_dir, data, tmp_path):
    reference, crashed, resumed = RecordingTracker(), RecordingTracker(), RecordingTracker()
    _grad_norm_fit(tiny_model_dir, data, reference, _CrashingCheckpointer(tmp_path / "a", None))
    with pytest.raises(_Crash):  # dies after its 3rd save, a log step
        _grad_norm_fit(tiny_model_dir, data, crashed, _CrashingCheckpointer(tmp_path / "b", 3))
    _grad_norm_fit(tiny_model_dir, data, resumed, _CrashingCheckpointer(tmp_path / "b", None))
    curve = [(step, m["grad_norm"]) for t in (crashed, resumed) for step, m in t.metrics if "grad_norm" in m]
    assert curve == [(step, m["grad_norm"]) for step, m in reference.metrics if "grad_norm" in m]
    assert resumed.steps_with("grad_norm")[0] > 2
