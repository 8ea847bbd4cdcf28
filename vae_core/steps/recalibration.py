"""Reviewers' verdicts used: the reviewed rows read back from the batches they were scored
in, a threshold set again on the calibration split plus those rows (the same weights), and
the words a reviewer reads about it. Plain data in and out; ``cli.loop`` and the flows chain
it with the registry.
"""

from __future__ import annotations

import copy
import glob
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from vae_core.data.ingest import read_table
from vae_core.estimator.detector import VAEDetector
from vae_core.foundations.calibrate import flag_anomalies
from vae_core.foundations.config import CalibrationConfig, PipelineConfig
from vae_core.kinds.choice import kind_of
from vae_core.steps.feedback import LABEL, id_text
from vae_core.steps.pipeline import Splits, TrainOutcome, evaluate_detector, save_outcome
from vae_core.steps.promotion import HeldOut


def _source_files(source: str) -> list[str]:
    """A scored batch's files: a file or a folder as given, or a glob's matches."""
    return sorted(glob.glob(source)) if any(ch in source for ch in "*?[") else [source]


def reviewed_rows(
    current: pd.DataFrame, scored: pd.DataFrame, id_columns: list[str]
) -> tuple[pd.DataFrame, np.ndarray, int]:
    """(rows, labels, missing): the rows of the current verdicts, read from the batch the
    latest scoring run that scored each id read (``scored``: id columns as text, ``run_id``,
    ``start_time``, ``source``), with every column the batch has, and the verdicts (n,)
    as labels; ``missing`` counts the verdicts whose batch is no longer readable or no
    longer holds the id (they are left out, and said)."""
    latest = (
        scored.sort_values("start_time")
        .drop_duplicates(id_columns, keep="last")
        .merge(current[[*id_columns, LABEL]], on=id_columns, how="inner")
    )
    frames, labels = [], []
    for source, wanted in latest.groupby("source", sort=True):
        paths = [p for p in _source_files(str(source)) if Path(p).exists()]
        if not paths:
            continue
        table = pd.concat([read_table(p) for p in paths], ignore_index=True)
        keys = id_text(table, id_columns)
        table = table.loc[~keys.duplicated(keep="first")]
        keys = keys.loc[table.index]
        found = keys.reset_index().merge(wanted[[*id_columns, LABEL]], on=id_columns)
        frames.append(table.loc[found["index"]])
        labels.append(found[LABEL].to_numpy(dtype=np.int64))
    if not frames:
        return pd.DataFrame(), np.zeros(0, dtype=np.int64), len(current)
    rows = pd.concat(frames, ignore_index=True)
    return rows, np.concatenate(labels), len(current) - len(rows)


@dataclass(frozen=True)
class Recalibration:
    """A threshold set again: the recalibrated detector (same weights), both thresholds,
    and what the reviewed rows said (their counts, and how many the old threshold flagged
    and how many of those the reviewers confirmed)."""

    detector: VAEDetector
    old_threshold: float
    calibration_rows: int
    reviewed: int
    anomalies: int
    missing: int
    old_flagged: int
    old_confirmed: int
    of_version: str = ""

    def counts(self) -> dict[str, int]:
        """What it rested on: the ``recalibration.*`` parameters of its run."""
        return {
            "calibration_rows": self.calibration_rows,
            "reviewed_rows": self.reviewed,
            "reviewed_anomalies": self.anomalies,
            "reviewed_normals": self.normals,
            "old_flagged_reviewed": self.old_flagged,
            "old_confirmed": self.old_confirmed,
        }

    @property
    def new_threshold(self) -> float:
        return float(self.detector.threshold_)

    @property
    def normals(self) -> int:
        return self.reviewed - self.anomalies

    def precision_words(self) -> str:
        if not self.old_flagged:
            return "the old threshold flagged none of the reviewed rows"
        precision = self.old_confirmed / self.old_flagged
        return (
            f"reviewers' precision at the old threshold was {precision:.2f} "
            f"({self.old_confirmed} of the {self.old_flagged} reviewed rows it flagged were "
            "confirmed anomalies)"
        )

    def description(self, version: str, policy: str) -> str:
        """The section the new version's description opens its review with."""
        missing = ""
        if self.missing:
            missing = (
                f" {self.missing} verdict(s) were left out: the batch that scored them is no "
                "longer readable or no longer holds their ids."
            )
        return (
            f"**Recalibration** of version {version} (the same weights): the threshold was "
            f"set again by policy `{policy}` on {self.calibration_rows} calibration rows plus "
            f"{self.reviewed} reviewed rows ({self.anomalies} anomalies, {self.normals} "
            f"normals): {self.old_threshold:.6g} -> {self.new_threshold:.6g} nats. "
            f"{self.precision_words()[0].upper()}{self.precision_words()[1:]}.{missing}"
        )


