"""tracking: the library talks to MLflow through its public API only. What MLflow offers no public way to do lives
in lora_pipeline/tracking/mlflow_shims.py, checked against the MLflow versions pyproject.toml allows: no other
module opens MLflow's database or reads MLflow's private attributes, and no module of the library or of the stages
writes the process environment."""

from __future__ import annotations

import ast
import logging
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from lora_pipeline.config import MlflowConfig
from lora_pipeline.tracking import MlflowTracker
from tests.support.builders import ROOT, initialised_store

PACKAGE = ROOT / "lora_pipeline"
SHIMS = PACKAGE / "tracking" / "mlflow_shims.py"
STAGES = ROOT / "stages"
DATABASE_LIBRARIES = ("sqlite3", "sqlalchemy", "alembic")
ENV_WRITES = {"pop", "popitem", "setdefault", "update", "clear", "__setitem__", "__delitem__"}


def _library() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p != SHIMS)


def _all_code() -> list[Path]:
    """The library, its shims included, and the stage scripts."""
    return sorted([*PACKAGE.rglob("*.py"), *STAGES.glob("*.py")])


def _is_environ(node: ast.AST) -> bool:
    """``os.environ`` (or ``environ`` imported from os)."""
    return (isinstance(node, ast.Attribute) and node.attr == "environ" and isinstance(node.value, ast.Name)
            and node.value.id == "os") or (isinstance(node, ast.Name) and node.id == "environ")


def _env_writes(tree: ast.AST) -> list[int]:
    lines = []
    for node in ast.walk(tree):
        targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else \
            [node.target] if isinstance(node, ast.AugAssign) else []
        if any(isinstance(t, ast.Subscript) and _is_environ(t.value) for t in targets):
            lines.append(node.lineno)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            func = node.func
            if (func.attr in ENV_WRITES and _is_environ(func.value)) \
                    or (func.attr in ("putenv", "unsetenv") and isinstance(func.value, ast.Name)
                        and func.value.id == "os") \
                    or (func.attr in ("set", "unset") and isinstance(func.value, ast.Name)
                        and func.value.id.startswith("MLFLOW_")):  # mlflow.environment_variables' setters
                lines.append(node.lineno)
    return lines


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _mlflow_names(tree: ast.AST) -> set[str]:
    """Names that hold MLflow modules or objects in a file: ``mlflow`` (also a parameter of that name), what is
    imported from mlflow, and ``x = sys.modules.get("mlflow…")``."""
    names = {"mlflow"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.asname for a in node.names if a.asname and a.name.startswith("mlflow")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mlflow"):
            names |= {a.asname or a.name for a in node.names}
        elif isinstance(node, ast.Assign) and any(isinstance(c, ast.Constant) and str(c.value).startswith("mlflow")
                                                  for c in ast.walk(node.value)):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return names


def _root(node: ast.AST) -> ast.AST:
    while isinstance(node, (ast.Attribute, ast.Call, ast.Subscript)):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node


def _private_mlflow_uses(tree: ast.AST) -> list[str]:
    names = _mlflow_names(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mlflow"):
            found += [f"{node.module}.{a.name}" for a in node.names
                      if _private(a.name) or any(_private(p) for p in node.module.split("."))]
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names
                      if a.name.startswith("mlflow") and any(_private(p) for p in a.name.split("."))]
        elif isinstance(node, ast.Attribute) and _private(node.attr):
            root = _root(node)
            if isinstance(root, ast.Name) and root.id in names:
                found.append(f"{root.id}….{node.attr} (line {node.lineno})")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "setattr") \
                and len(node.args) > 1 and isinstance(node.args[1], ast.Constant) and _private(str(node.args[1].value)):
            root = _root(node.args[0])
            if isinstance(root, ast.Name) and root.id in names:
                found.append(f"{node.func.id}({root.id}…, {node.args[1].value!r}) (line {node.lineno})")
    return found


