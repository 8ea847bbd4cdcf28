"""Checks of anomaly-score and label arrays, shared by threshold calibration (``calibrate``)
and the anomaly probability (``score_distribution``).

``anomaly_score`` arrays are float64 of shape (n,), higher = more anomalous; labels ``y`` are
of shape (n,), 1 = anomaly, 0 = normal.
"""

from __future__ import annotations

from typing import Any

import numpy as np

MIN_CALIBRATION_SCORES = 20
"""Fewest scores (normal scores for ``target_fpr``) a policy accepts."""

MIN_LABELLED_ANOMALIES = 5
"""Fewest labelled anomalies, and labelled normal rows, a labelled policy accepts."""


def check_scores(scores: Any, what: str = "scores") -> np.ndarray:
    """Return ``scores`` as a finite float64 array of shape (n,), n >= 1, or raise ValueError."""
    try:
        arr = np.asarray(scores, dtype=np.float64)
    except (TypeError, ValueError) as exc:  # text, None-like objects, complex, ragged lists
        raise ValueError(f"{what} must be real numbers, shape (n,) ({exc})") from exc
    if arr.ndim != 1:
        raise ValueError(f"{what} must be one-dimensional, shape (n,); got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{what} is empty")
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        raise ValueError(f"{what} has {bad.size} non-finite values (first at index {bad[0]})")
    return arr


def check_labels(y: Any, n_rows: int) -> np.ndarray | None:
    """Return ``y`` as an int8 array of shape (n_rows,) in {0, 1} (1 = anomaly), or None."""
    if y is None:
        return None
    try:
        arr = np.asarray(y)
    except ValueError as exc:  # a ragged list
        raise ValueError(
            f"y must be a flat sequence of 0 and 1, shape ({n_rows},) ({exc})"
        ) from exc
    if arr.shape != (n_rows,):
        raise ValueError(f"y has shape {arr.shape}; the scores need shape ({n_rows},)")
    values = arr.tolist()
    if arr.dtype.kind in "biuf":
        binary = (arr == 0) | (arr == 1)
    else:  # object (None, pd.NA, mixed types) or text: judged value by value
        binary = np.array([_is_binary(v) for v in values], dtype=bool)
    bad = np.flatnonzero(~binary)
    if bad.size:
        shown = ", ".join(f"{values[i]!r} at index {i}" for i in bad[:5])
        raise ValueError(
            f"y must hold only 0 (normal) and 1 (anomaly); found {shown}"
            f"{f' and {bad.size - 5} more' if bad.size > 5 else ''}"
        )
    return arr.astype(np.int8)


def _is_binary(value: Any) -> bool:
    return isinstance(
        value, bool | int | float | np.bool_ | np.integer | np.floating
    ) and value in (0, 1)


def require_count(count: int, minimum: int, what: str, hint: str = "") -> None:
    if count < minimum:
        raise ValueError(f"need at least {minimum} {what}, got {count}{hint}")
