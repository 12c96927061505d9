"""The project the end-to-end tests run ``dvc`` in: the repository's pipeline (code, dvc.yaml, params.yaml, DVC
config) copied into a temporary Git repository, on a tiny labelled CSV and a tiny random BERT; and the helpers
that run the ``dvc``/``git`` commands and read what they printed."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from lora_pipeline.records import RunSpec
from tests.support.builders import ROOT, make_frame, save_tiny_bert

BIN = Path(sys.executable).parent


def readme_compare_line() -> str:
    """The README's command that compares experiments in a table fitting a terminal: its one ``dvc exp show`` line."""
    lines = [line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("dvc exp show ")]
    assert len(lines) == 1, f"README.md should hold one `dvc exp show` command, not {lines}"
    return lines[0]


def readme_compare_command() -> list[str]:
    """:func:`readme_compare_line` as argv."""
    return shlex.split(readme_compare_line())


def fixture_csv(path: Path) -> None:
    """The shared toy corpus under other column names, plus a null text that validate must clean away."""
    df = make_frame(per_class=90).rename(columns={"text": "review", "label": "sentiment"})
    df.loc[len(df)] = {"review": None, "sentiment": "pos"}
    df.to_csv(path, index=False)


def run(args: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def write_project(base: Path, repo: Path) -> dict:
    """The repository's pipeline (code, dvc.yaml, params.yaml, DVC config) in ``repo`` on tiny data: the fixture CSV
    and a tiny BERT in ``base``. Returns its params, for the caller to shrink and write to ``repo/params.yaml``."""
    repo.mkdir()
    for name in ("dvc.yaml", "params.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(ROOT / name, repo / name)
    for name in ("stages", "lora_pipeline"):
        shutil.copytree(ROOT / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    (repo / ".dvc").mkdir()
    for name in ("config", ".gitignore"):
        shutil.copy(ROOT / ".dvc" / name, repo / ".dvc" / name)
    shutil.copytree(ROOT / ".dvc" / "plots", repo / ".dvc" / "plots")  # the project's plot templates
    fixture_csv(base / "reviews.csv")
    save_tiny_bert(base / "tiny_model")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["data"] = {"source": "file", "path": str(base / "reviews.csv"), "text_column": "review",
                      "label_column": "sentiment"}
    params["validate"].update(labels=["pos", "neg", "plot"], min_rows_per_class=20)
    params["model"].update(name=str(base / "tiny_model"), max_length=32)
    return params


def ran(proc: subprocess.CompletedProcess) -> set[str]:
    return {line.split("'")[1] for line in proc.stdout.splitlines() if line.startswith("Running stage")}


def exp_values(shown, key: str) -> list:
    """Every value of ``study.<key>`` in the experiments of ``dvc exp show --json``."""
    found = []
    for baseline in shown:
        for exp in baseline.get("experiments") or []:
            for rev in exp["revs"]:
                found.append(rev["data"]["params"]["params.yaml"]["data"]["study"][key])
    return found


def exp_names_by_rank(shown) -> dict[int, str]:
    """Experiment name by the rank of one-rank experiments (``study.ranks=[r]``)."""
    names = {}
    for baseline in shown:
        for exp in baseline.get("experiments") or []:
            for rev in exp["revs"]:
                ranks = rev["data"]["params"]["params.yaml"]["data"]["study"]["ranks"]
                if rev.get("name") and len(ranks) == 1:
                    names[ranks[0]] = rev["name"]
    return names


def stage_instance(spec: RunSpec) -> str:
    """The name DVC gives a train stage instance: its matrix values joined in dvc.yaml's order
    (``train_lora@8-default-lora-42-0.002``, ``train_full@42-0.0001``)."""
    values = (spec.rank, spec.target_set, spec.adapter) if spec.variant == "lora" else ()
    return f"{spec.stage}@" + "-".join(map(str, (*values, spec.seed, spec.lr)))
