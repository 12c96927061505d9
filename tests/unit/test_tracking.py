"""tracking: secrets never leak, the default store is absolute, and a broken store never costs a result."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lora_pipeline.config import MlflowConfig
from lora_pipeline.tracking import MlflowTracker, NullTracker, default_tracking_uri, flatten, open_tracker, redact
from lora_pipeline.tracking import store as tracking_store
from tests.support.builders import make_frame, write_clean, write_params
from tests.support.servers import silent_server

SECRET = "s3cretPW"


# ------------------------------------------------------------------------------------- redact


@pytest.mark.parametrize("text, expected", [
    ("https://user:s3cret@host/path", "https://user:***@host/path"),
    ("postgresql://u:p@h/db", "postgresql://u:***@h/db"),
    ("mysql+pymysql://root:pw@db.example:3306/mlflow", "mysql+pymysql://root:***@db.example:3306/mlflow"),
    ("https://ghp_tok3n@github.com/o/r.git", "https://***@github.com/o/r.git"),
    ("http://u:p@ss@h:5000/", "http://u:***@h:5000/"),  # '@' inside the password
    ("https://h/api?token=abc123&x=1", "https://h/api?token=***&x=1"),
    ("https://h/x?sig=ZZZ", "https://h/x?sig=***"),
    ("failed: 'https://a:b@c/d' (timeout)", "failed: 'https://a:***@c/d' (timeout)"),
    ("see http://u:p[w@h/ now", "see http://u:***@h/ now"),  # urlsplit would raise on the '['
])
def test_redact_hides_credentials(text, expected):
    assert redact(text) == expected


@pytest.mark.parametrize("text", [
    "sqlite:////tmp/project/mlflow.db", "sqlite:///relative.db", "file:///abs/mlartifacts",
    "http://127.0.0.1:5000/api/2.0/mlflow/runs/create", "databricks", "no uri here", "",
])
def test_redact_leaves_text_without_secrets_alone(text):
    assert redact(text) == text


_PW = st.text(alphabet=st.sampled_from("abcXYZ0189-._~!$&'()*+,;=:@[]%"), min_size=4, max_size=24)


@settings(max_examples=200, deadline=None)
@given(password=_PW, scheme=st.sampled_from(["http", "https", "postgresql", "mysql+pymysql"]))
def test_redact_never_shows_a_password(password, scheme):
    uri = f"{scheme}://alice:{password}@db.internal:5432/mlflow"
    assert password not in redact(uri).replace("alice", "").replace("db.internal:5432/mlflow", "")
    assert redact(f"error contacting {uri} (refused)").startswith("error contacting ")


def test_flatten():
    assert flatten({"a": {"b": 1, "c": {"d": "x"}}, "e": 2}) == {"a.b": 1, "a.c.d": "x", "e": 2}


# ---------------------------------------------------------------------------- default URI


def test_env_wins_over_params(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env:5000")
    assert default_tracking_uri(MlflowConfig(tracking_uri="http://params:5000")) == "http://env:5000"


def test_params_win_over_the_sqlite_default(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert default_tracking_uri(MlflowConfig(tracking_uri="http://params:5000")) == "http://params:5000"


def _sqlite_path(uri: str) -> Path:
    assert uri.startswith("sqlite:///")
    path = Path(uri[len("sqlite:///"):])
    assert path.is_absolute(), uri  # sqlite:////abs/path: four slashes
    return path


def test_default_is_absolute_sqlite_at_the_nearest_project_root(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    (tmp_path / "proj" / ".dvc").mkdir(parents=True)
    deep = tmp_path / "proj" / "stages" / "sub"
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)
    assert _sqlite_path(default_tracking_uri(MlflowConfig())) == (tmp_path / "proj" / "mlflow.db").resolve()
    (tmp_path / "proj" / "stages" / ".git").write_text("gitdir: elsewhere\n")  # a worktree/submodule marker
    assert _sqlite_path(default_tracking_uri(MlflowConfig())) == (tmp_path / "proj/stages/mlflow.db").resolve()


def test_dvc_root_wins_for_queued_experiments(monkeypatch, tmp_path):
    """``dvc queue`` runs in a temp copy; DVC_ROOT points back at the user's project."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    (tmp_path / "copy" / ".dvc").mkdir(parents=True)
    (tmp_path / "project").mkdir()
    monkeypatch.chdir(tmp_path / "copy")
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "project"))
    assert _sqlite_path(default_tracking_uri(MlflowConfig())) == (tmp_path / "project" / "mlflow.db").resolve()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DVC_ROOT", "project")  # relative: still made absolute
    assert _sqlite_path(default_tracking_uri(MlflowConfig())) == (tmp_path / "project" / "mlflow.db").resolve()


