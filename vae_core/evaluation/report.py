"""Evaluation on a test split at a fixed threshold: numbers, bootstrap intervals, plots.

The test split must be used for neither training nor calibration. Scores are ``anomaly_score``
arrays of shape (n,), higher = more anomalous; labels are 1 = anomaly, 0 = normal; a row is
flagged iff ``score > threshold`` (``calibrate.flag_anomalies``, the project's tie rule).

Point estimates are scikit-learn's. Intervals are percentile bootstraps with stratified
resampling (anomalies and normal rows are resampled separately, so every resample has both
classes and the test prevalence). A resample is a vector of counts, one per row, and every
metric is computed for a block of resamples at once from cumulative sums over the rows sorted
by score, which equals scikit-learn with ``sample_weight`` set to those counts.

``write_report`` writes ``report.json``, ``report.md`` and PNG plots, each atomically (a temp
file in the same folder, then ``os.replace``). The record and its Markdown are in
``report_record``, the plots in ``report_plots``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from vae_core.evaluation.report_plots import (
    plot_pr_curve,
    plot_roc_curve,
    plot_score_histogram,
    plot_training_curve,
)
from vae_core.evaluation.report_record import Estimate, EvaluationReport
from vae_core.foundations.atomic import atomic_write
from vae_core.foundations.calibrate import (
    Calibration,
    check_labels,
    check_scores,
    flag_anomalies,
    metrics_at_threshold,
)

_BOOTSTRAP_CELLS = 2_000_000  # resample counts held in memory at once (int64: 16 MB)


# --------------------------------------------------------------------------- evaluate


def evaluate(
    scores: Any,
    y: Any,
    threshold: float,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    random_state: int = 0,
) -> EvaluationReport:
    """Metrics at ``threshold`` on a test split, each with a stratified bootstrap interval.

    Parameters
    ----------
    scores : (n,) anomaly scores of the test rows, higher = more anomalous.
    y : (n,) labels, 1 = anomaly, 0 = normal, with both classes present; or None, then only
        the flagged count and share (resampling all rows) and the score summary.
    threshold : rows with ``score > threshold`` are flagged.
    n_bootstrap : number of resamples, >= 10.
    confidence : interval coverage in (0, 1); the interval is the percentile interval.
    random_state : seed; the report is a deterministic function of the inputs and this seed.

    Returns
    -------
    EvaluationReport
    """
    scores = check_scores(scores)
    y = check_labels(y, scores.size)
    _check_evaluate_args(y, threshold, n_bootstrap, confidence)
    point = _point_metrics(scores, y, threshold)
    rng = np.random.default_rng(random_state)
    resampled = _bootstrap_metrics(scores, y, threshold, n_bootstrap, rng)
    tail = 100.0 * (1.0 - confidence) / 2.0
    bounds = {name: np.percentile(draws, [tail, 100 - tail]) for name, draws in resampled.items()}
    metrics = {name: Estimate(float(v), *map(float, bounds[name])) for name, v in point.items()}
    return EvaluationReport(
        threshold=float(threshold),
        n_rows=int(scores.size),
        n_anomalies=None if y is None else int(y.sum()),
        metrics=metrics,
        score_summary=_score_summary(scores, y),
        n_bootstrap=int(n_bootstrap),
        confidence=float(confidence),
        random_state=int(random_state),
    )


def _check_evaluate_args(
    y: np.ndarray | None, threshold: float, n_bootstrap: int, confidence: float
) -> None:
    if not np.isfinite(threshold):
        raise ValueError(f"threshold must be finite, got {threshold!r}")
    if n_bootstrap < 10:
        raise ValueError(f"n_bootstrap must be >= 10, got {n_bootstrap}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in the open interval (0, 1), got {confidence!r}")
    if y is not None and y.min() == y.max():
        raise ValueError(
            f"y holds only class {int(y[0])}: the test metrics need both normal rows and "
            "anomalies (pass y=None for the flagged count and share only)"
        )


def _point_metrics(scores: np.ndarray, y: np.ndarray | None, threshold: float) -> dict:
    point = dict(metrics_at_threshold(scores, y, threshold))
    if y is not None:
        point["roc_auc"] = float(roc_auc_score(y, scores))
        point["average_precision"] = float(average_precision_score(y, scores))
    return point


def _score_summary(scores: np.ndarray, y: np.ndarray | None) -> dict[str, dict[str, float]]:
    groups = {"all": scores}
    if y is not None:
        groups |= {"normal": scores[y == 0], "anomaly": scores[y == 1]}
    q = [0.0, 0.5, 0.9, 0.99, 1.0]
    return {
        name: {"n": int(s.size), "mean": float(s.mean())}
        | dict(zip(("min", "p50", "p90", "p99", "max"), map(float, np.quantile(s, q)), strict=True))
        for name, s in groups.items()
    }


# --------------------------------------------------------------------------- bootstrap


def _resample_counts(strata: Sequence[np.ndarray], n_rows: int, n_draws: int, rng) -> np.ndarray:
    """(n_draws, n_rows) int64: how often each row appears in each resample, per stratum."""
    counts = np.zeros((n_draws, n_rows), dtype=np.int64)
    offsets = (np.arange(n_draws) * n_rows)[:, None]
    for rows in strata:
        picks = rows[rng.integers(0, rows.size, size=(n_draws, rows.size))]
        counts += np.bincount((picks + offsets).ravel(), minlength=n_draws * n_rows).reshape(
            n_draws, n_rows
        )
    return counts


def _ranking_metrics(tp_cum: np.ndarray, fp_cum: np.ndarray, ends: np.ndarray) -> tuple:
    """ROC-AUC and average precision for (b, n) cumulative counts over rows sorted by score,
    descending; ``ends`` are the last rows of each group of tied scores (shape (g,))."""
    tp = np.concatenate([np.zeros((tp_cum.shape[0], 1)), tp_cum[:, ends]], axis=1)
    fp = np.concatenate([np.zeros((fp_cum.shape[0], 1)), fp_cum[:, ends]], axis=1)
    n_pos, n_neg = tp[:, -1:], fp[:, -1:]
    # Trapezoids give a tie between classes half credit, as roc_auc_score does.
    auc = (np.diff(fp, axis=1) * (tp[:, 1:] + tp[:, :-1]) / 2).sum(axis=1) / (n_pos * n_neg)[:, 0]
    flagged = tp[:, 1:] + fp[:, 1:]
    precision = np.divide(tp[:, 1:], flagged, out=np.zeros_like(flagged), where=flagged > 0)
    ap = (np.diff(tp, axis=1) / n_pos * precision).sum(axis=1)
    return auc, ap


def _labelled_block(
    counts: np.ndarray, y_sorted: np.ndarray, ends: np.ndarray, n_flagged: int
) -> dict[str, np.ndarray]:
    """Every labelled metric for a (b, n) block of resample counts in score order."""
    tp_cum = np.cumsum(counts * y_sorted, axis=1, dtype=np.float64)
    fp_cum = np.cumsum(counts * (1 - y_sorted), axis=1, dtype=np.float64)
    n_pos, n_neg = tp_cum[:, -1], fp_cum[:, -1]
    last = n_flagged - 1  # flagged rows are the first n_flagged in descending score order
    tp = tp_cum[:, last] if n_flagged else np.zeros_like(n_pos)
    fp = fp_cum[:, last] if n_flagged else np.zeros_like(n_neg)
    auc, ap = _ranking_metrics(tp_cum, fp_cum, ends)
    flagged = tp + fp
    return {
        "tp": tp, "fp": fp, "fn": n_pos - tp, "tn": n_neg - fp,
        "precision": np.divide(tp, flagged, out=np.zeros_like(tp), where=flagged > 0),
        "recall": tp / n_pos,
        "f1": 2 * tp / (2 * tp + fp + (n_pos - tp)),
        "fpr": fp / n_neg,
        "roc_auc": auc,
        "average_precision": ap,
    }  # fmt: skip


def _bootstrap_metrics(
    scores: np.ndarray, y: np.ndarray | None, threshold: float, n_bootstrap: int, rng
) -> dict[str, np.ndarray]:
    """Each metric over ``n_bootstrap`` stratified resamples: name -> (n_bootstrap,)."""
    order = np.argsort(-scores, kind="stable")
    s_sorted = scores[order]
    y_sorted = np.zeros(scores.size, np.int8) if y is None else y[order]
    strata = [np.flatnonzero(y_sorted == c) for c in np.unique(y_sorted)]
    ends = np.append(np.flatnonzero(np.diff(s_sorted)), scores.size - 1)
    n_flagged = int(flag_anomalies(s_sorted, threshold).sum())
    block = max(1, _BOOTSTRAP_CELLS // scores.size)
    parts: list[dict[str, np.ndarray]] = []
    for start in range(0, n_bootstrap, block):
        counts = _resample_counts(strata, scores.size, min(block, n_bootstrap - start), rng)
        flagged = counts[:, :n_flagged].sum(axis=1).astype(np.float64)
        part = {"flagged_count": flagged, "flagged_share": flagged / scores.size}
        if y is not None:
            part |= _labelled_block(counts, y_sorted, ends, n_flagged)
        parts.append(part)
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


# --------------------------------------------------------------------------- files


def write_report(
    report: EvaluationReport,
    out_dir: str | os.PathLike,
    calibration: Calibration | None = None,
    history: Sequence[dict[str, Any]] | None = None,
    *,
    scores: Any = None,
    y: Any = None,
) -> dict[str, Path]:
    """Write ``report.json``, ``report.md`` and the PNG plots into ``out_dir``, atomically.

    Parameters
    ----------
    report : from ``evaluate`` on the test split.
    out_dir : folder, created if missing; existing files of the same names are replaced.
    calibration : the ``Calibration`` behind ``report.threshold``, described in both files.
    history : per-epoch dicts (``epoch``, ``train_loss``, ``val_loss``) for the training plot.
    scores, y : the (n,) test scores and labels given to ``evaluate``; the score histogram
        needs ``scores``, the ROC and precision-recall plots need both.

    Returns
    -------
    dict mapping ``json``, ``markdown`` and each written plot's name to its path.
    """
    if calibration is not None and calibration.threshold != report.threshold:
        raise ValueError(
            f"calibration threshold {calibration.threshold} differs from the report's "
            f"{report.threshold}: the report must be evaluated at the calibrated threshold"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = _write_plots(report, out, history, scores, y)
    payload = report.to_dict() | {
        "calibration": None if calibration is None else calibration.to_dict(),
        "plots": {name: path.name for name, path in paths.items()},
    }
    text = json.dumps(payload, indent=2, allow_nan=False) + "\n"
    markdown = report.to_markdown(calibration)
    paths["markdown"] = atomic_write(out / "report.md", lambda fh: fh.write(markdown.encode()))
    paths["json"] = atomic_write(out / "report.json", lambda fh: fh.write(text.encode()))
    return paths


def _write_plots(
    report: EvaluationReport,
    out: Path,
    history: Sequence[dict[str, Any]] | None,
    scores: Any,
    y: Any,
) -> dict[str, Path]:
    paths: dict[str, Path] = {}
    if scores is not None:
        scores = check_scores(scores)
        if scores.size != report.n_rows:
            raise ValueError(f"scores has {scores.size} rows; the report has {report.n_rows}")
        y = check_labels(y, scores.size)
        if y is not None and report.n_anomalies is not None:
            paths["roc_curve"] = plot_roc_curve(report, scores, y, out / "roc_curve.png")
            paths["pr_curve"] = plot_pr_curve(report, scores, y, out / "pr_curve.png")
        paths["score_histogram"] = plot_score_histogram(
            scores, y, report.threshold, out / "score_histogram.png"
        )
    if history is not None:
        paths["training_curve"] = plot_training_curve(history, out / "training_curve.png")
    return paths
