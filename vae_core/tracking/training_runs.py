"""Training runs: opened with every setting as a parameter, per-epoch metrics through a ``fit``
callback, then the data, the evaluation, the review and the packaged model, for tables and
for images.
"""

from __future__ import annotations

import json
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.entities import Metric, Param

from vae_core.config import PipelineConfig
from vae_core.detector import VAEDetector
from vae_core.image_pipeline import ImageData, image_fingerprint
from vae_core.ingest import LabelledTable
from vae_core.pipeline import Splits, TrainOutcome, score_table
from vae_core.promotion import training_run_note
from vae_core.tracking.packaging import input_example, log_packaged_model
from vae_core.tracking.provenance import code_version, settings_params, table_fingerprint
from vae_core.tracking.store import (
    NOTE_TAG,
    TrackingTarget,
    experiment_id_of,
    mlflow_client,
    mlflow_defaults,
    run_record,
    tracking_call,
    unreachable_as_error,
)
from vae_core.train import EpochCallback, EpochLog

MODEL_URI_TAG = "vae.model_uri"  # on a training run: the packaged model it logged
_TOP_ANOMALIES, _PRIOR_SAMPLES, _EXAMPLE_ROWS = 20, 200, 5


@tracking_call
def start_training_run(target: TrackingTarget, cfg: PipelineConfig, data_source: str) -> str:
    """Open a training run (status RUNNING) with every setting as a parameter; its id.

    Per-epoch metrics go in through ``epoch_logger``; ``log_training_run`` logs the rest and
    ends the run, ``end_failed_run`` marks it failed.
    """
    experiment_id = experiment_id_of(target)
    client = mlflow_client(target)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    tags = {"vae.step": "training", "data.source": str(data_source), **code_version()}
    run = client.create_run(experiment_id, run_name=f"train-{stamp}", tags=tags)
    params = [Param(k, v) for k, v in settings_params(cfg).items()]
    for start in range(0, len(params), 100):  # log_batch takes at most 100 params
        client.log_batch(run.info.run_id, params=params[start : start + 100])
    return run.info.run_id


def epoch_logger(target: TrackingTarget, run_id: str) -> EpochCallback:
    """A ``fit`` callback logging each epoch's losses (nats per row), beta and seconds."""
    mlflow_defaults(target)
    client = mlflow_client(target)

    def log_epoch(log: EpochLog) -> None:
        now = int(time.time() * 1000)
        values = log.to_dict()
        values["epoch_seconds"] = values.pop("seconds")
        metrics = [
            Metric(key, float(value), now, log.epoch)
            for key, value in values.items()
            if key != "epoch" and value is not None
        ]
        with unreachable_as_error(target):
            client.log_batch(run_id, metrics=metrics)

    return log_epoch


def end_failed_run(target: TrackingTarget, run_id: str) -> None:
    """Mark a training run FAILED (training or logging raised)."""
    mlflow_client(target).set_terminated(run_id, "FAILED")


@tracking_call
def log_training_run(
    target: TrackingTarget,
    run_id: str,
    cfg: PipelineConfig,
    table: LabelledTable,
    outcome: TrainOutcome,
    data_source: str,
) -> str:
    """Log the outcome of training into the run opened by ``start_training_run``, end it
    (FINISHED), and return the packaged model's URI (``models:/m-...``).

    Logs the data fingerprint (``log_input``), the feature schema, the test metrics with their
    intervals, the calibration, the evaluation report and plots, the top anomalies of the
    test split with their contributing features, samples from the prior, and the model.
    """
    with mlflow.start_run(run_id=run_id):
        _log_training_data(table, data_source, cfg.data.label_column)
        _log_evaluation(outcome)
        _log_examples(outcome, table, cfg.scoring.top_features)
        _log_review(outcome.review)
        example = input_example(table.features.iloc[outcome.splits.test[:_EXAMPLE_ROWS]])
        info = log_packaged_model(outcome.detector, example, cfg.scoring.top_features)
        mlflow.set_tag(MODEL_URI_TAG, info.model_uri)
        _describe_training_run(target, run_id)
    return info.model_uri


def _describe_training_run(target: TrackingTarget, run_id: str) -> None:
    """The run's description, from what it logged (``promotion.training_run_note``)."""
    client = mlflow_client(target)
    client.set_tag(run_id, NOTE_TAG, training_run_note(run_record(client.get_run(run_id))))


