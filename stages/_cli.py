"""What every stage script shares: logging setup and turning known errors into clean exits."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import sys
import time
from typing import Any, Callable, Iterator, Optional

from lora_pipeline.credentials import RedactingFormatter, install_redaction, redact
from lora_pipeline.errors import ConfigError, PipelineError
from lora_pipeline.tracking import log_stage_run

# log_stage_run lives in lora_pipeline.tracking; re-exported here until ingest/validate/split import it from there
__all__ = ["EXIT_USER_ERROR", "run_stage", "install_redaction", "RedactingFormatter", "log_stage_run", "phase",
           "add_phase", "timed_tracker"]

EXIT_USER_ERROR = 2
_phases: dict[str, float] = {}  # wall seconds per phase of the stage run_stage is running
_open: list[list] = []  # the phases running now, innermost last: [start, seconds of the phases inside it]


def run_stage(name: str, body: Callable[[], None]) -> int:
    """Run a stage body; a known error becomes one clear message and exit code 2, not a traceback."""
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {name} %(levelname)s %(message)s",
                        stream=sys.stderr, force=True)
    install_redaction()
    quiet_libraries()
    _phases.clear()
    _open.clear()
    started = process_seconds()
    main_spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    own_process = getattr(main_spec, "name", "").startswith("stages.")  # `python -m stages.<name>`, not a test
    if started is not None and own_process:
        _phases["startup"] = started
    try:
        body()
    except (ConfigError, PipelineError) as err:  # one line, not also a log record of it
        print(f"\n{name} failed: {redact(str(err))}", file=sys.stderr)
        return EXIT_USER_ERROR
    finally:
        if own_process:
            # the process ends next: its exit then skips a last garbage collection through every object of torch,
            # MLflow, SQLAlchemy… (1-2 s); exit handlers still run and open files are flushed and closed
            gc.freeze()
    logging.getLogger(name).info("timing: %s", ", ".join(f"{k} {v:.3f} s" for k, v in _phases.items()))
    return 0


def quiet_libraries() -> None:
    """Libraries say only what matters in a stage's log: their warnings, no INFO chatter (MLflow's schema
    migrations and input-example checks), and no progress bars of loading or saving weights, hub downloads or
    MLflow's artifact transfers; the stage's own training loop keeps its one bar. The process environment is left
    as it is, and a user's ``MLFLOW_LOGGING_LEVEL``, ``HF_HUB_DISABLE_PROGRESS_BARS=0`` or
    ``MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=true`` still shows what it asks for.

    MLflow is imported only once a run is logged, and sets its loggers' levels then: the tracker keeps the level
    set here (:func:`~lora_pipeline.tracking.mlflow_shims.import_mlflow`) and turns MLflow's artifact bars off
    for its calls (:func:`~lora_pipeline.tracking.mlflow_shims.no_artifact_bars`).
    """
    for noisy in ("urllib3", "filelock", "great_expectations", "alembic", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not os.environ.get("MLFLOW_LOGGING_LEVEL"):
        logging.getLogger("mlflow").setLevel(logging.WARNING)
    hub_bars = os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS")
    if hub_bars is not None and hub_bars.upper() not in ("1", "ON", "YES", "TRUE"):  # huggingface_hub's reading
        return  # the user asked for the bars
    import huggingface_hub.utils  # a few milliseconds; transformers reads this setting when it is imported

    huggingface_hub.utils.disable_progress_bars()
    hf_logging = sys.modules.get("transformers.utils.logging")  # already imported by most stage modules
    if hf_logging is not None:
        hf_logging.disable_progress_bar()


def process_seconds() -> Optional[float]:
    """Seconds since this process started (interpreter start-up and imports, when called first thing in a stage);
    None where ``/proc`` does not say (not Linux)."""
    try:
        with open("/proc/self/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
        return time.clock_gettime(time.CLOCK_BOOTTIME) - int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def add_phase(name: str, seconds: float) -> None:
    """Count ``seconds`` of wall time to phase ``name``, and not to the phase running around this call."""
    _phases[name] = _phases.get(name, 0.0) + seconds
    if _open:
        _open[-1][1] += seconds


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    """Count the wall time of the block to phase ``name``, less that of the phases inside it.

    The stage logs one ``timing:`` line per run, e.g. ``timing: startup 3.1 s, data 0.2 s, model 1.0 s, train
    40.2 s, forward 3.3 s, save 0.4 s, mlflow 1.2 s`` (``startup``: interpreter and imports), so a slow stage
    shows where its time goes.
    """
    _open.append([time.perf_counter(), 0.0])
    try:
        yield
    finally:
        start, inner = _open.pop()
        add_phase(name, time.perf_counter() - start - inner)
        if _open:  # add_phase counted only the exclusive part to the enclosing phase
            _open[-1][1] += inner


class timed_tracker:  # noqa: N801 - used like a function that returns a tracker
    """A tracker (MlflowTracker / NullTracker) whose every call, and its closing, counts to phase ``mlflow``."""

    def __init__(self, tracker: Any):
        self._tracker = tracker

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._tracker, name)
        if not callable(attr):
            return attr

        def timed(*args: Any, **kwargs: Any) -> Any:
            with phase("mlflow"):
                return attr(*args, **kwargs)
        return timed

    def __enter__(self) -> "timed_tracker":
        return self

    def __exit__(self, *exc: Any) -> None:
        with phase("mlflow"):
            self._tracker.__exit__(*exc)
