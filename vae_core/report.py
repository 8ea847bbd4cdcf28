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
file in the same folder, then ``os.replace``). Plots use matplotlib's object API
(``matplotlib.figure.Figure``), which renders with Agg without touching the global backend,
so writing a report from a notebook does not switch the user's backend.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import (
    average_precision_score,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from vae_core.atomic import atomic_write
from vae_core.calibrate import (
    Calibration,
    check_labels,
    check_scores,
    flag_anomalies,
    metrics_at_threshold,
)

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

_BOOTSTRAP_CELLS = 2_000_000  # resample counts held in memory at once (int64: 16 MB)


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


# --------------------------------------------------------------------------- markdown


def _fmt(value: float) -> str:
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
            lines.append(f"| {label} | {_fmt(est.value)} | {_fmt(est.low)} – {_fmt(est.high)} |")
    lines.append("")
    lines.append(
        f"Intervals: percentile bootstrap, {report.n_bootstrap} resamples within each class "
        f"(seed {report.random_state})."
    )
    return [*lines, ""]


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
        lines.append(f"| {METRIC_LABELS[key]} | {_fmt(ours)} | {_fmt(b[key])} |")
    return [*lines, ""]


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


# --------------------------------------------------------------------------- files


def _save_figure(fig, path: Path) -> Path:
    return atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=100))


def _new_axes(title: str, xlabel: str, ylabel: str):
    from matplotlib.figure import Figure  # lazy: importing vae_core must not load matplotlib

    fig = Figure(figsize=(5.5, 4.5), layout="constrained")
    ax = fig.add_subplot()
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    return fig, ax


def plot_roc_curve(report: EvaluationReport, scores: np.ndarray, y: np.ndarray, path: Path):
    """ROC curve of the (n,) test scores with the operating point at the threshold."""
    fpr, tpr, _ = roc_curve(y, scores)
    m = report.metrics
    fig, ax = _new_axes(f"ROC (AUC {m['roc_auc'].value:.3f})", "false-positive rate", "recall")
    ax.plot(fpr, tpr, label="test split")
    ax.plot([0, 1], [0, 1], ls=":", color="grey", label="chance")
    ax.plot(m["fpr"].value, m["recall"].value, "o", color="C3", label="threshold")
    ax.legend(loc="lower right")
    return _save_figure(fig, path)


def plot_pr_curve(report: EvaluationReport, scores: np.ndarray, y: np.ndarray, path: Path):
    """Precision-recall curve of the (n,) test scores with the operating point."""
    precision, recall, _ = precision_recall_curve(y, scores)
    m = report.metrics
    title = f"Precision-recall (AP {m['average_precision'].value:.3f})"
    fig, ax = _new_axes(title, "recall", "precision")
    ax.plot(recall, precision, drawstyle="steps-post", label="test split")
    ax.axhline(y.mean(), ls=":", color="grey", label="prevalence")
    ax.plot(m["recall"].value, m["precision"].value, "o", color="C3", label="threshold")
    ax.set(xlim=(0, 1.01), ylim=(0, 1.02))
    ax.legend(loc="lower left")
    return _save_figure(fig, path)


def _histogram_range(scores: np.ndarray, threshold: float) -> tuple[np.ndarray, str, str]:
    """Bins for a histogram; log bins when positive scores span 3+ orders of magnitude,
    else the 0.5-99.5% range (widened to show the threshold) when outliers would squash it."""
    lo, hi = float(scores.min()), float(scores.max())
    if lo > 0 and hi / lo >= 1e3:
        return np.geomspace(lo, hi, 60), "log", ""
    q_lo, q_hi = np.quantile(scores, [0.005, 0.995])
    if hi - lo > 10 * (q_hi - q_lo) > 0:
        q_lo, q_hi = min(q_lo, threshold), max(q_hi, threshold)
        n_out = int(((scores < q_lo) | (scores > q_hi)).sum())
        return np.linspace(q_lo, q_hi, 60), "linear", f" ({n_out} rows outside the range)"
    return np.linspace(lo, hi, 60), "linear", ""


def plot_score_histogram(
    scores: np.ndarray, y: np.ndarray | None, threshold: float, path: Path
) -> Path:
    """Density histograms of the (n,) scores per class, with the threshold line."""
    bins, xscale, note = _histogram_range(scores, threshold)
    xlabel = "anomaly score (higher = more anomalous)"
    fig, ax = _new_axes(f"Anomaly scores{note}", xlabel, "density")
    if y is None:
        groups = {"all rows": scores}
    else:
        groups = {"normal": scores[y == 0], "anomaly": scores[y == 1]}
    for label, group in groups.items():
        ax.hist(group, bins=bins, density=True, alpha=0.5, label=f"{label} (n={group.size})")
    ax.axvline(threshold, color="C3", ls="--", label=f"threshold {_fmt(threshold)}")
    ax.set_xscale(xscale)
    ax.legend()
    return _save_figure(fig, path)


def plot_latent_map(
    coords: np.ndarray,
    scores: np.ndarray,
    y: np.ndarray | None,
    shares: Sequence[float],
    path: Path,
) -> Path:
    """The latent space seen from its two directions of most variance: one point per test row
    (its posterior mean projected, (n, 2) ``coords``), coloured by anomaly score (colour scale
    clipped at the 1st and 99th percentiles, so one extreme row does not wash it out), known
    anomalies circled in red. ``shares`` : the variance share of each direction."""
    fig, ax = _new_axes(
        "Latent space of the test split (posterior means)",
        f"direction 1 ({shares[0]:.0%} of the variance)",
        f"direction 2 ({shares[1]:.0%} of the variance)" if len(shares) > 1 else "",
    )
    lo, hi = np.quantile(scores, [0.01, 0.99])
    y2 = coords[:, 1] if coords.shape[1] > 1 else np.zeros(len(coords))
    points = ax.scatter(coords[:, 0], y2, c=scores, cmap="viridis", vmin=lo, vmax=hi, s=12)
    fig.colorbar(points, ax=ax, label="anomaly score (nats)")
    if y is not None and (y == 1).any():
        known = y == 1
        ax.scatter(coords[known, 0], y2[known], s=40, facecolors="none", edgecolors="C3",
                   linewidths=1.0, label=f"known anomaly (n={int(known.sum())})")  # fmt: skip
        ax.legend(loc="best")
    return _save_figure(fig, path)


def _check_history(history: Sequence[dict[str, Any]]) -> None:
    for i, row in enumerate(history):
        missing = {"epoch", "train_loss", "val_loss"} - set(row)
        if missing:
            raise ValueError(f"history[{i}] lacks key(s) {sorted(missing)}")


def plot_training_curve(history: Sequence[dict[str, Any]], path: Path) -> Path:
    """Training and validation negative ELBO (nats, mean per row) per epoch.

    ``history`` is a list of dicts with keys ``epoch``, ``train_loss``, ``val_loss``; a
    ``val_loss`` of None (no validation split) is left out of the plot.
    """
    _check_history(history)
    if not history:
        raise ValueError("history is empty: no epoch to plot")
    fig, ax = _new_axes("Training", "epoch", "negative ELBO (nats per row)")
    for key, label in (("train_loss", "training"), ("val_loss", "validation")):
        points = [(r["epoch"], r[key]) for r in history if r[key] is not None]
        if points:
            ax.plot(*zip(*points, strict=True), marker=".", label=label)
    ax.legend()
    return _save_figure(fig, path)


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
