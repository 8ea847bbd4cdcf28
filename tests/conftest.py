"""Shared fixtures. Telemetry off and all state under tmp folders, set before any import."""

import contextlib
import os
from pathlib import Path

os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
os.environ.setdefault("PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE", "100")

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
# The shared datasets: $SHARED_DATASETS, else ../shared/datasets beside the checkout, else the
# workspace's copy (a CI clone may live elsewhere). Tests that need them skip where absent.
SHARED = next(
    (
        Path(p)
        for p in (
            os.environ.get("SHARED_DATASETS", ""),
            ROOT.parent / "shared" / "datasets",
            "/work/shared/datasets",
        )
        if p and Path(p).is_dir()
    ),
    ROOT.parent / "shared" / "datasets",
)


def shared_dataset(name: str):
    """(X, y) of a dataset in ../shared/datasets; skips the test where it is absent."""
    path = SHARED / f"{name}.npz"
    if not path.exists():
        pytest.skip(f"{path} not available")
    d = np.load(path)
    return d["X"], d["y"]


def mixed_frame(n: int = 600, seed: int = 0) -> pd.DataFrame:
    """Numeric, categorical and missing values, with a structure a VAE can learn."""
    rng = np.random.default_rng(seed)
    t = rng.normal(size=n)
    return pd.DataFrame(
        {
            "temperature": 20 + 3 * t + rng.normal(0, 0.3, n),
            "pressure": 1000 + 10 * t + rng.normal(0, 1.0, n),
            "load": np.where(rng.random(n) < 0.1, np.nan, 50 + 5 * t + rng.normal(0, 0.5, n)),
            "site": rng.choice(["north", "south", "east"], n),
            "mode": np.where(t > 0, "high", "low"),
        }
    )


@pytest.fixture(scope="session")
def mixed_data() -> pd.DataFrame:
    return mixed_frame()


@pytest.fixture(scope="session")
def fitted_mixed(mixed_data):
    """One small detector fitted once per session on the mixed frame."""
    from vae_core import VAEDetector

    return VAEDetector(epochs=40, hidden_dims=(32, 16), latent_dim=2, random_state=0).fit(
        mixed_data
    )


# ---- MLflow: a real sqlite store per test, tiny models on the sample data ---------------------

CARDIO = ROOT / "data" / "cardio.csv"
# Small enough to train in about a second; the registry tests are about the plumbing.
TINY_PIPELINE = {
    "tracking": {"max_retries": 1},
    "data": {"train_path": str(CARDIO), "label_column": "label", "id_columns": ["record_id"]},
    "model": {"latent_dim": 2, "hidden_dims": [8], "n_score_samples": 8},
    "training": {"epochs": 3},
    "calibration": {"bootstrap": 20},
}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_pipeline_config(folder: Path, overrides: dict | None = None) -> Path:
    """``folder/mlflow.yml`` with the tiny settings (and overrides); relative paths in it,
    such as the artifact location, resolve inside ``folder``."""
    import yaml

    settings = {k: dict(v) for k, v in TINY_PIPELINE.items()}
    for section, values in (overrides or {}).items():
        settings.setdefault(section, {}).update(values)
    path = Path(folder) / "mlflow.yml"
    path.write_text(yaml.safe_dump(settings))
    return path


@pytest.fixture(scope="session")
def _mlflow_template_db(tmp_path_factory):
    """An empty, migrated MLflow store: creating one costs 2-7 s, copying it 0.1 s."""
    from mlflow import MlflowClient

    db = tmp_path_factory.mktemp("mlflow-template") / "template.db"
    MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture
def mlflow_uri(_mlflow_template_db, tmp_path, monkeypatch):
    """A fresh sqlite store in tmp_path, set as MLFLOW_TRACKING_URI for the test."""
    import shutil

    import mlflow

    db = tmp_path / "mlflow.db"
    shutil.copy(_mlflow_template_db, db)
    uri = f"sqlite:///{db}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    yield uri
    mlflow.set_tracking_uri(None)


@pytest.fixture
def pipeline_config(tmp_path, mlflow_uri):
    """The tiny PipelineConfig rooted in tmp_path (artifacts in tmp_path/mlartifacts)."""
    from vae_core.config import load_config

    return load_config(write_pipeline_config(tmp_path))


@pytest.fixture(scope="session")
def cardio_table():
    """data/cardio.csv as features, labels (176 anomalies of 1831) and record ids."""
    from vae_core.ingest import read_table, split_columns

    return split_columns(read_table(CARDIO), "label", ["record_id"], source=str(CARDIO))


@pytest.fixture(scope="session")
def trained_cardio(cardio_table, tmp_path_factory):
    """One tiny model trained, calibrated and evaluated on cardio per session (TrainOutcome)."""
    from vae_core.config import load_config
    from vae_core.pipeline import train_and_evaluate

    folder = tmp_path_factory.mktemp("trained-cardio")
    cfg = load_config(write_pipeline_config(folder))
    return train_and_evaluate(cardio_table, cfg, folder / "run")


def register(cfg, table, outcome, source="data/cardio.csv"):
    """Log a trained outcome as a training run and register it, as `vae-anomaly train` does;
    (TrackingTarget, ModelVersionRef)."""
    from vae_core import registry

    target = registry.TrackingTarget.from_config(cfg)
    run_id = registry.start_training_run(target, cfg, source)
    registry.log_training_run(target, run_id, cfg, table, outcome, source)
    return target, registry.register_challenger(target, run_id)


def promote(target, cfg, table, **kwargs):
    """Promote on the table's test split, as `vae-anomaly promote` does."""
    from vae_core import registry
    from vae_core.promotion import held_out_rows

    features, labels = held_out_rows(table, cfg.split)
    return registry.promote_challenger(target, cfg.promotion, features, labels, **kwargs)


@contextlib.contextmanager
def config_store():
    """Let each config's tracking.uri decide: mlflow.set_tracking_uri exports
    MLFLOW_TRACKING_URI, which outranks the config, so another module's store would leak in
    (and ours out); the variable is restored afterwards."""
    import mlflow

    saved = os.environ.pop("MLFLOW_TRACKING_URI", None)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(None)  # unsets the variable too
        if saved is not None:
            os.environ["MLFLOW_TRACKING_URI"] = saved


@pytest.fixture(scope="session")
def harness():
    """One temporary Prefect API server (sqlite, prefect_test_harness) for every in-process
    flow test of the session, started by the first test that asks for it: a server start
    costs seconds, and the flow tests do not depend on each other's runs (each names its
    batches and reads its own flow runs). Heartbeats off: the runs are short."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
            yield


def prefect_flow_run(api: str, name: str) -> dict:
    """The flow run called ``name`` as a Prefect API at ``api`` returns it ({} while there is
    none), through the REST filter endpoint (no client state)."""
    import json
    import urllib.request

    body = json.dumps({"flow_runs": {"name": {"any_": [name]}}}).encode()
    req = urllib.request.Request(
        api + "/flow_runs/filter",
        data=body,
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        runs = json.load(r)
    return runs[0] if runs else {}
