"""Wall time of every stage of the default pipeline: runs `dvc repro -s <stage>` in DAG order.

Usage (from the repository root, with the project's environment on PATH):
    python benchmarks/pipeline_timing.py [--force] [--project DIR] [--smoke]

--force reruns stages even if DVC considers them up to date; --project times the DVC project in DIR instead of
the current directory. Prints a Markdown table and, as the last line, a JSON object
{stage: seconds, ..., "total": seconds, "device": ...}. --smoke times the same loop on a toy DVC project made in
a temporary folder (a stage and a two-instance matrix stage that copy a file: seconds, no training).
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml


def time_stages(project: Path, force: bool) -> dict[str, float] | int:
    """Seconds of ``dvc repro --single-item`` per stage instance of ``project``; a failing repro's exit code."""
    # every stage instance (matrix stages expanded: train_lora@8-42-0.002), in dvc.yaml's order, which is DAG order
    stages = subprocess.run(["dvc", "stage", "list", "--name-only"], cwd=project, check=True, capture_output=True,
                            text=True).stdout.split()
    times: dict[str, float] = {}
    for stage in stages:
        cmd = ["dvc", "repro", "--single-item", stage] + (["--force"] if force else [])
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=project, stdout=subprocess.PIPE, stderr=sys.stderr, text=True)
        times[stage] = round(time.perf_counter() - start, 1)
        if proc.returncode != 0:
            print(proc.stdout, file=sys.stderr)
            return proc.returncode
    times["total"] = round(sum(times.values()), 1)
    return times


def smoke_project(directory: Path) -> Path:
    """A DVC project (no Git) whose DAG is ``make`` -> ``copy@1``, ``copy@2``, each a one-line Python command."""
    python = shlex.quote(sys.executable)  # dvc runs cmd in a shell
    copy = "open('b${item.n}.txt', 'w').write(open('a.txt').read() * ${item.n})"  # dvc fills in ${item.n}
    stages = {"make": {"cmd": f"{python} -c \"open('a.txt', 'w').write('a')\"", "outs": ["a.txt"]},
              "copy": {"matrix": {"n": [1, 2]}, "deps": ["a.txt"], "outs": ["b${item.n}.txt"],
                       "cmd": f"{python} -c \"{copy}\""}}
    (directory / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False), encoding="utf-8")
    subprocess.run(["dvc", "init", "--no-scm", "--quiet"], cwd=directory, check=True, capture_output=True)
    subprocess.run(["dvc", "config", "core.analytics", "false"], cwd=directory, check=True, capture_output=True)
    return directory


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--force", action="store_true", help="rerun stages that are up to date")
    parser.add_argument("--project", type=Path, default=Path.cwd(), help="the DVC project (default: here)")
    parser.add_argument("--smoke", action="store_true", help="time a toy 3-stage DVC project in a temp folder")
    args = parser.parse_args(argv)
    if args.smoke:
        with tempfile.TemporaryDirectory(prefix="bench-smoke-") as tmp:
            times = time_stages(smoke_project(Path(tmp)), args.force)
    else:
        times = time_stages(args.project, args.force)
    if isinstance(times, int):
        return times
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else \
        f"CPU {platform.processor() or platform.machine()} x{torch.get_num_threads()} threads"
    print("| stage | wall time (s) |\n|---|---|")
    for stage, seconds in times.items():
        print(f"| {stage} | {seconds} |")
    print(json.dumps({**times, "device": device}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
