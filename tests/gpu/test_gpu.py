"""GPU-only paths: a bf16 autocast training step, fused AdamW, the trimmed last layer, prediction, and
data-parallel training over NCCL. Each test skips with its reason where CUDA (or a second GPU) is missing, as on
the project's CPU-only CI; ``python benchmarks/gpu_check.py`` runs them on a GPU machine, then the GPU benchmarks.
The last test checks that command's path on a machine without CUDA.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from lora_pipeline.config import LoraConfig, ModelConfig
from lora_pipeline.evaluation import predict
from lora_pipeline.inference import load_classifier
from lora_pipeline.models import build_model, save_trained
from lora_pipeline.runtime import resolve_bf16
from lora_pipeline.speedups import first_token_last_layer
from lora_pipeline.training import FitConfig, make_optimizer, train_step
from tests.support.builders import LABELS, ROOT, load_encoded, make_frame, save_tiny_bert, write_params, write_split
from tests.support.tiny_models import dropout_model, padded_batch
from tests.support.training import nonzero_lora_model

GPUS = torch.cuda.device_count() if torch.cuda.is_available() else 0
needs_cuda = pytest.mark.skipif(GPUS == 0, reason=f"needs a CUDA GPU: torch {torch.__version__} sees none")
needs_two_gpus = pytest.mark.skipif(GPUS < 2, reason=f"DDP over NCCL needs 2 CUDA GPUs; {GPUS} visible")
CUDA = torch.device("cuda")


def _lora(model_dir: Path, tokenizer) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("lora", ModelConfig(name=str(model_dir), max_length=32), LABELS, tokenizer,
                       lora=LoraConfig(alpha=8.0), rank=4)


def _batch(tokenizer, device: torch.device) -> dict[str, torch.Tensor]:
    frame = make_frame(per_class=4)
    enc = tokenizer(frame["text"].tolist(), padding=True, truncation=True, max_length=32, return_tensors="pt")
    labels = torch.tensor([LABELS.index(label) for label in frame["label"]])
    return {k: v.to(device) for k, v in {**enc, "labels": labels}.items()}


@needs_cuda
def test_a_bf16_autocast_step_on_cuda_keeps_fp32_weights_gradients_and_adamw_state(tiny_model_dir, tiny_tokenizer):
    if not torch.cuda.is_bf16_supported():
        pytest.skip(f"{torch.cuda.get_device_name()} runs no bf16")
    assert resolve_bf16("auto", CUDA)  # train.precision: auto means bf16 on this GPU
    model = _lora(tiny_model_dir, tiny_tokenizer).to(CUDA)
    batch = _batch(tiny_tokenizer, CUDA)
    with torch.no_grad():
        fp32_loss = model.eval()(**batch).loss
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(**batch)
    assert out.logits.dtype == torch.bfloat16  # the forward really ran in bf16
    torch.testing.assert_close(out.loss.float(), fp32_loss, rtol=5e-2, atol=5e-2)
    optimizer = make_optimizer(model.train(), FitConfig(lr=5e-3, epochs=1, bf16=True), CUDA)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    before = [p.detach().clone() for p in params]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    loss = train_step(model, batch, optimizer, scheduler, params, 1.0, CUDA, bf16=True)
    assert loss.is_cuda and torch.isfinite(loss)
    assert all(p.dtype == torch.float32 and p.is_cuda and p.grad is None for p in params)
    for p in params:
        assert optimizer.state[p]["exp_avg"].dtype == optimizer.state[p]["exp_avg_sq"].dtype == torch.float32
    assert any(not torch.equal(p, b) for p, b in zip(params, before))


@needs_cuda
def test_fused_adamw_on_cuda_takes_the_steps_of_the_cpu_optimizer(tiny_model_dir, tiny_tokenizer):
    on_cpu = _lora(tiny_model_dir, tiny_tokenizer)
    on_gpu = copy.deepcopy(on_cpu).to(CUDA)
    cfg = FitConfig(lr=1e-2, epochs=1)
    cpu_opt, gpu_opt = make_optimizer(on_cpu, cfg, torch.device("cpu")), make_optimizer(on_gpu, cfg, CUDA)
    assert gpu_opt.defaults["fused"] is True and not cpu_opt.defaults["fused"]
    cpu_params = [p for group in cpu_opt.param_groups for p in group["params"]]
    gpu_params = [p for group in gpu_opt.param_groups for p in group["params"]]
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):  # the same gradients on both sides, weight decay on and off (two groups)
        for a, b in zip(cpu_params, gpu_params):
            a.grad = torch.randn(a.shape, generator=gen)
            b.grad = a.grad.to(CUDA)
        cpu_opt.step()
        gpu_opt.step()
    for a, b in zip(cpu_params, gpu_params):
        torch.testing.assert_close(b.cpu(), a, rtol=1e-5, atol=1e-6)


def _seeded_step(model: torch.nn.Module, batch: dict, bf16: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Logits and the gradient of every parameter after one seeded forward/backward."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(11)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
        out = model(**batch)
    out.loss.backward()
    return out.logits.float().detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@needs_cuda
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_the_trimmed_last_layer_on_cuda_gives_the_untrimmed_outputs_and_gradients(attn, precision):
    """Dropout off: on CUDA the fused SDPA kernels draw the last layer's masks from another kernel, so only the
    arithmetic is compared (tests/unit/test_first_token.py compares the masks too, on CPU)."""
    bf16 = precision == "bf16"
    if bf16 and not torch.cuda.is_bf16_supported():
        pytest.skip(f"{torch.cuda.get_device_name()} runs no bf16")
    model = dropout_model("bert", attn, dropout=0.0).to(CUDA)
    batch = {k: v.to(CUDA) for k, v in padded_batch("bert").items()}
    logits, grads = _seeded_step(model, batch, bf16)
    with first_token_last_layer(model) as trimmed:
        assert trimmed
        trimmed_logits, trimmed_grads = _seeded_step(model, batch, bf16)
    tol = {"rtol": 2e-2, "atol": 2e-2} if bf16 else {"rtol": 1e-5, "atol": 1e-6}
    torch.testing.assert_close(trimmed_logits, logits, **tol)
    assert trimmed_grads.keys() == grads.keys()
    if not bf16:  # bf16 gradients of differently shaped GEMMs differ by more than a tolerance worth stating
        for name in grads:
            torch.testing.assert_close(trimmed_grads[name], grads[name], rtol=1e-4, atol=1e-5, msg=name)
    assert grads["classifier.weight"].abs().sum() > 0


@needs_cuda
def test_predict_on_cuda_gives_the_cpu_answers(tiny_model_dir, tiny_tokenizer, split_dir, tmp_path):
    """Both prediction paths: the evaluate stage's ``predict`` and ``load_classifier`` (lora-pipeline predict,
    the MLflow pyfunc model); fp32 on CUDA matches CPU, bf16 autocast to bf16 rounding."""
    model = _lora(tiny_model_dir, tiny_tokenizer).eval()
    test = load_encoded(split_dir, "test")
    on_cpu = predict(model, test, 16, tiny_tokenizer.pad_token_id, torch.device("cpu"))
    on_gpu = predict(model.to(CUDA), test, 16, tiny_tokenizer.pad_token_id, CUDA)
    np.testing.assert_array_equal(on_gpu, on_cpu)

    trained, lora, card = nonzero_lora_model(tiny_model_dir, tiny_tokenizer)
    save_trained("lora", trained, tiny_tokenizer, tmp_path / "m", card=card, lora=lora)
    texts = make_frame(per_class=5)["text"].tolist()
    reference = load_classifier(tmp_path / "m", device="cpu", precision="fp32").predict_proba(texts)
    gpu = load_classifier(tmp_path / "m", device="cuda", precision="fp32")
    assert gpu.device.type == "cuda" and next(gpu.model.parameters()).is_cuda
    np.testing.assert_allclose(gpu.predict_proba(texts), reference, atol=1e-5)
    if torch.cuda.is_bf16_supported():
        bf16 = load_classifier(tmp_path / "m", device="cuda", precision="bf16").predict_proba(texts)
        np.testing.assert_allclose(bf16, reference, atol=3e-2)


@pytest.fixture(scope="module")
def no_dropout_split(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny BERT without dropout (so one and two processes compute the same) and a split made with it."""
    from transformers import BertConfig, BertForSequenceClassification

    model = save_tiny_bert(tmp_path_factory.mktemp("tiny_bert_nodrop"))
    config = BertConfig.from_pretrained(model)
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.0
    BertForSequenceClassification.from_pretrained(model, config=config).save_pretrained(model)
    return model, write_split(tmp_path_factory.mktemp("split"), model, make_frame(60))


