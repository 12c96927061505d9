"""Experiment tracking behind a small protocol: MLflow when enabled, a no-op otherwise.

DVC owns artifacts, lineage and metrics files; MLflow mirrors params, metrics, curves and small artifacts for
browsing, and tracking never costs a result. :mod:`.protocol` is what stages and the training loop report
through; :mod:`.runs` opens the tracker of a stage run; :mod:`.mlflow_tracker` is the MLflow client with its
retries; :mod:`.store` is which store a process talks to and the specifics of a SQLite one. They use MLflow's
public API only; :mod:`.mlflow_shims` holds what MLflow offers no public way to do, checked against the MLflow
versions pyproject.toml allows.
"""

from ..credentials import redact
from .mlflow_tracker import MlflowTracker, git_commit, run_display_name
from .protocol import NullTracker, Tracker, flatten, param_value
from .runs import DATASET_DIGEST_CHARS, log_split_inputs, log_stage_run, open_tracker
from .store import default_tracking_uri

__all__ = ["Tracker", "NullTracker", "MlflowTracker", "default_tracking_uri", "redact", "open_tracker",
           "log_stage_run", "flatten", "run_display_name", "git_commit", "param_value", "log_split_inputs",
           "DATASET_DIGEST_CHARS"]
