"""MLflow for the pipeline: tracking, the packaged model, the registry, review and promotion.

Every function takes plain arguments (a ``TrackingTarget``, config sections, a detector, a
table) so that a Prefect task is one call; nothing here runs at import time. This module and
``mlflow_model.py`` are the only ones that import MLflow.

The life of a model, in calls::

    run_id = start_training_run(target, cfg, data_source)       # params, status RUNNING
    train_and_evaluate(..., callbacks=[epoch_logger(target, run_id)])   # per-epoch metrics
    log_training_run(target, run_id, cfg, table, outcome, data_source)   # the rest; ends it
        (images: log_image_training_run(..., data, outcome, data_source, review files))
    register_challenger(target, run_id)            # new version, alias @challenger; a rerun
                                                   #   finishes or replaces an unfinished one
    promote_challenger(target, cfg.promotion, *promotion.held_out_rows(table, cfg.split))
        (images: *image_pipeline.held_out_images(data, cfg.split))
    load_champion(target)                          # models:/NAME@champion -> VAEDetector
    log_scoring_run(target, champion.ref, scores, scores_path, threshold)
        (images: log_image_batch_scoring(target, champion.ref, score_image_batch(...)))

Registry aliases only (``champion``: what scheduled scoring loads; ``challenger``: the newest
version awaiting review), never the deprecated stages. Every promotion decision, including a
forced one, is written on the version as its ``promotion`` tag and a line in its description.
A version carries at most ``MAX_VERSION_TAGS`` tags (``version_tags``), so that the versions
table of the MLflow UI stays readable.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import glob
import hashlib
import importlib.metadata
import io
import json
import logging
import os
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import requests
from mlflow.entities import DatasetInput, InputTag, LoggedModelInput, Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature, infer_signature
from mlflow.tracking import MlflowClient
from mlflow.types.schema import Array, ColSpec, ParamSchema, ParamSpec, Schema

import vae_core
from vae_core.config import PipelineConfig, PromotionConfig
from vae_core.detector import VAEDetector
from vae_core.image_pipeline import ImageBatch, ImageData, image_fingerprint, score_image_input
from vae_core.ingest import LabelledTable
from vae_core.latent import PREDICT_OUTPUTS
from vae_core.pipeline import Splits, TrainOutcome, score_table
from vae_core.preprocess import ImagePreprocessor
from vae_core.promotion import (
    CHALLENGER,
    CHAMPION,
    PromotionDecision,
    RunRecord,
    decide,
    held_out_metrics,
    review_description,
    training_fingerprint,
    training_run_note,
)
from vae_core.report import plot_score_histogram
from vae_core.train import EpochCallback, EpochLog

MODEL_URI_TAG = "vae.model_uri"  # on a training run: the packaged model it logged
NOTE_TAG = "mlflow.note.content"  # a run's description in the MLflow UI
DETECTOR_ARTIFACT = "detector"  # the pyfunc artifact holding weights.pt + model.json
# What the packaged model imports when it is loaded; versions are pinned to this environment's.
RUNTIME_PACKAGES = (
    "mlflow",
    "torch",
    "numpy",
    "pandas",
    "scikit-learn",
    "scipy",
    "pyarrow",
    "pydantic",
    "pyyaml",
)
_REMOTE_SCHEMES = ("http://", "https://", "databricks")
_TOP_ANOMALIES, _PRIOR_SAMPLES, _EXAMPLE_ROWS = 20, 200, 5


class TrackingUnavailable(ConnectionError):
    """The tracking store did not answer; the message names its URI."""


# --------------------------------------------------------------------------- the store


@dataclass(frozen=True)
class TrackingTarget:
    """Where runs, artifacts and the registry live, resolved from ``mlflow.yml``.

    artifact_location : root for new experiments' artifacts; None leaves it to a tracking
        server (its ``--artifacts-destination``).
    """

    uri: str
    experiment: str
    model_name: str
    artifact_location: str | None
    max_retries: int = 3

    @classmethod
    def from_config(cls, cfg: PipelineConfig) -> TrackingTarget:
        uri, location = cfg.tracking_uri(), cfg.tracking.artifact_location
        if ":/" not in location:  # a plain path: local stores only
            location = None if uri.startswith(_REMOTE_SCHEMES) else str(cfg.path(location))
        return cls(
            uri=uri,
            experiment=cfg.tracking.experiment,
            model_name=cfg.tracking.registered_model,
            artifact_location=location,
            max_retries=cfg.tracking.max_retries,
        )

    def ui_command(self) -> str:
        """How to open the MLflow UI on this store."""
        if self.uri.startswith(_REMOTE_SCHEMES):
            return f"open {self.uri} in a browser"
        return f"mlflow ui --backend-store-uri {self.uri} --host 127.0.0.1 --port 5000"


def check_reachable(target: TrackingTarget) -> None:
    """Raise ``TrackingUnavailable`` naming the URI when a tracking server does not answer
    ``/health`` after ``1 + max_retries`` attempts (0.25, 0.5, 1 ... s apart). A sqlite
    store only needs its folder, which is created."""
    if target.uri.startswith("sqlite:///"):
        Path(target.uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        return
    if not target.uri.startswith(("http://", "https://")):
        return
    error: Exception | None = None
    for attempt in range(target.max_retries + 1):
        if attempt:
            time.sleep(0.25 * 2 ** (attempt - 1))
        try:
            if requests.get(f"{target.uri.rstrip('/')}/health", timeout=5).ok:
                return
            error = RuntimeError("/health did not answer 200")
        except requests.RequestException as exc:
            error = exc
    raise TrackingUnavailable(
        f"MLflow tracking server {target.uri} is unreachable after "
        f"{target.max_retries + 1} attempts ({type(error).__name__}); is it running? "
        "(MLFLOW_TRACKING_URI overrides tracking.uri in mlflow.yml)"
    )


# Process-wide defaults (an explicit environment wins): MLflow's HTTP retries bounded by
# tracking.max_retries (its default, 7 with exponential backoff, waits minutes on a dead
# server), and no download progress bars in logs.
def _mlflow_defaults(target: TrackingTarget) -> None:
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(target.max_retries))
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


@contextlib.contextmanager
def _unreachable_as_error(target: TrackingTarget) -> Iterator[None]:
    """A store that stops answering mid-call becomes ``TrackingUnavailable`` naming it."""
    try:
        yield
    except MlflowException as exc:
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, requests.RequestException) or "Max retries" in str(exc):
            detail = exc.message if len(exc.message) <= 200 else exc.message[:200] + "..."
            raise TrackingUnavailable(
                f"MLflow tracking server {target.uri} stopped answering ({detail})"
            ) from exc
        raise


def _tracking_call(fn):
    """Check the store, point MLflow at it, and report it if it stops answering."""

    @functools.wraps(fn)
    def wrapper(target: TrackingTarget, *args, **kwargs):
        _mlflow_defaults(target)
        check_reachable(target)
        # set_tracking_uri also exports MLFLOW_TRACKING_URI, which outranks mlflow.yml: put
        # the environment back so a later config in this process is read as written.
        exported = os.environ.get("MLFLOW_TRACKING_URI")
        mlflow.set_tracking_uri(target.uri)
        try:
            with _unreachable_as_error(target):
                return fn(target, *args, **kwargs)
        finally:
            if exported is None:
                os.environ.pop("MLFLOW_TRACKING_URI", None)
            else:
                os.environ["MLFLOW_TRACKING_URI"] = exported

    return wrapper


def _client(target: TrackingTarget) -> MlflowClient:
    return MlflowClient(tracking_uri=target.uri, registry_uri=target.uri)


def _experiment_id(target: TrackingTarget) -> str:
    client = _client(target)
    exp = client.get_experiment_by_name(target.experiment)
    if exp is None:
        try:
            return client.create_experiment(target.experiment, target.artifact_location)
        except MlflowException as exc:  # created meanwhile by another process
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            exp = client.get_experiment_by_name(target.experiment)
    if exp.lifecycle_stage != "active":
        raise ValueError(
            f"experiment {target.experiment!r} in {target.uri} is deleted: restore it with "
            f"`mlflow experiments restore --experiment-id {exp.experiment_id}` or rename "
            "tracking.experiment"
        )
    return exp.experiment_id


@_tracking_call
def connect(target: TrackingTarget) -> str:
    """The experiment's id, created with the configured artifact location if missing."""
    return _experiment_id(target)


