"""The README's command that compares experiments (``dvc exp show`` with ``--drop``/``--keep``) is the one the
pipeline guide gives, and it selects the columns they describe from the committed metrics and params; the e2e test
runs it on a real project and checks that its table fits 120 columns."""

from __future__ import annotations

import json
import re

import yaml

from tests.support.builders import ROOT
from tests.support.dvc_project import readme_compare_command, readme_compare_line


def _flat(obj: dict, prefix: str = "") -> list[str]:
    """Column names as ``dvc exp show`` writes them: nested keys joined with dots."""
    return [name for key, value in obj.items()
            for name in (_flat(value, f"{prefix}{key}.") if isinstance(value, dict) else [f"{prefix}{key}"])]


def _option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_the_pipeline_guide_gives_the_readme_command_verbatim():
    assert readme_compare_line() in (ROOT / "docs" / "pipeline.md").read_text().splitlines()


def test_the_readme_command_keeps_the_answer_each_ranks_difference_and_the_seeds():
    """DVC keeps a column when ``re.match(keep, name)``; ``--drop '.*'`` removes every other one (``--no-pager``
    prints to the terminal, at its width)."""
    argv = readme_compare_command()
    assert argv[:3] == ["dvc", "exp", "show"] and "--no-pager" in argv and _option(argv, "--drop") == ".*"
    keep = re.compile(_option(argv, "--keep"))
    metrics = _flat(json.loads((ROOT / "metrics" / "evaluate.json").read_text()))
    params = _flat(yaml.safe_load((ROOT / "params.yaml").read_text()))
    columns = ["Experiment", "Created", *metrics, *params]
    ranks = yaml.safe_load((ROOT / "params.yaml").read_text())["study"]["ranks"]
    assert [c for c in columns if keep.match(c)] == \
        ["Experiment", "answer_rank", *sorted(f"lora_r{r}.vs_full" for r in ranks), "study.seeds"]


def test_the_guides_command_keeps_the_difference_of_every_lora_configuration_row():
    """Rows of other adapters and target sets (``dora_r8``, ``lora_r8_all_linear``) are columns too; other metrics of
    those rows are not."""
    line = next(x for x in (ROOT / "docs" / "pipeline.md").read_text().splitlines()
                if x.startswith("dvc exp show --no-pager"))
    import shlex

    keep = re.compile(_option(shlex.split(line), "--keep"))
    rows = ["lora_r8", "dora_r8", "lora_r8_all_linear", "dora_r2_attention_all", "lora_r64"]
    columns = [f"{r}.{m}" for r in rows for m in ("vs_full", "vs_full_low", "macro_f1")] + ["full.macro_f1"]
    assert [c for c in columns if keep.match(c)] == [f"{r}.vs_full" for r in rows]
