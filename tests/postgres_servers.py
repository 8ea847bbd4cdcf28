"""Real PostgreSQL-backed servers for the production e2e tests (test_production_postgres,
test_production_access): the test server's admin connection (or a skip), the profile's
environment and commands (docs/production.md), and starting, polling and stopping its
processes."""

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from tests.helpers import ROOT

POSTGRES = os.environ.get("VAE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432")
READY_TIMEOUT_S = 180  # a server on a fresh PostgreSQL database migrates first
BIN = Path(sys.executable).parent


def admin_connection():
    """An autocommit connection to the server's ``postgres`` database, or a skip."""
    psycopg2 = pytest.importorskip(
        "psycopg2", reason="psycopg2 missing: pip install -e '.[postgres]' (psycopg2-binary)"
    )
    pytest.importorskip("asyncpg", reason="asyncpg missing (the Prefect server's driver)")
    try:
        conn = psycopg2.connect(f"{POSTGRES}/postgres", connect_timeout=3)
    except psycopg2.OperationalError as exc:
        pytest.skip(f"no PostgreSQL answers at {POSTGRES} ({str(exc).strip()[:200]})")
    conn.autocommit = True
    return conn


def tail(path: Path) -> str:
    """The last 3,000 characters of a server's log."""
    return path.read_text(errors="replace")[-3000:] if path.exists() else "(no log)"


def start_server(args: list, env: dict, log: Path) -> subprocess.Popen:
    """A server process in a session of its own, its output in ``log``."""
    with log.open("wb") as sink:
        return subprocess.Popen(
            [str(a) for a in args],
            env=env,
            cwd=ROOT,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop_server(proc: subprocess.Popen) -> None:
    """SIGTERM the process group, SIGKILL what is left after 20 s."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=20)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # flow-run children left in the group
    proc.wait(timeout=10)


def wait_ready(servers: dict[str, tuple[subprocess.Popen, Path, str]]) -> None:
    """Poll each server's health URL until all answer 200; fail naming the one that did not."""
    waiting = dict(servers)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while waiting:
        for name, (proc, log, url) in list(waiting.items()):
            if proc.poll() is not None:
                pytest.fail(f"{name} exited with {proc.returncode}:\n{tail(log)}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(url, timeout=2).ok:
                    del waiting[name]
        if waiting and time.monotonic() > deadline:
            name, (_, log, url) = next(iter(waiting.items()))
            pytest.fail(f"{name}: {url} not ready after {READY_TIMEOUT_S} s:\n{tail(log)}")
        time.sleep(0.5)


def profile_env(base: dict, home: Path, api: str, mlflow_url: str, **extra) -> dict:
    """The environment every server, worker and client of the profile gets: ``base`` with
    telemetry off, its own ``PREFECT_HOME``, both servers' URLs, and this venv first on PATH."""
    return dict(
        base,
        DO_NOT_TRACK="true",
        MLFLOW_DISABLE_TELEMETRY="true",
        MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_LOGGING_LEVEL="WARNING",
        PREFECT_HOME=str(home),
        PREFECT_API_URL=api,
        MLFLOW_TRACKING_URI=mlflow_url,
        PREFECT_WORKER_QUERY_SECONDS="2",  # default 10: the runs are picked up sooner
        PATH=os.pathsep.join([str(BIN), os.environ.get("PATH", "")]),
        **extra,
    )


def mlflow_server_command(
    backend_store: str, artifacts: Path, url: str, workers: int, *options: str
) -> list:
    """``mlflow server`` as docs/production.md starts it: ``backend_store`` a
    ``postgresql+psycopg2://`` URI (SQLAlchemy 2.1 reads a bare ``postgresql://`` as psycopg
    3), artifacts proxied into ``artifacts``, on ``url``'s port; ``options`` go first."""
    return [
        sys.executable, "-m", "mlflow", "server", *options,
        "--backend-store-uri", backend_store,
        "--artifacts-destination", artifacts, "--serve-artifacts",
        "--host", "127.0.0.1", "--port", urlsplit(url).port, "--workers", workers,
    ]  # fmt: skip


def prefect_server_command(api: str) -> list:
    """``prefect server start`` on the port of ``api``."""
    return [BIN / "prefect", "server", "start", "--host", "127.0.0.1", "--port", urlsplit(api).port]


def deploy_command(pool: str, config: Path) -> list:
    """The process work pool, then flows/deploy.py's deployments (paused), in one shell."""
    script = 'prefect work-pool create "$1" --type process && "$0" -m flows.deploy --pool "$1"'
    return ["sh", "-c", script + ' --config "$2" --paused', sys.executable, pool, config]


class Processes:
    """The processes a test starts, each in a session of its own, its output in
    ``<folder>/<name>.log``; ``stop`` ends them all, the last started first."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.procs: list[subprocess.Popen] = []
        self.logs: list[Path] = []

    def start(self, name: str, args: list, env: dict) -> subprocess.Popen:
        self.logs.append(self.folder / f"{name}.log")
        self.procs.append(start_server(args, env, self.logs[-1]))
        return self.procs[-1]

    def start_servers(self, mlflow: tuple[list, dict], prefect: tuple[list, dict], urls) -> None:
        """Both servers (command, environment), until their health URLs ``urls`` (MLflow's,
        then the Prefect API's) answer."""
        mlflow_url, api = urls
        mlflow_server = self.start("mlflow-server", *mlflow)
        prefect_server = self.start("prefect-server", *prefect)
        wait_ready(
            {
                "mlflow server": (mlflow_server, self.logs[-2], f"{mlflow_url}/health"),
                "prefect server": (prefect_server, self.logs[-1], f"{api}/health"),
            }
        )

    def stop(self) -> None:
        for proc in reversed(self.procs):
            stop_server(proc)