@tracking_call
def log_image_training_run(
    target: TrackingTarget,
    run_id: str,
    cfg: PipelineConfig,
    data: ImageData,
    outcome: TrainOutcome,
    data_source: str,
    review: dict[str, Path],
) -> str:
    """``log_training_run`` for images; ends the run and returns the packaged model's URI.

    Logs the data (fingerprint, ``data/images.csv``: every image with its class, label and
    split; ``data/skipped_images.csv``: files left out under ``on_error: skip``), the test
    metrics and report, the review files of ``image_pipeline.write_review`` (``review/``:
    prior samples and reconstructions grids; ``anomaly_maps/``: the top test anomalies, each
    beside its original and reconstruction; ``evaluation/image_scores.csv``) and the model,
    which takes image paths or arrays.
    """
    with mlflow.start_run(run_id=run_id):
        _log_image_data(data, outcome.splits, data_source)
        _log_evaluation(outcome)
        _log_review(review)
        mlflow.log_dict(outcome.detector.preprocessor_.to_dict(), "feature_schema.json")
        rows = outcome.splits.test[:_EXAMPLE_ROWS]
        example = pd.DataFrame({"path": [data.images.paths[i] for i in rows]})
        info = log_packaged_model(outcome.detector, example, 0, cfg.images.on_size_mismatch)
        mlflow.set_tag(MODEL_URI_TAG, info.model_uri)
        _describe_training_run(target, run_id)
    return info.model_uri


def _image_label_source(images) -> str:
    """Where the labels of an image set came from, for the run's tags."""
    if images.paths and "::" in images.paths[0]:  # file.npz::key[i]
        return "npz class array (normal classes = 0)"
    return "folder name (good = 0)"


def _log_image_data(data: ImageData, splits: Splits, source: str) -> None:
    fp, images = image_fingerprint(data.images), data.images
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        described = dict(source=str(source), name=Path(str(source)).name)
        digest = str(fp["sha256"])[:16]
        if data.streamed:  # too many to hold: the dataset is the list of files
            dataset = mlflow.data.from_pandas(images.manifest(), digest=digest, **described)
        else:
            dataset = mlflow.data.from_numpy(
                images.images, targets=images.labels, digest=digest, **described
            )
        mlflow.log_input(dataset, context="training", tags={k: str(v) for k, v in fp.items()})
    manifest = images.manifest().assign(split="")
    for name in ("train", "calibration", "test"):
        manifest.loc[getattr(splits, name), "split"] = name
    mlflow.log_text(manifest.to_csv(index=False), "data/images.csv")
    if images.skipped:
        mlflow.log_text(images.skipped_frame().to_csv(index=False), "data/skipped_images.csv")
    labelled = images.labels is not None
    tags = {f"data.{k}": str(v) for k, v in fp.items()}
    _set_tags(
        tags
        | {
            "data.kind": "images",
            "data.image_shape": "x".join(str(d) for d in images.images.shape[1:]),
            "data.label_column": _image_label_source(images) if labelled else "",
            "data.anomalies": str(int(images.labels.sum())) if labelled else "",
            "data.skipped": str(len(images.skipped)),
        }
    )


def _set_tags(tags: dict[str, str]) -> None:
    """Tag the active run, leaving out empty values (an unlabelled table has no label
    column; a calibration without a fallback has no fallback reason)."""
    mlflow.set_tags({k: v for k, v in tags.items() if v != ""})


_REVIEW_FILES = (
    "prior_samples", "reconstructions", "summary", "latent_map", "interpolations",
    "latent_summary",
)  # fmt: skip


def _log_review(review: dict) -> None:
    """The files and numbers of a training review (``TrainOutcome.review``): ``review/`` and
    the ``review_*`` metrics the registry description reads."""
    for name in _REVIEW_FILES:
        if review.get(name) is not None:
            mlflow.log_artifact(str(review[name]), "review")
    for name in ("reconstruction_retrieval", "sample_realism_auc"):
        if review.get(name) is not None:
            mlflow.log_metric(f"review_{name}", float(review[name]))
    for i, share in enumerate(review.get("variance_shares") or [], start=1):
        mlflow.log_metric(f"review_latent_variance_share_{i}", float(share))
    if review.get("maps") is not None and Path(review["maps"]).is_dir():
        mlflow.log_artifacts(str(review["maps"]), "anomaly_maps")
    if review.get("test_scores") is not None:
        mlflow.log_artifact(str(review["test_scores"]), "evaluation")


