"""Threshold calibration and anomaly probability, on arrays of anomaly scores.

Everything here works on ``anomaly_score`` arrays, float64 of shape (n,), where a higher score
is more anomalous (negative ELBO in nats by default, or the negative importance-weighted
log-likelihood), and on optional labels ``y`` of shape (n,), 1 = anomaly, 0 = normal. The
scores must come from a calibration split that training never saw (alibi-detect's
``infer_threshold``: fit first, set the threshold as a separate step on held-out data).

Tie rule (one for the whole project): a row is an anomaly iff ``score > threshold``; a score
equal to the threshold is normal. scikit-learn's curves flag ``score >= t``, so a threshold
read off ``precision_recall_curve`` or ``roc_curve`` is moved down to the highest calibration
score below ``t`` (the highest score still called normal), which flags the same calibration
rows under the strict rule and keeps the threshold a score a reviewer can find in the data.

Policies (a pydantic discriminated union on ``name``, embedded in the pipeline config):

- labelled: ``max_f_beta``, ``target_recall``, ``target_precision``, ``min_cost``. When the
  labels hold no anomaly they fall back, with a ``CalibrationFallbackWarning``, to the
  unlabelled target false-positive rate ``fallback_fpr`` (anomalib would flag everything).
- ``target_fpr``: the rate depends on normal rows only, so it uses the labelled normal rows
  when labels exist, or every score (assumed normal) when they do not.
- ``contamination``: flag the top ``rate`` share of all calibration scores.

The two upper-tail policies use the conformal order statistic, or a generalized Pareto fit of
the tail (peaks over threshold) when fewer than ``pot_switch_expected`` calibration points are
expected above the threshold; the rule and the fit are recorded in ``Calibration.details``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from scipy.stats import genpareto
from sklearn.isotonic import IsotonicRegression
from sklearn.metrics import (
    confusion_matrix,
    f1_score,
    precision_recall_curve,
    precision_score,
    recall_score,
    roc_curve,
)

MIN_CALIBRATION_SCORES = 20
"""Fewest scores (normal scores for ``target_fpr``) a policy accepts."""

MIN_LABELLED_ANOMALIES = 5
"""Fewest labelled anomalies, and labelled normal rows, a labelled policy accepts."""


class CalibrationFallbackWarning(UserWarning):
    """A labelled policy met labels without anomalies and used the unlabelled rule."""


# --------------------------------------------------------------------------- policies


def _open_unit_interval(value: float, info: ValidationInfo) -> float:
    if not 0.0 < value < 1.0:
        raise ValueError(f"{info.field_name} must be in the open interval (0, 1), got {value!r}")
    return value


def _positive_finite(value: float, info: ValidationInfo) -> float:
    if not (math.isfinite(value) and value > 0.0):
        raise ValueError(f"{info.field_name} must be a finite number > 0, got {value!r}")
    return value


class _Policy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def params(self) -> dict[str, Any]:
        """Policy parameters without ``name``, JSON-safe."""
        return self.model_dump(exclude={"name"})


class _UpperTailSettings(_Policy):
    """How an upper-tail rate is turned into a threshold: order statistic or POT fit."""

    tail_method: Literal["auto", "quantile", "pot"] = "auto"
    """``auto``: POT when ``rate * n < pot_switch_expected``, else the order statistic."""
    pot_switch_expected: float = 10.0
    pot_tail_quantile: float = 0.9
    """Empirical quantile of the scores above which the generalized Pareto is fitted."""
    pot_min_exceedances: int = 20

    _positive = field_validator("pot_switch_expected")(_positive_finite)
    _unit = field_validator("pot_tail_quantile")(_open_unit_interval)

    @field_validator("pot_min_exceedances")
    @classmethod
    def _enough_exceedances(cls, value: int) -> int:
        if value < 10:
            raise ValueError(
                f"pot_min_exceedances must be >= 10 to fit a 2-parameter tail, got {value}"
            )
        return value


class _LabelledPolicy(_Policy):
    fallback_fpr: float = 0.01
    """Unlabelled target false-positive rate used when the labels contain no anomaly."""

    _fallback = field_validator("fallback_fpr")(_open_unit_interval)


class MaxFBeta(_LabelledPolicy):
    """Maximise F-beta on ``precision_recall_curve`` (beta > 1 weighs recall more)."""

    name: Literal["max_f_beta"] = "max_f_beta"
    beta: float = 1.0

    _beta = field_validator("beta")(_positive_finite)


class TargetRecall(_LabelledPolicy):
    """Highest threshold whose calibration recall is >= ``recall``."""

    name: Literal["target_recall"] = "target_recall"
    recall: float

    _recall = field_validator("recall")(_open_unit_interval)


class TargetPrecision(_LabelledPolicy):
    """Lowest threshold (most recall) whose calibration precision is >= ``precision``."""

    name: Literal["target_precision"] = "target_precision"
    precision: float

    _precision = field_validator("precision")(_open_unit_interval)


class MinCost(_LabelledPolicy):
    """Minimise ``cost_fp * FP + cost_fn * FN`` on the calibration split."""

    name: Literal["min_cost"] = "min_cost"
    cost_fp: float
    cost_fn: float

    _costs = field_validator("cost_fp", "cost_fn")(_positive_finite)


class TargetFPR(_UpperTailSettings):
    """False-positive rate ``fpr`` on normal scores (labelled normals, or all if unlabelled)."""

    name: Literal["target_fpr"] = "target_fpr"
    fpr: float

    _fpr = field_validator("fpr")(_open_unit_interval)


class Contamination(_UpperTailSettings):
    """Flag the top ``rate`` share of all calibration scores (PyOD's ``contamination``)."""

    name: Literal["contamination"] = "contamination"
    rate: float

    _rate = field_validator("rate")(_open_unit_interval)


CalibrationPolicy = Annotated[
    MaxFBeta | TargetRecall | TargetPrecision | MinCost | TargetFPR | Contamination,
    Field(discriminator="name"),
]
"""One threshold policy; ``TypeAdapter(CalibrationPolicy).validate_python({"name": ...})``."""


# --------------------------------------------------------------------------- inputs


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


def _require_count(count: int, minimum: int, what: str, hint: str = "") -> None:
    if count < minimum:
        raise ValueError(f"need at least {minimum} {what}, got {count}{hint}")


# --------------------------------------------------------------------------- tie rule


def flag_anomalies(scores: np.ndarray, threshold: float) -> np.ndarray:
    """Boolean flags of shape (n,): True iff ``score > threshold`` (a tie stays normal).

    A NaN threshold or score is neither above nor below: ValueError, rather than calling every
    such row normal.
    """
    if math.isnan(threshold):
        raise ValueError("the threshold is NaN: no score is above or below it")
    scores = np.asarray(scores, dtype=np.float64)
    nan = np.flatnonzero(np.isnan(scores))
    if nan.size:
        raise ValueError(
            f"{nan.size} NaN score(s) (first at index {nan[0]}): a NaN is neither above nor "
            "below the threshold"
        )
    return scores > threshold


def _threshold_flagging_at_least(scores: np.ndarray, t: float) -> float:
    """Threshold that flags, under the strict rule, exactly the rows with ``score >= t``."""
    if not np.isfinite(t):
        return float(scores.max())
    below = scores[scores < t]
    if below.size:
        return float(below.max())
    threshold = float(np.nextafter(t, -np.inf))
    if not math.isfinite(threshold):
        raise ValueError(
            f"the policy flags every row, but the lowest score is {t!r}, the lowest float: no "
            "finite threshold lies below it"
        )
    return threshold


# --------------------------------------------------------------------------- metrics


def metrics_at_threshold(
    scores: np.ndarray, y: np.ndarray | None, threshold: float
) -> dict[str, float | int]:
    """Counts and rates at ``threshold`` (scikit-learn metrics, ``zero_division=0``).

    Parameters
    ----------
    scores : (n,) anomaly scores, higher = more anomalous.
    y : (n,) labels, 1 = anomaly, or None (then only the flagged count and share).
    threshold : rows with ``score > threshold`` are flagged.

    Returns
    -------
    dict with ``flagged_count``, ``flagged_share``; with labels ``tn, fp, fn, tp`` and ``fpr``
    (when normal rows exist) and ``precision, recall, f1`` (when anomalies exist).
    """
    flagged = flag_anomalies(scores, threshold)
    out: dict[str, float | int] = {
        "flagged_count": int(flagged.sum()),
        "flagged_share": float(flagged.mean()),
    }
    if y is None:
        return out
    tn, fp, fn, tp = (int(v) for v in confusion_matrix(y, flagged, labels=[0, 1]).ravel())
    out.update(tn=tn, fp=fp, fn=fn, tp=tp)
    if tn + fp:
        out["fpr"] = fp / (tn + fp)
    if tp + fn:
        out["precision"] = float(precision_score(y, flagged, zero_division=0.0))
        out["recall"] = float(recall_score(y, flagged, zero_division=0.0))
        out["f1"] = float(f1_score(y, flagged, zero_division=0.0))
    return out


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
    scores: np.ndarray, rate: float, tail: _UpperTailSettings
) -> tuple[float, dict[str, Any]]:
    """Peaks over threshold: generalized Pareto fit of the (n,) scores above a high quantile.

    P(S > u + x) = zeta * GPD_sf(x), zeta = share of scores above u; solved for ``rate``.
    """
    u = float(np.quantile(scores, tail.pot_tail_quantile))
    excess = scores[scores > u] - u
    _require_count(
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


def _upper_tail_threshold(
    scores: np.ndarray, rate: float, tail: _UpperTailSettings
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


# --------------------------------------------------------------------------- labelled rules


def _f_beta(precision: np.ndarray, recall: np.ndarray, beta: float) -> np.ndarray:
    """F-beta, with numerator and denominator divided by beta**2 when beta > 1, so no beta the
    policy accepts overflows (beta**2 does beyond 1.3e154); an underflowed weight gives the
    limits, precision (beta -> 0) or recall (beta -> inf)."""
    if beta > 1.0:
        w = 1.0 / beta / beta
        num, denom = (1.0 + w) * precision * recall, precision + w * recall
    else:
        b2 = beta * beta
        num, denom = (1.0 + b2) * precision * recall, b2 * precision + recall
    safe = np.where(denom > 0, denom, 1.0)
    return np.where(denom > 0, num / safe, 0.0)


def _max_f_beta(scores: np.ndarray, y: np.ndarray, policy: MaxFBeta) -> tuple[float, str, dict]:
    """Ties in F-beta go to the highest threshold (fewest flags)."""
    precision, recall, thresholds = precision_recall_curve(y, scores)
    f = _f_beta(precision[:-1], recall[:-1], policy.beta)
    best = f.size - 1 - int(np.argmax(f[::-1]))
    threshold = _threshold_flagging_at_least(scores, thresholds[best])
    return threshold, f"pr_curve_max_f{policy.beta:g}", {"f_beta": float(f[best])}


def _target_recall(scores: np.ndarray, y: np.ndarray, policy: TargetRecall) -> tuple:
    """Recall falls as the threshold rises: take the highest one still reaching the target."""
    _, recall, thresholds = precision_recall_curve(y, scores)
    best = int(np.flatnonzero(recall[:-1] >= policy.recall).max())  # index 0 has recall 1
    return _threshold_flagging_at_least(scores, thresholds[best]), "pr_curve_target_recall", {}


def _target_precision(scores: np.ndarray, y: np.ndarray, policy: TargetPrecision) -> tuple:
    """Among thresholds reaching the precision, the lowest one (most recall)."""
    precision, recall, thresholds = precision_recall_curve(y, scores)
    ok = np.flatnonzero(precision[:-1] >= policy.precision)
    if not ok.size:
        i = int(np.argmax(precision[:-1]))
        raise ValueError(
            f"target precision {policy.precision} is unreachable on the calibration split: the "
            f"best precision at any threshold is {precision[i]:.3f} (recall {recall[i]:.3f})"
        )
    return _threshold_flagging_at_least(scores, thresholds[ok[0]]), "pr_curve_target_precision", {}


def _min_cost(scores: np.ndarray, y: np.ndarray, policy: MinCost) -> tuple:
    """Expected cost on ``roc_curve``; ties go to the highest threshold (fewest flags)."""
    fpr, tpr, thresholds = roc_curve(y, scores, drop_intermediate=False)
    n_pos, n_neg = int(y.sum()), int(y.size - y.sum())
    fp, fn = np.rint(fpr * n_neg), np.rint((1.0 - tpr) * n_pos)
    # Only the ratio of the costs matters: weights in (0, 1] keep any finite costs finite.
    unit = max(policy.cost_fp, policy.cost_fn)
    cost = (policy.cost_fp / unit) * fp + (policy.cost_fn / unit) * fn
    best = int(np.argmin(cost))  # thresholds decrease: the first minimum flags fewest
    details = {"cost_per_row": float(cost[best] / y.size * unit)}
    return _threshold_flagging_at_least(scores, thresholds[best]), "roc_curve_min_cost", details


_LABELLED_RULES = {
    MaxFBeta: _max_f_beta,
    TargetRecall: _target_recall,
    TargetPrecision: _target_precision,
    MinCost: _min_cost,
}


# --------------------------------------------------------------------------- calibration


@dataclass(frozen=True)
class Calibration:
    """A threshold and the record of how it was chosen (all fields JSON-safe).

    ``threshold`` is in raw score units; rows with ``anomaly_score > threshold`` are flagged.
    ``metrics`` are measured on the calibration split at the threshold (optimistic for the
    labelled policies, which chose the threshold on these rows; the test split is the judge).
    """

    threshold: float
    policy: str
    params: dict[str, Any]
    method: str
    score_name: str
    n_calibration: int
    n_anomalies: int | None
    fallback_reason: str | None
    metrics: dict[str, float | int]
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict; ``Calibration(**d)`` rebuilds it."""
        return asdict(self)


def _fallback_to_unlabelled(
    scores: np.ndarray, policy: _LabelledPolicy
) -> tuple[float, str, dict[str, Any], str]:
    reason = (
        f"the calibration labels contain no anomaly ({scores.size} normal rows), so policy "
        f"{policy.name!r} fell back to the unlabelled target_fpr={policy.fallback_fpr} on "
        "these scores"
    )
    warnings.warn(reason, CalibrationFallbackWarning, stacklevel=4)
    threshold, method, details = _upper_tail_threshold(
        scores, policy.fallback_fpr, TargetFPR(fpr=policy.fallback_fpr)
    )
    return threshold, method, details, reason


def _labelled_threshold(
    scores: np.ndarray, y: np.ndarray | None, policy: _LabelledPolicy
) -> tuple[float, str, dict[str, Any], str | None]:
    if y is None:
        raise ValueError(
            f"policy {policy.name!r} needs labels y; without labels use target_fpr or contamination"
        )
    n_anomalies = int(y.sum())
    if n_anomalies == 0:
        return _fallback_to_unlabelled(scores, policy)
    hint = f" in the calibration split for policy {policy.name!r}"
    _require_count(n_anomalies, MIN_LABELLED_ANOMALIES, "labelled anomalies", hint)
    _require_count(y.size - n_anomalies, MIN_LABELLED_ANOMALIES, "labelled normal rows", hint)
    threshold, method, details = _LABELLED_RULES[type(policy)](scores, y, policy)
    return threshold, method, details, None


def _unlabelled_threshold(
    scores: np.ndarray, y: np.ndarray | None, policy: TargetFPR | Contamination
) -> tuple[float, str, dict[str, Any], str | None]:
    if isinstance(policy, Contamination):
        reference, rate = scores, policy.rate
        details = {"reference": "all calibration scores"}
    else:
        reference = scores if y is None else scores[y == 0]
        rate = policy.fpr
        details = {"reference": "scores assumed normal" if y is None else "labelled normal rows"}
    _require_count(reference.size, MIN_CALIBRATION_SCORES, details["reference"])
    threshold, method, tail_details = _upper_tail_threshold(reference, rate, policy)
    return threshold, method, details | tail_details, None


def calibrate_threshold(
    scores: Any,
    y: Any = None,
    *,
    policy: CalibrationPolicy,
    score_name: str = "anomaly_score",
) -> Calibration:
    """Choose the anomaly threshold on a calibration split by one policy.

    Parameters
    ----------
    scores : (n,) anomaly scores of the calibration rows, higher = more anomalous; the model
        must not have been trained on these rows.
    y : (n,) labels, 1 = anomaly, 0 = normal, or None.
    policy : a ``CalibrationPolicy`` (``MaxFBeta``, ``TargetRecall``, ``TargetPrecision``,
        ``MinCost``, ``TargetFPR``, ``Contamination``).
    score_name : which score these are (e.g. "negative_elbo"), recorded for the reviewer.

    Returns
    -------
    Calibration
        ``threshold`` such that rows with ``score > threshold`` are anomalies, and the record of
        the choice. Labelled policies on labels without anomalies fall back to the unlabelled
        ``target_fpr = policy.fallback_fpr`` and warn (``CalibrationFallbackWarning``).

    Raises
    ------
    ValueError
        On malformed scores or labels, fewer than ``MIN_CALIBRATION_SCORES`` scores, fewer than
        ``MIN_LABELLED_ANOMALIES`` anomalies (or normals) for a labelled policy, an
        unreachable target, or a tail too thin for the POT fit.
    """
    scores = check_scores(scores)
    y = check_labels(y, scores.size)
    _require_count(scores.size, MIN_CALIBRATION_SCORES, "calibration scores")
    if isinstance(policy, _LabelledPolicy):
        threshold, method, details, reason = _labelled_threshold(scores, y, policy)
    else:
        threshold, method, details, reason = _unlabelled_threshold(scores, y, policy)
    return Calibration(
        threshold=float(threshold),
        policy=policy.name,
        params=policy.params(),
        method=method,
        score_name=score_name,
        n_calibration=int(scores.size),
        n_anomalies=None if y is None else int(y.sum()),
        fallback_reason=reason,
        metrics=metrics_at_threshold(scores, y, threshold),
        details=details,
    )


# --------------------------------------------------------------------------- probability


class AnomalyProbability:
    """Anomaly probability in (0, 1) per row, strictly increasing in the anomaly score.

    Without usable labels it is the conformal p-value turned around, on the normal calibration
    scores c_1 <= ... <= c_n: at each c_j it is ``j / (n + 1)``, the share of normal behaviour
    the score reaches (0.99: rarer than about 99% of normal rows), linear between calibration
    scores. With labels holding at least ``MIN_LABELLED_ANOMALIES`` anomalies it is an
    isotonic regression of the label on the score (an estimate of P(anomaly | score) at the
    calibration prevalence), each of its blocks shrunk by one pseudo-count towards 1/2 (so no
    block claims certainty from a handful of rows) and placed at its mean score, linear between
    blocks.

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
            _require_count(scores.size, MIN_CALIBRATION_SCORES, "normal calibration scores")
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
        self.method_ = "isotonic"
        self.knots_x_ = centres
        self.knots_p_ = (blocks * counts + 0.5) / (counts + 1.0)  # one pseudo-count at 1/2

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
