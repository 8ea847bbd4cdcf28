"""What the benchmark scripts share: the ADBench protocol, the three detectors, provenance.

ADBench (Han et al., NeurIPS 2022), the protocol of ``quality.py`` and of the training race in
``speed.py``: rows above 10,000 are subsampled to 10,000, a stratified 70/30 split per seed,
min-max scaling fitted on the 70%, an unsupervised fit on the (contaminated) 70%, ROC-AUC and
average precision on the 30%.

Every detector here is a pair of functions ``fit(X_train, seed) -> model`` and
``score(model, X) -> (n,)`` with **higher = more anomalous**, so the metrics never need a sign
flip per method. torch, pyod and vae_core are imported inside the functions, so ``--help`` of
every script is fast and a run without PyOD works when ``--methods`` leaves it out.
"""

from __future__ import annotations

import ast
import datetime as dt
import json
import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATASETS = ROOT.parent / "shared" / "datasets"
MAX_ROWS = 10_000
TEST_FRACTION = 0.3
METHODS = ("vae_core", "pyod_vae", "iforest", "mcd", "knn", "ecod")
# The peers a user would pick instead of this project (issue 23): each at its library defaults.
PEERS = ("mcd", "knn", "iforest")
# Two fixed halves of the shared tabular sets (alternate names in sorted order), so that a
# change to the defaults is chosen on one half and confirmed on the other (issue 16): a change
# is kept only if both halves agree. Fixed before any of the comparisons they serve were run.
HALVES = {
    "choose": [
        "adbench_annthyroid",
        "adbench_cv_resnet18_mvtec_ad_bottle",
        "adbench_cv_resnet18_mvtec_ad_hazelnut",
        "adbench_mammography",
        "adbench_pendigits",
        "adbench_satellite",
        "adbench_thyroid",
        "odds_arrhythmia",
    ],
    "confirm": [
        "adbench_cardio",
        "adbench_cv_resnet18_mvtec_ad_cable",
        "adbench_letter",
        "adbench_optdigits",
        "adbench_pima",
        "adbench_shuttle",
        "adbench_vowels",
        "odds_wbc",
    ],
}
# The 17 sets added to ../shared/datasets later (issue 23), split the same way (alternate names
# in sorted order) and appended to the halves on 2026-12-07, before any comparison on them:
# a change is chosen on one half of all 33 sets and confirmed on the other.
HALVES["choose"] += [
    "adbench_aloi",
    "adbench_cv_resnet18_mvtec_ad_carpet",
    "adbench_cv_resnet18_mvtec_ad_leather",
    "adbench_cv_resnet18_mvtec_ad_transistor",
    "adbench_cv_resnet18_mvtec_ad_zipper",
    "adbench_http",
    "adbench_lymphography",
    "adbench_stamps",
    "adbench_wpbc",
]
HALVES["confirm"] += [
    "adbench_campaign",
    "adbench_cv_resnet18_mvtec_ad_grid",
    "adbench_cv_resnet18_mvtec_ad_toothbrush",
    "adbench_cv_resnet18_mvtec_ad_wood",
    "adbench_hepatitis",
    "adbench_internetads",
    "adbench_skin",
    "adbench_wine",
]


def quiet_environment() -> None:
    """No telemetry from anything the benchmarks import (MLflow, Prefect, ...)."""
    os.environ.setdefault("DO_NOT_TRACK", "true")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def set_torch_threads(n: int) -> None:
    """Use n intra-op threads in torch (both VAEs). On a shared machine keep n = 1: measured
    here, PyOD's VAE fit took 0.35 s with 1 thread and 20-90 s with 2 threads while another
    process kept one of the 2 cores busy (OpenMP threads waiting on each other)."""
    os.environ["OMP_NUM_THREADS"] = str(n)  # before torch is imported, when it is not yet
    import torch

    torch.set_num_threads(int(n))