def recalibrate(
    det: VAEDetector,
    calibration: pd.DataFrame,
    calibration_labels: np.ndarray | None,
    reviewed: pd.DataFrame,
    reviewed_labels: np.ndarray,
    cfg: CalibrationConfig,
    missing: int = 0,
    of_version: str = "",
) -> Recalibration:
    """A copy of ``det`` with its threshold set by ``cfg.policy`` on the calibration rows
    plus the reviewed rows (with their verdicts as labels). Unlabelled calibration rows
    count as normal, as a policy on unlabelled calibration rows already takes them."""
    if not len(reviewed):
        raise ValueError("no reviewed rows to recalibrate on: record verdicts first")
    columns = list(calibration.columns)
    absent = [c for c in columns if c not in reviewed.columns]
    if absent:
        raise ValueError(f"the reviewed rows' batches lack the model's column(s) {absent}")
    scores = det.threshold_score(reviewed[columns])
    flagged = flag_anomalies(scores, det.threshold_)
    labels = np.concatenate(
        [
            np.zeros(len(calibration), np.int64)
            if calibration_labels is None
            else np.asarray(calibration_labels, np.int64),
            reviewed_labels,
        ]
    )
    features = pd.concat([calibration, reviewed[columns]], ignore_index=True)
    new = copy.deepcopy(det).calibrate(
        features, labels, policy=cfg.policy, score=cfg.score, k=cfg.iwae_samples
    )
    return Recalibration(
        new,
        float(det.threshold_),
        len(calibration),
        len(reviewed),
        int(reviewed_labels.sum()),
        missing,
        int(flagged.sum()),
        int(reviewed_labels[flagged].sum()),
        of_version,
    )


def recalibrated_outcome(det: VAEDetector, data, splits: Splits, cfg: PipelineConfig, out_dir):
    """What a training run of the recalibrated ``det`` records (``pipeline.TrainOutcome``):
    its test split evaluated again at the new threshold (with the IsolationForest baseline),
    the report written to ``out_dir``, the examples the packaged model shows. No review:
    the latent space is the recalibrated version's, unchanged."""
    test = splits.test
    labels = data.labels_at(test)
    report, scores = evaluate_detector(
        det,
        data.features_at(test),
        labels,
        cfg.calibration,
        seed=cfg.split.seed,
        train_features=data.features_at(splits.train),
    )
    paths = save_outcome(det, report, scores, labels, Path(out_dir))
    shown = kind_of(data).examples(det, data, test, scores, cfg)
    return TrainOutcome(det, splits, report, scores, paths, {}, shown)


def measure_with_verdicts(measure: HeldOut, verdicts) -> HeldOut:
    """``measure`` also on the rows reviewers judged, so that the gate scores challenger
    and champion on them (``promotion.reviewed_metrics``). ``verdicts``: what
    ``registry.reviewed_verdicts`` returns (None before the first verdict). Unchanged for
    images, or when no reviewed row can be read back with the model's columns."""
    if verdicts is None or not isinstance(measure.features, pd.DataFrame):
        return measure
    rows, labels, _ = reviewed_rows(*verdicts)
    columns = list(measure.features.columns)
    if not len(rows) or any(c not in rows.columns for c in columns):
        return measure
    return measure.with_reviewed(rows[columns], labels)
