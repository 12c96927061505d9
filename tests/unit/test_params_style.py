"""params.yaml is written the way ``dvc exp run -S`` writes it back (DVC's own writer: ruamel round trip, block
lists, an empty value for null, floats as Python prints them, width 80), so an experiment that changes one value
shows as a one-line diff and every key keeps its comment."""

from __future__ import annotations

import difflib
import shutil
from pathlib import Path

import pytest
import yaml

from tests.support.builders import ROOT

apply_overrides = pytest.importorskip("dvc.utils.hydra").apply_overrides  # what `dvc exp run -S` calls

PARAMS = ROOT / "params.yaml"


def _rewrite(tmp_path: Path, override: str) -> tuple[list[str], list[str]]:
    """(removed, added) lines when DVC applies ``override`` to a copy of params.yaml."""
    copy = tmp_path / "params.yaml"
    shutil.copy(PARAMS, copy)
    apply_overrides(copy, [override])
    diff = difflib.unified_diff(PARAMS.read_text().splitlines(), copy.read_text().splitlines(), lineterm="", n=0)
    lines = [line for line in diff if not line.startswith(("---", "+++", "@@"))]
    return [line[1:] for line in lines if line[0] == "-"], [line[1:] for line in lines if line[0] == "+"]


def test_dvc_writes_params_yaml_back_unchanged(tmp_path):
    """Setting a value to what it already is rewrites nothing: the file is in DVC's own style, comments included."""
    tolerance = yaml.safe_load(PARAMS.read_text())["study"]["tolerance"]
    assert _rewrite(tmp_path, f"study.tolerance={tolerance}") == ([], [])


@pytest.mark.parametrize("override, added", [
    ("study.seeds=[42,43]", "  - 43"),
    ("study.ranks=[4,16,64]", "  - 64"),
    ("study.scratch_lrs=[0.0004,0.001]", "  - 0.001"),
    ("study.full_lrs=[0.0001,0.0002]", "  - 0.0002"),
    ("study.lora_lrs=[0.002,0.004]", "  - 0.004"),
    ("study.lora_lrs=[2.0e-3,4.0e-3]", "  - 0.004"),  # the values as they are written in docs/pipeline.md
])
def test_adding_a_value_to_a_study_list_is_a_one_line_diff(tmp_path, override, added):
    assert _rewrite(tmp_path, override) == ([], [added])


@pytest.mark.parametrize("override", ["study.ranks=[4,8]", "study.tolerance=0.02", "lora.alpha=8.0",
                                      "train.patience=6", "study.record_rank=16", "model.max_length=128"])
def test_changing_one_value_is_a_one_line_diff(tmp_path, override):
    """One line replaced, its comment kept in place."""
    key, value = override.split("=")
    (removed,), (added,) = _rewrite(tmp_path, override)
    name = key.split(".")[-1]
    assert removed.split("#")[1:] == added.split("#")[1:], (removed, added)
    assert added.strip().startswith("- " if key == "study.ranks" else f"{name}: {value}")


def test_every_key_keeps_a_comment_on_its_line():
    """Each key of params.yaml is commented on its own line (block lists: on the key's line, above the items)."""
    lines = PARAMS.read_text().splitlines()
    keys = [line for line in lines if line.startswith("  ") and not line.lstrip().startswith(("#", "- "))
            and ":" in line.split("#")[0]]
    assert keys and [line for line in keys if "#" not in line] == []
    assert max(len(line.split("#")[0].rstrip()) for line in lines) <= 80  # DVC's writer wraps values past 80
