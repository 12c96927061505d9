"""Every benchmark script runs, as a user runs it, in its ``--smoke`` mode: its own measuring code on a toy model
and split (``benchmarks/_common.smoke_fixture``) in seconds, ending with its JSON result line.

A script that no longer fits the library (a moved config field, a renamed function, a changed result key) fails
here instead of at the start of an hour-long benchmark run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS = ROOT / "benchmarks"
# modules with no command line of their own, and the run.py --smoke call (a case below) that runs each
RUN_THROUGH = {"step_time.py": "gpu_check", "memory.py": "gpu_check", "latency.py": "run",
               "end_to_end.py": "run", "trainer_peft.py": "run"}


def _positive(values) -> bool:
    return all(isinstance(v, (int, float)) and v > 0 for v in values)


def check_cpu_dropout_fit(out: dict) -> None:
    assert set(out) == {"lora", "full", "scratch"}
    for runs in out.values():
        assert set(runs) == {"fast", "torch"} and all(len(r) == 2 and _positive(r) for r in runs.values())


def check_ddp_cpu(out: dict) -> None:
    for layout in ("1 process x 2 threads", "2 processes x 1 thread"):
        row = out[f"lora/{layout}"]
        assert row["steps"] == 2 and _positive([row["train_seconds"], row["samples_per_second"], row["wall_seconds"]])
    assert out["lora/ratio_2proc_over_1proc"] > 0


def check_gpu_check(out: dict) -> None:
    assert out["gpu_check"] == "smoke"
    assert not out["tests"].get("failed") and "error" not in out["tests"]
    assert out["tests"]["passed"] + len(out["tests"]["skipped"]) > 0
    assert {"ingest", "split", "evaluate"} <= set(out["dag"]["stages"])
    assert any(s.startswith("train_lora@") for s in out["dag"]["stages"])
    step, memory = out["bench"]["step"], out["bench"]["memory"]
    assert "error" not in step and "error" not in memory
    assert {"full", "ours", "peft"} <= set(step["median_ms"]) and _positive(step["median_ms"].values())
    assert _positive([step["ours_over_peft_step"], step["lora_over_full_step"], step["peft_over_full_step"]])
    assert set(memory["peak_mb"]) == {"full", "ours", "peft"} and _positive(memory["peak_mb"].values())
    assert _positive([memory["lora_over_full_peak_memory"], memory["peft_over_full_peak_memory"]])


def check_pipeline_timing(out: dict) -> None:
    assert list(out)[:4] == ["make", "copy@1", "copy@2", "total"]  # DAG order, matrix instances expanded
    assert _positive([out["make"], out["copy@1"], out["copy@2"], out["total"]]) and out["device"]


def check_precision_step(out: dict) -> None:
    assert set(out["seconds"]) == {"full_fp32", "full_bf16", "lora_fp32", "lora_bf16"}
    assert _positive(out["seconds"].values()) and _positive(out["bf16_over_fp32"].values())


def check_predict_throughput(out: dict) -> None:
    for batch in ("batch_1", "batch_64"):
        figures = out["throughput"][batch]
        assert figures["texts"] > 0 and set(figures["texts_per_s"]) == {"full", "lora_merged", "lora_unmerged"}
        assert _positive(figures["texts_per_s"].values())
        assert _positive([figures["merged_over_unmerged"], figures["merged_over_full"]])


def check_run(out: dict) -> None:
    assert out["smoke"] is True
    assert _positive([out["merged_over_base_latency"], out["stage_over_trainer_epoch"], out["seconds"]])
    assert 0 <= out["stage_val_macro_f1"] <= 1 and 0 <= out["trainer_val_macro_f1"] <= 1


def check_trim_predict(out: dict) -> None:
    assert out["rows"] > 0 and out["predictions_that_differ"] == 0
    assert _positive([out["seconds_full"], out["seconds_trimmed"], out["trimmed_over_full"]])


def check_step_profile(out: dict) -> None:
    assert out["smoke"] is True and _positive(out["median_ms"].values()) and out["ours_over_peft_step"] > 0
    assert out["max_loss_diff_ours_vs_peft"] < 1e-4  # same numbers: ours and peft start from the same weights
    for parts in out["profile_ms"].values():
        assert "frozen GEMMs fwd" in parts and "LoRA path fwd" in parts and sum(parts.values()) > 0


def check_stage_overhead(out: dict) -> None:
    stages = ("ingest", "validate", "split", "train_scratch", "train_full", "train_lora", "evaluate", "report")
    assert out["smoke"] is True and set(out["median"]) == set(stages)
    for stage in stages:
        phases = out["median"][stage]
        assert phases["total"] > 0 and 0 <= phases["overhead"] <= phases["total"], (stage, phases)
        assert phases["startup"] > 0 and phases["mlflow"] > 0, (stage, phases)  # both read from the stage's log
    assert all(out["median"][s]["train"] > 0 for s in stages if s.startswith("train_"))


# script -> (its arguments after --smoke, the check of its last printed line)
CASES: dict[str, tuple[list[str], Callable[[dict], None]]] = {
    "cpu_dropout_fit": ([], check_cpu_dropout_fit),
    "ddp_cpu": ([], check_ddp_cpu),
    "gpu_check": ([], check_gpu_check),  # without CUDA: GPU tests skip, run.py's step and memory items on the CPU
    "pipeline_timing": ([], check_pipeline_timing),
    "precision_step": ([], check_precision_step),
    "predict_throughput": ([], check_predict_throughput),
    "run": (["--only", "latency,e2e"], check_run),
    "stage_overhead": (["--runs", "1"], check_stage_overhead),
    "step_profile": ([], check_step_profile),  # step and memory: through gpu_check
    "trim_predict": ([], check_trim_predict),
}


def run_script(name: str, args: list[str]) -> subprocess.CompletedProcess:
    """``python benchmarks/<name>.py --smoke ARGS`` from the repository root, this interpreter's tools on PATH."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "OMP_NUM_THREADS": "1"}  # toy models gain nothing from threads that busy-wait on a shared CPU
    return subprocess.run([sys.executable, str(BENCHMARKS / f"{name}.py"), "--smoke", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("name", sorted(CASES))
def test_benchmark_script_runs_in_smoke_mode_and_ends_with_its_json_result(name):
    """``--smoke`` exits 0 and its last stdout line is the script's JSON result with every expected key, the
    timings positive and the ratios above zero."""
    args, check = CASES[name]
    proc = run_script(name, args)
    assert proc.returncode == 0, f"benchmarks/{name}.py --smoke exited {proc.returncode}:\n{proc.stderr[-4000:]}"
    last = proc.stdout.strip().splitlines()[-1]
    check(json.loads(last))


def test_every_benchmark_script_has_a_smoke_case():
    """A script added to benchmarks/ gets a smoke case here, or is named as run through one of them."""
    scripts = {p.name for p in BENCHMARKS.glob("*.py") if not p.name.startswith("_")}  # _x.py: shared code
    covered = {f"{name}.py" for name in CASES} | set(RUN_THROUGH)
    assert scripts == covered
    assert set(RUN_THROUGH.values()) <= set(CASES)
