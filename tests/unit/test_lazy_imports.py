"""A stage imports only the heavy libraries it uses, so its start-up stays short: Great Expectations in validate,
matplotlib in report, scikit-learn/scipy in split and evaluate, MLflow only once a run is logged, never
transformers' trainer modules (nor peft through them). Where a lighter path replaced a library call, it gives the
library's floats exactly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
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


def test_macro_f1_gives_scikit_learns_floats():
    from sklearn.metrics import f1_score

    from lora_pipeline.evaluation import macro_f1

    rng = np.random.default_rng(0)
    for case in range(400):
        n, m = int(rng.integers(1, 7)), int(rng.integers(1, 200))
        y_true = rng.integers(0, n, m)
        y_pred = rng.integers(0, n + 1, m) if case % 3 else np.full(m, rng.integers(0, n))  # one-class runs too
        expected = float(f1_score(y_true, y_pred, labels=list(range(n)), average="macro", zero_division=0))
        assert macro_f1(y_true.tolist(), y_pred.tolist(), n) == expected, (y_true, y_pred, n)


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