def _database_imports(tree: ast.AST) -> list[str]:
    modules = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names] + \
        [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    return [m for m in modules if m.split(".")[0] in DATABASE_LIBRARIES]


@pytest.mark.parametrize("check", [_private_mlflow_uses, _database_imports],
                         ids=["mlflow-private-attributes", "database-access"])
def test_no_library_module_but_the_shims_goes_around_mlflow_s_public_api(check):
    found = {str(p.relative_to(ROOT)): hits for p in _library()
             if (hits := check(ast.parse(p.read_text(encoding="utf-8"))))}
    assert not found


def test_no_module_of_the_library_or_the_stages_writes_the_process_environment():
    """Child processes get an environment of their own (``env=`` of subprocess), never a change of this one."""
    found = {str(p.relative_to(ROOT)): hits for p in _all_code()
             if (hits := _env_writes(ast.parse(p.read_text(encoding="utf-8"))))}
    assert not found


def test_a_tracker_s_run_leaves_the_process_environment_as_it_was(tmp_path):
    """Also through MLflow: its fluent API writes the environment where the tracker would ask for it
    (``set_experiment`` writes MLFLOW_EXPERIMENT_ID; ``set_tracking_uri`` writes MLFLOW_TRACKING_URI, which a stage
    takes from there when it is set, as here)."""
    (tmp_path / "a.json").write_text("{}")
    environ = dict(os.environ)
    with MlflowTracker(MlflowConfig(experiment="environment-check"), "x", {}) as tracker:
        tracker.log_params({"a": 1})
        tracker.log_metrics({"m": 1.0}, step=1)
        tracker.log_artifact(tmp_path / "a.json")
        during = dict(os.environ)
    assert during == environ and dict(os.environ) == environ


def test_the_scan_sees_what_it_forbids():
    source = ("import os, sqlite3, sys\nimport mlflow\nfluent = sys.modules.get('mlflow.tracking.fluent')\n"
              "stack = fluent._active_run_stack.get()\nos.environ['A'] = '1'\nos.environ.pop('A')\n"
              "def f(mlflow):\n    return mlflow.tracking._tracking_service\n")
    tree = ast.parse(source)
    assert len(_private_mlflow_uses(tree)) == 2 and _env_writes(tree) == [5, 6]
    assert _database_imports(tree) == ["sqlite3"]


def test_the_shims_are_checked_against_the_mlflow_that_runs_and_the_versions_pyproject_allows():
    import mlflow

    from lora_pipeline.tracking.mlflow_shims import CHECKED_MLFLOW, mlflow_checked

    low, high = CHECKED_MLFLOW
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert [d for d in deps if d.split(">")[0].split("<")[0].split("=")[0].strip() == "mlflow"] == \
        [f"mlflow>={low},<{high}"]
    assert mlflow_checked(mlflow.__version__), mlflow.__version__
    assert not mlflow_checked(f"{high}.0.0") and not mlflow_checked(f"{low - 1}.9.0") and not mlflow_checked("dev")


def test_the_shims_module_names_each_shim_and_why_mlflow_has_no_public_way():
    from lora_pipeline.tracking import mlflow_shims

    shims = [name for name in mlflow_shims.__all__
             if callable(getattr(mlflow_shims, name)) and name != "mlflow_checked"]
    assert shims == ["import_mlflow", "http_limits", "no_artifact_bars", "relocate_artifacts"]
    assert [name for name in shims if f":func:`{name}`" not in mlflow_shims.__doc__] == []


def test_mlflow_takes_the_http_limits_from_its_settings_defaults_at_each_request(monkeypatch):
    """What http_limits changes (the defaults of MLflow's settings) is what MLflow's next request uses; a value the
    user set in the environment wins, and the environment is left as it was."""
    import mlflow
    import requests

    from lora_pipeline.tracking.mlflow_shims import http_limits

    seen = []

    def refuse(session, method, url, **kwargs):
        seen.append((kwargs.get("timeout"), session.get_adapter(url).max_retries.total))
        raise requests.exceptions.ConnectionError("refused")

    monkeypatch.setattr(requests.Session, "request", refuse)
    client = mlflow.MlflowClient(tracking_uri="http://127.0.0.1:9")
    environ = dict(os.environ)
    for retries, timeout in ((0, 2), (1, 3)):
        with http_limits(retries=retries, timeout_s=timeout), pytest.raises(mlflow.exceptions.MlflowException):
            client.get_experiment("0")
        assert seen[-1] == (timeout, retries)
    assert dict(os.environ) == environ
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "7")
    with http_limits(retries=0, timeout_s=2), pytest.raises(mlflow.exceptions.MlflowException):
        client.get_experiment("0")
    assert seen[-1] == (7, 0)


