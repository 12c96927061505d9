"""Stage logging: the tracker of one stage run, a finished stage mirrored in one call, and split parts logged as
dataset inputs of a run."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping

from ..config import MlflowConfig
from ..files import split_digests, split_part_file
from .mlflow_tracker import MlflowTracker
from .protocol import NullTracker, Tracker

__all__ = ["open_tracker", "log_stage_run", "log_split_inputs", "DATASET_DIGEST_CHARS"]

#: MLflow stores a dataset digest in 36 characters: a split's sha256 is cut to its first 32 hex digits
DATASET_DIGEST_CHARS = 32


def open_tracker(cfg: MlflowConfig, run_name: str, tags: Mapping[str, Any]) -> NullTracker | MlflowTracker:
    """An :class:`MlflowTracker`, or a :class:`NullTracker` when ``cfg.enabled`` is false.

    Use it as ``with open_tracker(...) as tracker:``; the run ends FINISHED, or FAILED on an exception.
    """
    return MlflowTracker(cfg, run_name, tags) if cfg.enabled else NullTracker()


def log_stage_run(cfg: MlflowConfig, stage: str, *, params: Mapping[str, Any] | None = None,
                  metrics: Mapping[str, Any] | None = None, artifacts: Iterable[str | Path] = (),
                  tags: Mapping[str, Any] | None = None) -> None:
    """Mirror one finished stage into MLflow: a run with its params, metrics and small artifacts.

    The run is tagged ``stage``, ``git_commit``, ``dvc_exp_name`` (queued experiments), host and pid, plus
    ``tags``; its name is built from them (``evaluate s42 [exp-name]``, see
    :func:`~lora_pipeline.tracking.mlflow_tracker.run_display_name`).
    """
    with open_tracker(cfg, stage, {"stage": stage, **(tags or {})}) as tracker:
        if params:
            tracker.log_params(params)
        if metrics:
            tracker.log_metrics(metrics)
        for path in artifacts:
            tracker.log_artifact(path)


def log_split_inputs(tracker: Tracker, directory: str | Path, frames: Mapping[str, Any],
                     contexts: Mapping[str, str]) -> None:
    """Log split parts as dataset inputs of the tracker's run: ``{"train": "training"}`` logs ``train.parquet`` of
    ``directory`` (its pandas frame in ``frames``) named ``train``, with context ``training``, its digest the
    first :data:`DATASET_DIGEST_CHARS` hex digits of the file's sha256 (what the checkpoints' run keys hash)."""
    def log_inputs(mlflow: Any) -> None:
        import mlflow.data

        digests = dict(zip(contexts, split_digests(directory, list(contexts))))  # only when tracking is on
        for part, context in contexts.items():
            source = str(Path(directory).resolve() / split_part_file(part))
            with warnings.catch_warnings():  # MLflow's hints on a local source's two readers and on int columns
                warnings.simplefilter("ignore", UserWarning)
                dataset = mlflow.data.from_pandas(frames[part], source=source, name=part,
                                                  digest=digests[part][:DATASET_DIGEST_CHARS])
                mlflow.log_input(dataset, context=context)

    tracker.use("datasets", log_inputs)
