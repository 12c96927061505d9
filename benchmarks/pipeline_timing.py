"""Wall time of every stage of the default pipeline: runs `dvc repro -s <stage>` in DAG order.

Usage (from the repository root, with the project's environment on PATH):
    python benchmarks/pipeline_timing.py [--force]

--force reruns stages even if DVC considers them up to date. Prints a Markdown table and, as the last
line, a JSON object {stage: seconds, ..., "total": seconds, "device": ...}.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time

import torch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--force", action="store_true", help="rerun stages that are up to date")
    args = parser.parse_args(argv)
    # every stage instance (matrix stages expanded: train_lora@8-42-0.002), in dvc.yaml's order, which is DAG order
    stages = subprocess.run(["dvc", "stage", "list", "--name-only"], check=True, capture_output=True,
                            text=True).stdout.split()
    times: dict[str, float] = {}
    for stage in stages:
        cmd = ["dvc", "repro", "--single-item", stage] + (["--force"] if args.force else [])
        start = time.perf_counter()
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=sys.stderr, text=True)
        times[stage] = round(time.perf_counter() - start, 1)
        if proc.returncode != 0:
            print(proc.stdout, file=sys.stderr)
            return proc.returncode
    times["total"] = round(sum(times.values()), 1)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else \
        f"CPU {platform.processor() or platform.machine()} x{torch.get_num_threads()} threads"
    print("| stage | wall time (s) |\n|---|---|")
    for stage, seconds in times.items():
        print(f"| {stage} | {seconds} |")
    print(json.dumps({**times, "device": device}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
