"""Real PostgreSQL-backed servers for the production e2e tests (test_production_postgres,
test_production_access): the test server's admin connection (or a skip), and starting,
polling and stopping server processes."""

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import requests

from tests.helpers import ROOT

POSTGRES = os.environ.get("VAE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432")
READY_TIMEOUT_S = 180  # a server on a fresh PostgreSQL database migrates first


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
