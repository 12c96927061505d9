"""dvc.yaml must agree with the code: every stage depends on the modules it imports and on exactly
the params sections it reads, or DVC reruns too little (or too much)."""

from __future__ import annotations

import ast
import dataclasses
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from lora_pipeline.config import LoraConfig

ROOT = Path(__file__).resolve().parents[2]
DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())
STAGES = DVC["stages"]
EXPECTED = ["ingest", "validate", "split", "train_scratch", "train_full", "train_lora", "evaluate", "report"]


def _module_file(name: str) -> Path | None:
    base = ROOT / Path(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(path: Path) -> set[str]:
    """Project modules imported by ``path`` (absolute and relative imports), resolved to dotted names."""
    tree = ast.parse(path.read_text())
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    if path.name == "__init__.py":
        package = ".".join(path.relative_to(ROOT).parts[:-1])
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return {m for m in found if m.split(".")[0] in ("lora_pipeline", "stages") and _module_file(m)}


def _closure(entry: Path) -> set[Path]:
    seen: set[Path] = set()
    todo = [entry]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        todo.extend(_module_file(m) for m in _imports(path))
    return {p for p in seen if not (p.name == "__init__.py" and p.stat().st_size == 0)}


def _stage_script(stage: dict) -> Path:
    match = re.search(r"python -m (stages\.\w+)", stage["cmd"])
    assert match, f"stage cmd does not run a stages module: {stage['cmd']}"
    return _module_file(match.group(1))


def test_stage_names_are_exactly_the_pipeline():
    assert list(STAGES) == EXPECTED


@pytest.mark.parametrize("name", EXPECTED)
def test_deps_cover_every_imported_module(name):
    stage = STAGES[name]
    deps = [ROOT / d for d in stage["deps"]]
    for module in _closure(_stage_script(stage)):
        covered = any(module == d or d in module.parents for d in deps)
        assert covered, f"stage {name}: {module.relative_to(ROOT)} is imported but not in deps"


@pytest.mark.parametrize("name", EXPECTED)
def test_no_code_dep_is_superfluous(name):
    stage = STAGES[name]
    closure = _closure(_stage_script(stage))
    for dep in stage["deps"]:
        path = ROOT / dep
        if dep.split("/")[0] in ("lora_pipeline", "stages"):
            used = any(m == path or path in m.parents for m in closure)
            assert used, f"stage {name}: dep {dep} is not imported by the stage (it would rerun needlessly)"


def _sections_read(script: Path, name: str) -> set[str]:
    """The ``sections=[...]`` passed to load_params by the stage (train stages: built from the variant)."""
    source = script.read_text()
    if "train_main(" in source:
        variant = name.removeprefix("train_")
        source = (ROOT / "stages" / "_train.py").read_text().replace("variant,", f"'{variant}',")
    match = re.search(r"load_params\([^)]*sections=\[([^\]]*)\]", source)
    assert match, f"{script} does not call load_params(..., sections=[...])"
    return {s.strip().strip("'\"") for s in match.group(1).split(",") if s.strip()}


# Tracking settings change where runs are mirrored, never a result: declaring them would rerun every stage when
# the MLflow URI changes and would copy the URI into dvc.lock, `dvc params diff` and `dvc exp show`.
NOT_RESULT_SECTIONS = {"mlflow"}


def _keys_read(script: Path, section: str) -> tuple[set[str], bool]:
    """The ``<section>.<key>`` read as ``params.<section>.<key>`` in ``script``, and whether ``params.<section>``
    is also used whole (passed on or converted), which reads every key of it."""
    tree = ast.parse(script.read_text())
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    keys, whole = set(), False
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr == section \
                and isinstance(node.value, ast.Name) and node.value.id == "params":
            parent = parents.get(node)
            if isinstance(parent, ast.Attribute) and parent.value is node:
                keys.add(f"{section}.{parent.attr}")
            else:
                whole = True
    return keys, whole


@pytest.mark.parametrize("name", EXPECTED)
def test_params_match_sections_read(name):
    stage = STAGES[name]
    declared = {p.split(".")[0] for p in stage.get("params", [])}
    assert declared == _sections_read(_stage_script(stage), name) - NOT_RESULT_SECTIONS
    dotted = {p for p in stage.get("params", []) if "." in p}  # e.g. evaluate: train.seed, train.device, …
    if name == "train_lora":  # every lora key, but of lora.target_sets the instance's own set only
        assert dotted == {f"lora.{f.name}" for f in dataclasses.fields(LoraConfig) if f.name != "target_sets"} \
            | {"lora.target_sets.${item.targets}"}
        return
    for section in sorted({p.split(".")[0] for p in dotted}):
        read, whole = _keys_read(_stage_script(stage), section)
        assert not whole, f"stage {name} uses params.{section} whole but declares only some of its keys"
        assert read == {p for p in dotted if p.startswith(f"{section}.")}, f"stage {name}: {section} keys"


@pytest.mark.parametrize("name", EXPECTED)
def test_tracking_settings_are_not_stage_params(name):
    declared = {p.split(".")[0] for p in STAGES[name].get("params", [])}
    assert not declared & NOT_RESULT_SECTIONS, f"stage {name} declares {declared & NOT_RESULT_SECTIONS}"


@pytest.mark.parametrize("name", EXPECTED)
def test_every_stage_is_run_cacheable(name):
    """DVC saves no run-cache entry for a stage with a ``cache: false`` out that is neither a metric nor a plot
    (dvc/stage/__init__.py, ``Stage.run``): such a stage could never be restored, only retrained."""
    for entry in STAGES[name].get("outs", []):
        if isinstance(entry, dict):
            (path, opts), = entry.items()
            assert opts.get("cache", True), f"stage {name}: out {path} has cache: false (disables the run-cache)"
            assert not opts.get("persist"), f"stage {name}: out {path} is persist (disables the run-cache)"


def test_metrics_are_uncached_and_plots_declared():
    for name, stage in STAGES.items():
        for entry in stage.get("metrics", []):
            (path, opts), = entry.items()
            assert opts.get("cache") is False, f"{name}: metric {path} must be cache: false"
    assert DVC.get("plots"), "dvc.yaml declares no plots"


def _paths(entries: list) -> list[str]:
    return [next(iter(e)) if isinstance(e, dict) else e for e in entries]


def test_the_answer_is_the_only_dvc_metrics_file():
    """DVC metrics files are tracked in Git and compared by ``dvc metrics diff`` / ``dvc exp show``: only the
    study's answer (quality, no clock) is one. Each train run's file (seconds, peak memory, throughput: they differ
    on every machine) and the data stages' counts are cached outs, so a reproduction elsewhere changes dvc.lock
    only."""
    declared = {name: _paths(stage.get("metrics", [])) for name, stage in STAGES.items() if stage.get("metrics")}
    assert declared == {"evaluate": ["metrics/evaluate.json"]}
    for variant in ("scratch", "full", "lora"):
        outs = _paths(STAGES[f"train_{variant}"]["outs"])
        assert any(p.startswith(f"metrics/train/{variant}-") and p.endswith(".json") for p in outs), outs
    assert "metrics/validate.json" in _paths(STAGES["validate"]["outs"])
    assert "metrics/split.json" in _paths(STAGES["split"]["outs"])


def _sample(path: str) -> str:
    """A matrix out path with its ``${item.*}`` filled in (an instance's path)."""
    values = {"rank": "8", "seed": "42", "lr": "0.002", "targets": "default", "adapter": "lora"}
    return re.sub(r"\$\{item\.(\w+)\}", lambda m: values[m.group(1)], path)


@pytest.mark.parametrize("name", EXPECTED)
def test_every_cached_out_is_already_git_ignored(name):
    """DVC adds an out that Git does not ignore yet to a .gitignore beside it: a tracked .gitignore that changes
    on a fresh clone's first ``dvc repro`` (or a new one per matrix instance). Every out is ignored beforehand."""
    outs = [_sample(p) for p in _paths(STAGES[name].get("outs", []))]
    proc = subprocess.run(["git", "check-ignore", "--no-index", "--stdin"], cwd=ROOT, input="\n".join(outs),
                          capture_output=True, text=True)
    ignored = set(proc.stdout.split())
    assert [p for p in outs if p not in ignored] == [], f"stage {name}: outs Git does not ignore yet"



def test_checkpoints_are_passed_but_not_tracked():
    """Resumable state goes to the git-ignored checkpoints/ dir, which is NOT a DVC out: a fresh clone or a
    queued experiment's temporary copy has no such directory, and a missing out would rerun every train stage."""
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    assert "/checkpoints/" in ignored
    for variant in ("scratch", "full", "lora"):
        stage = STAGES[f"train_{variant}"]
        assert f"--checkpoints checkpoints/{variant}" in " ".join(stage["cmd"].split())
        paths = [next(iter(o)) if isinstance(o, dict) else o for o in stage.get("outs", [])]
        assert not any(str(p).startswith("checkpoints") for p in paths), paths


@pytest.mark.parametrize("variant", ["scratch", "full", "lora"])
def test_train_stages_fan_out_over_the_study_lists_without_declaring_them(variant):
    """One instance per grid point (DVC `matrix:`); an instance declares its sections but never the lists, so
    adding a rank, seed or learning rate leaves every existing instance up to date."""
    stage = STAGES[f"train_{variant}"]
    matrix = {"seed": "${study.seeds}", "lr": f"${{study.{variant}_lrs}}"}
    flags = {"seed": "seed", "lr": "lr", "rank": "rank", "targets": "target-set", "adapter": "adapter"}
    if variant == "lora":
        matrix = {"rank": "${study.ranks}", "targets": "${study.target_sets}", "adapter": "${study.adapters}",
                  **matrix}
    assert stage["matrix"] == matrix
    assert not any(p.split(".")[0] == "study" for p in stage["params"])
    cmd = " ".join(stage["cmd"].split())
    outs = _paths(stage["outs"] + stage.get("metrics", []))
    for key in matrix:  # each value reaches the script and names every output, so instances never share a file
        assert f"--{flags[key]} ${{item.{key}}}" in cmd
        assert all(f"${{item.{key}}}" in out for out in outs), outs


def test_evaluate_reads_the_whole_study_and_report_only_its_result():
    """The report is drawn from study.json alone (it carries the params it was computed with), so a committed
    record rebuilds it; it declares no params and reruns when study.json changes."""
    assert "study" in STAGES["evaluate"]["params"]
    assert "params" not in STAGES["report"] and "metrics/study.json" in STAGES["report"]["deps"]
    deps = STAGES["evaluate"]["deps"]
    assert "models" in deps and "metrics/train" in deps  # parents of every instance's outputs
