"""Run the LoRA guide's example (docs/lora-package.md), so the documented usage can never rot."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "docs" / "lora-package.md"
HEADING = "## Use the LoRA package directly"


def readme_example() -> str:
    """The single ```python block of the guide's section under :data:`HEADING`."""
    text = README.read_text(encoding="utf-8")
    assert HEADING in text, f"{README.name} lost the heading {HEADING!r}"
    section = re.split(r"^## ", text.split(HEADING, 1)[1], flags=re.MULTILINE)[0]
    blocks = re.findall(r"^```python\n(.*?)^```", section, flags=re.MULTILINE | re.DOTALL)
    assert len(blocks) == 1, f"expected one python block under {HEADING!r}, found {len(blocks)}"
    return blocks[0]


def test_readme_lora_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    exec(compile(readme_example(), f"{README}:{HEADING}", "exec"), {"__name__": "__readme__"})
    assert (tmp_path / "adapter" / "adapter.safetensors").is_file()
    peft_config = json.loads((tmp_path / "peft_adapter" / "adapter_config.json").read_text())
    assert peft_config["peft_type"] == "LORA" and (tmp_path / "peft_adapter" / "adapter_model.safetensors").is_file()
