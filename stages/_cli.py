"""What every stage script shares: logging setup and turning known errors into clean exits."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from lora_pipeline.config import ConfigError, MlflowConfig
from lora_pipeline.errors import PipelineError
from lora_pipeline.tracking import open_tracker

EXIT_USER_ERROR = 2


def run_stage(name: str, body: Callable[[], None]) -> int:
    """Run a stage body; a known error becomes one clear message and exit code 2, not a traceback."""
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {name} %(levelname)s %(message)s",
                        stream=sys.stderr, force=True)
    for noisy in ("urllib3", "filelock", "great_expectations", "alembic", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        body()
    except (ConfigError, PipelineError) as err:
        logging.getLogger(name).error("%s", err)
        print(f"\n{name} failed: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    return 0


def log_stage_run(cfg: MlflowConfig, stage: str, *, params: Mapping[str, Any] | None = None,
                  metrics: Mapping[str, Any] | None = None, artifacts: Iterable[str | Path] = (),
                  tags: Mapping[str, Any] | None = None) -> None:
    """Mirror one finished stage into MLflow: a run with its params, metrics and small artifacts."""
    tracker = open_tracker(cfg, stage, {"stage": stage, **(tags or {})})
    if params:
        tracker.log_params(params)
    if metrics:
        tracker.log_metrics(metrics)
    for path in artifacts:
        tracker.log_artifact(path)
    tracker.close()
