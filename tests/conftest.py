"""Fixtures every tier shares (fixed seeds, one thread, an isolated environment, a tiny random BERT and a tiny
split), and the tier markers: each test is marked with its folder (unit, stages, system, e2e, gpu), so that
``pytest -m "unit or stages"`` is the fast tier (`make test-fast`)."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch

from tests.support.builders import end_mlflow_runs, isolate_env, make_frame, restored_logging, save_tiny_bert, write_split

TIERS = ("unit", "stages", "system", "e2e", "gpu")

# MLflow's telemetry, on where MLflow is first imported outside a test (at collection), fetches its config on a
# thread and, offline, removes its session variable from os.environ when that fails — at a moment no test chooses, so
# a test comparing the environment before and after a run saw it vanish. Tests send no telemetry.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test with its tier, the folder under tests/ it lives in."""
    tests = Path(__file__).resolve().parent
    for item in items:
        tier = item.path.resolve().relative_to(tests).parts[0]
        if tier in TIERS:
            item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture(autouse=True)
def seeded() -> None:
    """Fix every RNG the tests touch, so failures reproduce."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models gain nothing from intra-op threads, and on a shared CPU busy-waiting OpenMP threads make
    them 10-50x slower; stage runs set train.num_threads: 1 themselves (see write_params)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory):
    """Keep every test away from the repository's MLflow store and from the caller's DVC/MLflow env.

    ``MLFLOW_TRACKING_URI`` points at a session-wide SQLite file in a temp dir (tests that inspect
    runs set their own). The logging configuration that stage ``main()`` installs is undone afterwards.
    """
    isolate_env(monkeypatch, tmp_path_factory)
    with restored_logging():
        yield
    end_mlflow_runs()




@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``model.name: <this dir>`` loads a tiny random BERT classifier for the 3 fixture labels."""
    return save_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir: Path):
    from lora_pipeline.config import ModelConfig
    from lora_pipeline.pretrained import load_tokenizer

    return load_tokenizer(ModelConfig(name=str(tiny_model_dir), max_length=32))


@pytest.fixture(scope="session")
def split_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """A tokenised split of 3 x 60 fixture texts (train 117 / val 27 / test 36 rows)."""
    return write_split(tmp_path_factory.mktemp("split"), tiny_model_dir, make_frame(60))
