"""The distribution of calibration scores: upper-tail thresholds and anomaly probability.

Both read a calibration sample of ``anomaly_score`` values, float64 of shape (n,), higher = more
anomalous. The upper tail turns a rate into a threshold (the conformal order statistic, or a
generalized Pareto fit of the tail, peaks over threshold); ``AnomalyProbability`` turns a
score into a probability (conformal p-value, or isotonic regression on labels). The threshold
policies that use the upper tail live in ``calibrate``, which re-exports ``AnomalyProbability``.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import numpy as np
from scipy.stats import genpareto
from sklearn.isotonic import IsotonicRegression

from vae_core.foundations.score_checks import (
    MIN_CALIBRATION_SCORES,
    MIN_LABELLED_ANOMALIES,
    check_labels,
    check_scores,
    require_count,
)


class UpperTailSettings(Protocol):
    """What the upper-tail threshold reads from a policy (``calibrate.TargetFPR``,
    ``calibrate.Contamination`` and their ``_UpperTailSettings`` fields)."""

    tail_method: str
    pot_switch_expected: float
    pot_tail_quantile: float
    pot_min_exceedances: int


# --------------------------------------------------------------------------- upper tail


def _conformal_upper_quantile(scores: np.ndarray, rate: float) -> float:
    """Order statistic s_(k), k = ceil((n + 1)(1 - rate)), of the (n,) reference scores.

    For a new score exchangeable with the n reference scores, P(new > s_(k)) <= rate (split
    conformal), and the share of reference scores strictly above s_(k) is <= rate, one point
    below the empirical quantile at most (ties at s_(k) only lower it).
    """
    n = scores.size
    k = math.ceil((n + 1) * (1.0 - rate) - 1e-9)  # guard 950.0000000001 -> 951
    if k > n:
        raise ValueError(
            f"rate {rate} is below 1/(n+1) = {1 / (n + 1):.3g} for n={n} reference scores: no "
            "order statistic reaches it; use tail_method='pot' or 'auto', or more scores"
        )
    return float(np.partition(scores, k - 1)[k - 1])


def _pot_threshold(
    scores: np.ndarray, rate: float, tail: UpperTailSettings
) -> tuple[float, dict[str, Any]]:
    """Peaks over threshold: generalized Pareto fit of the (n,) scores above a high quantile.

    P(S > u + x) = zeta * GPD_sf(x), zeta = share of scores above u; solved for ``rate``.
    """
    u = float(np.quantile(scores, tail.pot_tail_quantile))
    excess = scores[scores > u] - u
    require_count(
        excess.size,
        tail.pot_min_exceedances,
        f"scores above the {tail.pot_tail_quantile:g} quantile for the POT fit",
        f" (n={scores.size}); provide more calibration scores or a larger rate",
    )
    zeta = excess.size / scores.size
    if rate >= zeta:
        raise ValueError(
            f"rate {rate} is not in the fitted tail (share above u is {zeta:.3g}); "
            "raise pot_tail_quantile or use tail_method='quantile'"
        )
    shape, _, scale = genpareto.fit(excess, floc=0.0)
    threshold = u + float(genpareto.isf(rate / zeta, shape, loc=0.0, scale=scale))
    if not math.isfinite(threshold):
        raise ValueError("the generalized Pareto fit gave a non-finite threshold")
    fit = {"u": u, "n_exceedances": int(excess.size), "shape": float(shape), "scale": float(scale)}
    return threshold, fit


def upper_tail_threshold(
    scores: np.ndarray, rate: float, tail: UpperTailSettings
) -> tuple[float, str, dict[str, Any]]:
    """Threshold with about ``rate`` of the (n,) reference scores above it; method; details."""
    expected = rate * scores.size
    use_pot = tail.tail_method == "pot" or (
        tail.tail_method == "auto" and expected < tail.pot_switch_expected
    )
    details: dict[str, Any] = {
        "n_reference": int(scores.size),
        "expected_points_above": float(expected),
        "switch_rule": f"pot_genpareto when rate * n < {tail.pot_switch_expected:g} "
        f"(tail_method={tail.tail_method})",
    }
    if use_pot:
        threshold, details["pot_fit"] = _pot_threshold(scores, rate, tail)
        return threshold, "pot_genpareto", details
    return _conformal_upper_quantile(scores, rate), "quantile", details


# --------------------------------------------------------------------------- probability


class AnomalyProbability:
    """Anomaly probability in (0, 1) per row, strictly increasing in the anomaly score.

    Without usable labels it is the conformal p-value turned around, on the normal calibration
    scores c_1 <= ... <= c_n: at each c_j it is ``j / (n + 1)``, the share of normal behaviour
    the score reaches (0.99: rarer than about 99% of normal rows), linear between calibration
    scores. With labels holding at least ``MIN_LABELLED_ANOMALIES`` anomalies it is an
    isotonic regression of the label on the score (an estimate of P(anomaly | score) at the
    calibration prevalence), each of its blocks shrunk by one pseudo-count towards 1/2 (so no
    block claims certainty from a handful of rows; where that reverses two blocks' order, the
    weighted monotone fit of the shrunk values, which may tie them) and placed at its mean
    score, linear between blocks.

    Past the calibration scores it follows exponential tails, ``1 - (1 - p_n) exp(-(s - x_n) /
    b)`` above and ``p_1 exp((s - x_1) / b')`` below, with b, b' the mean excess of the highest
    (lowest) tenth of the calibration scores (the maximum-likelihood exponential scale). So two
    different scores never share a probability (up to float resolution), a row scored above the
    threshold always gets a higher probability than every row at or below it, and the top
    anomalies of a batch are still ordered where they lie beyond every calibration score.

    The fitted state is plain floats, so ``to_dict`` / ``from_dict`` round-trip through JSON
    without pickle, and the restored object gives bit-identical probabilities.
    """

    TAIL_SHARE = 0.1  # the share of calibration scores each tail's scale is estimated from

    def fit(self, scores: Any, y: Any = None) -> AnomalyProbability:
        """Fit on calibration scores (n,) and optional labels (n,), 1 = anomaly; returns self."""
        scores = check_scores(scores)
        y = check_labels(y, scores.size)
        self.fallback_reason_: str | None = None
        n_anomalies = 0 if y is None else int(y.sum())
        if y is not None and n_anomalies >= MIN_LABELLED_ANOMALIES:
            self._fit_isotonic(scores, y)
        else:
            if y is not None:
                self.fallback_reason_ = (
                    f"{n_anomalies} labelled anomalies (< {MIN_LABELLED_ANOMALIES}): conformal "
                    "p-value on the labelled normal rows instead of isotonic regression"
                )
                scores = scores[y == 0]
            require_count(scores.size, MIN_CALIBRATION_SCORES, "normal calibration scores")
            self._fit_conformal(scores)
        self.tail_low_, self.tail_high_ = _tail_scales(scores, self.TAIL_SHARE)
        return self

    def _fit_conformal(self, scores: np.ndarray) -> None:
        ordered = np.sort(scores)
        values, last = np.unique(ordered[::-1], return_index=True)  # last position of a value
        at_or_below = ordered.size - last  # #{c_i <= value}
        self.method_ = "conformal"
        self.knots_x_ = values.astype(np.float64)
        self.knots_p_ = at_or_below / (ordered.size + 1.0)

    def _fit_isotonic(self, scores: np.ndarray, y: np.ndarray) -> None:
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
        fitted = iso.fit(scores, y.astype(np.float64)).predict(scores)
        blocks, block_of = np.unique(fitted, return_inverse=True)  # PAV blocks, by value
        counts = np.bincount(block_of).astype(np.float64)
        centres = np.bincount(block_of, weights=scores) / counts
        shrunk = (blocks * counts + 0.5) / (counts + 1.0)  # one pseudo-count at 1/2
        if np.any(np.diff(shrunk) < 0):
            # Shrinking a small block more than its larger neighbour can reverse their order
            # (a one-row block at 0 becomes 0.25, a 100-row block at 0.13 stays near 0.14):
            # the weighted monotone fit of the shrunk values restores a non-decreasing map.
            shrunk = (
                IsotonicRegression(increasing=True)
                .fit(centres, shrunk, sample_weight=counts + 1.0)
                .predict(centres)
            )
        self.method_ = "isotonic"
        self.knots_x_ = centres
        self.knots_p_ = shrunk

    def probability(self, scores: Any) -> np.ndarray:
        """Anomaly probability, shape (n,), in [0, 1], strictly increasing in the (n,) scores
        (up to float resolution; exactly 0 or 1 only where an exponential tail underflows)."""
        scores = check_scores(scores)
        x, p = self.knots_x_, self.knots_p_
        if getattr(self, "tail_high_", None) is None:  # a model saved before the tails
            return self._legacy_probability(scores)
        out = np.interp(scores, x, p)
        with np.errstate(over="ignore", under="ignore", invalid="ignore"):
            above, below = scores > x[-1], scores < x[0]
            out[above] = 1.0 - (1.0 - p[-1]) * np.exp(-(scores[above] - x[-1]) / self.tail_high_)
            out[below] = p[0] * np.exp((scores[below] - x[0]) / self.tail_low_)
        return np.clip(out, 0.0, 1.0)

    def _legacy_probability(self, scores: np.ndarray) -> np.ndarray:
        """The step functions of models saved before the tails (bit-identical to then)."""
        if self.method_ == "isotonic":  # np.interp clips beyond the knots, like "clip"
            return np.interp(scores, self.knots_x_, self.knots_p_)
        n = self.knots_x_.size
        at_or_above = n - np.searchsorted(self.knots_x_, scores, side="left")
        return np.clip(1.0 - (1.0 + at_or_above) / (n + 1.0), 0.0, 1.0)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe fitted state (floats survive JSON exactly: repr round-trips)."""
        return {
            "method": self.method_,
            "knots_x": self.knots_x_.tolist(),
            "knots_p": self.knots_p_.tolist(),
            "tail_low": self.tail_low_,
            "tail_high": self.tail_high_,
            "fallback_reason": self.fallback_reason_,
        }

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> AnomalyProbability:
        """Rebuild from ``to_dict`` output; raises ValueError on an unknown method."""
        if state.get("method") not in ("conformal", "isotonic"):
            raise ValueError(f"unknown anomaly-probability method {state.get('method')!r}")
        restored = cls()
        restored.method_ = state["method"]
        restored.knots_x_ = np.asarray(state["knots_x"], dtype=np.float64)
        restored.knots_p_ = np.asarray(state["knots_p"], dtype=np.float64)
        restored.tail_low_ = state.get("tail_low")
        restored.tail_high_ = state.get("tail_high")
        restored.fallback_reason_ = state.get("fallback_reason")
        return restored


def _tail_scales(scores: np.ndarray, share: float) -> tuple[float, float]:
    """(lower, upper) exponential tail scales: the mean excess of the lowest (highest)
    ``share`` of the scores beyond the quantile that bounds them; a positive fallback (the
    scores' spread per score, then 1 nat) where that is zero."""
    ordered = np.sort(scores)
    k = max(2, int(np.ceil(share * ordered.size)))
    with np.errstate(over="ignore", invalid="ignore"):  # scores near the float limit: inf
        high = float(np.mean(ordered[-k:] - ordered[-k]))
        low = float(np.mean(ordered[k - 1] - ordered[:k]))
        spread = float(ordered[-1] - ordered[0]) / max(ordered.size, 1)
    fallback = spread if np.isfinite(spread) and spread > 0 else 1.0
    ok = lambda v: v if np.isfinite(v) and v > 0 else fallback  # noqa: E731
    return ok(low), ok(high)