# --------------------------------------------------------------------------- fingerprints


def table_fingerprint(table: LabelledTable) -> dict[str, str | int]:
    """SHA-256 of a table's feature names, values and labels, with its shape."""
    h = hashlib.sha256(json.dumps([str(c) for c in table.features.columns]).encode())
    h.update(pd.util.hash_pandas_object(table.features, index=False).to_numpy().tobytes())
    if table.labels is not None:
        h.update(np.asarray(table.labels, dtype=np.int64).tobytes())
    rows, columns = table.features.shape
    return {"sha256": h.hexdigest(), "rows": int(rows), "columns": int(columns)}


def code_version() -> dict[str, str]:
    """The package version and the git commit of its checkout (``-dirty`` with edits)."""
    here = Path(vae_core.__file__).resolve().parent

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(here), *args], capture_output=True, text=True, timeout=10
        )
        return done.stdout.strip() if done.returncode == 0 else ""

    try:
        commit = git("rev-parse", "HEAD")
        dirty = commit and git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", ""
    commit = (commit + "-dirty" if dirty else commit) or "unknown"
    return {"code.version": vae_core.__version__, "code.git_commit": commit}


def settings_params(cfg: PipelineConfig) -> dict[str, str]:
    """Every setting of the config but the tracking section, flattened to ``section.key``."""
    flat: dict[str, str] = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), inner)
        else:
            flat[prefix] = json.dumps(value) if isinstance(value, list | tuple) else str(value)

    walk("", cfg.model_dump(mode="json", exclude={"tracking", "root"}))
    return flat