def test_open_tracker_respects_enabled():
    assert isinstance(open_tracker(MlflowConfig(enabled=False), "x", {}), NullTracker)


# ------------------------------------------------------------------------- real MLflow store


@pytest.fixture()
def store(request) -> tuple[str, MlflowConfig]:
    """The session's SQLite store (a fresh one costs seconds of migrations) and an experiment of our own."""
    import os

    return os.environ["MLFLOW_TRACKING_URI"], MlflowConfig(experiment=f"test-{request.node.name}")


def _runs(uri: str, experiment: str) -> list:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    return [] if exp is None else client.search_runs([exp.experiment_id])


def test_mlflow_tracker_logs_everything(store, tmp_path, caplog):
    import mlflow

    artifact = tmp_path / "metrics.json"
    artifact.write_text('{"a": 1}')
    folder = tmp_path / "figures"
    folder.mkdir()
    (folder / "curves.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    uri, cfg = store
    with caplog.at_level(logging.WARNING):
        tracker = MlflowTracker(cfg, "train_lora", {"stage": "train_lora", "lora_rank": 8})
        tracker.log_params({"lora": {"target_modules": ("query", "value")}, "run": {"rank": 8, "seed": 1}})
        tracker.log_metrics({"train_loss": 1.5, "lr": 1e-3}, step=1)
        tracker.log_metrics({"train_loss": 0.5}, step=2)
        tracker.log_metrics({"nested": {"f1": 0.75}, "note": "not a number"})
        tracker.set_tags({"resumed_from_step": 0, "skip": None})
        tracker.log_artifact(artifact)
        tracker.log_artifact(folder)
        tracker.close()
    assert not [r for r in caplog.records if r.name.startswith("lora_pipeline")]
    (run,) = _runs(uri, cfg.experiment)
    assert run.info.status == "FINISHED" and run.info.run_name == "train_lora r8"
    assert run.data.params == {"lora.target_modules": '["query", "value"]', "run.rank": "8", "run.seed": "1"}
    assert run.data.metrics == {"train_loss": 0.5, "lr": 1e-3, "nested.f1": 0.75}
    assert run.data.tags["stage"] == "train_lora" and run.data.tags["lora_rank"] == "8"
    assert run.data.tags["resumed_from_step"] == "0" and "skip" not in run.data.tags
    client = mlflow.MlflowClient(tracking_uri=uri)
    history = client.get_metric_history(run.info.run_id, "train_loss")
    assert [(m.step, m.value) for m in history] == [(1, 1.5), (2, 0.5)]
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert names == {"metrics.json", "figures"}
    assert [a.path for a in client.list_artifacts(run.info.run_id, "figures")] == ["figures/curves.png"]
    # artifacts live beside the store (absolute), never in the working directory
    assert run.info.artifact_uri.startswith((Path(uri[len("sqlite:///"):]).parent / "mlartifacts").as_uri())


def test_a_failed_stage_marks_the_run_failed(store):
    uri, cfg = store
    MlflowTracker(cfg, "split", {"stage": "split"}).close(failed=True)
    (run,) = _runs(uri, cfg.experiment)
    assert run.info.status == "FAILED"


def test_a_tracker_used_as_a_context_closes_its_run_failed_or_finished(store):
    uri, cfg = store
    with pytest.raises(KeyError):
        with open_tracker(cfg, "train_full", {"stage": "train_full", "seed": 1}) as tracker:
            tracker.log_metrics({"train_loss": 1.0}, step=1)
            raise KeyError("boom")
    with open_tracker(cfg, "train_full", {"stage": "train_full", "seed": 2}) as tracker:
        tracker.log_metrics({"train_loss": 0.5}, step=1)
    status = {run.data.tags["seed"]: run.info.status for run in _runs(uri, cfg.experiment)}
    assert status == {"1": "FAILED", "2": "FINISHED"}
    with open_tracker(MlflowConfig(enabled=False), "x", {}) as null:
        assert isinstance(null, NullTracker)


def test_secrets_in_params_and_tags_are_redacted_in_mlflow(store):
    uri, cfg = store
    tracker = MlflowTracker(cfg, "x", {"stage": "x"})
    tracker.log_params({"mlflow": {"tracking_uri": f"https://bob:{SECRET}@mlflow.example/"},
                        "data": {"url": f"https://h/data.csv?token={SECRET}"}})
    tracker.set_tags({"remote": f"postgresql://bob:{SECRET}@db/mlflow"})
    tracker.close()
    (run,) = _runs(uri, cfg.experiment)
    assert SECRET not in json.dumps({**run.data.params, **run.data.tags})
    assert run.data.params["mlflow.tracking_uri"] == "https://bob:***@mlflow.example/"


# ------------------------------------------------------------------------- broken stores


def _tracker_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name.startswith("lora_pipeline") and r.levelno >= logging.WARNING]


