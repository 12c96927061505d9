"""Where a stage's wall time goes besides training: start-up (interpreter and imports), model load, data,
training steps, validation/test forward passes, saving and MLflow, per stage kind.

Each stage runs as DVC runs it — ``python -m stages.<name>`` with the flags of its ``cmd`` in ``dvc.yaml`` — in a
scratch project folder (its own ``params.yaml``, ``data/``, ``models/``, ``metrics/`` and an MLflow SQLite store),
``--runs`` times in pipeline order. The phases come from the ``timing:`` line each stage logs at its end; the
benchmark's own clock gives the total from spawning the process to its exit, and ``rest`` is what no phase
covers (interpreter exit, argument parsing, seeding, small writes). ``overhead`` is the total less training steps
and forward passes: what a stage costs before and around its real work. The first run of a fresh ``--work``
folder also creates the MLflow store (schema migrations); the medians of ``--runs 3`` leave that run out.

    python benchmarks/stage_overhead.py --smoke                  # a tiny random BERT on tiny data: seconds
    python benchmarks/stage_overhead.py --max-steps 20           # the default data and model, 20 steps per run
    python benchmarks/stage_overhead.py --raw /tmp/bench/raw     # ... reusing ingested data (no download)

Prints a Markdown table of medians and, as its last line, one JSON object with every run's phases.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python benchmarks/stage_overhead.py` puts benchmarks/, not the repo, on sys.path
    sys.path.insert(0, str(ROOT))

from benchmarks._common import SMOKE_WORDS, smoke_model, smoke_texts  # noqa: E402
STAGES = ("ingest", "validate", "split", "train_scratch", "train_full", "train_lora", "evaluate", "report")
PHASES = ("startup", "model", "data", "train", "forward", "work", "save", "mlflow")
TIMING = re.compile(r" timing: (.*)$", re.M)


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="a tiny random BERT and 180 generated texts")
    parser.add_argument("--runs", type=int, default=3, help="runs of the whole pipeline (medians over them)")
    parser.add_argument("--max-steps", type=int, default=20, help="train.max_steps of every train stage")
    parser.add_argument("--work", type=Path, default=Path("/tmp/stage_overhead"), help="scratch project folder")
    parser.add_argument("--raw", type=Path, help="an ingest output (data.parquet) to copy instead of running ingest")
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES),
                        help="stages to time (the others still run once, untimed, when later ones need them)")
    parser.add_argument("--threads", type=int, default=None, help="train.num_threads (smoke default: 1)")
    return parser.parse_args(argv)


def smoke_data(work: Path, per_class: int = 60) -> Path:
    """A CSV of short generated texts whose class shows in their words (text, label), for the file source."""
    path = work / "data" / "external" / "smoke.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    smoke_texts(per_class).to_csv(path, index=False)
    return path


def write_params(args: argparse.Namespace, work: Path) -> dict:
    """The repository's params.yaml with one grid point, capped training steps and, for --smoke, tiny sizes."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["study"].update(seeds=params["study"]["seeds"][:1], ranks=params["study"]["ranks"][:1],
                           **{f"{v}_lrs": params["study"][f"{v}_lrs"][:1] for v in ("scratch", "full", "lora")})
    params["train"].update(max_steps=args.max_steps, min_steps=min(params["train"]["min_steps"], args.max_steps))
    threads = args.threads if args.threads is not None else (1 if args.smoke else None)
    if threads is not None:
        params["train"]["num_threads"] = threads
    if args.smoke:
        params["data"] = {"source": "file", "path": "data/external/smoke.csv", "text_column": "text",
                          "label_column": "label"}
        params["validate"].update(labels=sorted(SMOKE_WORDS), min_rows_per_class=10)
        model = work / "tiny-bert"
        params["model"].update(name=str(model if (model / "config.json").is_file() else smoke_model(model)),
                               max_length=32)
        params["scratch"].update(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
        params["train"].update(batch_size=16, eval_batch_size=64)
        params["baseline"].update(max_features=2000)
        smoke_data(work)
    elif args.raw:
        params["data"] = {**params["data"], "source": "file", "path": "data/external/raw.parquet"}
        (work / "data" / "external").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(args.raw / "data.parquet", work / "data" / "external" / "raw.parquet")
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return params


def commands(params: dict) -> dict[str, list[str]]:
    """Each stage's command from dvc.yaml, for the first point of every matrix."""
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    study = params["study"]
    item = {"seed": study["seeds"][0], "rank": study["ranks"][0], "targets": (study.get("target_sets") or ["default"])[0],
            "adapter": (study.get("adapters") or ["lora"])[0]}
    out = {}
    for name in STAGES:
        cmd = " ".join(dvc[name]["cmd"].split())
        variant = name.removeprefix("train_")
        values = {**item, "lr": params["study"].get(f"{variant}_lrs", [None])[0]}
        cmd = re.sub(r"\$\{item\.(\w+)\}", lambda m: str(values[m.group(1)]), cmd)
        argv = cmd.split()
        assert argv[:2] == ["python", "-m"], cmd
        out[name] = [sys.executable, *argv[1:]]
    return out


def run_stage(argv: list[str], work: Path, env: dict) -> dict[str, float]:
    """Run one stage; its phases, ``total`` (spawn to exit) and ``rest`` (what no phase covers)."""
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True)
    total = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv[2:4])} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    lines = TIMING.findall(proc.stderr)
    if not lines:
        raise SystemExit(f"{argv[2]} logged no timing line:\n{proc.stderr[-2000:]}")
    phases = {name: float(sec) for name, sec in re.findall(r"(\w+) ([\d.]+) s", lines[-1])}
    phases["rest"] = total - sum(phases.values())
    phases["total"] = total
    phases["overhead"] = total - phases.get("train", 0.0) - phases.get("forward", 0.0)
    return phases


def table(runs: dict[str, list[dict[str, float]]]) -> tuple[str, dict]:
    """A Markdown table of the median of each phase per stage, and the medians as a dict."""
    cols = [*PHASES, "rest", "total", "overhead"]
    medians = {stage: {c: round(statistics.median(r.get(c, 0.0) for r in rs), 3) for c in cols}
               for stage, rs in runs.items()}
    lines = ["| stage | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for stage, med in medians.items():
        lines.append(f"| {stage} | " + " | ".join(f"{med[c]:.2f}" for c in cols) + " |")
    return "\n".join(lines), medians


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    work = args.work.resolve()
    for sub in ("data/raw", "data/clean", "data/split", "models", "metrics", "reports", "checkpoints"):
        shutil.rmtree(work / sub, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    params = write_params(args, work)
    cmds = commands(params)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}"}
    for name in ("DVC_ROOT", "DVC_EXP_NAME", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID"):
        env.pop(name, None)
    runs: dict[str, list[dict[str, float]]] = {s: [] for s in STAGES if s in args.stages}
    for i in range(args.runs):
        for stage in STAGES:
            if stage not in args.stages and i > 0:
                continue  # built once for the stages after it
            phases = run_stage(cmds[stage], work, env)
            if stage in runs:
                runs[stage].append(phases)
            print(f"run {i + 1}/{args.runs} {stage}: {phases['total']:.2f} s", file=sys.stderr, flush=True)
    text, medians = table(runs)
    print(f"Median of {args.runs} runs, seconds, each column its own median (so a row need not add up; "
          f"{'smoke' if args.smoke else 'default data'}, train.max_steps {args.max_steps}, "
          f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs)\n")
    print(text)
    print(json.dumps({"smoke": args.smoke, "runs": args.runs, "max_steps": args.max_steps, "median": medians,
                      "all": runs}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
