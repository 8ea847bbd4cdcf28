"""Shared fixtures. Telemetry off and all state under tmp folders, set before any import."""

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
SHARED = ROOT.parent / "shared" / "datasets"


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