def _log_training_data(table: LabelledTable, source: str, label_column: str | None) -> None:
    fp = table_fingerprint(table)
    frame = table.features
    if table.labels is not None and label_column:
        frame = frame.assign(**{label_column: table.labels})
    with warnings.catch_warnings():  # source-resolution and integer-column (label) hints
        warnings.simplefilter("ignore", UserWarning)
        dataset = mlflow.data.from_pandas(
            frame,
            source=str(source),
            name=Path(str(source)).name,
            targets=label_column if table.labels is not None else None,
            digest=str(fp["sha256"])[:16],
        )
        mlflow.log_input(dataset, context="training", tags={k: str(v) for k, v in fp.items()})
    anomalies = "" if table.labels is None else str(int(np.sum(table.labels)))
    tags = {f"data.{k}": str(v) for k, v in fp.items()}
    _set_tags(tags | {"data.label_column": label_column or "", "data.anomalies": anomalies})


def _log_evaluation(outcome: TrainOutcome) -> None:
    det, report = outcome.detector, outcome.report
    metrics = {
        "threshold": report.threshold,
        "epochs_trained": len(det.history_),
        "best_epoch": det.best_epoch_ + 1,
    }
    for name, est in report.metrics.items():
        metrics |= {f"test_{name}": est.value, f"test_{name}_ci_low": est.low}
        metrics[f"test_{name}_ci_high"] = est.high
    if report.baseline:  # IsolationForest on the same split: "better than the simple thing?"
        for key in ("roc_auc", "average_precision"):
            metrics[f"baseline_iforest_{key}"] = report.baseline[key]
    mlflow.log_metrics(metrics)
    cal = det.calibration_ or {}
    tags = {f"split.{k}_rows": str(v) for k, v in outcome.splits.sizes().items()}
    tags |= {
        "calibration.policy": str(cal.get("policy", "contamination (fit)")),
        "calibration.params": json.dumps(cal.get("params", {"rate": det.contamination})),
        "calibration.method": str(cal.get("method", "training-score quantile")),
        "calibration.score": str(cal.get("score_name", det.score_kind_)),
        "calibration.rows": str(cal.get("n_calibration", "")),
        "calibration.anomalies": str(cal.get("n_anomalies") or ""),
        "calibration.fallback_reason": str(cal.get("fallback_reason") or ""),
        "test.rows": str(report.n_rows),
        "test.anomalies": "" if report.n_anomalies is None else str(report.n_anomalies),
        "test.confidence": str(report.confidence),
        "test.bootstrap": str(report.n_bootstrap),
    }
    _set_tags(tags)
    for path in outcome.report_paths.values():
        mlflow.log_artifact(str(path), "report")


def top_anomalies(
    det: VAEDetector, table: LabelledTable, rows: np.ndarray, top_features: int = 3, n: int = 20
) -> pd.DataFrame:
    """The n highest-scoring of ``rows``: ids, label, score, flag, probability and the
    columns that contributed most, highest score first."""
    scored = score_table(det, table.features.iloc[rows], table.ids.iloc[rows], max(top_features, 1))
    if table.labels is not None:
        scored["label"] = table.labels[rows]
    order = np.argsort(-scored["anomaly_score"].to_numpy(), kind="stable")[:n]
    return scored.iloc[order].reset_index(drop=True)


def _log_examples(outcome: TrainOutcome, table: LabelledTable, top_features: int) -> None:
    det = outcome.detector
    top = top_anomalies(det, table, outcome.splits.test, top_features, _TOP_ANOMALIES)
    samples = det.sample(_PRIOR_SAMPLES)
    with warnings.catch_warnings():  # MLflow's hint on integer columns (the label)
        warnings.simplefilter("ignore", UserWarning)
        mlflow.log_table(top, "evaluation/top_anomalies.json")
        if isinstance(samples, pd.DataFrame):  # image models sample arrays
            mlflow.log_table(samples, "samples/prior_samples.json")
    mlflow.log_dict(det.preprocessor_.to_dict(), "feature_schema.json")
