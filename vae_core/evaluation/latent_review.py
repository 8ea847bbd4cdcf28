"""The latent space for the reviewer: where the test split lies in it (``latent_map.png``),
paths between images, and how realistic the model's samples are, measured with a classifier
two-sample test (Lopez-Paz & Oquab, ICLR 2017, "Revisiting classifier two-sample tests").

``VAEDetector`` holds the mathematics (``transform``, ``reconstruct``, ``interpolate``,
``sample``, ``decode``); the kinds (``vae_core.kinds``) read their inputs and call these for
their review and their latent outputs (``vae-anomaly embed``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from threadpoolctl import threadpool_limits

from vae_core.data.images import image_rows
from vae_core.evaluation.drawing import interpolation_grid_png
from vae_core.evaluation.report_plots import plot_latent_map
from vae_core.foundations.atomic import atomic_write


def latent_coordinates(det, X, ids: pd.DataFrame) -> pd.DataFrame:
    """``ids``, then z0 .. z{k-1} (the posterior means of ``X``) and ``anomaly_score``."""
    z = pd.DataFrame(det.transform(X), columns=det.get_feature_names_out())
    scores = pd.DataFrame({"anomaly_score": det.anomaly_score(X)})
    return pd.concat([ids.reset_index(drop=True), z, scores], axis=1)


def sample_realism(det, real: pd.DataFrame, random_state: int = 0, folds: int = 5) -> float:
    """Classifier two-sample test of the model's samples against real rows: the cross-validated
    ROC-AUC of a gradient-boosted classifier told to separate ``real`` (held-out rows) from as
    many draws x ~ p(x|z), z ~ N(0, I). 0.5: indistinguishable; 1.0: every sample is told
    apart. Both sets enter the classifier as the model sees them (``det.model_input``).
    """
    if det.preprocessor_.image_shape is not None:
        raise ValueError("sample realism is measured for tables")
    n = len(real)
    if n < 2 * folds:
        raise ValueError(f"sample realism needs at least {2 * folds} real rows, got {n}")
    fake = det.sample(n, random_state=random_state)
    x = np.vstack([det.model_input(real), det.model_input(fake)])
    y = np.r_[np.zeros(n), np.ones(n)]
    clf = HistGradientBoostingClassifier(random_state=random_state)
    cv = StratifiedKFold(folds, shuffle=True, random_state=random_state)
    # One OpenMP thread: on a busy machine the boosting's threads wait for cores (measured on
    # 2 cores under load: 8 s with the default threads, 0.9 s with one); same result.
    with threadpool_limits(limits=1, user_api="openmp"):
        proba = cross_val_predict(clf, x, y, cv=cv, method="predict_proba")[:, 1]
    return float(roc_auc_score(y, proba))


def top_variance_directions(z: np.ndarray, n: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """The ``n`` directions of the latent means with the most variance (principal axes) and
    the share of the variance each carries: (directions (n, k), shares (n,))."""
    centred = z - z.mean(0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    var = s**2
    total = var.sum() or 1.0
    k = min(n, len(vt))
    return vt[:k], var[:k] / total


def write_latent_review(
    det,
    X,
    scores,
    y,
    out_dir,
    *,
    random_state: int = 0,
    interpolations: bool = False,
    realism: bool = False,
) -> dict:
    """The latent space for the reviewer, from the test split ``X`` (its ``scores`` and known
    labels ``y`` or None), in ``out_dir``:

    * ``latent_map.png``: the posterior means projected on their two directions of most
      variance, coloured by score, known anomalies circled (``report_plots.plot_latent_map``);
    * with ``interpolations`` (images), ``interpolations.png``: decoded paths between two
      normal test images and between a normal image and the top-scoring one;
    * with ``realism`` (tables), the realism of samples (``sample_realism``: a classifier
      two-sample test on the test rows; needs 10 rows);
    * ``latent.json`` with the numbers.

    Returns {name: path} and the numbers under ``variance_shares`` and ``sample_realism_auc``
    (None where not measured)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    scores = np.asarray(scores, dtype="float64")
    z = det.transform(X)
    directions, shares = top_variance_directions(z)
    coords = (z - z.mean(0)) @ directions.T
    paths: dict = {
        "latent_map": plot_latent_map(coords, scores, y, shares, out_dir / "latent_map.png")
    }
    realism_auc = None
    if interpolations:
        images = image_rows(X)
        normal = np.arange(len(scores)) if y is None else np.flatnonzero(np.asarray(y) == 0)
        if len(normal) >= 2:
            order = normal[np.argsort(scores[normal], kind="stable")]  # most normal first
            top = int(np.argmax(scores))
            pairs = [(order[0], order[1]), (order[0], top)]
            pairs = [(np.asarray(images[[i]])[0], np.asarray(images[[j]])[0]) for i, j in pairs]
            paths["interpolations"] = interpolation_grid_png(
                det, pairs, out_dir / "interpolations.png"
            )
    if realism and len(X) >= 10:
        realism_auc = sample_realism(det, X, random_state=random_state)
    summary = {
        "variance_shares": [float(v) for v in shares],
        "sample_realism_auc": realism_auc,
        "rows": len(scores),
    }
    paths["latent_summary"] = atomic_write(
        out_dir / "latent.json", lambda fh: fh.write(json.dumps(summary, indent=2).encode())
    )
    return paths | {
        "variance_shares": summary["variance_shares"],
        "sample_realism_auc": realism_auc,
    }
