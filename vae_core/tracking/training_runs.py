"""Training runs: opened with every setting as a parameter, per-epoch metrics through a ``fit``
callback, then the data, the evaluation, the review and the packaged model, for tables and
for images.
"""

from __future__ import annotations

import contextlib
import json
import time
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import mlflow
from mlflow.entities import Metric, Param

from vae_core.foundations.config import PipelineConfig
from vae_core.kinds.choice import kind_of
from vae_core.kinds.protocol import DataRecord, Dataset
from vae_core.network.train import EpochCallback, EpochLog
from vae_core.steps.pipeline import TrainOutcome
from vae_core.steps.run_notes import training_run_note
from vae_core.tracking.packaging import log_packaged_model
from vae_core.tracking.provenance import code_version, settings_params
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

MODEL_URI_TAG = "vae.model_uri"  # on a training run: the packaged model it logged


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
            if key != "epoch" and isinstance(value, int | float)  # not the phase's name
        ]
        with unreachable_as_error(target):
            client.log_batch(run_id, metrics=metrics)

    return log_epoch


def end_failed_run(target: TrackingTarget, run_id: str) -> None:
    """Mark a training run FAILED (training or logging raised)."""
    mlflow_client(target).set_terminated(run_id, "FAILED")


@contextlib.contextmanager
def training_run(target: TrackingTarget, cfg: PipelineConfig, data_source: str) -> Iterator[str]:
    """A training run open for the block (``start_training_run``), its id bound by ``as``:
    the block trains and logs (``log_training_run`` ends the run FINISHED); if the block
    raises, anything, the run is marked FAILED (``end_failed_run``) and the block's own
    error goes on, not one of ending the run. The one run wrapper of ``vae-anomaly train``
    and the train flow."""
    run_id = start_training_run(target, cfg, data_source)
    try:
        yield run_id
    except BaseException:
        with contextlib.suppress(Exception):  # keep the original error
            end_failed_run(target, run_id)
        raise


@tracking_call
def log_training_run(
    target: TrackingTarget,
    run_id: str,
    cfg: PipelineConfig,
    data: Dataset,
    outcome: TrainOutcome,
    data_source: str,
) -> str:
    """Log the outcome of training a table or images into the run opened by
    ``start_training_run``, end it (FINISHED), and return the packaged model's URI
    (``models:/m-...``). Computes nothing: the pipeline handed it all (``TrainOutcome``,
    the kind's ``record`` of the data).

    Logs the data (fingerprint as ``log_input``, ``data.*`` tags; images also
    ``data/images.csv``, every image with its class, label and split, and
    ``data/skipped_images.csv``), the feature schema, the test metrics with their intervals,
    the calibration, the evaluation report and plots, the review (``review/``; images also
    ``anomaly_maps/`` and ``evaluation/image_scores.csv``), tables' top anomalies of the test
    split with their contributing columns and samples from the prior, and the model.
    """
    shown = outcome.examples
    with mlflow.start_run(run_id=run_id):
        _log_data(kind_of(data).record(data, outcome.splits.by_name()), data_source)
        _log_evaluation(outcome)
        _log_examples(shown)
        _log_review(outcome.review)
        mlflow.log_dict(outcome.detector.preprocessor_.to_dict(), "feature_schema.json")
        info = log_packaged_model(
            outcome.detector,
            shown["input_example"],
            shown["example_output"],
            **shown["model_config"],
        )
        mlflow.set_tag(MODEL_URI_TAG, info.model_uri)
        _describe_training_run(target, run_id)
    return info.model_uri


def _describe_training_run(target: TrackingTarget, run_id: str) -> None:
    """The run's description, from what it logged (``run_notes.training_run_note``)."""
    client = mlflow_client(target)
    client.set_tag(run_id, NOTE_TAG, training_run_note(run_record(client.get_run(run_id))))


def _log_data(record: DataRecord, source: str) -> None:
    fp = record.fingerprint
    with warnings.catch_warnings():  # source-resolution and integer-column (label) hints
        warnings.simplefilter("ignore", UserWarning)
        described = dict(source=str(source), name=Path(str(source)).name)
        digest = str(fp["sha256"])[:16]
        if record.array is not None:
            dataset = mlflow.data.from_numpy(
                record.array, targets=record.targets, digest=digest, **described
            )
        else:
            dataset = mlflow.data.from_pandas(
                record.frame, targets=record.targets, digest=digest, **described
            )
        mlflow.log_input(dataset, context="training", tags={k: str(v) for k, v in fp.items()})
    for path, text in record.texts.items():
        mlflow.log_text(text, path)
    _set_tags({f"data.{k}": str(v) for k, v in fp.items()} | record.tags)


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
    if outcome.splits.left_out:  # reviewers' confirmed anomalies kept out of the fit
        tags["split.left_out_confirmed"] = str(outcome.splits.left_out)
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


def _log_examples(shown: dict) -> None:
    """The test split's top anomalies and the prior samples, where the pipeline made them."""
    with warnings.catch_warnings():  # MLflow's hint on integer columns (the label)
        warnings.simplefilter("ignore", UserWarning)
        if shown.get("top_anomalies") is not None:
            mlflow.log_table(shown["top_anomalies"], "evaluation/top_anomalies.json")
        if shown.get("prior_samples") is not None:
            mlflow.log_table(shown["prior_samples"], "samples/prior_samples.json")
