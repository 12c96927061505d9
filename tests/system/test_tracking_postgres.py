"""README's team server with a PostgreSQL backend store: a private PostgreSQL cluster (Debian's server programs,
which `.ci/run` installs; skipped where they or psycopg are missing), an ``mlflow server`` on it, and two stage
processes logging to it at once, as two queued workers do."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

import pytest

from tests.support.builders import ROOT
from tests.support.servers import free_port, start_mlflow_server


def _postgres_bin() -> Optional[Path]:
    """The directory of PostgreSQL's server programs: on PATH, or Debian's /usr/lib/postgresql/<version>/bin."""
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parts[-3]))
    return versions[-1].parent if versions else None


@pytest.fixture(scope="module")
def postgres() -> str:
    """A private PostgreSQL cluster on a free port of 127.0.0.1 (Debian's server programs; `.ci/run` installs
    them), its superuser ``mlflow`` trusted on loopback: the backend store URI. Skips where it cannot run."""
    pytest.importorskip("psycopg", reason="psycopg (MLflow's PostgreSQL driver, in the dev lock) is not installed")
    bindir = _postgres_bin()
    if bindir is None:
        pytest.skip("PostgreSQL's server is not installed (Debian: apt-get install postgresql)")
    base = Path(tempfile.mkdtemp(prefix="lora-pipeline-postgres-"))  # pytest's tmp dirs are closed to other users
    as_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root; Debian's package brings the `postgres` user
        import pwd

        user = pwd.getpwnam("postgres")
        os.chown(base, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = base / "data", free_port()
    ctl = [*as_user, str(bindir / "pg_ctl"), "-D", str(data)]
    try:
        options = f"-h 127.0.0.1 -p {port} -k {base}"  # loopback only, its socket in its own directory
        for argv in ([*as_user, str(bindir / "initdb"), "-D", str(data), "-U", "mlflow", "--auth=trust", "--no-sync",
                      "-E", "UTF8"],
                     [*ctl, "-l", str(base / "postgres.log"), "-w", "-t", "60", "-o", options, "start"]):
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
            log = base / "postgres.log"
            assert proc.returncode == 0, (argv, proc.stdout, proc.stderr, log.exists() and log.read_text()[-3000:])
        yield f"postgresql://mlflow@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*ctl, "-m", "immediate", "stop"], capture_output=True, timeout=120)
        shutil.rmtree(base, ignore_errors=True)


_WRITER = """
import sys
from pathlib import Path
from lora_pipeline.config import MlflowConfig
from lora_pipeline.tracking import MlflowTracker
rank = sys.argv[1]
tracker = MlflowTracker(MlflowConfig(experiment="postgres-check"), "train_lora",
                        {"stage": "train_lora", "variant": "lora", "lora_rank": rank})
tracker.log_params({"lora.rank": rank})
for step in range(60):
    tracker.log_metrics({"train_loss": 1.0 / (step + 1)}, step=step)
Path(f"lora-r{rank}.json").write_text('{"rank": %s}' % rank)
tracker.log_artifact(f"lora-r{rank}.json")
tracker.close()
print("not logged:", tracker._error)
"""


def test_a_postgresql_backed_server_takes_parallel_writers(postgres, tmp_path):
    """README's team server with a PostgreSQL backend store: two stage processes log to it at once (as two
    queued workers do) and each run is found by its tags, whole, with its artifact; the rows are PostgreSQL's."""
    import psycopg
    from mlflow import MlflowClient

    server = start_mlflow_server(tmp_path, backend=postgres)
    try:
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")},
               "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": server.url}
        writers = [subprocess.Popen([sys.executable, "-c", _WRITER, str(rank)], cwd=tmp_path, env=env, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for rank in (4, 16)]
        for writer in writers:
            out, _ = writer.communicate(timeout=300)
            assert writer.returncode == 0 and "not logged: None" in out, out[-3000:]
        client = MlflowClient(tracking_uri=server.url)
        experiment = client.get_experiment_by_name("postgres-check").experiment_id
        for rank in (4, 16):
            (logged,) = client.search_runs([experiment], f"tags.stage = 'train_lora' and tags.lora_rank = '{rank}'")
            assert logged.info.status == "FINISHED" and logged.data.params == {"lora.rank": str(rank)}
            history = client.get_metric_history(logged.info.run_id, "train_loss")
            assert sorted(m.step for m in history) == list(range(60))
            assert [a.path for a in client.list_artifacts(logged.info.run_id)] == [f"lora-r{rank}.json"]
        with psycopg.connect(postgres) as db, db.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM runs JOIN experiments e USING (experiment_id) WHERE e.name = %s",
                           ("postgres-check",))
            assert cursor.fetchone() == (2,)
    finally:
        server.stop()
