"""Shared fixtures. Telemetry off and all state under tmp folders, set before any import."""

import os

os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
os.environ.setdefault("PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE", "100")

import signal

# A Prefect worker stops on SIGTERM by sending itself SIGINT. Run as a background job of a
# script (CI, `make test &`), pytest starts with SIGINT ignored, every process it starts
# inherits that, and a worker then ignores SIGTERM until the tests' SIGKILL 20 s later. A
# handler here is reset to the default in each child at exec (an ignored signal is not).
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

import pandas as pd
import pytest

from tests.helpers import (  # noqa: F401 - the fixtures' helpers
    CARDIO,
    ROOT,
    TINY_PIPELINE,
    mixed_frame,
    write_pipeline_config,
)


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(config, items):
    """Mark ``server`` every test that starts a server: the e2e tests (real servers, workers,
    clusters) and those that run flows in process (the ``harness`` fixture, a temporary
    Prefect API server). ``make test-fast`` runs ``-m "not server and not slow"``."""
    for item in items:
        if item.get_closest_marker("e2e") or "harness" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.server)


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
    from vae_core.foundations.config import load_config

    return load_config(write_pipeline_config(tmp_path))


@pytest.fixture(scope="session")
def cardio_table():
    """data/cardio.csv as features, labels (176 anomalies of 1831) and record ids."""
    from vae_core.data.ingest import read_table, split_columns
    from vae_core.kinds.table import LabelledTable

    return LabelledTable(
        *split_columns(read_table(CARDIO), "label", ["record_id"], source=str(CARDIO))
    )


@pytest.fixture(scope="session")
def trained_cardio(cardio_table, tmp_path_factory):
    """One tiny model trained, calibrated and evaluated on cardio per session (TrainOutcome)."""
    from vae_core.foundations.config import load_config
    from vae_core.steps.training import train_and_evaluate

    folder = tmp_path_factory.mktemp("trained-cardio")
    cfg = load_config(write_pipeline_config(folder))
    return train_and_evaluate(cardio_table, cfg, folder / "run")


@pytest.fixture
def own_store():
    """Each config's tracking.uri decides which store a test talks to (``config_store``):
    ``pytestmark = pytest.mark.usefixtures("own_store")`` in a module whose configs hold it."""
    from tests.helpers import config_store

    with config_store():
        yield


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