# ---- data ----------------------------------------------------------------------------------
@dataclass
class Split:
    """One seed's ADBench split, min-max scaled on the training part; y: 1 = anomaly."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray


def load_tabular(path: Path) -> tuple[np.ndarray, np.ndarray] | str:
    """(X (n, d) float32, y (n,) in {0, 1}) of an npz, or the reason it is not a tabular set."""
    with np.load(path, allow_pickle=False) as data:
        if "X" not in data.files or "y" not in data.files:
            return f"no X and y arrays (keys: {', '.join(data.files)})"
        X, y = data["X"], data["y"]
    if X.ndim != 2:
        return f"X has shape {X.shape}, not (rows, features) (an image set?)"
    labels = np.unique(y)
    if not np.isin(labels, [0, 1]).all() or len(labels) != 2:
        return f"y is not binary 0/1 (values {labels[:10].tolist()})"
    if len(X) != len(y):
        return f"X has {len(X)} rows but y has {len(y)}"
    return X.astype("float32"), y.astype("int64")


def load_dataset(path: Path) -> tuple[np.ndarray, np.ndarray, dict] | None:
    """``load_tabular`` with the data set's description (rows, features, anomaly %), or None
    (said on stderr) when the file is not a tabular set."""
    loaded = load_tabular(path)
    if isinstance(loaded, str):
        print(f"skipped {path.name}: {loaded}", file=sys.stderr)
        return None
    X, y = loaded
    return X, y, {"rows": len(X), "features": X.shape[1], "anomaly_pct": 100 * float(y.mean())}


class SkipDataset(Exception):
    """A data set the protocol cannot split (a class too small); the reason is the message."""


def adbench_split(X: np.ndarray, y: np.ndarray, seed: int) -> Split:
    """The ADBench protocol for one seed: subsample to 10,000 rows, stratified 70/30 split,
    min-max scaling fitted on the 70%.

    ADBench subsamples uniformly; here the subsample is stratified by label, so a set with
    very few anomalies (30 in 95,000 rows) keeps its share of them instead of leaving one
    for the stratified split (same expected class shares as the uniform draw). Raises
    ``SkipDataset`` where a class still has fewer than 2 rows.
    """
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import MinMaxScaler

    if len(X) > MAX_ROWS:
        counts = np.bincount(y, minlength=2)
        if counts.min() * MAX_ROWS / len(y) < 2:
            raise SkipDataset(
                f"{counts.min()} rows of class {counts.argmin()} in {len(y)}: fewer than 2 "
                f"would remain in a {MAX_ROWS}-row subsample"
            )
        keep, _ = train_test_split(
            np.arange(len(X)), train_size=MAX_ROWS, stratify=y, random_state=seed
        )
        keep = np.sort(keep)
        X, y = X[keep], y[keep]
    if np.bincount(y, minlength=2).min() < 2:
        raise SkipDataset(f"a class has fewer than 2 rows ({np.bincount(y, minlength=2)})")
    X_tr, X_te, y_tr, y_te = train_test_split(
        X, y, test_size=TEST_FRACTION, stratify=y, random_state=seed, shuffle=True
    )
    scaler = MinMaxScaler().fit(X_tr)
    as32 = lambda a: scaler.transform(a).astype("float32")  # noqa: E731
    return Split(as32(X_tr), y_tr, as32(X_te), y_te)


# ---- detectors: fit(X, seed) -> model; score(model, X) -> higher = more anomalous ------------
def fit_vae_core(X: np.ndarray, seed: int, params: dict | None = None, callbacks=()):
    """``VAEDetector(random_state=seed, **params)`` fitted on X (defaults when params is empty)."""
    from vae_core import VAEDetector

    return VAEDetector(random_state=seed, **(params or {})).fit(X, callbacks=list(callbacks))


def score_vae_core(det, X: np.ndarray) -> np.ndarray:
    """Negative ELBO in nats; higher = more anomalous. Deterministic."""
    return det.anomaly_score(X)


def fit_pyod_vae(X: np.ndarray, seed: int):
    """PyOD's VAE with its defaults; only ``random_state`` (a constructor argument) is set, and
    ``verbose=0`` to silence the progress bar (it changes nothing else).

    As shipped, PyOD's VAE clamps its KL term to [0, capacity] with ``capacity=0.0``, so it
    trains a (dropout-regularised) auto-encoder, and its scores are sampled: two calls of
    ``decision_function`` on the same rows give different scores.
    """
    from pyod.models.vae import VAE

    return VAE(random_state=seed, verbose=0).fit(X)


def score_pyod_vae(model, X: np.ndarray) -> np.ndarray:
    """Euclidean distance between a row and one sampled reconstruction; higher = more anomalous."""
    return model.decision_function(X)


def fit_iforest(X: np.ndarray, seed: int):
    """scikit-learn's IsolationForest with its defaults and ``random_state=seed``."""
    from sklearn.ensemble import IsolationForest

    return IsolationForest(random_state=seed).fit(X)


