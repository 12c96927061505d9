"""Peak memory of training, one fresh child process per variant.

Each child builds one variant, moves it to the device and runs a few training steps on the fixed batch
through the loop's ``train_step``. On CUDA it reports ``torch.cuda.max_memory_allocated`` over those steps
(weights, gradients, AdamW state, activations); on CPU the peak resident set size of the whole child, and
also how far it rose above the resident size just before training (imports and weights excluded).

    python -m benchmarks.memory --variant full|ours|peft --split DIR --params FILE --device auto --steps 3
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

import torch

from lora_pipeline.runtime import peak_rss_mb

from ._common import ROOT, STEP_BATCH, STEP_LENGTH, Models, fixed_batch, load_bench_params, pick_device, ratio

VARIANTS = ("full", "ours", "peft")


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**20




def child(variant: str, split: Path, params_path: Path, device_name: str, steps: int, threads: int,
          bf16: bool = False) -> dict:
    """Train ``variant`` for ``steps`` steps in this process and return its memory figures."""
    from .step_time import stepper

    if threads:
        torch.set_num_threads(threads)
    device = pick_device(device_name)
    models = Models.load(load_bench_params(params_path), split)
    model = {"full": models.full, "ours": models.ours, "peft": models.peft}[variant]()
    lr = models.params.study.lrs("full" if variant == "full" else "lora")[0]  # ours and peft: the LoRA lr
    batch = fixed_batch(split, models.tokenizer, STEP_BATCH, STEP_LENGTH, device)
    step, _ = stepper(model, lr, models, batch, device, bf16=bf16)
    before = _rss_mb()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(steps):
        step()
    result = {"variant": variant, "device": device.type, "steps": steps,
              "peak_rss_mb": round(peak_rss_mb(), 1), "rss_before_training_mb": round(before, 1)}
    result["rss_rise_mb"] = round(result["peak_rss_mb"] - before, 1)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        result["cuda_peak_allocated_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return result


def measure(split: Path, params_path: Path, device: torch.device, steps: int, bf16: bool = False) -> dict:
    """Run one child per variant (sequentially) and compare LoRA with full fine-tuning."""
    rows = {}
    for variant in VARIANTS:
        cmd = [sys.executable, "-m", "benchmarks.memory", "--variant", variant, "--split", str(split),
               "--params", str(params_path), "--device", device.type, "--steps", str(steps),
               "--threads", str(torch.get_num_threads())] + (["--bf16"] if bf16 else [])
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"memory child {variant} failed:\n{proc.stderr[-3000:]}")
        rows[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
    key = "cuda_peak_allocated_mb" if device.type == "cuda" else "peak_rss_mb"
    return {"metric": key, "per_variant": rows,
            "lora_over_full_peak_memory": ratio(rows["ours"][key], rows["full"][key]),
            "peft_over_full_peak_memory": ratio(rows["peft"][key], rows["full"][key]),
            "lora_over_full_rss_rise": ratio(rows["ours"]["rss_rise_mb"], rows["full"]["rss_rise_mb"])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="peak training memory of one variant (a child of run.py)")
    parser.add_argument("--variant", choices=VARIANTS, required=True)
    parser.add_argument("--split", type=Path, required=True)
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast, as the pipeline's precision")
    args = parser.parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    print(json.dumps(child(args.variant, args.split, args.params, args.device, args.steps, args.threads,
                           args.bf16)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
