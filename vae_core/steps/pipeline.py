"""The pipeline's steps as plain functions on plain data ("nodes").

The CLI chains them directly; the Prefect flows wrap each in a thin task. Nothing here knows
about Prefect or MLflow.

    split_data -> fit_detector -> calibrate_detector -> evaluate_detector -> (save, register)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from vae_core.estimator.detector import VAEDetector
from vae_core.evaluation.report import EvaluationReport, evaluate, write_report
from vae_core.foundations.calibrate import Calibration
from vae_core.foundations.config import CalibrationConfig, PipelineConfig, SplitConfig
from vae_core.network.train import EpochCallback


@dataclass
class Splits:
    """Row positions of the three disjoint splits of a table; ``left_out``: training rows
    kept out because reviewers confirmed them as anomalies (``leave_out_of_training``)."""

    train: np.ndarray
    calibration: np.ndarray
    test: np.ndarray
    left_out: int = 0

    def sizes(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.by_name().items()}

    def by_name(self) -> dict[str, np.ndarray]:
        """{"train": positions, "calibration": ..., "test": ...}."""
        return {k: getattr(self, k) for k in ("train", "calibration", "test")}


def leave_out_of_training(splits: Splits, positions: np.ndarray | None) -> Splits:
    """``splits`` with ``positions`` taken out of the training split (a cleaner fit: rows
    reviewers confirmed as anomalies); ``left_out`` says how many were in it."""
    if positions is None or not len(positions):
        return splits
    keep = ~np.isin(splits.train, positions)
    return replace(splits, train=splits.train[keep], left_out=int((~keep).sum()))


def split_data(data, cfg: SplitConfig) -> Splits:
    """Disjoint train / calibration / test positions of a dataset (a table's rows or images,
    ``vae_core.kinds``), stratified by label when there are enough anomalies for it; with
    ``train_on_normal_only`` labelled anomalies leave training. The first ``data.n_fit_only``
    (an image layout's ``train/`` folder) are the training split and the rest is split
    into calibration and test in the ratio of the two fractions."""
    y = data.labels
    if not data.n_fit_only:
        return split_rows(len(data), y, cfg)
    train = np.arange(data.n_fit_only)
    if cfg.train_on_normal_only and y is not None:
        train = train[y[train] == 0]
    cal, test = split_held_out(np.arange(data.n_fit_only, len(data)), y, cfg)
    return Splits(train, cal, test)


def held_out(data, cfg: SplitConfig):
    """The test split (features, labels) of a dataset, as training held it out with these
    settings: the rows or images promotion scores both models on."""
    test = split_data(data, cfg).test
    return data.features_at(test), data.labels_at(test)


def split_rows(n: int, y: np.ndarray | None, cfg: SplitConfig) -> Splits:
    """``split_data`` for any n rows (table rows, images) with optional labels y (n,)."""
    held = cfg.calibration_fraction + cfg.test_fraction
    train, rest = train_test_split(
        np.arange(n), test_size=held, random_state=cfg.seed, stratify=_strata(y)
    )
    cal, test = split_held_out(rest, y, cfg)
    if cfg.train_on_normal_only and y is not None:
        train = train[y[train] == 0]
    return Splits(np.sort(train), cal, test)


def split_held_out(rows: np.ndarray, y: np.ndarray | None, cfg: SplitConfig):
    """Held-out positions ``rows`` into (calibration, test) in the ratio of the two fractions,
    stratified by label when there are enough anomalies; each sorted."""
    share = cfg.test_fraction / (cfg.calibration_fraction + cfg.test_fraction)
    strata = None if y is None else _strata(y[rows])
    cal, test = train_test_split(rows, test_size=share, random_state=cfg.seed, stratify=strata)
    return np.sort(cal), np.sort(test)


def _strata(y: np.ndarray | None) -> np.ndarray | None:
    """Labels to stratify on, or None when a class has fewer than 3 rows."""
    return y if y is not None and min(np.bincount(y, minlength=2)) >= 3 else None


def fit_detector(
    features: pd.DataFrame, cfg: PipelineConfig, callbacks: Sequence[EpochCallback] = ()
) -> VAEDetector:
    """A VAEDetector with the config's model and training settings, fitted on ``features``.
    It keeps the table's id columns (``cfg.data.id_columns``) as ``id_columns_``, saved with
    it: scoring passes them through unless told otherwise (``vae-anomaly score``)."""
    det = VAEDetector(**cfg.detector_params()).fit(features, callbacks=callbacks)
    det.id_columns_ = list(cfg.data.id_columns)  # an image is named by its path: unused
    return det


def calibrate_detector(
    det: VAEDetector, features: pd.DataFrame, labels: np.ndarray | None, cfg: CalibrationConfig
) -> VAEDetector:
    """Set the detector's threshold on the calibration split by the configured policy."""
    return det.calibrate(features, labels, policy=cfg.policy, score=cfg.score, k=cfg.iwae_samples)


def evaluate_detector(
    det: VAEDetector,
    features: pd.DataFrame,
    labels: np.ndarray | None,
    cfg: CalibrationConfig,
    *,
    seed: int = 0,
    train_features=None,
) -> tuple[EvaluationReport, np.ndarray]:
    """The evaluation report on the test split and its scores (threshold units).

    With ``train_features`` (the training split) and labels of both classes, the report also
    carries the IsolationForest baseline on the same split (``isolation_forest_baseline``).
    """
    scores = det.threshold_score(features)
    usable = labels is not None and labels.sum() >= 1 and (labels == 0).sum() >= 1
    report = evaluate(
        scores,
        labels if usable else None,
        det.threshold_,
        n_bootstrap=cfg.bootstrap,
        random_state=seed,
    )
    if usable and train_features is not None:
        baseline = isolation_forest_baseline(det, train_features, features, labels, seed)
        report = replace(report, baseline=baseline)
    return report, scores


# At most this many training rows, and this many model-input values, for the baseline's fit:
# IsolationForest grows each tree on 256 rows, so a sample of the training split loses nothing
# of note and keeps memory bounded for streamed images.
_BASELINE_ROWS, _BASELINE_VALUES = 10_000, 1 << 25


def isolation_forest_baseline(det: VAEDetector, train_features, features, labels, seed: int = 0):
    """scikit-learn's IsolationForest (defaults, ``random_state=seed``) fitted on the training
    split and scored on ``features``, in the detector's model input (standardised numbers,
    one-hot categories, missing-value indicators; pixels in [0, 1]).

    Returns {method, settings, train_rows, roc_auc, average_precision}: the answer to "is it
    better than the simple thing?" on the same rows as the VAE's report.
    """
    from sklearn.ensemble import IsolationForest
    from sklearn.metrics import average_precision_score, roc_auc_score

    n_train = len(train_features)
    width = max(1, det.config_.layout.input_dim)
    keep = min(n_train, _BASELINE_ROWS, max(256, _BASELINE_VALUES // width))
    rows = np.sort(np.random.default_rng(seed).choice(n_train, keep, replace=False))
    forest = IsolationForest(random_state=seed).fit(det.model_input(train_features, rows))
    scores = -np.concatenate([forest.score_samples(u) for u in det.model_input_blocks(features)])
    return {
        "method": "IsolationForest",
        "settings": f"scikit-learn defaults, random_state={seed}, on the model input",
        "train_rows": int(keep),
        "roc_auc": float(roc_auc_score(labels, scores)),
        "average_precision": float(average_precision_score(labels, scores)),
    }


@dataclass
class TrainOutcome:
    """What training leaves for the tracking layer to log and a caller to print, all of it
    computed here (the tracking layer scores nothing).

    review : the reviewer's files and numbers ({name: path or value}; the dataset kind's
        review, ``vae_core.kinds``).
    examples : what the run shows of the model (the kind's ``examples``, ``protocol.DataKind``):
        ``input_example`` and ``example_output`` (the packaged model's signature),
        ``top_anomalies`` (tables: the highest test scores with their columns) and
        ``prior_samples`` (tables: rows decoded from the prior), each None where absent.
    """

    detector: VAEDetector
    splits: Splits
    report: EvaluationReport
    test_scores: np.ndarray
    report_paths: dict[str, Path]
    review: dict = field(default_factory=dict)
    examples: dict = field(default_factory=dict)


def save_outcome(
    det: VAEDetector,
    report: EvaluationReport,
    test_scores: np.ndarray,
    test_labels: np.ndarray | None,
    out_dir: Path,
) -> dict[str, Path]:
    """Write the model to ``out_dir/model`` and the evaluation report to ``out_dir/report``."""
    det.save(Path(out_dir) / "model")
    return write_report(
        report,
        Path(out_dir) / "report",
        calibration=Calibration(**det.calibration_),
        history=det.history_,
        scores=test_scores,
        y=test_labels,
    )
