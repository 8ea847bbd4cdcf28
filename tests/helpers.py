"""Helpers the tests share (imported as ``tests.helpers``; fixtures live in conftest.py):
paths, the shared datasets, small frames, configs, and the registry and Prefect steps that
several test modules take."""

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
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


def default_top_features() -> int:
    """``scoring.top_features`` at its default: what a model trained with the tiny configs
    is packaged with, so a test's own ``score_table`` matches its ``predict``."""
    from vae_core.foundations.config import ScoringConfig

    return ScoringConfig().top_features


def scoring_config(id_columns=(), **scoring):
    """A ``PipelineConfig`` for batch scoring a table: ``data.id_columns`` and the given
    ``scoring`` settings (chunk_rows, top_features, max_workers ...), the rest the defaults."""
    from vae_core.foundations.config import PipelineConfig

    return PipelineConfig.model_validate(
        {"data": {"id_columns": list(id_columns)}, "scoring": scoring}
    )


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


def prefect_flow_run_by_id(api: str, run_id: str) -> dict:
    """The flow run ``run_id`` as a Prefect API at ``api`` returns it ({} while there is
    none): flows may rename their runs, an id stays."""
    import json
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{api}/flow_runs/{run_id}") as r:
            return json.load(r)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return {}
        raise


def own_table(folder: Path, n: int = 1500) -> pd.DataFrame:
    """A user's table unlike the demo's, written to ``folder/my.parquet``: other columns, its
    own id and label names (``txn_id``, ``is_fraud``), neither ``record_id`` nor ``label``."""
    table = mixed_frame(n, seed=7)  # enough calibration rows for the default policy
    table.insert(0, "txn_id", [f"t{i:04d}" for i in range(len(table))])
    table["is_fraud"] = (np.random.default_rng(7).random(len(table)) < 0.1).astype(int)
    table.to_parquet(folder / "my.parquet", index=False)
    return table


# ---- real servers ----------------------------------------------------------------------------
PREFECT = [sys.executable, "-m", "prefect"]


def wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    """Until the server started as ``proc`` answers ``url``/health; its log on failure."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prefect server exited:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"prefect server not healthy after {timeout} s:\n{log.read_text()[-3000:]}")


def stop_process(proc: subprocess.Popen | None) -> None:
    """SIGTERM the process group of ``proc`` (SIGKILL after 20 s), if it still runs."""
    if proc is None or proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def lean_prefect_server(*used: str) -> dict:
    """Environment of a ``prefect server start`` with the background services a test does not
    use turned off (schedules, late runs, the UI...), so they leave the cores to the worker and
    the flow runs under test; ``used`` names services to keep (``"TRIGGERS"``)."""
    unused = ("SCHEDULER", "LATE_RUNS", "FOREMAN", "TRIGGERS", "EVENT_PERSISTER",
              "PAUSE_EXPIRATIONS", "CANCELLATION_CLEANUP", "DB_VACUUM")  # fmt: skip
    return {"PREFECT_UI_ENABLED": "false"} | {
        f"PREFECT_SERVER_SERVICES_{name}_ENABLED": "false" for name in unused if name not in used
    }


# The first lines of a child script that sets up a process pool while the server starts, in
# one interpreter that does its imports meanwhile (each `prefect` command would pay the import
# of Prefect again: 20 s on a loaded 2-core machine). It waits for $PREFECT_API_URL/health and
# creates the process pool named by its first argument; the script's own lines follow.
PROCESS_POOL_SCRIPT = """
import os, sys, time, urllib.request
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.workers.process import ProcessWorker

pool = sys.argv[1]
deadline = time.time() + 180
while True:
    try:
        urllib.request.urlopen(os.environ["PREFECT_API_URL"] + "/health", timeout=2).close()
        break
    except OSError:
        if time.time() > deadline:
            raise
        time.sleep(0.2)
template = ProcessWorker.get_default_base_job_template()
with get_client(sync_client=True) as client:
    client.create_work_pool(WorkPoolCreate(name=pool, type="process", base_job_template=template))
"""


# ---- images ----------------------------------------------------------------------------------
MNIST = ROOT / "data" / "mnist"  # the embedded sample: train/good, test/<digit>
PNG = b"\x89PNG\r\n\x1a\n"  # a PNG file's first bytes

# A tiny conv VAE on data/mnist: the plumbing of the image path, not its quality. A module
# adds what it needs (its top_maps, epochs, score path) through ``images_config``.
TINY_IMAGES = {
    "tracking": {"uri": "sqlite:///mlflow.db", "max_retries": 1, "registered_model": "digits"},
    "data": {"kind": "images", "train_path": str(MNIST)},
    "images": {"chunk_images": 64},  # 140 test images: three chunks
    "model": {
        "architecture": "conv",
        "hidden_dims": [8, 16],
        "latent_dim": 4,
        "n_score_samples": 2,
    },
    "training": {"batch_size": 32, "lr": 0.003},
    "calibration": {"policy": {"name": "target_fpr", "fpr": 0.1, "tail_method": "quantile"}},
    "promotion": {"flagged_rate_max": 1.0},  # the test split is 64% other digits
}


def images_config(folder, *overrides: dict) -> Path:
    """``folder/mlflow.yml``: ``TINY_IMAGES`` with each of ``overrides`` merged over it, section
    by section (its own sqlite store in ``folder`` unless one overrides the tracking URI)."""
    settings = {k: dict(v) for k, v in TINY_IMAGES.items()}
    for extra in overrides:
        for section, values in (extra or {}).items():
            settings[section] = settings.get(section, {}) | values
    return write_pipeline_config(folder, settings)


def is_png(path) -> bool:
    """Whether the file at ``path`` starts as a PNG does."""
    with open(path, "rb") as f:
        return f.read(8) == PNG


def sqlite_client(folder):
    """An MlflowClient on ``folder/mlflow.db``, the store a tiny config in ``folder`` uses."""
    from mlflow import MlflowClient

    return MlflowClient(f"sqlite:///{Path(folder) / 'mlflow.db'}")


# ---- reports -------------------------------------------------------------------------------
def demo_like_report(labelled: bool = True) -> dict:
    """A test split like the demo's: 367 rows, 35 anomalies (9.5%), few of them flagged
    (``report.evaluate``'s record, as a dict)."""
    from vae_core.evaluation.report import evaluate

    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(332, int), np.ones(35, int)]
    scores = rng.normal(size=y.size) + 0.6 * y
    threshold = float(np.quantile(scores[y == 0], 0.99))
    return evaluate(scores, y if labelled else None, threshold, n_bootstrap=50).to_dict()
