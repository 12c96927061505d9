"""The stage chain after validate (split → train_* → evaluate → report) called as ``main([...])`` on the tiny
fixture data, and where each train instance writes: what the stage tests and the tests of the trained models
read."""

from __future__ import annotations

from pathlib import Path

import pytest

from lora_pipeline.records import RunSpec
from tests.support.builders import (LRS, RANK, SEED, instance_args, isolate_env, make_frame, restored_logging, write_clean,
                                    write_params)

EXPERIMENT = "stages-test"
RANKS = (2, 4)  # two LoRA ranks: evaluate compares their adapters' subspaces
INSTANCES = [("scratch", None), ("full", None)] + [("lora", rank) for rank in RANKS]


def instance_tag(variant: str, rank: int | None) -> str:
    """The instance's folder name, as dvc.yaml builds it (evaluate reads it back from the metrics' ``tag``); a
    LoRA instance without a rank has write_params' rank, as instance_args gives it."""
    return RunSpec(variant, SEED, LRS[variant], RANK if variant == "lora" and rank is None else rank).tag


def instance_paths(base: Path, variant: str, rank: int | None = None) -> dict[str, Path]:
    """Where one train instance writes: model, metrics JSON, curve folder, val predictions, checkpoints."""
    return spec_paths(base, variant, instance_tag(variant, rank))


def spec_paths(base: Path, variant: str, tag: str) -> dict[str, Path]:
    """Where the train instance of ``variant`` named ``tag`` (a :attr:`RunSpec.tag`) writes, as dvc.yaml lays it
    out."""
    return {"out": base / "models" / variant / tag, "metrics": base / "metrics" / "train" / f"{variant}-{tag}.json",
            "curve": base / "metrics" / "curves" / variant / tag,
            "predictions": base / "metrics" / "val_predictions" / variant / f"{tag}.csv",
            "checkpoints": base / "checkpoints" / variant / tag}


def _output_args(paths: dict[str, Path]) -> list[str]:
    return ["--out", str(paths["out"]), "--metrics", str(paths["metrics"]), "--curve", str(paths["curve"]),
            "--predictions", str(paths["predictions"]), "--checkpoints", str(paths["checkpoints"]), "--no-progress"]


def train_args(base: Path, variant: str, params: Path, split: Path, rank: int | None = None) -> list[str]:
    """A train stage's argv, writing to ``instance_paths(base, variant, rank)``."""
    return ["--params", str(params), "--split", str(split), *instance_args(variant, **({"rank": rank} if rank else {})),
            *_output_args(instance_paths(base, variant, rank))]


def spec_train_args(base: Path, spec: RunSpec, params: Path, split: Path) -> list[str]:
    """The argv dvc.yaml gives the train instance of ``spec`` (``--target-set``/``--adapter`` for LoRA), writing to
    ``spec_paths(base, spec.variant, spec.tag)``."""
    point = ["--seed", str(spec.seed), "--lr", str(spec.lr)]
    if spec.variant == "lora":
        point += ["--rank", str(spec.rank), "--target-set", str(spec.target_set), "--adapter", str(spec.adapter)]
    return ["--params", str(params), "--split", str(split), *point,
            *_output_args(spec_paths(base, spec.variant, spec.tag))]


def evaluate_args(base: Path, params: Path, split: Path) -> list[str]:
    """The evaluate stage's argv, reading the train instances under ``base``."""
    metrics = base / "metrics"
    return ["--params", str(params), "--split", str(split), "--models", str(base / "models"),
            "--runs", str(metrics / "train"), "--curves", str(metrics / "curves"),
            "--val-predictions", str(metrics / "val_predictions"), "--metrics", str(metrics / "evaluate.json"),
            "--study", str(metrics / "study.json"), "--record", str(metrics / "record.json.gz"),
            "--rank-curve", str(metrics / "rank_curve.csv"), "--learning-curves", str(metrics / "learning_curves"),
            "--predictions", str(metrics / "predictions")]


def report_args(base: Path, params: Path) -> list[str]:
    """The report stage's argv, reading evaluate's study file under ``base``, writing ``base/reports``."""
    return ["--params", str(params), "--study", str(base / "metrics" / "study.json"),
            "--report", str(base / "reports" / "report.md"), "--figures", str(base / "reports" / "figures")]


def run_train(variant: str, argv: list[str]) -> int:
    """The train stage of ``variant``: its ``main(argv)``."""
    from stages import train_full, train_lora, train_scratch

    return {"scratch": train_scratch, "full": train_full, "lora": train_lora}[variant].main(argv)


def stage_key(variant: str, rank: int | None) -> str:
    """The key of a train instance in run_chain's exit codes."""
    return f"train_{variant}" + (f" r{rank}" if rank is not None else "")


def run_chain(tmp_path_factory, tiny_model_dir, overrides: dict | None = None):
    """Run every stage after validate once; returns (base dir, params file, {stage: exit code}, uri)."""
    from stages import evaluate, report, split

    base = tmp_path_factory.mktemp("stages")
    clean = write_clean(base / "clean", make_frame(60))
    params = write_params(base / "params.yaml", tiny_model_dir,
                          {"mlflow.experiment": EXPERIMENT, "train.checkpoint_every": 4, "study.ranks": list(RANKS),
                           **(overrides or {})})
    codes = {}
    with pytest.MonkeyPatch.context() as mp, restored_logging():
        uri = isolate_env(mp, tmp_path_factory)
        codes["split"] = split.main(["--params", str(params), "--clean", str(clean), "--out", str(base / "split"),
                                     "--metrics", str(base / "metrics" / "split.json")])
        for variant, rank in INSTANCES:
            argv = train_args(base, variant, params, base / "split", rank)
            codes[stage_key(variant, rank)] = run_train(variant, argv)
        codes["evaluate"] = evaluate.main(evaluate_args(base, params, base / "split"))
        codes["report"] = report.main(report_args(base, params))
    return base, params, codes, uri
