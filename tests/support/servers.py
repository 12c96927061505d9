"""Local servers the tests start: a free port of 127.0.0.1, a port that accepts connections but never answers, and
one launcher for ``mlflow server``, ``mlflow models serve`` or any other HTTP server process (its own session,
killed as a group; its output in a log file; waited for until its health URL answers)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

BIN = Path(sys.executable).parent
START_TIMEOUT_S = 240


def free_port() -> int:
    """A port of 127.0.0.1 that nobody listens on now: a server may take it, and connecting to it is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def silent_server() -> Iterator[int]:
    """A port of 127.0.0.1 that accepts TCP connections (the kernel's backlog) but never sends a byte: a client
    waits there until its own timeout."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock.getsockname()[1]


def server_env(extra: Optional[dict[str, str]] = None) -> dict[str, str]:
    """The caller's environment without its MLflow and DVC variables (no test store, no tracking URI), the venv's
    bin first on PATH (mlflow execs its tools by name), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PATH"] = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**env, **(extra or {})}


@dataclass
class Server:
    """A server process in its own session (so signals reach its workers too), and where it logs."""

    proc: subprocess.Popen
    url: str
    log: Path
    artifacts: Optional[Path] = None  # an ``mlflow server``'s artifact root

    def send(self, sig: int) -> None:
        """Signal the whole process group (SIGSTOP / SIGCONT pause and resume it)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """``sig`` to the group, then SIGKILL if it has not exited within 30 s."""
        self.send(sig)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.send(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


def start_server(argv: list[str], url: str, health: str, log: Path, *, what: str,
                 env: Optional[dict[str, str]] = None, cwd: Optional[Path] = None,
                 artifacts: Optional[Path] = None) -> Server:
    """Start ``argv`` in its own session, its output appended to ``log`` (a pipe nobody reads would fill up and
    stall the server), and wait until ``url + health`` answers, at most START_TIMEOUT_S seconds. ``env``: the
    process's environment, server_env() by default.

    Raises:
        AssertionError: the process exited or did not answer in time (it is killed), with its log's tail.
    """
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, cwd=cwd, env=server_env() if env is None else env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(proc, url, log, artifacts)
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            urllib.request.urlopen(url + health, timeout=2).close()
            return server
        except OSError:
            exited = proc.poll()
            if exited is not None or time.monotonic() > deadline:
                server.stop(signal.SIGKILL)
                why = f"exited with {exited}" if exited is not None else \
                    f"did not answer {url + health} within {START_TIMEOUT_S} s"
                raise AssertionError(f"{what} {why}; the end of {log}:\n{server.log_tail()}")
            time.sleep(1)


def start_mlflow_server(base: Path, backend: Optional[str] = None) -> Server:
    """``mlflow server`` as README's team set-up runs it (proxied artifacts in ``base/mlflow-artifacts``), on a free
    port of 127.0.0.1, logging to ``base/mlflow-server.log``; returns once ``/health`` answers.

    Args:
        backend: its backend store URI; a SQLite file in ``base`` by default.
    """
    port = free_port()
    backend = backend or f"sqlite:///{base / 'mlflow-server.db'}"
    artifacts = base / "mlflow-artifacts"
    argv = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend,
            "--serve-artifacts", "--artifacts-destination", str(artifacts),
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    return start_server(argv, f"http://127.0.0.1:{port}", "/health", base / "mlflow-server.log", cwd=base,
                        what="mlflow server", artifacts=artifacts)


def start_model_server(model_uri: str, tracking_uri: str, log: Path) -> Server:
    """``mlflow models serve -m <model_uri> --env-manager local`` on a free port of 127.0.0.1, the model downloaded
    from ``tracking_uri``; returns once ``/ping`` answers."""
    port = free_port()
    argv = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local",
            "-h", "127.0.0.1", "-p", str(port)]
    return start_server(argv, f"http://127.0.0.1:{port}", "/ping", log,
                        env=server_env({"MLFLOW_TRACKING_URI": tracking_uri}), what="mlflow models serve")
