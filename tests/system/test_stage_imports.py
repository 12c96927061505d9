"""A stage imports only the heavy libraries it uses, so its start-up stays short: Great Expectations in validate,
matplotlib in report, scikit-learn/scipy in split and evaluate, MLflow only once a run is logged, never
transformers' trainer modules (nor peft through them). The warm-up schedule that replaced transformers' (whose import
pulled those modules in) gives its learning rates exactly. Each stage module is imported in a fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("great_expectations", "matplotlib", "sklearn", "scipy", "mlflow", "torch", "transformers",
         "transformers.trainer_utils", "peft")
# what each stage may import when its module is imported (before running): the libraries its own work needs
ALLOWED = {
    "ingest": set(),
    "validate": set(),  # Great Expectations is imported when the suite runs
    "split": {"sklearn", "scipy"},  # the stratified split; the tokenizer (transformers) is loaded when used
    "train_lora": {"torch", "transformers"},  # the LoRA layers know transformers' Conv1D
    "evaluate": {"torch", "transformers", "sklearn", "scipy"},
    "report": {"matplotlib"},
}


def _heavy_imported(module: str) -> set[str]:
    code = (f"import json, sys, {module}; "
            f"print(json.dumps([m for m in {list(HEAVY)!r} if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         check=True)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("stage", sorted(ALLOWED))
def test_stage_module_imports_only_the_heavy_libraries_it_uses(stage):
    extra = _heavy_imported(f"stages.{stage}") - ALLOWED[stage]
    assert not extra, f"importing stages.{stage} imports {sorted(extra)}"


@pytest.mark.parametrize("warmup, total", [(0, 1), (0, 10), (1, 1), (3, 50), (18, 300), (360, 6000)])
def test_linear_warmup_schedule_gives_transformers_learning_rates(warmup, total):
    from transformers import get_linear_schedule_with_warmup

    from lora_pipeline.training import linear_warmup_schedule

    def rates(make) -> list[float]:
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=3e-4)
        scheduler = make(opt, warmup, total)
        out = []
        for _ in range(total + 2):
            opt.step()
            scheduler.step()
            out.append(scheduler.get_last_lr()[0])
        return out, scheduler.state_dict()

    ours, ours_state = rates(linear_warmup_schedule)
    theirs, their_state = rates(get_linear_schedule_with_warmup)
    assert ours == theirs
    assert ours_state == their_state  # a checkpoint of either resumes under the other