def pip_requirements() -> list[str]:
    """Pinned requirements of the packaged model (local version labels like +cpu dropped)."""
    return [
        f"{name}=={importlib.metadata.version(name).split('+')[0]}" for name in RUNTIME_PACKAGES
    ]


# --------------------------------------------------------------------------- training runs


@_tracking_call
def start_training_run(target: TrackingTarget, cfg: PipelineConfig, data_source: str) -> str:
    """Open a training run (status RUNNING) with every setting as a parameter; its id.

    Per-epoch metrics go in through ``epoch_logger``; ``log_training_run`` logs the rest and
    ends the run, ``end_failed_run`` marks it failed.
    """
    experiment_id = _experiment_id(target)
    client = _client(target)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    tags = {"vae.step": "training", "data.source": str(data_source), **code_version()}
    run = client.create_run(experiment_id, run_name=f"train-{stamp}", tags=tags)
    params = [Param(k, v) for k, v in settings_params(cfg).items()]
    for start in range(0, len(params), 100):  # log_batch takes at most 100 params
        client.log_batch(run.info.run_id, params=params[start : start + 100])
    return run.info.run_id


def epoch_logger(target: TrackingTarget, run_id: str) -> EpochCallback:
    """A ``fit`` callback logging each epoch's losses (nats per row), beta and seconds."""
    _mlflow_defaults(target)
    client = _client(target)

    def log_epoch(log: EpochLog) -> None:
        now = int(time.time() * 1000)
        values = log.to_dict()
        values["epoch_seconds"] = values.pop("seconds")
        metrics = [
            Metric(key, float(value), now, log.epoch)
            for key, value in values.items()
            if key != "epoch" and value is not None
        ]
        with _unreachable_as_error(target):
            client.log_batch(run_id, metrics=metrics)

    return log_epoch


def end_failed_run(target: TrackingTarget, run_id: str) -> None:
    """Mark a training run FAILED (training or logging raised)."""
    _client(target).set_terminated(run_id, "FAILED")


@_tracking_call
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
        example = _input_example(table.features.iloc[outcome.splits.test[:_EXAMPLE_ROWS]])
        info = log_packaged_model(outcome.detector, example, cfg.scoring.top_features)
        mlflow.set_tag(MODEL_URI_TAG, info.model_uri)
        _describe_training_run(target, run_id)
    return info.model_uri


def _describe_training_run(target: TrackingTarget, run_id: str) -> None:
    """The run's description, from what it logged (``promotion.training_run_note``)."""
    client = _client(target)
    client.set_tag(run_id, NOTE_TAG, training_run_note(_record(client.get_run(run_id))))


@_tracking_call
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


def _input_example(features: pd.DataFrame) -> pd.DataFrame:
    """Rows for the signature, integer columns as float: scoring data may hold NaN there
    (MLflow rejects floats for an integer column but accepts integers for a double one)."""
    ints = features.select_dtypes(include=["integer"]).columns
    return features.astype({c: "float64" for c in ints}).reset_index(drop=True)


def log_packaged_model(
    det: VAEDetector,
    example: pd.DataFrame,
    top_features: int = 3,
    on_size_mismatch: str = "reject",
):
    """Log ``det`` as a pyfunc model in the active run (models-from-code, no pickle of
    project classes) with a signature, the input example and pinned requirements.

    example : raw feature rows; for an image detector, a DataFrame of image paths (``path``).
    on_size_mismatch : image models: "reject" or "resize" image files of another size.
    Returns MLflow's ``ModelInfo`` (``model_uri`` is ``models:/m-<id>``).
    """
    package = Path(vae_core.__file__).resolve().parent
    config = {"top_features": int(top_features), "on_size_mismatch": on_size_mismatch}
    with tempfile.TemporaryDirectory() as tmp, _without_info("mlflow.pyfunc"):
        det.save(Path(tmp) / "detector")
        return mlflow.pyfunc.log_model(
            name="model",
            python_model=str(package / "mlflow_model.py"),
            artifacts={DETECTOR_ARTIFACT: str(Path(tmp) / "detector")},
            code_paths=[str(package)],
            model_config=config,
            signature=_signature(det, example, config),
            input_example=example,
            pip_requirements=pip_requirements(),
        )


