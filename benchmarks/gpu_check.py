"""One command for a machine with CUDA: the GPU-only tests, then every GPU figure BENCHMARKS.md lacks, as one JSON line.

    python benchmarks/gpu_check.py [--no-dag] [--split DIR] [--quick] [--compile] [--out FILE] [--smoke]

1. ``pytest tests/gpu/test_gpu.py``: bf16 autocast step, fused AdamW, the trimmed last layer and prediction on CUDA;
   data-parallel training over NCCL where two GPUs or more are visible (skipped, with its reason, otherwise);
2. the whole default DAG (``benchmarks/pipeline_timing.py --force``) in a temporary copy of the project, so this
   repository's outputs, ``dvc.lock`` and MLflow store stay as they are (ingest downloads the default data: it
   needs the package index; ``--no-dag`` skips this part);
3. ``benchmarks/run.py --only step,memory``: step time of full fine-tuning, our LoRA and peft's, and peak training
   memory of each as ``torch.cuda.max_memory_allocated``, on the DAG's split (or ``--split``).

The last line printed is one JSON object: the device, torch/CUDA versions, the test counts and each figure; a part
that failed carries its error instead and the exit code is 1. Without CUDA it prints one line,
``gpu_check: skipped: no CUDA device …``, and exits 0.

``--smoke`` runs all three parts in seconds on the CPU (or the GPU, where there is one) at toy size, to check the
script still fits the project: the GPU tests (they skip without CUDA), the project copy and its DAG's stage list
(``dvc stage list``; nothing is reproduced), and ``benchmarks/run.py --smoke --only step`` / ``--only memory`` on
its toy model and split, with the same figure extraction.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python benchmarks/gpu_check.py` puts benchmarks/, not the repo, on sys.path
    sys.path.insert(0, str(ROOT))
# what `dvc repro` needs of the project (tracked files; outputs, caches and stores stay behind)
PROJECT_FILES = ("dvc.yaml", "params.yaml", ".dvcignore", ".gitignore", ".dvc/config", ".dvc/.gitignore",
                 ".dvc/plots", "stages", "lora_pipeline", "data/.gitignore", "data/external", "models/.gitignore",
                 "metrics/.gitignore", "metrics/curves/.gitignore", "reports/.gitignore")


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] gpu_check: {msg}", file=sys.stderr, flush=True)


def run_env(**extra: str) -> dict[str, str]:
    """This interpreter's tools first on PATH (dvc, torchrun), bytecode on, as a user's shell; a PYTHONPATH in
    ``extra`` goes before the user's own (packages installed with ``pip install --target`` stay importable)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    if "PYTHONPATH" in extra and env.get("PYTHONPATH"):
        extra = {**extra, "PYTHONPATH": f"{extra['PYTHONPATH']}{os.pathsep}{env['PYTHONPATH']}"}
    return {**env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}", **extra}


def _last_json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


# --smoke leaves out the tests of this script itself: one runs it again, one lists the DAG as the smoke run does
SMOKE_DESELECT = ["-k", "not gpu_check"]


def run_tests(work: Path, smoke: bool = False) -> dict:
    """``pytest tests/gpu/test_gpu.py``: counts, and the failed and skipped tests with their reasons."""
    report = work / "gpu-tests.xml"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/gpu/test_gpu.py",
                           f"--junitxml={report}", *SMOKE_DESELECT * smoke], cwd=ROOT, env=run_env(),
                          capture_output=True, text=True)
    if not report.is_file():
        return {"error": f"pytest exited {proc.returncode} without a report: {proc.stdout[-1500:]}"}
    return junit_summary(report.read_text())


def junit_summary(junit_xml: str) -> dict:
    """Counts and named failures/skips of a pytest JUnit XML report."""
    cases = ElementTree.fromstring(junit_xml).iter("testcase")
    out: dict = {"passed": 0, "failed": [], "skipped": {}}
    for case in cases:
        name = case.get("name", "?")
        if case.find("failure") is not None or case.find("error") is not None:
            out["failed"].append(name)
        elif (skip := case.find("skipped")) is not None:
            out["skipped"][name] = skip.get("message", "")
        else:
            out["passed"] += 1
    return out


def copy_project(dest: Path) -> Path:
    """A fresh Git repository holding the project's pipeline files (no outputs, no run cache, no MLflow store)."""
    for name in PROJECT_FILES:
        src, dst = ROOT / name, dest / name
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.is_file():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    git = {"GIT_AUTHOR_NAME": "gpu_check", "GIT_AUTHOR_EMAIL": "gpu_check@localhost",
           "GIT_COMMITTER_NAME": "gpu_check", "GIT_COMMITTER_EMAIL": "gpu_check@localhost"}
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "gpu_check"]):
        subprocess.run(cmd, cwd=dest, env=run_env(**git), check=True, capture_output=True)
    return dest


def run_dag(project: Path) -> dict:
    """Wall time of every stage of the default DAG (pipeline_timing.py) in ``project``, a copy of this one."""
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "pipeline_timing.py"), "--force"], cwd=project,
                          env=run_env(PYTHONPATH=str(project)), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
    if proc.returncode != 0:
        return {"error": f"dvc repro failed (exit {proc.returncode}): {proc.stderr[-1500:]}"}
    times = _last_json(proc.stdout)
    times.pop("device", None)
    return {"seconds": times.pop("total"), "stages": times}


