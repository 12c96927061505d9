"""What every stage script shares: logging setup and turning known errors into clean exits."""

from __future__ import annotations

import logging
import sys
from typing import Callable

from lora_pipeline.config import ConfigError
from lora_pipeline.errors import PipelineError

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