def _train_lora(work: Path, params: Path, split: Path, env: dict) -> str:
    """The real train_lora stage (it re-executes itself under torchrun when train.processes > 1); its stderr."""
    cmd = [sys.executable, "-m", "stages.train_lora", "--params", str(params), "--split", str(split), "--seed", "7",
           "--lr", "5e-3", "--rank", "4", "--out", str(work / "model"), "--metrics", str(work / "metrics.json"),
           "--curve", str(work / "curves"), "--predictions", str(work / "val_predictions.csv"), "--checkpoints", str(work / "ck"), "--no-progress"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-6000:]}"
    return proc.stderr


@needs_two_gpus
def test_two_gpus_train_a_stage_over_nccl_as_one_gpu_does(tmp_path, no_dropout_split):
    model, split = no_dropout_split
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NCCL_DEBUG": "INFO"}
    common = {"train.device": "cuda", "train.precision": "fp32", "train.eval_batch_size": 8,
              "train.dist_timeout_s": 120, "mlflow.enabled": False, "lora.dropout": 0.0}
    one, two = tmp_path / "one", tmp_path / "two"
    _train_lora(one, write_params(tmp_path / "p1.yaml", model, {**common, "train.processes": 1}), split, env)
    err = _train_lora(two, write_params(tmp_path / "p2.yaml", model, {**common, "train.processes": 2}), split, env)
    assert "launching 2 training processes per machine under torchrun" in err
    assert "NCCL INFO" in err, err[-3000:]  # the process group ran over NCCL
    m1, m2 = (json.loads((w / "metrics.json").read_text()) for w in (one, two))
    assert m2["steps"] == m1["steps"] and m2["device"].startswith("cuda"), (m1, m2)
    w1, w2 = ({k: v for f in sorted((w / "model").glob("*.safetensors")) for k, v in load_file(f).items()}
              for w in (one, two))
    assert w2.keys() == w1.keys() and w1
    for name in w1:  # half batches on each GPU, gradients averaged by NCCL = the whole batch on one GPU
        torch.testing.assert_close(w2[name], w1[name], rtol=1e-3, atol=1e-4, msg=name)