def test_mlflow_shows_artifact_progress_bars_as_its_setting_says_at_each_transfer(monkeypatch):
    """no_artifact_bars changes the default of MLflow's setting, read when a transfer's bar is made; a user's
    ``MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=true`` wins."""
    from mlflow.utils.file_utils import ArtifactProgressBar

    from lora_pipeline.tracking.mlflow_shims import no_artifact_bars

    def shown() -> bool:
        with ArtifactProgressBar.files(desc="Downloading artifacts", total=1) as bar:
            return bar.pbar is not None

    environ = dict(os.environ)
    with no_artifact_bars():
        assert not shown()
    assert shown() and dict(os.environ) == environ
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "true")
    with no_artifact_bars():
        assert shown()


def test_mlflow_s_first_import_keeps_the_level_the_application_gave_its_logger():
    """MLflow sets its loggers' levels when first imported; import_mlflow puts back the application's, unless the
    user named one in MLFLOW_LOGGING_LEVEL (a fresh interpreter each: MLflow is imported once per process)."""
    code = ("import logging; logging.getLogger('mlflow').setLevel(logging.ERROR); "
            "from lora_pipeline.tracking.mlflow_shims import import_mlflow; import_mlflow(); "
            "print(logging.getLogger('mlflow').level)")
    for user, level in ((None, logging.ERROR), ("INFO", logging.INFO)):
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_LOGGING_LEVEL"}
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                             env=env if user is None else {**env, "MLFLOW_LOGGING_LEVEL": user}, check=True)
        assert out.stdout.split()[-1] == str(level), out.stderr[-2000:]


def _moved_store(tmp_path: Path, monkeypatch) -> tuple[Path, Path]:
    """A store with one run whose artifact was logged, then the folder copied: (original, copy)."""
    original = tmp_path / "original"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", initialised_store(original / "mlflow.db"))
    (tmp_path / "a.json").write_text("{}")
    tracker = MlflowTracker(MlflowConfig(experiment="moved"), "first", {})
    tracker.log_artifact(tmp_path / "a.json")
    tracker.close()
    shutil.copytree(original, tmp_path / "copy")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'copy' / 'mlflow.db'}")
    return original, tmp_path / "copy"


def _artifact_location(db: Path) -> str:
    import mlflow

    return mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}").get_experiment_by_name("moved").artifact_location


def test_a_moved_store_is_left_as_it_is_by_an_mlflow_the_repointing_was_not_checked_with(monkeypatch, tmp_path,
                                                                                          caplog):
    import mlflow

    original, copy = _moved_store(tmp_path, monkeypatch)
    monkeypatch.setattr(mlflow, "__version__", "9.0.0")
    with caplog.at_level(logging.INFO):
        MlflowTracker(MlflowConfig(experiment="moved"), "second", {}).close()
    assert _artifact_location(copy / "mlflow.db") == (original / "mlartifacts").as_uri()
    (warning,) = [r.getMessage() for r in caplog.records if r.name.startswith("lora_pipeline")]
    assert "MLflow 9.0.0" in warning and str(original / "mlartifacts") in warning