def _exercise(tracker: MlflowTracker, tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text("{}")
    tracker.log_params({"train": {"seed": 1, "lr": 0.1}})
    for step in range(3):
        tracker.log_metrics({"train_loss": 1.0, "lr": 0.1}, step=step)
    tracker.set_tags({"resumed_from_step": 0})
    tracker.log_artifact(tmp_path / "a.json")
    tracker.close()


def _corrupt_store(tmp_path: Path) -> str:
    db = tmp_path / "corrupt" / "mlflow.db"
    db.parent.mkdir()
    db.write_bytes(b"this is not SQLite at all\x00" * 200)
    return f"sqlite:///{db}"


@pytest.mark.parametrize("kind", ["unreachable", "corrupt"])
def test_a_broken_store_costs_one_warning_and_nothing_else(monkeypatch, tmp_path, caplog, capfd, kind):
    uri = f"http://alice:{SECRET}@127.0.0.1:9" if kind == "unreachable" else _corrupt_store(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    start = time.monotonic()
    with caplog.at_level(logging.DEBUG):
        _exercise(MlflowTracker(MlflowConfig(), "x", {"stage": "x"}), tmp_path)
    assert time.monotonic() - start < 20
    (warning,) = _tracker_warnings(caplog)
    assert "not logged" in warning and "1 start" in warning and "2 params" in warning
    assert "6 metrics" in warning and "1 tags" in warning and "1 artifacts" in warning
    assert ("Connection refused" if kind == "unreachable" else "not a database") in warning
    captured = capfd.readouterr()
    assert SECRET not in caplog.text + captured.out + captured.err
    if kind == "corrupt":
        assert str(tmp_path / "corrupt" / "mlflow.db") in warning  # the path is shown intact


def test_http_timeouts_are_tight_in_mlflow_calls_only_and_users_can_override_them(monkeypatch, store):
    from mlflow import environment_variables as settings

    names = ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")
    outside = [getattr(settings, name).get() for name in names]  # MLflow's own
    seen = []
    tracker = MlflowTracker(MlflowConfig(), "x", {})
    tracker.use("probe", lambda mlflow: seen.append([getattr(settings, name).get() for name in names]))
    tracker.close()
    retries, timeout = seen[-1]
    assert (retries + 1) * timeout <= 12  # worst case for a server that accepts but never answers
    assert [getattr(settings, name).get() for name in names] == outside
    assert not [name for name in names if name in os.environ]  # the process environment is left as it was
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "77")
    tracker = MlflowTracker(MlflowConfig(), "x", {})
    tracker.use("probe", lambda mlflow: seen.append([getattr(settings, name).get() for name in names]))
    tracker.close()
    assert seen[-1][1] == 77 and os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "77"


@pytest.mark.slow
def test_a_server_that_never_answers_does_not_hang_the_stage(monkeypatch, tmp_path, caplog):
    with silent_server() as port:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
        start = time.monotonic()
        _exercise(MlflowTracker(MlflowConfig(), "x", {}), tmp_path)
        elapsed = time.monotonic() - start
    assert elapsed < 20, elapsed
    (warning,) = _tracker_warnings(caplog)
    assert "timed out" in warning.lower()


def test_a_store_that_fails_mid_run_costs_one_warning_and_no_request_at_exit(store, monkeypatch, caplog):
    """MLflow ends a still-active run at interpreter exit (two requests: get, update). After the store failed,
    that would ask the dead server again, at exit, for (retries + 1) x timeout per request (~20 s when it hangs):
    closing forgets the run locally instead. urllib3's per-retry warnings are left out: the tracker's one warning
    names the final error. tests/e2e/test_team_e2e.py checks the seconds against a real server."""
    import mlflow

    uri, cfg = store
    tracker = MlflowTracker(cfg, "train_lora", {"stage": "train_lora"})
    run_id = mlflow.active_run().info.run_id
    urllib3_log = logging.getLogger("urllib3.connectionpool")

    def gone(*args, **kwargs):
        urllib3_log.warning("Retrying (Retry(total=0)) after connection broken by 'NewConnectionError()'")
        raise ConnectionError("Max retries exceeded: Connection refused")

    monkeypatch.setattr(mlflow, "log_metrics", gone)
    ends = []  # close's one attempt to end the run: the server is still down
    monkeypatch.setattr(mlflow.MlflowClient, "set_terminated", lambda *a, **k: ends.append(a) or gone())
    with caplog.at_level(logging.WARNING):
        tracker.log_metrics({"train_loss": 1.0}, step=1)
        tracker.log_metrics({"train_loss": 0.5}, step=2)
        tracker.close()
        urllib3_log.warning("a retry outside the tracker")
    assert mlflow.active_run() is None
    (warning,) = _tracker_warnings(caplog)
    assert "Connection refused" in warning and "2 metrics" in warning and "1 end" in warning
    assert [r.getMessage() for r in caplog.records if r.name.startswith("urllib3")] == ["a retry outside the tracker"]
    (run,) = _runs(uri, cfg.experiment)
    assert run.info.run_id == run_id and run.info.status == "RUNNING"  # as it stood when the store failed
    assert "stays RUNNING" in warning and len(ends) == 1


def test_a_run_whose_store_came_back_is_ended_at_close_and_tagged_incomplete(store, monkeypatch, caplog):
    """The store failed mid-run (a server restart), then answers again: close ends the run with one request
    instead of leaving it RUNNING until the next stage, and tags what was not logged."""
    import mlflow

    uri, cfg = store
    tracker = MlflowTracker(cfg, "train_lora", {"stage": "train_lora"})
    with monkeypatch.context() as patch:
        patch.setattr(mlflow, "log_metrics", lambda *a, **k: (_ for _ in ()).throw(ConnectionError("refused")))
        tracker.log_metrics({"train_loss": 1.0}, step=1)
    with caplog.at_level(logging.WARNING):
        tracker.close()
    (run,) = _runs(uri, cfg.experiment)
    assert run.info.status == "FINISHED" and run.data.tags["tracking_incomplete"] == "1 metrics, 1 end"
    (warning,) = _tracker_warnings(caplog)
    assert "the run was ended" in warning and "RUNNING" not in warning


def test_a_run_whose_end_request_failed_once_is_ended_by_close_s_one_more_attempt(store, monkeypatch):
    import mlflow

    uri, cfg = store
    tracker = MlflowTracker(cfg, "train_lora", {"stage": "train_lora"})
    terminate = mlflow.MlflowClient.set_terminated
    failures = [ConnectionError("refused")]

    def flaky(client, *args, **kwargs):
        if failures:
            raise failures.pop()
        return terminate(client, *args, **kwargs)

    monkeypatch.setattr(mlflow.MlflowClient, "set_terminated", flaky)
    tracker.close(failed=True)
    assert mlflow.active_run() is None
    (run,) = _runs(uri, cfg.experiment)
    assert run.info.status == "FAILED" and run.data.tags["tracking_incomplete"] == "1 end"


# -------------------------------------------------------------------- a whole stage, store broken


@pytest.mark.parametrize("kind", ["unreachable", "corrupt"])
def test_split_stage_finishes_when_tracking_is_broken(monkeypatch, tmp_path, capfd, tiny_model_dir, kind):
    from stages import split

    uri = f"http://alice:{SECRET}@127.0.0.1:9" if kind == "unreachable" else _corrupt_store(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    # credentials belong in the environment only: params.yaml refuses them (it is copied into dvc.lock)
    params = write_params(tmp_path / "params.yaml", tiny_model_dir)
    clean = write_clean(tmp_path / "clean", make_frame(30))
    start = time.monotonic()
    rc = split.main(["--params", str(params), "--clean", str(clean), "--out", str(tmp_path / "split"),
                     "--metrics", str(tmp_path / "split.json")])
    assert time.monotonic() - start < 20
    assert rc == 0
    metrics = json.loads((tmp_path / "split.json").read_text())
    assert {"n_labels", "rows_train", "rows_val", "rows_test"} <= set(metrics) and metrics["n_labels"] == 3
    assert metrics["rows_train"] + metrics["rows_val"] + metrics["rows_test"] == 90
    assert {p.name for p in (tmp_path / "split").iterdir()} == {"train.parquet", "val.parquet", "test.parquet",
                                                                 "labels.json", "dataset.json"}
    err = capfd.readouterr().err
    assert len([line for line in err.splitlines() if "not logged" in line]) == 1
    assert SECRET not in err and SECRET not in (tmp_path / "split.json").read_text()


# ------------------------------------------------------------------ a brand-new store, two workers


def test_a_store_lock_that_is_never_released_costs_one_warning(monkeypatch, tmp_path, caplog):
    import fcntl

    db = tmp_path / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    monkeypatch.setattr(tracking_store, "STORE_LOCK_TIMEOUT", 0.3)
    with open(f"{db}-lock", "a") as held, caplog.at_level(logging.WARNING):
        fcntl.flock(held, fcntl.LOCK_EX)  # a worker stuck while creating the store
        _exercise(MlflowTracker(MlflowConfig(), "x", {}), tmp_path)
    (warning,) = _tracker_warnings(caplog)
    assert f"TimeoutError: {db}-lock held by another process" in warning and "1 start" in warning
    assert not db.exists()  # nothing touched the store while another process held it


def test_params_are_logged_as_readable_values_not_python_reprs(store):
    uri, cfg = store
    tracker = MlflowTracker(cfg, "train_lora", {"stage": "train_lora"})
    tracker.log_params({"lora": {"modules_to_save": ("pooler",), "targets": ["query", None], "extra": (),
                                 "base": None, "use_dora": False, "alpha": 16.0, "lr": 5e-05, "name": "bert"}})
    tracker.close()
    (run,) = _runs(uri, cfg.experiment)
    assert run.data.params == {"lora.modules_to_save": '["pooler"]', "lora.targets": '["query", null]',
                               "lora.extra": "[]", "lora.base": "null", "lora.use_dora": "false",
                               "lora.alpha": "16.0", "lora.lr": "5e-05", "lora.name": "bert"}
