"""What `dvc plots show` reads: only plot data under a directory plot, and a rank curve with a colour and a legend
entry per series and a named y axis."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
PLOTS = yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]
DATA_SUFFIXES = (".csv", ".tsv", ".json", ".yaml", ".yml")  # what dvc plots can parse


def _entries() -> list[tuple[str, dict]]:
    return [next(iter(entry.items())) if isinstance(entry, dict) else (entry, {}) for entry in PLOTS]


def test_no_tracked_file_under_a_directory_plot_is_other_than_plot_data():
    """dvc plots reads every file under a directory plot; a tracked non-data file there (a .gitignore) makes it
    warn "failed to load some plots" on every clone."""
    folders = [name for name, _ in _entries() if not Path(name).suffix]
    tracked = subprocess.run(["git", "ls-files", "--", *folders], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    assert [f for f in tracked if not f.endswith(DATA_SUFFIXES)] == []


def test_rank_curve_plot_colours_and_names_each_series_and_labels_its_axes():
    (opts,) = [opts for name, opts in _entries() if name.startswith("test macro-F1 against LoRA rank")]
    assert opts.get("y_label") == "test macro-F1" and opts.get("x_label")
    template = ROOT / ".dvc" / "plots" / f"{opts.get('template')}.json"
    assert template.is_file(), "the built-in templates colour by revision only: one colour for every series"
    spec = json.loads(template.read_text())
    assert spec["encoding"]["color"]["field"] == "series"
    assert all(layer["encoding"]["y"]["title"] == "<DVC_METRIC_Y_LABEL>" for layer in spec["layer"])
    (ys,) = opts["y"].values()
    assert set(ys) == {"lora_macro_f1", "full_macro_f1", "scratch_macro_f1", "tfidf_macro_f1"}
