"""Registered models loaded for scoring (``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``
-> ``VAEDetector``), and scoring runs: each batch scoring recorded as a finished run linked to
the version that scored it.
"""

from __future__ import annotations

import tempfile
import time
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow.entities import DatasetInput, InputTag, LoggedModelInput, Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from vae_core.estimator.detector import VAEDetector
from vae_core.evaluation.report import plot_score_histogram
from vae_core.steps.batch_report import BatchSummary
from vae_core.steps.promotion import CHAMPION
from vae_core.tracking.packaging import load_packaged_detector
from vae_core.tracking.provenance import source_digest
from vae_core.tracking.registration import (
    ModelVersionRef,
    not_found_message,
    version_by_alias,
    version_by_number,
    version_ref,
)
from vae_core.tracking.store import (
    NOTE_TAG,
    TrackingTarget,
    experiment_id_of,
    mlflow_client,
    tracking_call,
)


@dataclass
class RegisteredDetector:
    """A detector loaded from the registry and the version it came from."""

    ref: ModelVersionRef
    detector: VAEDetector


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


@tracking_call
def load_registered(target: TrackingTarget, model_uri: str) -> RegisteredDetector:
    """The detector of ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` with its version."""
    name, alias, version = parse_model_uri(model_uri)
    client = mlflow_client(target)
    if alias:
        mv = version_by_alias(client, name, alias)
    else:
        mv = version_by_number(client, name, version)
    if mv is None:
        raise ValueError(f"{model_uri}: {not_found_message(client, name, alias, target.uri)}")
    return RegisteredDetector(version_ref(mv, alias), load_packaged_detector(name, mv.version))


def load_champion(target: TrackingTarget) -> RegisteredDetector:
    """``models:/NAME@champion``: what scheduled scoring uses."""
    return load_registered(target, f"models:/{target.model_name}@{CHAMPION}")


@tracking_call
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
        ``is_anomaly`` columns, as ``kinds.table_scores.score_table`` writes them.
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


@tracking_call
def log_batch_scoring(
    target: TrackingTarget,
    model: ModelVersionRef,
    batch: BatchSummary,
    scores_path: str | Path | None = None,
    data_source: str | None = None,
    *,
    settings: dict[str, str] | None = None,
) -> str:
    """``log_scoring_run`` for a batch of table rows or images (``batch.BatchSummary``, as
    ``batch.score_batch`` returns it): exact row and flagged counts, the drift PSI when
    measured, the scores file (``scores_path``, default the batch's ``output``) and the
    batch's other files (``artifacts``: anomaly maps, skipped files). Quantiles and the
    histogram come from the summary's score sample, so memory stays bounded."""
    summary = score_distribution(batch.score_sample, batch.rows, batch.flagged, batch.threshold)
    if batch.psi is not None:
        summary["score_psi"] = batch.psi
    return _scoring_run(
        target,
        model,
        summary,
        batch.score_sample,
        scores_path or batch.output,
        data_source,
        {"batch.id": batch.batch_id},
        batch.artifacts,
        settings,
    )


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
    client = mlflow_client(target)
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
        experiment_id_of(target, target.scoring_experiment),
        run_name=f"score-v{model.version}-{stamp}",
        tags=tags,
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
