"""Reviewers' verdicts kept with the registry: one feedback run per registered model (tag
``vae.step: feedback``; the registered model's tag ``feedback_run`` names it) holds the whole
history (``feedback/history.parquet``), the verdicts that count now as a table the MLflow UI
shows (``feedback/verdicts.json``) and as a dataset input of the run, and the counts as
metrics, one step per submission. Each scoring run gets its ``reviewed_precision`` (confirmed
among its reviewed flagged rows), also logged on the version's model, so the version's page
shows whether its alerts get better or worse from one batch to the next.

The ids a model has scored are read back from its scoring runs' ``scores/`` artifacts (every
scored row's ids, score and flag, as the batch wrote them), only the id and flag columns.
This layer stores and reads what it is handed; ``steps.feedback`` checks and merges.
"""

from __future__ import annotations

import tempfile
import time
import warnings
from pathlib import Path
from urllib.parse import urlparse

import pandas as pd
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from vae_core.steps.feedback import (
    LABEL,
    SUBMISSION,
    Submission,
    current_verdicts,
    id_columns_of,
    id_text,
)
from vae_core.tracking.store import (
    NOTE_TAG,
    TrackingTarget,
    experiment_id_of,
    mlflow_client,
    tracking_call,
)

FEEDBACK_RUN_TAG = "feedback_run"  # on the registered model: the id of its feedback run
HISTORY_FILE, VERDICTS_TABLE = "history.parquet", "feedback/verdicts.json"


def _scoring_runs(client: MlflowClient, name: str) -> list:
    """Every scoring run of registered model ``name``, in any experiment, oldest first."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(
        experiments,
        f"tags.`vae.step` = 'scoring' AND tags.`model.name` = '{name}'",
        order_by=["attributes.start_time ASC"],
        max_results=50_000,
    )
    return [r for r in runs if r.info.status == "FINISHED"]


def _scores_file(client: MlflowClient, run_id: str, tmp: str) -> Path | None:
    files = [f.path for f in client.list_artifacts(run_id, "scores") if not f.is_dir]
    if not files:
        return None
    return Path(client.download_artifacts(run_id, files[0], tmp))


def _read_columns(path: Path, columns: list[str]) -> pd.DataFrame | None:
    """Only ``columns`` of a scores file, or None when it lacks one of them."""
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        if not set(columns) <= set(pq.read_schema(path).names):
            return None
        return pd.read_parquet(path, columns=columns)
    header = pd.read_csv(path, nrows=0).columns
    if not set(columns) <= set(header):
        return None
    return pd.read_csv(path, usecols=columns)


@tracking_call
def scored_rows(target: TrackingTarget, id_columns: list[str]) -> pd.DataFrame:
    """Every row the model's scoring runs scored: the id columns (as text), ``is_anomaly``,
    and the ``run_id``, ``version``, ``start_time`` (ms) and ``source`` (the batch it read)
    of the run; empty when none has
    those id columns. Runs whose scores lack an id column are left out."""
    client, frames = mlflow_client(target), []
    with tempfile.TemporaryDirectory() as tmp:
        for run in _scoring_runs(client, target.model_name):
            path = _scores_file(client, run.info.run_id, tmp)
            table = None if path is None else _read_columns(path, [*id_columns, "is_anomaly"])
            if table is None:
                continue
            ids = id_text(table, id_columns).assign(is_anomaly=table["is_anomaly"].astype(bool))
            frames.append(
                ids.assign(
                    run_id=run.info.run_id,
                    version=run.data.tags.get("model.version", ""),
                    start_time=run.info.start_time,
                    source=run.data.tags.get("data.source", ""),
                )
            )
    if not frames:
        columns = [*id_columns, "is_anomaly", "run_id", "version", "start_time", "source"]
        return pd.DataFrame(columns=columns)
    return pd.concat(frames, ignore_index=True)


def _feedback_run(client: MlflowClient, name: str) -> str | None:
    try:
        return client.get_registered_model(name).tags.get(FEEDBACK_RUN_TAG)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise


@tracking_call
def read_feedback(target: TrackingTarget) -> pd.DataFrame | None:
    """The model's verdict history (``steps.feedback`` columns), or None before the first."""
    client = mlflow_client(target)
    run_id = _feedback_run(client, target.model_name)
    if run_id is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = client.download_artifacts(run_id, f"feedback/{HISTORY_FILE}", tmp)
        return pd.read_parquet(path)


@tracking_call
def reviewed_verdicts(target: TrackingTarget):
    """(current verdicts, the rows the model's scoring runs scored, the id columns) for
    ``recalibration.reviewed_rows``, or None before the first verdict."""
    history = read_feedback(target)
    if history is None:
        return None
    id_columns = id_columns_of(history)
    return current_verdicts(history, id_columns), scored_rows(target, id_columns), id_columns


