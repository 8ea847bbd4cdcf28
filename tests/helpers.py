"""Helpers the tests share (imported as ``tests.helpers``; fixtures live in conftest.py):
paths, the shared datasets, small frames, configs, and the registry and Prefect steps that
several test modules take."""

import contextlib
import os
from pathlib import Path

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


CARDIO = ROOT / "data" / "cardio.csv"


# Small enough to train in about a second; the registry tests are about the plumbing.
TINY_PIPELINE = {
    "tracking": {"max_retries": 1},
    "data": {"train_path": str(CARDIO), "label_column": "label", "id_columns": ["record_id"]},
    "model": {"latent_dim": 2, "hidden_dims": [8], "n_score_samples": 8},
    "training": {"epochs": 3},
    "calibration": {"bootstrap": 20},
    # A tiny model trails IsolationForest on cardio (0.86 against 0.92 ROC-AUC): the baseline
    # gate has its own tests (test_loop.py); these are about the plumbing.
    "promotion": {"max_behind_baseline": 1.0},
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


def register(cfg, table, outcome, source="data/cardio.csv"):
    """Log a trained outcome as a training run and register it, as `vae-anomaly train` does;
    (TrackingTarget, ModelVersionRef)."""
    from vae_core.tracking import registry

    target = registry.TrackingTarget.from_config(cfg)
    run_id = registry.start_training_run(target, cfg, source)
    registry.log_training_run(target, run_id, cfg, table, outcome, source)
    return target, registry.register_challenger(target, run_id)


def promote(target, cfg, table, **kwargs):
    """Promote on the table's test split, as `vae-anomaly promote` does."""
    from vae_core.steps.promotion import measure_split
    from vae_core.tracking import registry

    measure = measure_split(table, cfg.split)
    return registry.promote_challenger(target, cfg.promotion, measure, **kwargs)


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


def own_table(folder: Path, n: int = 1500) -> pd.DataFrame:
    """A user's table unlike the demo's, written to ``folder/my.parquet``: other columns, its
    own id and label names (``txn_id``, ``is_fraud``), neither ``record_id`` nor ``label``."""
    table = mixed_frame(n, seed=7)  # enough calibration rows for the default policy
    table.insert(0, "txn_id", [f"t{i:04d}" for i in range(len(table))])
    table["is_fraud"] = (np.random.default_rng(7).random(len(table)) < 0.1).astype(int)
    table.to_parquet(folder / "my.parquet", index=False)
    return table
