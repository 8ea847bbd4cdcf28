"""The one training orchestration: the steps of training a detector on a dataset of either
kind, in order, which ``vae-anomaly train`` calls directly and the train flow
(``flows/train.py``) runs as Prefect tasks, each step the same function:

    split_for_training -> fit_detector -> calibrate_detector -> evaluate_detector -> save_outcome
    -> the kind's review -> the kind's examples

``run_step(step, *args)`` runs each step: here a plain call; the flow wraps the step in a
task (retries on the steps that write files). Nothing here knows about Prefect or MLflow.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vae_core.foundations.config import PipelineConfig, SplitConfig
from vae_core.kinds.choice import kind_of
from vae_core.kinds.protocol import Dataset
from vae_core.network.train import EpochCallback
from vae_core.steps.pipeline import (
    Splits,
    TrainOutcome,
    calibrate_detector,
    evaluate_detector,
    fit_detector,
    leave_out_of_training,
    save_outcome,
    split_data,
)

RunStep = Callable[..., Any]  # run_step(step, *args, **kwargs) -> step's result


def call(step: Callable[..., Any], *args, **kwargs) -> Any:
    """Run a step in this process: the ``run_step`` of the command line."""
    return step(*args, **kwargs)


# The steps that write files: the flow retries them on a transient I/O error.
def writes_files(step: Callable[..., Any]) -> bool:
    """Whether ``step`` writes files (the model, the report, the review)."""
    return getattr(step, "__name__", "") in {"save_outcome", "review"}


def split_for_training(data: Dataset, cfg: SplitConfig, leave_out: np.ndarray | None) -> Splits:
    """The splits of ``data``, with ``leave_out`` (positions: rows reviewers confirmed as
    anomalies, ``feedback.confirmed_positions``) kept out of the training split."""
    return leave_out_of_training(split_data(data, cfg), leave_out)


def train_and_evaluate(
    data: Dataset,
    cfg: PipelineConfig,
    out_dir: str | Path,
    *,
    callbacks: Sequence[EpochCallback] = (),
    leave_out: np.ndarray | None = None,
    run_step: RunStep = call,
) -> TrainOutcome:
    """Split, fit, calibrate, evaluate a dataset of either kind; save the model to
    ``out_dir/model``, the report to ``out_dir/report`` and the review to ``out_dir/review``.
    ``callbacks`` run after every epoch; ``leave_out``: positions kept out of the training
    split (``split_for_training``). Returns everything the tracking layer logs and a
    caller prints (``TrainOutcome``)."""
    kind, out_dir = kind_of(data), Path(out_dir)
    splits = run_step(split_for_training, data, cfg.split, leave_out)
    train, cal, test = splits.train, splits.calibration, splits.test
    det = run_step(fit_detector, data.features_at(train), cfg, callbacks)
    det = run_step(
        calibrate_detector, det, data.features_at(cal), data.labels_at(cal), cfg.calibration
    )
    report, scores = run_step(
        evaluate_detector,
        det,
        data.features_at(test),
        data.labels_at(test),
        cfg.calibration,
        seed=cfg.split.seed,
        train_features=data.features_at(train),
    )
    paths = run_step(save_outcome, det, report, scores, data.labels_at(test), out_dir)
    review = run_step(kind.review, det, data, test, scores, out_dir=out_dir / "review", cfg=cfg)
    shown = run_step(kind.examples, det, data, test, scores, cfg)
    return TrainOutcome(det, splits, report, scores, paths, review, shown)
