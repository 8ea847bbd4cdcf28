"""End to end through real servers on 127.0.0.1: ``mlflow server`` as tracking store and
registry, and ``mlflow models serve`` answering HTTP with the champion.

Each server runs in its own process group (``start_new_session``) and is stopped, the whole
group, when the test ends, also when it fails.
"""

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from io import StringIO
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests

from tests.helpers import (
    CARDIO,
    default_top_features,
    free_port,
    promote,
    register,
    write_pipeline_config,
)
from vae_core.foundations.config import load_config
from vae_core.kinds.table_scores import score_table
from vae_core.steps.pipeline import held_out
from vae_core.steps.promotion import measure_on
from vae_core.steps.training import train_and_evaluate
from vae_core.tracking import registry

pytestmark = pytest.mark.e2e

READY_TIMEOUT_S = 120  # a server start measured 6-32 s on a loaded 2-core box


def server_env(**extra: str) -> dict:
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", **extra)
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    # `mlflow models serve` execs `uvicorn` by name: the venv's bin must be on PATH.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def _log_tail(path: Path) -> str:
    return path.read_text(errors="replace")[-3000:] if path.exists() else "(no log)"


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the process group, SIGKILL what is left after 15 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=5)


@contextlib.contextmanager
def background_server(args: list[str], env: dict, log: Path, ready_url: str):
    """Start ``args`` in a new process group; yield once ``ready_url`` answers 200."""
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            args, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"{args[2:5]} exited with {proc.returncode}:\n{_log_tail(log)}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(ready_url, timeout=2).ok:
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"{ready_url} not ready after {READY_TIMEOUT_S} s:\n{_log_tail(log)}")
            time.sleep(0.3)
        yield proc
    finally:
        _stop(proc)


@pytest.fixture
def tracking_server(_mlflow_template_db, tmp_path):
    """``mlflow server`` with its own sqlite file and artifact folder; (url, artifact dir)."""
    db, artifacts, port = tmp_path / "server.db", tmp_path / "server-artifacts", free_port()
    shutil.copy(_mlflow_template_db, db)  # a migrated store starts in seconds, not tens
    args = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", f"sqlite:///{db}",
        "--artifacts-destination", str(artifacts),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    with background_server(args, server_env(), tmp_path / "server.log", f"{url}/health"):
        yield url, artifacts


def test_train_register_promote_and_load_through_a_tracking_server(
    tracking_server, tmp_path, monkeypatch, cardio_table
):
    url, artifacts = tracking_server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    cfg = load_config(write_pipeline_config(tmp_path))
    target = registry.TrackingTarget.from_config(cfg)
    assert target.uri == url and target.artifact_location is None

    run_id = registry.start_training_run(target, cfg, "data/cardio.csv")
    log_epoch = registry.epoch_logger(target, run_id)
    outcome = train_and_evaluate(cardio_table, cfg, tmp_path / "run", callbacks=[log_epoch])
    registry.log_training_run(target, run_id, cfg, cardio_table, outcome, "data/cardio.csv")
    ref = registry.register_challenger(target, run_id)
    decision = registry.promote_challenger(
        target, cfg.promotion, measure_on(*held_out(cardio_table, cfg.split))
    )
    assert (ref.version, decision.outcome) == ("1", "promoted")

    champion = registry.load_champion(target)
    rows = cardio_table.features.head(20)
    np.testing.assert_array_equal(
        champion.detector.anomaly_score(rows), outcome.detector.anomaly_score(rows)
    )
    assert list(artifacts.rglob("weights.pt")) and list(artifacts.rglob("report.md"))
    assert not (tmp_path / "mlartifacts").exists()  # the server holds the artifacts

    code = (
        "import mlflow, pandas as pd\n"
        "model = mlflow.pyfunc.load_model('models:/vae-anomaly@champion')\n"
        f"rows = pd.read_csv({str(CARDIO)!r}).head(5)\n"
        "print(model.predict(rows, params={'output': 'latent'}).to_json(orient='split'))\n"
        "print(model.predict(rows).to_json(orient='split'))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=server_env(MLFLOW_TRACKING_URI=url),
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    latent = pd.read_json(StringIO(lines[-2]), orient="split")
    assert list(latent.columns) == ["z0", "z1"]  # the tiny config's latent_dim
    np.testing.assert_allclose(  # to_json keeps 10 significant digits
        latent.to_numpy(), outcome.detector.transform(cardio_table.features.head(5)), rtol=1e-7,
        atol=1e-10,
    )  # fmt: skip
    loaded = pd.read_json(StringIO(lines[-1]), orient="split")
    expected = score_table(
        outcome.detector, cardio_table.features.head(5), top_features=default_top_features()
    )
    assert list(loaded.columns) == list(expected.columns)
    np.testing.assert_allclose(loaded["anomaly_score"], expected["anomaly_score"], rtol=1e-9)
    assert loaded["top_feature_1"].tolist() == expected["top_feature_1"].tolist()


def test_models_serve_answers_with_the_champion(
    pipeline_config, cardio_table, trained_cardio, tmp_path
):
    target, _ = register(pipeline_config, cardio_table, trained_cardio)
    promote(target, pipeline_config, cardio_table)
    port = free_port()
    args = [
        sys.executable, "-m", "mlflow", "models", "serve",
        "-m", "models:/vae-anomaly@champion", "--env-manager", "local",
        "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    env = server_env(MLFLOW_TRACKING_URI=target.uri)
    base = f"http://127.0.0.1:{port}"
    rows = cardio_table.features.iloc[[0, 1, 2, 1500]]
    payload = {"dataframe_split": {"columns": list(rows.columns), "data": rows.to_numpy().tolist()}}
    asked = payload | {"params": {"output": "latent"}}
    wrong = payload | {"params": {"output": "pixels"}}
    with background_server(args, env, tmp_path / "serve.log", f"{base}/ping"):
        response = requests.post(f"{base}/invocations", json=payload, timeout=120)
        latent = requests.post(f"{base}/invocations", json=asked, timeout=120)
        refused = requests.post(f"{base}/invocations", json=wrong, timeout=120)
    assert latent.status_code == 200, latent.text
    coords = pd.DataFrame(latent.json()["predictions"])
    np.testing.assert_allclose(  # the server's JSON keeps about 10 significant digits
        coords[["z0", "z1"]].to_numpy(), trained_cardio.detector.transform(rows), rtol=1e-7,
        atol=1e-10,
    )  # fmt: skip
    assert refused.status_code >= 400 and "params output must be one of" in refused.text
    assert response.status_code == 200, response.text
    served = pd.DataFrame(response.json()["predictions"])
    expected = score_table(
        trained_cardio.detector, rows, top_features=default_top_features()
    ).reset_index(drop=True)
    assert list(served.columns) == list(expected.columns)
    np.testing.assert_allclose(served["anomaly_score"], expected["anomaly_score"], rtol=1e-9)
    assert served["is_anomaly"].tolist() == expected["is_anomaly"].tolist()
    np.testing.assert_allclose(served["anomaly_probability"], expected["anomaly_probability"])
