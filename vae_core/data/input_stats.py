"""What a fit records about its model input: each column's dequantization variance floor
(``grid_variance``) and the data's fingerprint (``fingerprint``). Plain NumPy, no model."""

from __future__ import annotations

import hashlib

import numpy as np


def grid_variance(u: np.ndarray, observed: np.ndarray | None = None) -> np.ndarray:
    """Per column, the variance of uniform noise over the spacing of its values: delta^2 / 12.

    A column whose values sit on a grid of step delta (counts, rounded readings, a few levels)
    carries no information below that step; a Gaussian allowed a narrower variance puts a
    spike on each grid value and rewards rows for landing on it (the density diverges as the
    variance shrinks). Flooring the variance at the uniform-dequantization variance (Theis et
    al., 2016) keeps the likelihood finite and meaningful. For a continuous column delta is the
    smallest gap between distinct values and the floor is negligible. Only the ``observed``
    entries (n, d) count where given: values on a point mass or imputed are not the density's.
    (d,) float32.
    """
    floors = np.zeros(u.shape[1], dtype="float32")
    for j in range(u.shape[1]):
        column = u[:, j] if observed is None else u[observed[:, j], j]
        gaps = np.diff(np.unique(column))
        if gaps.size:
            floors[j] = gaps.min() ** 2 / 12.0
    return floors


def fingerprint(u: np.ndarray) -> str:
    """SHA-256 of an array's bytes and shape: identifies the data a model was fitted on."""
    h = hashlib.sha256(str(u.shape).encode())
    h.update(np.ascontiguousarray(u).tobytes())
    return h.hexdigest()
