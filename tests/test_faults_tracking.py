"""Faults in the tracking layer, with real processes: a real ``mlflow server`` killed
(SIGKILL of its process group) in the middle of a registration and restarted on the same
store, and two real ``vae-anomaly score`` processes writing one sqlite store at once.

Nothing of MLflow is mocked: the only hook wraps one function of the registration
(``vae_core.tracking.registration``) so that
the server dies at an exact point of the registration sequence (log run -> create version ->
description -> alias -> ``registration_state: complete``).
"""

import contextlib
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import requests
from mlflow import MlflowClient
from typer.testing import CliRunner

from tests.helpers import CARDIO, free_port, promote, register, write_pipeline_config
from vae_core.cli import app
from vae_core.foundations.config import load_config
from vae_core.steps.run_notes import RunRecord, training_fingerprint
from vae_core.tracking import registration, registry

READY_TIMEOUT_S = 120  # a server start measured 6-32 s on a loaded 2-core box
MODEL = "vae-anomaly"


def quiet_env(**extra: str) -> dict:
    """The test's environment for a child process, telemetry and MLflow's job runner off."""
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", **extra)
    env |= {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


class TrackingServer:
    """``mlflow server`` on one sqlite file, artifact folder and port, in its own process
    group, that a test can kill (SIGKILL, no shutdown) and start again on the same store."""

    def __init__(self, db: Path, artifacts: Path, log: Path):
        self.db, self.artifacts, self.log = db, artifacts, log
        self.url = f"http://127.0.0.1:{free_port()}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        port = self.url.rsplit(":", 1)[1]
        args = [
            sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", f"sqlite:///{self.db}",
            "--artifacts-destination", str(self.artifacts),
            "--host", "127.0.0.1", "--port", port, "--workers", "1",
        ]  # fmt: skip
        with self.log.open("ab") as sink:
            self.proc = subprocess.Popen(
                args,
                env=quiet_env(),
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"mlflow server exited with {self.proc.returncode}:\n{self.tail()}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{self.url}/health", timeout=2).ok:
                    return
            if time.monotonic() > deadline:
                pytest.fail(f"{self.url} not ready after {READY_TIMEOUT_S} s:\n{self.tail()}")
            time.sleep(0.3)

    def kill(self) -> None:
        """SIGKILL the whole process group (server and workers) and reap it."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.proc = None

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=15)
        self.kill()

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else "(no log)"


@pytest.fixture(scope="module")
def _module_server(_mlflow_template_db, tmp_path_factory):
    """One store and port for the module: each test kills and restarts it (a start costs
    about 7 s of CPU), and registers under its own model name."""
    folder = tmp_path_factory.mktemp("killable-server")
    db = folder / "server.db"
    shutil.copy(_mlflow_template_db, db)  # a migrated store starts in seconds, not tens
    server = TrackingServer(db, folder / "artifacts", folder / "server.log")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def killable_server(_module_server):
    """The module's server, running (started again if an earlier test left it dead)."""
    if _module_server.proc is None:
        _module_server.start()
    return _module_server


def kill_after_version_is_created(monkeypatch, server: TrackingServer) -> list:
    """Once: SIGKILL the server when the registration has created the version and is about
    to write its review (``review_description`` runs between the two). Returns a list that
    records the kill."""
    killed: list[bool] = []
    real = registration.review_description

    def review_then_die(*args, **kwargs):
        if not killed:
            server.kill()
            killed.append(True)
        return real(*args, **kwargs)

    monkeypatch.setattr(registration, "review_description", review_then_die)
    return killed


def assert_one_finished_version(client: MlflowClient, name: str, run_id: str):
    """Model ``name`` has exactly one version: that of ``run_id``, with its review, the
    challenger alias and a finished registration. Returns it."""
    versions = client.search_model_versions(f"name = '{name}'")
    assert len(versions) == 1, [(v.version, v.run_id) for v in versions]
    mv = client.get_model_version(name, versions[0].version)
    assert mv.run_id == run_id
    assert mv.tags["registration_state"] == "complete"  # set by the last step: finished
    assert len(mv.tags) <= registry.MAX_VERSION_TAGS, mv.tags  # the versions table stays readable
    assert (mv.description or "").startswith(f"## Review of {name} version {mv.version}")
    assert "**Promotion log**" in mv.description
    aliases = client.get_registered_model(name).aliases  # versions are str over REST
    assert {k: str(v) for k, v in aliases.items()} == {"challenger": mv.version}
    return mv


def unfinished_versions(client: MlflowClient, name: str) -> list:
    return [
        v
        for v in client.search_model_versions(f"name = '{name}'")
        if v.tags.get("registration_state") == "incomplete"
    ]


# --------------------------------------------------------------------------- (a) server killed


@pytest.mark.e2e
def test_server_killed_after_the_version_is_created_a_retry_finishes_that_version(
    killable_server, tmp_path, monkeypatch, cardio_table, trained_cardio
):
    """The train flow's ``register`` task: its retry calls ``register_challenger`` again
    with the same training run. It must finish the version the first attempt created."""
    server, name = killable_server, "flow-retry"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    config = write_pipeline_config(tmp_path, {"tracking": {"registered_model": name}})
    cfg = load_config(config)  # tracking.max_retries: 1
    target = registry.TrackingTarget.from_config(cfg)
    run_id = registry.start_training_run(target, cfg, str(CARDIO))
    registry.log_training_run(target, run_id, cfg, cardio_table, trained_cardio, str(CARDIO))

    killed = kill_after_version_is_created(monkeypatch, server)
    started = time.monotonic()
    with pytest.raises(registry.TrackingUnavailable) as failure:
        registry.register_challenger(target, run_id)
    assert killed and time.monotonic() - started < 60
    message = str(failure.value)
    assert server.url in message and run_id in message

    server.start()  # same port, sqlite file and artifact folder
    client = MlflowClient(server.url)
    assert [v.version for v in unfinished_versions(client, name)] == ["1"]  # the leftover
    with pytest.raises(ValueError, match="not fully registered"):  # nor promoted meanwhile
        promote(target, cfg, cardio_table, version=1)

    ref = registry.register_challenger(target, run_id)  # the retry
    mv = assert_one_finished_version(client, name, run_id)
    assert (ref.version, ref.alias) == (mv.version, "challenger") == ("1", "challenger")
    assert registry.register_challenger(target, run_id).version == "1"  # and again: no copy
    assert len(client.search_model_versions(f"name = '{name}'")) == 1


@pytest.mark.e2e
def test_server_killed_during_cli_train_rerunning_train_leaves_one_version(
    killable_server, tmp_path, monkeypatch
):
    """``vae-anomaly train`` rerun as the user would after the server died mid-registration:
    a new run of the same training; the unfinished version of the first is replaced."""
    server, name = killable_server, "cli-rerun"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    config = write_pipeline_config(tmp_path, {"tracking": {"registered_model": name}})
    args = ["train", "--data", str(CARDIO), "--label-column", "label"]
    args += ["--id-column", "record_id", "--out", str(tmp_path / "run"), "--config", str(config)]

    killed = kill_after_version_is_created(monkeypatch, server)
    first = CliRunner().invoke(app, args)
    assert killed and first.exit_code == 2, first.output
    assert server.url in first.output and "Traceback" not in first.output
    first_run = re.search(r"training run ([0-9a-f]{32}) did not finish", first.output)
    assert first_run, first.output

    server.start()
    client = MlflowClient(server.url)
    assert [v.version for v in unfinished_versions(client, name)] == ["1"]

    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    second_run = re.search(
        rf"registered {name} version 2 as @challenger .*\(run (\w+)\)", again.output, re.S
    )
    assert second_run, again.output
    assert second_run.group(1) != first_run.group(1)
    assert_one_finished_version(client, name, second_run.group(1))  # version 1 was replaced
    fingerprints = {
        training_fingerprint(RunRecord(r.info.run_id, r.data.params, r.data.tags, {}))
        for r in (client.get_run(m.group(1)) for m in (first_run, second_run))
    }
    assert len(fingerprints) == 1  # two runs of one training: one version, not two


# --------------------------------------------------------------------------- (b) two scorers


def test_two_scorers_at_once_on_one_sqlite_store_both_log_their_runs(
    pipeline_config, cardio_table, trained_cardio, tmp_path, mlflow_uri
):
    """Two ``vae-anomaly score`` processes against one sqlite store. A third connection holds
    the store's write lock until both have written their scores, so both reach the logging
    step while the store is locked and then write at the same time."""
    _, ref = register(pipeline_config, cardio_table, trained_cardio)
    MlflowClient(mlflow_uri).set_registered_model_alias(MODEL, "champion", ref.version)
    cli = shutil.which("vae-anomaly", path=str(Path(sys.executable).parent))
    command = [cli] if cli else [sys.executable, "-m", "vae_core.cli"]
    outs = [tmp_path / f"scores-{k}.parquet" for k in ("a", "b")]
    env = quiet_env(MLFLOW_TRACKING_URI=mlflow_uri)

    lock = sqlite3.connect(mlflow_uri.removeprefix("sqlite:///"), isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")  # the write lock: readers go on, writers wait
    procs = []
    try:
        for out in outs:
            args = [*command, "score", "--model", f"models:/{MODEL}@champion"]
            args += ["--data", str(CARDIO), "--id-column", "record_id", "--out", str(out)]
            args += ["--config", str(tmp_path / "mlflow.yml")]
            procs.append(
                subprocess.Popen(
                    args, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE
                )
            )
        deadline = time.monotonic() + 120
        while not all(out.exists() for out in outs):
            for proc in procs:
                if proc.poll() is not None:
                    pytest.fail(f"a scorer ended early ({proc.returncode}): {proc.stderr.read()}")
            assert time.monotonic() < deadline, "the scorers did not write their scores"
            time.sleep(0.1)
        logged = lock.execute("SELECT count(*) FROM tags WHERE key = 'vae.step'").fetchone()
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    done = [proc.communicate(timeout=120) for proc in procs]
    for proc, (_, stderr) in zip(procs, done, strict=True):
        assert proc.returncode == 0, stderr.decode(errors="replace")[-3000:]
    assert logged == (1,)  # only the training run: no scoring run got in while locked

    run_ids = [re.search(rb"logged as run (\w+)", out).group(1).decode() for out, _ in done]
    client = MlflowClient(mlflow_uri)
    runs = client.search_runs(
        [client.get_experiment_by_name(MODEL).experiment_id], "tags.`vae.step` = 'scoring'"
    )
    assert sorted(r.info.run_id for r in runs) == sorted(run_ids) and len(set(run_ids)) == 2
    for run in runs:
        assert run.info.status == "FINISHED"
        assert run.data.metrics["rows"] == 1831 and run.data.tags["model.version"] == "1"
        assert [f.path for f in client.list_artifacts(run.info.run_id, "scores")]
    frames = [pd.read_parquet(out) for out in outs]
    assert all(len(f) == 1831 for f in frames)
    pd.testing.assert_frame_equal(frames[0], frames[1])
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