@pytest.mark.skipif(GPUS > 0, reason="checks the command's path on a machine without CUDA")
def test_gpu_check_without_cuda_exits_0_with_one_skip_line():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py")], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (line,) = proc.stdout.splitlines()
    assert line.startswith("gpu_check: skipped: no CUDA device"), line


def test_the_project_copy_of_gpu_check_holds_the_whole_default_dag(tmp_path):
    """The DAG is timed in a copy of the project (so the repository's outputs stay): it must hold every file
    dvc.yaml names, the data folder ingest depends on included."""
    from benchmarks.gpu_check import copy_project

    project = copy_project(tmp_path / "project")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    names = subprocess.run(["dvc", "stage", "list", "--name-only"], cwd=project, env=env, capture_output=True,
                           text=True, check=True).stdout.split()
    assert names[:3] == ["ingest", "validate", "split"] and names[-2:] == ["evaluate", "report"]
    assert any(n.startswith("train_lora@") for n in names) and (project / "data" / "external").is_dir()
    assert not (project / "dvc.lock").exists() and not (project / "models" / "lora").exists()


def test_a_junit_report_becomes_counts_failures_and_skip_reasons():
    from benchmarks.gpu_check import junit_summary

    report = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" tests="4">
    <testcase classname="tests.test_gpu" name="test_a" time="0.1"/>
    <testcase classname="tests.test_gpu" name="test_b[fp32]" time="0.2"><failure message="assert 1 == 2"/></testcase>
    <testcase classname="tests.test_gpu" name="test_c" time="0.0">
      <skipped type="pytest.skip" message="DDP over NCCL needs 2 CUDA GPUs; 1 visible"/></testcase>
    <testcase classname="tests.test_gpu" name="test_d" time="0.0"><error message="fixture failed"/></testcase>
    </testsuite></testsuites>"""
    assert junit_summary(report) == {"passed": 1, "failed": ["test_b[fp32]", "test_d"],
                                     "skipped": {"test_c": "DDP over NCCL needs 2 CUDA GPUs; 1 visible"}}


def test_gpu_check_puts_the_project_copy_before_the_users_pythonpath_instead_of_dropping_it(monkeypatch):
    """A GPU machine's packages may come from PYTHONPATH (e.g. ``pip install --target``): the DAG's environment
    puts the project copy first and keeps the rest."""
    from benchmarks.gpu_check import run_env

    monkeypatch.setenv("PYTHONPATH", "/opt/site")
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    env = run_env(PYTHONPATH="/tmp/project")
    assert env["PYTHONPATH"] == f"/tmp/project{os.pathsep}/opt/site"
    assert "PYTHONDONTWRITEBYTECODE" not in env and env["PATH"].startswith(str(Path(sys.executable).parent))
    monkeypatch.delenv("PYTHONPATH")
    assert run_env(PYTHONPATH="/tmp/project")["PYTHONPATH"] == "/tmp/project"
