"""The PNG plots of a report: ROC and precision-recall curves with the operating point, the
score histogram with the threshold, the latent map and the training curve. Each is written
atomically (``atomic.atomic_write``). Plots use matplotlib's object API
(``matplotlib.figure.Figure``), which renders with Agg without touching the global backend,
so writing a report from a notebook does not switch the user's backend; matplotlib is
imported only when a plot is drawn.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import precision_recall_curve, roc_curve

from vae_core.evaluation.report_record import EvaluationReport, format_number
from vae_core.foundations.atomic import atomic_write


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
    ax.axvline(threshold, color="C3", ls="--", label=f"threshold {format_number(threshold)}")
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