def list_dag(project: Path) -> dict:
    """The stage instances of ``project``'s DAG (``dvc stage list``), without reproducing any: the smoke test's
    stand-in for :func:`run_dag`."""
    proc = subprocess.run(["dvc", "stage", "list", "--name-only"], cwd=project, env=run_env(PYTHONPATH=str(project)),
                          capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": f"dvc stage list failed (exit {proc.returncode}): {proc.stderr[-1500:]}"}
    return {"stages": proc.stdout.split()}


def run_benchmarks(work: Path, split: Path | None, quick: bool, compiled: bool, device: str = "cuda",
                   smoke: bool = False) -> dict:
    """benchmarks/run.py's step time and peak memory on ``device``, one run each (a failure of one keeps the
    other's figures).

    ``smoke``: run.py's ``--smoke`` (its toy model and split when ``split`` is None).
    """
    figures: dict = {}
    for item, figures_of in (("step", step_figures), ("memory", memory_figures)):
        out = work / f"{item}.json"
        cmd = [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--only", item, "--device", device,
               "--out", str(out)] + (["--split", str(split)] if split else []) + (["--quick"] if quick else []) \
            + ([] if compiled else ["--no-compile"]) + (["--smoke"] if smoke else [])
        if split and split.name == "split" and not split.exists():
            cmd.append("--build-split")
        proc = subprocess.run(cmd, cwd=ROOT, env=run_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if proc.returncode != 0 or not out.is_file():
            figures[item] = {"error": f"benchmarks/run.py --only {item} failed (exit {proc.returncode}): "
                                      f"{proc.stderr[-1500:]}"}
            continue
        result = json.loads(out.read_text())
        figures[item] = {"precision": result["precision"], **figures_of(result[item])}
    return figures


def step_figures(step: dict) -> dict:
    """Median ms per step of each variant (batch 32 x 64 tokens) and the ratios BENCHMARKS.md states targets for."""
    return {"median_ms": step["median_ms"], "ours_over_peft_step": step["ours_over_peft_step"],
            "lora_over_full_step": step["ours_over_full_step"], "peft_over_full_step": step["peft_over_full_step"],
            "ours_best": step["ours_best"], "ours_best_over_peft_step": step["ours_best_over_peft_step"],
            "max_loss_diff_vs_ours": step["max_loss_diff_vs_ours"]}


def memory_figures(memory: dict) -> dict:
    """Peak memory of a few training steps per variant (CUDA: ``max_memory_allocated``) and LoRA / full."""
    return {"metric": memory["metric"],
            "peak_mb": {name: row.get(memory["metric"]) for name, row in memory["per_variant"].items()},
            "lora_over_full_peak_memory": memory["lora_over_full_peak_memory"],
            "peft_over_full_peak_memory": memory["peft_over_full_peak_memory"]}


def device_info() -> dict:
    if not torch.cuda.is_available():  # --smoke on a machine without a GPU
        return {"device": "cpu", "gpus": 0, "torch": torch.__version__, "date": datetime.date.today().isoformat()}
    props = torch.cuda.get_device_properties(0)
    return {"device": torch.cuda.get_device_name(0), "gpus": torch.cuda.device_count(),
            "memory_gib": round(props.total_memory / 2**30, 1), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(), "bf16": torch.cuda.is_bf16_supported(),
            "date": datetime.date.today().isoformat()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-dag", action="store_true", help="skip the whole-DAG timing (it downloads the data)")
    parser.add_argument("--split", type=Path, help="split for the step/memory benchmarks (default: the DAG's; "
                        "with --no-dag benchmarks/run.py's default, built by the stages if missing)")
    parser.add_argument("--quick", action="store_true", help="fewer timed steps (benchmarks/run.py --quick)")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd LoRA (needs triton)")
    parser.add_argument("--out", type=Path, help="also write the JSON line here")
    parser.add_argument("--smoke", action="store_true", help="every part at toy size, on the CPU without a GPU; "
                        "the DAG is listed, not run")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available() and not args.smoke:
        build = "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}, no GPU visible"
        print(f"gpu_check: skipped: no CUDA device (torch {torch.__version__}, {build}); nothing to run")
        return 0
    from benchmarks._common import DEFAULT_SPLIT

    started = time.perf_counter()
    figures: dict = {"gpu_check": "smoke" if args.smoke else "ran", **device_info()}
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        work = Path(tmp)
        _log(f"{figures['device']} x{figures['gpus']}: tests/gpu/test_gpu.py")
        figures["tests"] = run_tests(work, args.smoke)
        split = args.split or (None if args.smoke else DEFAULT_SPLIT)
        if args.smoke and not args.no_dag:
            figures["dag"] = list_dag(copy_project(work / "project"))
        elif not args.no_dag:
            _log("the default DAG in a copy of the project (benchmarks/pipeline_timing.py --force)")
            project = copy_project(work / "project")
            figures["dag"] = run_dag(project)
            if args.split is None and "error" not in figures["dag"]:
                split = project / "data" / "split"  # the DAG's split: the benchmarks need no second download
        _log(f"step time and peak memory on {split} (benchmarks/run.py --only step,memory)")
        figures["bench"] = run_benchmarks(work, split, args.quick, args.compile,
                                          "cuda" if torch.cuda.is_available() else "cpu", args.smoke)
    figures["seconds"] = round(time.perf_counter() - started, 1)
    line = json.dumps(figures)
    if args.out:
        args.out.write_text(line + "\n")
    print(line)
    parts = [figures["tests"], figures.get("dag", {}), *figures["bench"].values()]
    failed = figures["tests"].get("failed") or any("error" in part for part in parts)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
