"""One entry point for the benchmarks in BENCHMARKS.md (step time, peak memory, prediction latency, a train stage
against HF Trainer); the last line printed is one JSON object.

    python benchmarks/run.py [--split /tmp/bench/split] [--quick | --smoke] [--only step,memory,latency,e2e]

1. step time of full fine-tuning, our LoRA (eager with torch's / the fast CPU dropout, torch.compile'd) and peft's;
2. peak training memory, full vs LoRA (CUDA: max_memory_allocated; CPU: peak RSS of a child process);
3. inference latency of the merged and unmerged LoRA model vs the base model;
4. the ``train_lora`` stage for one epoch vs HF Trainer + peft (wall time, validation macro-F1).

The device is CUDA when available (bf16 autocast in training, as ``fit``), else CPU with torch's default
thread count. ``--quick`` measures the same ratios on fewer steps and a subset of the data for the train-stage
comparison.
``--smoke`` runs every item's code in seconds on a toy model and split (``_common.smoke_fixture``; one thread,
one timed step, nothing compiled): a check that the benchmarks still run, not a measurement.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks import end_to_end, latency, memory, step_time  # noqa: E402
from benchmarks._common import (DEFAULT_SPLIT, ROOT, Models, ensure_split, load_bench_params,  # noqa: E402
                                machine, pick_device, smoke_fixture)
from lora_pipeline.runtime import resolve_bf16, seed_everything  # noqa: E402

ITEMS = ("step", "memory", "latency", "e2e")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="LoRA pipeline benchmarks (BENCHMARKS.md)")
    parser.add_argument("--split", type=Path, help=f"split stage output (default: the default data in {DEFAULT_SPLIT})")
    parser.add_argument("--build-split", action="store_true", help="build --split with the stages if missing")
    parser.add_argument("--params", type=Path, help="params file of the models (default: the repository's)")
    parser.add_argument("--quick", action="store_true",
                        help="fewer steps, data subset for the train-stage comparison (< 3 min CPU)")
    parser.add_argument("--smoke", action="store_true",
                        help="toy model and split (unless --split/--params are given), one step: seconds, no figures")
    parser.add_argument("--only", default=",".join(ITEMS), help=f"comma-separated subset of {ITEMS}")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile'd variant")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                        help="as params.yaml train.precision: auto = bf16 where the hardware runs it natively")
    parser.add_argument("--out", type=Path, help="also write the JSON result here")
    return parser.parse_args(argv)


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run_items(args: argparse.Namespace, items: list[str], device: torch.device, split: Path,
              params_path: Path) -> dict:
    models = Models.load(load_bench_params(params_path), split)
    quick, smoke = args.quick or args.smoke, args.smoke
    bf16 = resolve_bf16(args.precision, device)
    out: dict = {"precision": "bf16" if bf16 else "fp32"}
    if "step" in items:
        _log("step time")
        out["step"] = step_time.measure(split, models, device, repeats=1 if smoke else 4 if quick else 20,
                                        warmup=0 if smoke else 2, compiled=not (args.no_compile or smoke),
                                        extra=not quick, bf16=bf16)
    if "memory" in items:
        _log("peak memory (child processes)")
        out["memory"] = memory.measure(split, params_path, device, steps=1 if smoke else 3, bf16=bf16)
    if "latency" in items:
        _log("prediction latency")
        out["latency"] = latency.measure(split, models, device, repeats=1 if smoke else 8 if quick else 40)
    if "e2e" in items:
        _log("train_lora stage vs Trainer + peft (subprocesses)")
        out["e2e"] = end_to_end.measure(split, device, quick, grouped_trainer=not quick,
                                        precision="bf16" if bf16 else "fp32", params=params_path)
    return out


def run_on_data(args: argparse.Namespace, items: list[str], device: torch.device) -> dict:
    """``run_items`` on ``--split``/``--params``, or with ``--smoke`` on a toy fixture where those are not given."""
    if not args.smoke:
        split = ensure_split(args.split or DEFAULT_SPLIT, args.build_split)
        return run_items(args, items, device, split, args.params or ROOT / "params.yaml")
    torch.set_num_threads(1)  # a toy model gains nothing from more, and the children inherit this count
    with tempfile.TemporaryDirectory(prefix="bench-smoke-") as tmp:
        fixture = smoke_fixture(Path(tmp))
        return run_items(args, items, device, args.split or fixture.split, args.params or fixture.params)


def summary(out: dict, device: torch.device, started: float, quick: bool, smoke: bool = False) -> dict:
    """The flat headline object: one ratio per target, plus where it was measured."""
    head = {"device": device.type, "precision": out["precision"], "quick": quick,
            "date": datetime.date.today().isoformat()}
    if smoke:
        head["smoke"] = True  # toy model and data: the figures say the code runs, nothing about speed
    if "step" in out:
        s = out["step"]
        head.update(ours_over_peft_step=s["ours_best_over_peft_step"],
                    lora_over_full_step=s["ours_best_over_full_step"],
                    ours_variant=s["ours_best"], ours_eager_over_peft_step=s["ours_over_peft_step"],
                    ours_eager_over_full_step=s["ours_over_full_step"], peft_over_full_step=s["peft_over_full_step"],
                    ours_fast_dropout_over_peft_step=s["ours_fast_dropout_over_peft_step"],
                    ours_fast_dropout_over_full_step=s["ours_fast_dropout_over_full_step"])
    if "memory" in out:
        head["lora_over_full_peak_memory"] = out["memory"]["lora_over_full_peak_memory"]
    if "latency" in out:
        head["merged_over_base_latency"] = out["latency"]["merged_over_base_latency"]
    if "e2e" in out:
        e = out["e2e"]
        head.update(stage_over_trainer_epoch=e["stage_over_trainer_epoch"],
                    stage_val_macro_f1=e["stage"]["val_macro_f1"],
                    trainer_val_macro_f1=e["trainer_peft"]["val_macro_f1"])
    head["seconds"] = round(time.perf_counter() - started, 1)
    return head


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    items = [i.strip() for i in args.only.split(",") if i.strip()]
    unknown = sorted(set(items) - set(ITEMS))
    if unknown:
        raise SystemExit(f"--only: unknown items {unknown}; choose from {list(ITEMS)}")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    seed_everything(42)  # also torch.use_deterministic_algorithms, as the train stages do
    device = pick_device(args.device)
    _log(f"device {device}, {torch.get_num_threads()} threads")
    out = run_on_data(args, items, device)
    head = summary(out, device, started, args.quick, args.smoke)
    full = {"summary": head, "machine": machine(device), **out}
    print(json.dumps(full, indent=2))
    if args.out:
        args.out.write_text(json.dumps(full, indent=2) + "\n")
    print(json.dumps(head))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