def score_iforest(model, X: np.ndarray) -> np.ndarray:
    """-score_samples: higher = more anomalous (shorter average path length)."""
    return -model.score_samples(X)


def fit_pyod_peer(name: str, X: np.ndarray, seed: int):
    """PyOD's MCD, KNN or ECOD with the library's defaults (MCD takes ``random_state``; KNN
    and ECOD are deterministic)."""
    if name == "mcd":
        from pyod.models.mcd import MCD

        return MCD(random_state=seed).fit(X)
    if name == "knn":
        from pyod.models.knn import KNN

        return KNN().fit(X)
    from pyod.models.ecod import ECOD

    return ECOD().fit(X)


def score_pyod(model, X: np.ndarray) -> np.ndarray:
    """PyOD's ``decision_function``: higher = more anomalous."""
    return model.decision_function(X)


def require_pyod() -> None:
    """Exit with the install command when PyOD (or tqdm, which it imports) is missing."""
    import importlib.util

    missing = [m for m in ("pyod", "tqdm") if importlib.util.find_spec(m) is None]
    if missing:
        raise SystemExit(
            f"error: {', '.join(missing)} not installed; pip install -e '.[bench]' "
            "(or leave pyod_vae out with --methods)"
        )


def detector_functions(method: str, vae_params: dict | None = None):
    """(fit, score) for a method name of ``METHODS``."""
    if method == "vae_core":
        return (lambda X, seed: fit_vae_core(X, seed, vae_params)), score_vae_core
    if method == "pyod_vae":
        return fit_pyod_vae, score_pyod_vae
    if method == "iforest":
        return fit_iforest, score_iforest
    if method in ("mcd", "knn", "ecod"):
        return (lambda X, seed: fit_pyod_peer(method, X, seed)), score_pyod
    raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")


def detection_metrics(y: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """ROC-AUC and average precision of anomaly scores (higher = more anomalous), y 1 = anomaly."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    return {
        "roc_auc": float(roc_auc_score(y, scores)),
        "average_precision": float(average_precision_score(y, scores)),
    }


# ---- options and provenance ------------------------------------------------------------------
def parse_params(pairs: list[str] | None) -> dict:
    """``["epochs=2", "hidden_dims=(64, 32)"]`` -> ``{"epochs": 2, "hidden_dims": (64, 32)}``.

    Values are Python literals where they parse as one, strings otherwise.
    """
    params = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"expected key=value, got {pair!r}")
        try:
            params[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            params[key.strip()] = value.strip()
    return params


def _git(*args: str) -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=20
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unavailable"
    return out.stdout.strip() if out.returncode == 0 else "unavailable"


def provenance() -> dict:
    """Code version, machine and library versions, so numbers can be tied to code."""
    import importlib.metadata as md

    versions = {}
    for pkg in ("torch", "scikit-learn", "numpy", "pyod", "pyarrow", "pandas"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "git_commit": _git("rev-parse", "--short", "HEAD"),
        "git_status_vae_core": _git("status", "--short", "vae_core"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "nproc": os.cpu_count(),
        "load_average": os.getloadavg(),
        "torch_threads": _torch_threads(),
        "versions": versions,
    }


def _torch_threads() -> int | None:
    torch = sys.modules.get("torch")
    return torch.get_num_threads() if torch is not None else None


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (or platform.processor() elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def write_json(payload: dict, path: Path) -> None:
    """Write JSON under a temporary name and rename, so a killed run leaves a valid file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=str))
    os.replace(tmp, path)