@tracking_call
def record_feedback(target: TrackingTarget, submission: Submission, scored: pd.DataFrame) -> str:
    """Store a checked ``submission`` (``steps.feedback.prepare_submission``): its merged
    history (the source of truth, written first), its current verdicts as a table and a
    dataset input, its counts as metrics at this submission's step, and each scoring run's
    precision (confirmed, reviewed among its flagged rows) as its ``reviewed_precision``, on
    the run and on the version's logged model. Returns the feedback run's id.

    scored : the rows the model's scoring runs scored (``scored_rows``), the submission was
        checked against; their ``run_id``, ``version`` and ``start_time`` name the runs.
    """
    history, current, counts = submission.history, submission.current, submission.counts
    scoring_runs = scored[["run_id", "version", "start_time"]].drop_duplicates("run_id")
    client, name = mlflow_client(target), target.model_name
    run_id = _feedback_run(client, name) or _create_feedback_run(client, target)
    step = int(history[SUBMISSION].max())
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / HISTORY_FILE
        history.to_parquet(path, index=False)
        client.log_artifact(run_id, str(path), "feedback")
    client.set_registered_model_tag(name, FEEDBACK_RUN_TAG, run_id)
    client.log_table(run_id, current, VERDICTS_TABLE)
    _log_verdicts_dataset(client, run_id, current, name)
    now = int(time.time() * 1000)
    metrics = [Metric(f"reviewed_{k}", float(v), now, step) for k, v in counts.items()]
    client.log_batch(run_id, metrics=metrics)
    client.set_tag(run_id, NOTE_TAG, _feedback_note(name, counts, step))
    _log_precision(client, name, submission.precision, scoring_runs)
    return run_id


def _create_feedback_run(client: MlflowClient, target: TrackingTarget) -> str:
    name = target.model_name
    run = client.create_run(
        experiment_id_of(target),
        run_name=f"feedback-{name}",
        tags={"vae.step": "feedback", "model.name": name},
    )
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def verdicts_source(artifact_uri: str, tracking_uri: str):
    """Where the run's verdicts table lives, as a dataset source MLflow can record.

    A server that proxies artifacts gives runs ``mlflow-artifacts:`` URIs, which MLflow's
    dataset sources cannot resolve (``from_pandas`` raises); the same file is served over
    HTTP by the tracking server, so such a URI becomes an HTTP source at that address. Any
    other URI (a local path, ``file:``, ``s3:``) is returned as it is.
    """
    uri = f"{artifact_uri}/{VERDICTS_TABLE}"
    parsed = urlparse(uri)
    if parsed.scheme != "mlflow-artifacts":
        return uri
    from mlflow.data.http_dataset_source import HTTPDatasetSource

    base = f"http://{parsed.netloc}" if parsed.netloc else tracking_uri.rstrip("/")
    return HTTPDatasetSource(url=f"{base}/api/2.0/mlflow-artifacts/artifacts{parsed.path}")


def _log_verdicts_dataset(client: MlflowClient, run_id: str, current: pd.DataFrame, name: str):
    """The current verdicts as the run's dataset input (context ``feedback``): the MLflow UI
    lists it with its schema and digest on the run's page."""
    import mlflow.data
    from mlflow.entities import DatasetInput, InputTag

    source = verdicts_source(client.get_run(run_id).info.artifact_uri, client.tracking_uri)
    with warnings.catch_warnings():  # "can be interpreted in multiple ways": an artifact path
        warnings.simplefilter("ignore", UserWarning)
        dataset = mlflow.data.from_pandas(
            current, source=source, name=f"{name}-verdicts", targets=LABEL
        )
    tags = [InputTag("mlflow.data.context", "feedback"), InputTag("rows", str(len(current)))]
    client.log_inputs(run_id, datasets=[DatasetInput(dataset._to_mlflow_entity(), tags)])


def _feedback_note(name: str, counts: dict[str, int], submission: int) -> str:
    return (
        f"Reviewers' verdicts on rows that scoring runs of `{name}` scored: "
        f"{counts['reviewed']} ids reviewed ({counts['anomalies']} confirmed anomalies, "
        f"{counts['normals']} normal) after {submission} submission(s); the latest verdict on "
        "an id counts.\n\nWhere to look: `feedback/verdicts.json` (the verdicts that count), "
        "`feedback/history.parquet` (every verdict, with its submission and time); metrics "
        "`reviewed_*` per submission."
    )


def _log_precision(client, name, precision, scoring_runs) -> None:
    """``reviewed_precision`` of each scoring run, on the run and on its version's logged
    model, at the run's place among the version's scoring runs (step 1, 2, ...) and the time
    it scored: the version's page charts its alerts' precision from batch to batch. A later
    submission logs the new value at the same step; ``reviewed_flagged`` says how many of
    the run's flagged rows the value rests on."""
    runs = scoring_runs.drop_duplicates("run_id").sort_values("start_time")
    runs = runs.assign(place=runs.groupby("version").cumcount() + 1)
    model_ids: dict[str, str | None] = {}
    for row in runs.itertuples():
        if row.run_id not in precision:
            continue
        confirmed, reviewed = precision[row.run_id]
        if row.version not in model_ids:
            model_ids[row.version] = _model_id(client, name, row.version)
        at, step = int(row.start_time), int(row.place)
        client.log_metric(row.run_id, "reviewed_flagged", float(reviewed), at, step)
        client.log_metric(
            row.run_id, "reviewed_precision", confirmed / reviewed, at, step,
            model_id=model_ids[row.version],
        )  # fmt: skip


def _model_id(client: MlflowClient, name: str, version: str) -> str | None:
    try:
        mv = client.get_model_version(name, version)
    except MlflowException:
        return None
    if mv.model_id:
        return mv.model_id
    source = mv.source or ""
    return source.removeprefix("models:/") if source.startswith("models:/m-") else None