@contextlib.contextmanager
def _without_info(name: str) -> Iterator[None]:
    """Logger ``name`` at WARNING meanwhile: MLflow's INFO line "Validating input example
    against model signature" on every training run is noise (the validation still runs)."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _signature(det: VAEDetector, example: pd.DataFrame, config: dict) -> ModelSignature:
    """Tables: the example's columns. Images: an optional ``path`` (image file) column or an
    optional ``image`` column of (H, W) or (C, H, W) integer arrays."""
    params = ParamSchema([ParamSpec("output", "string", PREDICT_OUTPUTS[0])])  # predict(params=...)
    if not isinstance(det.preprocessor_, ImagePreprocessor):
        output = score_table(det, example, top_features=config["top_features"])
        return infer_signature(example, output.reset_index(drop=True), params={"output": "scores"})
    output = score_image_input(det, example, config["on_size_mismatch"])
    pixels = Array(Array("long"))
    if det.preprocessor_.image_shape[0] > 1:
        pixels = Array(pixels)
    inputs = Schema(
        [ColSpec("string", "path", required=False), ColSpec(pixels, "image", required=False)]
    )
    return ModelSignature(inputs, infer_signature(example, output).outputs, params)


# --------------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class ModelVersionRef:
    """One registered model version: ``uri`` is ``models:/NAME/VERSION``."""

    name: str
    version: str
    run_id: str | None = None
    model_id: str | None = None
    alias: str | None = None

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def _ref(mv, alias: str | None = None) -> ModelVersionRef:
    model_id = mv.model_id
    if model_id is None and (mv.source or "").startswith("models:/m-"):
        model_id = mv.source.removeprefix("models:/")
    return ModelVersionRef(mv.name, str(mv.version), mv.run_id, model_id, alias)


def _alias_version(client: MlflowClient, name: str, alias: str):
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def _model_version(client: MlflowClient, name: str, version: str | int):
    try:
        return client.get_model_version(name, str(version))
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise ValueError(f"registered model {name!r} has no version {version}") from None
        raise


def _ensure_registered_model(client: MlflowClient, name: str) -> None:
    try:
        client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        client.create_registered_model(
            name,
            description=(
                "Gaussian VAE anomaly detector (vae_core). Aliases: `champion` is what "
                f"scheduled scoring loads (models:/{name}@champion); `challenger` is the newest "
                "trained version awaiting review. Each version's description is its review; "
                "`vae-anomaly promote` moves `champion` through the gate in mlflow.yml."
            ),
        )


def _record(run) -> RunRecord:
    data = run.data
    return RunRecord(run.info.run_id, dict(data.params), dict(data.tags), dict(data.metrics))


@_tracking_call
def register_challenger(target: TrackingTarget, run_id: str) -> ModelVersionRef:
    """Register the model a training run logged as a new version with alias ``challenger``,
    a description written for its reviewer (``promotion.review_description``, which names
    the columns added and removed against the champion's) and the few tags of
    ``version_tags`` (test ROC-AUC, threshold, policy, rows, data fingerprint, promotion
    decision), all read back from the run.

    Safe to rerun after a failure at any step (a tracking server that died, a killed
    process). The version is created tagged ``registration_state: incomplete``, in the same
    write as its other tags, and that tag is removed (the version is complete) only after
    its description and alias are set. A rerun for the same run finishes that version (or
    returns it, if it was finished) instead of creating another; a rerun of the same training
    as a new run (the same ``training_fingerprint``: settings and data) deletes the
    unfinished versions it supersedes. ``promote_challenger`` refuses an unfinished version.
    """
    client, name = _client(target), target.model_name
    run = _record(client.get_run(run_id))
    model_uri = run.tags.get(MODEL_URI_TAG)
    if not model_uri:
        raise ValueError(f"run {run_id} has no packaged model: call log_training_run first")
    try:
        with _unreachable_as_error(target):
            mv = _version_of_run(client, name, run) or _create_version(client, name, run)
            if mv.tags.get(REGISTRATION_STATE) != INCOMPLETE:  # finished by an earlier call
                return _ref(mv, CHALLENGER if CHALLENGER in mv.aliases else None)
            return _finish_registration(client, name, run, str(mv.version))
    except TrackingUnavailable as exc:
        raise TrackingUnavailable(
            f"{exc}. Registering training run {run_id} did not finish; once the server "
            "answers, run the registration again (vae-anomaly train, or the train flow): it "
            f"finishes or replaces the unfinished version ({REGISTRATION_STATE}: {INCOMPLETE}) "
            "instead of adding another."
        ) from exc


# Version tag: INCOMPLETE from creation until the last step of registration, which removes
# it (a tag less in the versions table); "complete" on versions registered before that.
REGISTRATION_STATE = "registration_state"
INCOMPLETE = "incomplete"
FINGERPRINT_TAG = "training_fingerprint"  # promotion.training_fingerprint of the run


def _version_of_run(client: MlflowClient, name: str, run: RunRecord):
    """The version registered from ``run`` (finished or not), or None. Unfinished versions
    of the same training from other runs are deleted: this registration supersedes them."""
    fingerprint = training_fingerprint(run)
    found = client.search_model_versions(
        f"name = '{name}' AND tags.{FINGERPRINT_TAG} = '{fingerprint}'"
    )
    ours = None
    for mv in sorted(found, key=lambda v: int(v.version)):
        if ours is None and mv.run_id == run.run_id:
            ours = mv
        elif mv.tags.get(REGISTRATION_STATE) == INCOMPLETE:
            client.delete_model_version(name, mv.version)
    return ours


def _create_version(client: MlflowClient, name: str, run: RunRecord):
    """A new version of the run's packaged model, tagged ``registration_state: incomplete``."""
    _ensure_registered_model(client, name)
    with contextlib.redirect_stderr(io.StringIO()):  # two progress lines; we report the version
        return mlflow.register_model(run.tags[MODEL_URI_TAG], name, tags=version_tags(run))


def _finish_registration(
    client: MlflowClient, name: str, run: RunRecord, version: str
) -> ModelVersionRef:
    """Write the review, move ``challenger`` to ``version``, and mark it complete (last: the
    ``registration_state: incomplete`` tag removed)."""
    champion = _alias_version(client, name, CHAMPION)
    champion_run = _record_with_schema(client, champion.run_id) if champion else None
    run = dataclasses.replace(run, schema=_feature_schema(client, run.run_id))
    old = None if champion is None else str(champion.version)
    description = review_description(name, version, run, old, champion_run)
    client.update_model_version(name, version, description=description)
    client.set_registered_model_alias(name, CHALLENGER, version)
    client.delete_model_version_tag(name, version, REGISTRATION_STATE)
    return _ref(client.get_model_version(name, version), CHALLENGER)


# The versions table of the MLflow UI shows every tag of every version: at most 8, chosen for
# scanning (the review in the description, the run's params, tags and metrics hold the rest).
PROMOTION_TAG = "promotion"  # pending, promoted, forced, rejected, or "replaced by vN"
MAX_VERSION_TAGS = 8


def version_tags(run: RunRecord) -> dict[str, str]:
    """Model version tags from a training run: what a reviewer scans, sorts and filters on
    (test ROC-AUC, threshold, calibration policy, rows, data fingerprint, the promotion
    decision), the fingerprint that registration keys its resume on
    (``training_fingerprint``), and ``registration_state: incomplete`` until registration
    finishes. Unlabelled data has no ROC-AUC tag."""
    out = {
        "test_roc_auc": _short(run.metrics.get("test_roc_auc")),
        "threshold": _short(run.metrics.get("threshold")),
        "policy": run.tags.get("calibration.policy", ""),
        "rows": run.tags.get("data.rows", ""),
        "data_sha256": run.tags.get("data.sha256", "")[:16],
        PROMOTION_TAG: "pending",
        FINGERPRINT_TAG: training_fingerprint(run),
        REGISTRATION_STATE: INCOMPLETE,
    }
    return {k: v for k, v in out.items() if v != ""}


def _short(value: float | None) -> str:
    return "" if value is None or np.isnan(value) else f"{value:.4g}"


def _feature_schema(client: MlflowClient, run_id: str) -> dict | None:
    """A training run's ``feature_schema.json`` (its columns and their kinds), or None."""
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = client.download_artifacts(run_id, "feature_schema.json", tmp)
            return json.loads(Path(path).read_text())
    except (MlflowException, OSError, ValueError):
        return None


def _record_with_schema(client: MlflowClient, run_id: str) -> RunRecord:
    return dataclasses.replace(
        _record(client.get_run(run_id)), schema=_feature_schema(client, run_id)
    )


# --------------------------------------------------------------------------- promotion


@_tracking_call
def promote_challenger(
    target: TrackingTarget,
    gate: PromotionConfig,
    features: pd.DataFrame | np.ndarray,
    labels: np.ndarray | None = None,
    *,
    version: str | int | None = None,
    force: bool = False,
    reason: str | None = None,
    data_description: str = "held-out rows",
) -> PromotionDecision:
    """Score the challenger (``version``, default the ``challenger`` alias) and the champion
    on the same held-out rows and move ``champion`` to it iff it passes the gate
    (``promotion.gate_checks``); ``force`` with a ``reason`` moves it regardless, recorded as
    a manual override. The decision goes on the version (its ``promotion`` tag, a line in its
    description); a promoted version loses the ``challenger`` alias.

    features, labels : held-out rows (n, d), or images, and optional labels (n,), 1 = anomaly;
        use ``promotion.held_out_rows`` (``image_pipeline.held_out_images``).
    """
    if force and not (reason and reason.strip()):
        raise ValueError("a forced promotion needs a reason (--reason TEXT)")
    client, name = _client(target), target.model_name
    challenger = _challenger_version(client, name, version)
    champion = _alias_version(client, name, CHAMPION)
    old = None if champion is None else str(champion.version)
    if old == str(challenger.version):
        return PromotionDecision(name, old, old, "unchanged")
    ours = held_out_metrics(_load_detector(name, challenger.version), features, labels)
    theirs = None if old is None else held_out_metrics(_load_detector(name, old), features, labels)
    note = f"Scored on {data_description} ({len(features)} rows)"
    decision = decide(
        name, str(challenger.version), old, gate, ours, theirs, reason if force else None, note
    )
    if decision.promoted:
        _move_champion(client, decision)
    _record_decision(client, decision)
    return decision


def _challenger_version(client: MlflowClient, name: str, version: str | int | None):
    if version is not None:
        mv = _model_version(client, name, version)
    else:
        mv = _alias_version(client, name, CHALLENGER)
    if mv is None:
        raise ValueError(
            f"registered model {name!r} has no version with alias {CHALLENGER!r}: train one "
            "(vae-anomaly train) or name it with --version"
        )
    if mv.tags.get(REGISTRATION_STATE) == INCOMPLETE:
        raise ValueError(
            f"version {mv.version} of {name!r} is not fully registered ({REGISTRATION_STATE}: "
            f"{INCOMPLETE}, run {mv.run_id}): run the registration again "
            "(vae-anomaly train, or the train flow) to finish or replace it"
        )
    return mv


def _move_champion(client: MlflowClient, decision: PromotionDecision) -> None:
    name, version = decision.model_name, decision.version
    client.set_registered_model_alias(name, CHAMPION, version)
    current = _alias_version(client, name, CHALLENGER)
    if current is not None and str(current.version) == version:
        client.delete_registered_model_alias(name, CHALLENGER)


def _record_decision(client: MlflowClient, decision: PromotionDecision) -> None:
    """The outcome as the version's ``promotion`` tag; the whole decision (checks, numbers,
    held-out rows, a forced promotion's reason) as a line of its description's log."""
    name, version = decision.model_name, decision.version
    at = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    client.set_model_version_tag(name, version, PROMOTION_TAG, decision.outcome)
    _append_log(client, name, version, f"- {at}: {decision.summary()}")
    if decision.promoted and decision.previous_champion:
        old = decision.previous_champion
        client.set_model_version_tag(name, old, PROMOTION_TAG, f"replaced by v{version}")
        _append_log(client, name, old, f"- {at}: replaced as {CHAMPION} by version {version}.")


def _append_log(client: MlflowClient, name: str, version: str, line: str) -> None:
    text = (client.get_model_version(name, version).description or "").rstrip("\n")
    client.update_model_version(name, version, description=f"{text}\n{line}\n")


# --------------------------------------------------------------------------- loading, scoring


@dataclass
class RegisteredDetector:
    """A detector loaded from the registry and the version it came from."""

    ref: ModelVersionRef
    detector: VAEDetector


def _load_detector(name: str, version: str | int) -> VAEDetector:
    """The VAEDetector inside a registered version, read with VAEDetector.load (no pickle)."""
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(f"models:/{name}/{version}", dst_path=tmp)
        conf = Model.load(local).flavors["python_function"]
        return VAEDetector.load(Path(local) / conf["artifacts"][DETECTOR_ARTIFACT]["path"])


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` -> (name, alias, version)."""
    if not uri.startswith("models:/"):
        raise ValueError(f"{uri!r} is not a registry URI (models:/NAME@ALIAS or models:/NAME/N)")
    rest = uri.removeprefix("models:/").strip("/")
    if "@" in rest:
        name, alias = rest.split("@", 1)
        return name, alias, None
    name, _, version = rest.rpartition("/")
    if not name or not version.isdigit():
        raise ValueError(f"{uri!r}: expected models:/NAME@ALIAS or models:/NAME/VERSION")
    return name, None, version


@_tracking_call
def load_registered(target: TrackingTarget, model_uri: str) -> RegisteredDetector:
    """The detector of ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` with its version."""
    name, alias, version = parse_model_uri(model_uri)
    client = _client(target)
    mv = _alias_version(client, name, alias) if alias else _model_version(client, name, version)
    if mv is None:
        raise ValueError(
            f"{model_uri}: no version of {name!r} has alias {alias!r} in {target.uri} "
            "(train and promote one: vae-anomaly train, vae-anomaly promote)"
        )
    return RegisteredDetector(_ref(mv, alias), _load_detector(name, mv.version))


def load_champion(target: TrackingTarget) -> RegisteredDetector:
    """``models:/NAME@champion``: what scheduled scoring uses."""
    return load_registered(target, f"models:/{target.model_name}@{CHAMPION}")


@_tracking_call
def log_scoring_run(
    target: TrackingTarget,
    model: ModelVersionRef,
    scores: pd.DataFrame,
    scores_path: str | Path,
    threshold: float,
    data_source: str | None = None,
    artifacts: dict[str, str | Path] | None = None,
    *,
    settings: dict[str, str] | None = None,
) -> str:
    """Record a batch scoring as a finished run linked to the model version that scored it:
    its description, parameters (model version, data source, ``settings``), the scored data
    as a dataset input (``scoring_dataset``), the scores file (artifact), the flagged count
    and rate, the score distribution (quantiles as metrics, a histogram plot and JSON).
    Returns the run id.

    scores : the scored rows, with ``anomaly_score`` (higher = more anomalous) and
        ``is_anomaly`` columns, as ``pipeline.score_table`` writes them.
    artifacts : more files or folders to log, {artifact folder: local path} (for images:
        the anomaly maps, the list of skipped files).
    settings : the scoring settings, as ``scoring_settings(cfg)`` gives them.
    """
    values = scores["anomaly_score"].to_numpy(dtype="float64")
    if values.size == 0:
        raise ValueError("no scored rows to log")
    flagged = int(scores["is_anomaly"].sum())
    summary = score_distribution(values, values.size, flagged, threshold)
    return _scoring_run(
        target, model, summary, values, scores_path, data_source, {}, artifacts, settings
    )


@_tracking_call
def log_batch_scoring(
    target: TrackingTarget,
    model: ModelVersionRef,
    batch,
    scores_path: str | Path,
    data_source: str | None = None,
    *,
    settings: dict[str, str] | None = None,
) -> str:
    """``log_scoring_run`` for a batch scored in partitions (``batch.BatchSummary``): exact
    row and flagged counts and the drift PSI; quantiles and the histogram come from the
    summary's score sample (at most 2,000 rows per partition), so memory stays bounded."""
    summary = score_distribution(batch.score_sample, batch.rows, batch.flagged, batch.threshold)
    if batch.psi is not None:
        summary["score_psi"] = batch.psi
    return _scoring_run(
        target,
        model,
        summary,
        batch.score_sample,
        scores_path,
        data_source,
        {"batch.id": batch.batch_id},
        None,
        settings,
    )


def log_image_batch_scoring(
    target: TrackingTarget,
    model: ModelVersionRef,
    scored: ImageBatch,
    data_source: str | None = None,
    *,
    settings: dict[str, str] | None = None,
) -> str:
    """``log_scoring_run`` for ``image_pipeline.score_image_batch``'s output: the scores
    file, the anomaly maps (``anomaly_maps/``) and the list of skipped files (``skipped/``)
    when there are any. Returns the run id."""
    artifacts = {"anomaly_maps": scored.maps, "skipped": scored.skipped}
    return log_scoring_run(
        target,
        model,
        scored.scores,
        scored.output,
        scored.threshold,
        data_source,
        {k: v for k, v in artifacts.items() if v is not None},
        settings={**(settings or {}), "batch.id": scored.batch_id},
    )


def scoring_settings(cfg: PipelineConfig) -> dict[str, str]:
    """The settings a scoring run records as parameters: the scoring section (chunk rows,
    top features, missing values, task runner ...), the id columns and, for images, the
    image section (chunk images, top maps ...)."""
    prefixes = ("scoring.", "images.") if cfg.data.kind == "images" else ("scoring.",)
    flat = settings_params(cfg)
    return {k: v for k, v in flat.items() if k.startswith(prefixes) or k == "data.id_columns"}


def _source_files(source: str) -> list[Path]:
    """The files a scored source names: a file, the files under a folder, or a glob's."""
    if any(ch in source for ch in "*?["):
        return sorted(p for p in map(Path, glob.glob(source, recursive=True)) if p.is_file())
    path = Path(source)
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    return [path] if path.is_file() else []


def source_digest(source: str | Path) -> str:
    """16 hex digits of SHA-256 over the files of ``source`` (their names relative to it and
    their bytes, read in 1 MiB blocks: no file is held in memory whole)."""
    h = hashlib.sha256(str(Path(str(source)).name).encode())
    files = _source_files(str(source))
    root = Path(str(source)) if Path(str(source)).is_dir() else None
    for path in files:
        h.update(str(path.relative_to(root) if root else path.name).encode() + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def scoring_dataset(source: str | Path):
    """The scored data as an MLflow dataset (``MetaDataset``): its name, path and content
    digest (``source_digest``), without reading it into memory."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    text = str(source)
    location = text if any(ch in text for ch in "*?[") else str(Path(text).resolve())
    with warnings.catch_warnings():  # "can be interpreted in multiple ways": a local path
        warnings.simplefilter("ignore", UserWarning)
        origin = resolve_dataset_source(location)
    return MetaDataset(origin, name=Path(text).name, digest=source_digest(text))


def scoring_run_note(model: ModelVersionRef, summary: dict, data_source: str | None) -> str:
    """The scoring run's description: which version scored what, and what it found."""
    rows, flagged = int(summary["rows"]), int(summary["flagged_count"])
    alias = f" (@{model.alias})" if model.alias else ""
    drift = ""
    if "score_psi" in summary:
        drift = f" Score drift against calibration: PSI {summary['score_psi']:.3f}."
    return (
        f"Batch scoring of `{data_source or 'an in-memory table'}` with {model.uri}{alias}: "
        f"{rows} rows, {flagged} flagged ({flagged / rows:.2%}) at threshold "
        f"{summary['threshold']:.6g} (a row is flagged iff its score is strictly greater).{drift}"
        "\n\nWhere to look: `scores/` (every row's score, flag, probability and top "
        "features), `plots/score_histogram.png`, `score_distribution.json`; the parameters "
        "hold the model version and the scoring settings, the inputs the scored file and the "
        "model."
    )


def _scoring_run(
    target: TrackingTarget,
    model: ModelVersionRef,
    summary: dict,
    values: np.ndarray,
    scores_path: str | Path,
    data_source: str | None,
    extra_tags: dict[str, str],
    artifacts: dict[str, str | Path] | None = None,
    settings: dict[str, str] | None = None,
) -> str:
    client = _client(target)
    tags = {
        "vae.step": "scoring",
        "model.name": model.name,
        "model.version": model.version,
        "model.uri": model.uri,
        "model.alias": model.alias or "",
        "model.training_run_id": model.run_id or "",
        "data.source": str(data_source or ""),
        **extra_tags,
    }
    params = {k: v for k, v in tags.items() if k != "vae.step" and v != ""}
    params |= {k: str(v) for k, v in (settings or {}).items()}
    tags[NOTE_TAG] = scoring_run_note(model, summary, data_source)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    run = client.create_run(
        _experiment_id(target), run_name=f"score-v{model.version}-{stamp}", tags=tags
    )
    run_id = run.info.run_id
    try:
        client.log_batch(run_id, params=[Param(k, v) for k, v in sorted(params.items())])
        datasets = [] if not data_source else [_scoring_input(data_source, summary)]
        models = [LoggedModelInput(model.model_id)] if model.model_id else None
        if datasets or models:
            _log_inputs(client, run_id, datasets or None, models)
        _log_score_distribution(client, run_id, summary, values, summary["threshold"])
        client.log_artifact(run_id, str(scores_path), "scores")
        for folder, path in (artifacts or {}).items():
            log = client.log_artifacts if Path(path).is_dir() else client.log_artifact
            log(run_id, str(path), folder)
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    return run_id


def _log_inputs(client: MlflowClient, run_id: str, datasets, models, attempts: int = 3) -> None:
    """``client.log_inputs``, again when another run recorded the same dataset meanwhile:
    the store looks a dataset up, then inserts it, so two scorings of one file at once can
    both insert it and one fails on the unique key (rolled back whole); once it exists, the
    next attempt links it."""
    for attempt in range(attempts):
        try:
            client.log_inputs(run_id, datasets=datasets, models=models)
            return
        except MlflowException as exc:
            if "unique" not in str(exc).lower() or attempt == attempts - 1:
                raise


def _scoring_input(data_source: str, summary: dict) -> DatasetInput:
    entity = scoring_dataset(data_source)._to_mlflow_entity()
    tags = [InputTag("mlflow.data.context", "scoring"), InputTag("rows", str(int(summary["rows"])))]
    return DatasetInput(entity, tags)


def score_distribution(values: np.ndarray, rows: int, flagged: int, threshold: float) -> dict:
    """A batch's counts and flagged rate, and the mean and quantiles of ``values`` (its
    scores, or a sample of them), as metric name -> value."""
    q = np.quantile(values, [0.0, 0.5, 0.9, 0.99, 1.0])
    return {
        "rows": float(rows),
        "flagged_count": float(flagged),
        "flagged_rate": flagged / rows,
        "threshold": float(threshold),
        "score_mean": float(values.mean()),
        **{
            f"score_{k}": float(v)
            for k, v in zip(("min", "p50", "p90", "p99", "max"), q, strict=True)
        },
    }


def _log_score_distribution(
    client: MlflowClient, run_id: str, summary: dict, values: np.ndarray, threshold: float
) -> None:
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in summary.items()])
    counts, edges = np.histogram(values, bins=50)
    histogram = {"edges": edges.tolist(), "counts": counts.tolist()}
    client.log_dict(run_id, summary | {"histogram": histogram}, "score_distribution.json")
    with tempfile.TemporaryDirectory() as tmp:
        path = plot_score_histogram(values, None, threshold, Path(tmp) / "score_histogram.png")
        client.log_artifact(run_id, str(path), "plots")
