"""Scoring a table with a fitted detector: the scores frame of every door (the batch engine,
the packaged MLflow model, the review's top anomalies), for the table kind.

    score_table: a fitted detector and a table -> ids + scores, flags, probabilities, top columns
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from vae_core.estimator.detector import VAEDetector
from vae_core.foundations.calibrate import flag_anomalies


def score_table(
    det: VAEDetector,
    features: pd.DataFrame,
    ids: pd.DataFrame | None = None,
    *,
    top_features: int,
) -> pd.DataFrame:
    """Scores for a batch: ids, then ``anomaly_score`` (threshold units, higher = more
    anomalous), ``is_anomaly`` (score > threshold), ``missing_columns`` (the columns whose
    missing value was left out of the row's likelihood, ";"-joined, "" for complete rows),
    ``anomaly_probability`` (when calibrated) and the ``top_features`` columns that
    contributed most to each row's score.
    """
    contrib = None
    if top_features > 0 and det.score_kind_ == "negative_elbo":
        scores, contrib = det.score_with_contributions(features)  # one pass for both
    else:
        scores = det.threshold_score(features)
    if top_features > 0 and contrib is None:
        contrib = det.feature_contributions(features)
    out = pd.DataFrame(index=features.index) if ids is None else ids.copy()
    out["anomaly_score"] = scores
    out["is_anomaly"] = flag_anomalies(scores, det.threshold_)
    out["missing_columns"] = det.missing_columns(features).to_numpy()
    if det.probability_ is not None:
        out["anomaly_probability"] = det.probability_.probability(scores)
    if contrib is not None:
        out = pd.concat(
            [out.reset_index(drop=True), top_contributors(contrib, top_features)], axis=1
        )
        out.index = features.index
    return out


def top_contributors(contrib: pd.DataFrame, k: int) -> pd.DataFrame:
    """The k columns with the largest reconstruction NLL per row, with their nats."""
    values = contrib.to_numpy()
    k = min(k, values.shape[1])
    order = _largest_first(values, k)
    names = np.asarray(contrib.columns, dtype=object)
    cols = {}
    for j in range(k):
        cols[f"top_feature_{j + 1}"] = names[order[:, j]]
        cols[f"top_feature_{j + 1}_nats"] = np.take_along_axis(values, order[:, j : j + 1], 1)[:, 0]
    return pd.DataFrame(cols)


def _largest_first(values: np.ndarray, k: int) -> np.ndarray:
    """Per row, the positions of the k largest values, largest first, ties to the leftmost
    column: the first k of a stable argsort of ``-values``, in k passes of argmax (a full
    sort of every row costs more than the scoring's bookkeeping put together)."""
    if not np.isfinite(values).all():  # NaN and infinities: the sort's order, as it is
        return np.argsort(-values, axis=1, kind="stable")[:, :k]
    rest, rows = values.copy(), np.arange(len(values))
    order = np.empty((len(values), k), dtype=np.intp)
    for j in range(k):
        order[:, j] = np.argmax(rest, axis=1)
        rest[rows, order[:, j]] = -np.inf
    return order
