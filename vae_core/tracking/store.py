"""The tracking store: where it is (``TrackingTarget``), whether it answers, and the wrapper
every call into it goes through (``tracking_call``: reachability, bounded retries, the URI set
and put back, a store that stops answering reported as ``TrackingUnavailable``, a refused call
as ``access.AccessRefused``).
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import requests
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from vae_core.foundations.config import PipelineConfig
from vae_core.steps.run_notes import RunRecord
from vae_core.tracking import access

NOTE_TAG = "mlflow.note.content"  # a run's description in the MLflow UI
_REMOTE_SCHEMES = ("http://", "https://", "databricks")


class TrackingUnavailable(ConnectionError):
    """The tracking store did not answer; the message names its URI."""


@dataclass(frozen=True)
class TrackingTarget:
    """Where runs, artifacts and the registry live, resolved from ``mlflow.yml``.

    artifact_location : root for new experiments' artifacts; None leaves it to a tracking
        server (its ``--artifacts-destination``).
    scoring_experiment : where scoring runs go; None: ``experiment``.
    """

    uri: str
    experiment: str
    model_name: str
    artifact_location: str | None
    max_retries: int = 3
    scoring_experiment: str | None = None

    @classmethod
    def from_config(cls, cfg: PipelineConfig) -> TrackingTarget:
        uri, location = access.check_uri(cfg.tracking_uri()), cfg.tracking.artifact_location
        if ":/" not in location:  # a plain path: local stores only
            location = None if uri.startswith(_REMOTE_SCHEMES) else str(cfg.path(location))
        return cls(
            uri=uri,
            experiment=cfg.tracking.experiment,
            model_name=cfg.tracking.registered_model,
            artifact_location=location,
            max_retries=cfg.tracking.max_retries,
            scoring_experiment=cfg.tracking.scoring_experiment,
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
def mlflow_defaults(target: TrackingTarget) -> None:
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(target.max_retries))
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


@contextlib.contextmanager
def unreachable_as_error(target: TrackingTarget) -> Iterator[None]:
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


def tracking_call(fn):
    """Check the store, point MLflow at it, and report it if it stops answering or refuses
    the call (``access.AccessRefused``: one line naming the user, the action, the permission
    it needs)."""

    @functools.wraps(fn)
    def wrapper(target: TrackingTarget, *args, **kwargs):
        mlflow_defaults(target)
        check_reachable(target)
        # set_tracking_uri also exports MLFLOW_TRACKING_URI, which outranks mlflow.yml: put
        # the environment back so a later config in this process is read as written.
        exported = os.environ.get("MLFLOW_TRACKING_URI")
        mlflow.set_tracking_uri(target.uri)
        try:
            with unreachable_as_error(target), access.acting_for(fn.__name__, target):
                return fn(target, *args, **kwargs)
        except (MlflowException, requests.HTTPError) as exc:
            refused = access.refusal(target, exc)
            if refused is None:
                raise
            raise refused from exc
        finally:
            if exported is None:
                os.environ.pop("MLFLOW_TRACKING_URI", None)
            else:
                os.environ["MLFLOW_TRACKING_URI"] = exported

    return wrapper


def mlflow_client(target: TrackingTarget) -> MlflowClient:
    """A client of the target's tracking store and registry."""
    return MlflowClient(tracking_uri=target.uri, registry_uri=target.uri)


def experiment_id_of(target: TrackingTarget, name: str | None = None) -> str:
    """The id of experiment ``name`` (default the target's), created if missing; a deleted
    one is an error."""
    client, name = mlflow_client(target), name or target.experiment
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return client.create_experiment(name, target.artifact_location)
        except MlflowException as exc:  # created meanwhile by another process
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            exp = client.get_experiment_by_name(name)
    if exp.lifecycle_stage != "active":
        raise ValueError(
            f"experiment {name!r} in {target.uri} is deleted: restore it with "
            f"`mlflow experiments restore --experiment-id {exp.experiment_id}` or rename "
            "it in the tracking section"
        )
    return exp.experiment_id


@tracking_call
def connect(target: TrackingTarget) -> str:
    """The experiment's id, created with the configured artifact location if missing."""
    return experiment_id_of(target)


def run_record(run) -> RunRecord:
    """An MLflow run as the plain ``RunRecord`` that ``promotion`` reads."""
    data = run.data
    return RunRecord(run.info.run_id, dict(data.params), dict(data.tags), dict(data.metrics))
