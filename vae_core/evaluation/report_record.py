"""An evaluation's record and how it reads: ``Estimate`` (a point estimate with its bootstrap
interval), ``EvaluationReport`` (the test-split numbers at one threshold) with its JSON-safe
dict and its Markdown summary for a reviewer. ``report.evaluate`` builds it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vae_core.foundations.calibrate import Calibration

METRIC_LABELS = {
    "roc_auc": "ROC-AUC",
    "average_precision": "Average precision",
    "precision": "Precision",
    "recall": "Recall",
    "f1": "F1",
    "fpr": "False-positive rate",
    "flagged_share": "Flagged share",
}
"""Rates shown in the Markdown table, in order; counts (tn, fp, fn, tp) go in the matrix."""


@dataclass(frozen=True)
class Estimate:
    """A point estimate and its percentile bootstrap interval ``[low, high]``."""

    value: float
    low: float
    high: float


@dataclass(frozen=True)
class EvaluationReport:
    """Test-split numbers at one threshold.

    ``metrics`` maps a name to an ``Estimate``: ``flagged_count``, ``flagged_share`` always;
    with labels also ``roc_auc``, ``average_precision``, ``precision``, ``recall``, ``f1``,
    ``fpr``, ``tn``, ``fp``, ``fn``, ``tp``. ``score_summary`` describes the score distribution
    per group (``all``, and ``normal`` / ``anomaly`` with labels).
    """

    threshold: float
    n_rows: int
    n_anomalies: int | None
    metrics: dict[str, Estimate]
    score_summary: dict[str, dict[str, float]]
    n_bootstrap: int
    confidence: float
    random_state: int
    # "Is it better than the simple thing?": IsolationForest on the same split (see
    # ``pipeline.isolation_forest_baseline``): method, settings, roc_auc, average_precision.
    baseline: dict[str, Any] | None = None

    @property
    def flagged_count(self) -> int:
        return int(self.metrics["flagged_count"].value)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (metrics as ``{"value", "low", "high"}``)."""
        return {
            "threshold": self.threshold,
            "tie_rule": "flagged iff anomaly_score > threshold",
            "n_rows": self.n_rows,
            "n_anomalies": self.n_anomalies,
            "metrics": {name: vars(est).copy() for name, est in self.metrics.items()},
            "score_summary": self.score_summary,
            "bootstrap": {
                "n_resamples": self.n_bootstrap,
                "confidence": self.confidence,
                "random_state": self.random_state,
                "scheme": "percentile, resampled within each class",
            },
            "baseline": self.baseline,
        }

    def to_markdown(self, calibration: Calibration | None = None) -> str:
        """Short summary for a reviewer: threshold and its origin, metrics, confusion matrix."""
        lines = ["# Anomaly detection: evaluation on the test split", ""]
        lines += _threshold_lines(self, calibration)
        lines += _metric_table(self)
        lines += baseline_lines(self)
        if self.n_anomalies is not None:
            lines += _confusion_table(self)
        return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- markdown


def format_number(value: float) -> str:
    """A number in 4 significant digits, as the report writes them."""
    return f"{value:.4g}"


def _threshold_lines(report: EvaluationReport, calibration: Calibration | None) -> list[str]:
    lines = [
        f"- Threshold: **{report.threshold:.6g}** (a row is flagged iff its anomaly score is "
        "strictly greater; a score equal to the threshold is normal)."
    ]
    if calibration is not None:
        params = ", ".join(f"{k}={v}" for k, v in calibration.params.items())
        anomalies = (
            "unlabelled"
            if calibration.n_anomalies is None
            else f"{calibration.n_anomalies} labelled anomalies"
        )
        lines.append(
            f"- Chosen by policy `{calibration.policy}` ({params}) with method "
            f"`{calibration.method}` on `{calibration.score_name}` of "
            f"{calibration.n_calibration} calibration rows ({anomalies})."
        )
        if calibration.fallback_reason:
            lines.append(f"- **Fallback:** {calibration.fallback_reason}.")
    anomalies = "" if report.n_anomalies is None else f", {report.n_anomalies} anomalies"
    lines.append(
        f"- Test split: {report.n_rows} rows{anomalies}; flagged {report.flagged_count} "
        f"({report.metrics['flagged_share'].value:.2%})."
    )
    return [*lines, ""]


def _metric_table(report: EvaluationReport) -> list[str]:
    level = f"{report.confidence:.0%} CI"
    lines = [f"| metric | value | {level} |", "|---|---|---|"]
    for name, label in METRIC_LABELS.items():
        if name in report.metrics:
            est = report.metrics[name]
            value, low, high = (format_number(v) for v in (est.value, est.low, est.high))
            lines.append(f"| {label} | {value} | {low} – {high} |")
    lines.append("")
    lines.append(
        f"Intervals: percentile bootstrap, {report.n_bootstrap} resamples within each class "
        f"(seed {report.random_state})."
    )
    return [*lines, ""]


# Closer than this in ROC-AUC and the sentence calls the two level (the figures' last digit).
_LEVEL = 0.005


def baseline_sentence(
    vae_roc_auc: float, baseline_roc_auc: float, method: str = "IsolationForest"
) -> str:
    """One sentence saying which is better, the VAE or the baseline, and by how much ROC-AUC,
    with both figures (the report, the registry, the flow's artifact and the demo say it)."""
    gap = vae_roc_auc - baseline_roc_auc
    figures = f"ROC-AUC {vae_roc_auc:.3f} against {baseline_roc_auc:.3f}"
    if abs(gap) < _LEVEL:
        return f"The VAE and {method} are level on the same rows ({figures})."
    if gap > 0:
        return f"The VAE is better than {method} by {gap:.3f} ROC-AUC on the same rows ({figures})."
    return (
        f"{method} is better than the VAE by {-gap:.3f} ROC-AUC on the same rows "
        f"({baseline_roc_auc:.3f} against {vae_roc_auc:.3f}): the simple baseline wins here."
    )


def baseline_lines(report: EvaluationReport) -> list[str]:
    """The VAE beside the baseline on the same test rows (threshold-free metrics)."""
    b = report.baseline
    if not b or "roc_auc" not in report.metrics:
        return []
    lines = [
        "## Against the simple thing",
        "",
        f"{b['method']} ({b['settings']}), fitted on the same training split and scored on",
        "the same test rows:",
        "",
        f"| metric | VAE | {b['method']} |",
        "|---|---|---|",
    ]
    for key in ("roc_auc", "average_precision"):
        ours = report.metrics[key].value
        lines.append(f"| {METRIC_LABELS[key]} | {format_number(ours)} | {format_number(b[key])} |")
    sentence = baseline_sentence(report.metrics["roc_auc"].value, b["roc_auc"], b["method"])
    return [*lines, "", sentence, ""]


def _confusion_table(report: EvaluationReport) -> list[str]:
    def cell(name: str) -> str:
        est = report.metrics[name]
        return f"{est.value:.0f} [{est.low:.0f}, {est.high:.0f}]"

    return [
        "Confusion matrix at the threshold (count [CI]):",
        "",
        "| | predicted normal | predicted anomaly |",
        "|---|---|---|",
        f"| actual normal | {cell('tn')} | {cell('fp')} |",
        f"| actual anomaly | {cell('fn')} | {cell('tp')} |",
        "",
    ]
