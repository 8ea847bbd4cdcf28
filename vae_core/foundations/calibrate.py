"""Threshold calibration on arrays of anomaly scores.

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

The checks of score and label arrays live in ``score_checks``, the upper-tail estimates and
``AnomalyProbability`` in ``score_distribution``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from sklearn.metrics import (
    confusion_matrix,
    f1_score,
    precision_recall_curve,
    precision_score,
    recall_score,
    roc_curve,
)

from vae_core.foundations.score_checks import (
    MIN_CALIBRATION_SCORES,
    MIN_LABELLED_ANOMALIES,
    check_labels,
    check_scores,
    require_count,
)
from vae_core.foundations.score_distribution import upper_tail_threshold


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
    threshold, method, details = upper_tail_threshold(
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
    require_count(n_anomalies, MIN_LABELLED_ANOMALIES, "labelled anomalies", hint)
    require_count(y.size - n_anomalies, MIN_LABELLED_ANOMALIES, "labelled normal rows", hint)
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
    require_count(reference.size, MIN_CALIBRATION_SCORES, details["reference"])
    threshold, method, tail_details = upper_tail_threshold(reference, rate, policy)
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
    require_count(scores.size, MIN_CALIBRATION_SCORES, "calibration scores")
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
