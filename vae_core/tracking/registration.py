"""The registry: a training run's model registered as a version with the alias
``challenger`` (resumable after a failure at any step), and promotion, which moves
``champion`` through the gate and records every decision on the version.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import mlflow
import numpy as np
from mlflow.entities import Param
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from vae_core.foundations.config import PromotionConfig
from vae_core.steps.promotion import CHALLENGER, CHAMPION, PromotionDecision, decide
from vae_core.steps.run_notes import RunRecord, review_description, training_fingerprint
from vae_core.tracking import access
from vae_core.tracking.packaging import load_packaged_detector
from vae_core.tracking.store import (
    TrackingTarget,
    TrackingUnavailable,
    mlflow_client,
    run_record,
    tracking_call,
    unreachable_as_error,
)
from vae_core.tracking.training_runs import MODEL_URI_TAG


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


def version_ref(mv, alias: str | None = None) -> ModelVersionRef:
    """MLflow's ``ModelVersion`` as a ``ModelVersionRef`` (its logged model's id too)."""
    model_id = mv.model_id
    if model_id is None and (mv.source or "").startswith("models:/m-"):
        model_id = mv.source.removeprefix("models:/")
    return ModelVersionRef(mv.name, str(mv.version), mv.run_id, model_id, alias)


def version_by_alias(client: MlflowClient, name: str, alias: str):
    """The version of ``name`` that holds ``alias``, or None."""
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def not_found_message(client: MlflowClient, name: str, alias: str | None, where: str) -> str:
    """Why ``models:/NAME@ALIAS`` (or ``models:/NAME/N`` when ``alias`` is None) found no
    version: no registered model of that name (the names there are listed), or the aliases
    the model has (the nearest first, as "did you mean"), or that it has none yet."""
    import difflib

    try:
        model = client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        names = sorted(m.name for m in client.search_registered_models(max_results=50))
        near = difflib.get_close_matches(name, names, n=1)
        return (
            f"no such registered model {name!r} in {where}"
            + (f"; did you mean {near[0]!r}?" if near else "")
            + f" (registered there: {', '.join(names) or 'none'})"
        )
    if alias is None:
        return f"registered model {name!r} in {where} has no such version"
    aliases = dict(model.aliases or {})
    if not aliases:
        return (
            f"registered model {name!r} has no aliases yet in {where} (vae-anomaly train "
            "registers @challenger, vae-anomaly promote moves @champion)"
        )
    near = difflib.get_close_matches(alias, list(aliases), n=1)
    listed = ", ".join(f"@{a} (version {v})" for a, v in sorted(aliases.items()))
    return f"registered model {name!r} has no alias {alias!r} in {where}; its aliases: " + (
        f"{listed} (did you mean @{near[0]}?)" if near else listed
    )


def version_by_number(client: MlflowClient, name: str, version: str | int):
    """Version ``version`` of ``name``; ``ValueError`` naming both when it does not exist."""
    try:
        return client.get_model_version(name, str(version))
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            missing = not_found_message(client, name, None, "this store")
            if missing.startswith("no such registered model"):
                raise ValueError(missing) from None
            raise ValueError(f"registered model {name!r} has no version {version}") from None
        raise


def ensure_registered_model(client: MlflowClient, name: str) -> None:
    """Create registered model ``name`` with the description of its aliases, if missing."""
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


@tracking_call
def register_challenger(target: TrackingTarget, run_id: str) -> ModelVersionRef:
    """Register the model a training run logged as a new version with alias ``challenger``,
    a description written for its reviewer (``run_notes.review_description``, which names
    the columns added and removed against the champion's) and the few tags of
    ``version_tags`` (test ROC-AUC, threshold, policy, rows, data fingerprint, promotion
    decision), all read back from the run.

    Safe to rerun after a failure at any step (a tracking server that died, a killed
    process). The version is created tagged ``registration_state: incomplete``, in the same
    write as its other tags, and that tag becomes ``complete`` only after
    its description and alias are set. A rerun for the same run finishes that version (or
    returns it, if it was finished) instead of creating another; a rerun of the same training
    as a new run (the same ``training_fingerprint``: settings and data) deletes the
    unfinished versions it supersedes. ``promote_challenger`` refuses an unfinished version.
    """
    client, name = mlflow_client(target), target.model_name
    run = run_record(client.get_run(run_id))
    model_uri = run.tags.get(MODEL_URI_TAG)
    if not model_uri:
        raise ValueError(f"run {run_id} has no packaged model: call log_training_run first")
    try:
        with unreachable_as_error(target):
            mv = _version_of_run(client, name, run) or _create_version(client, name, run)
            if mv.tags.get(REGISTRATION_STATE) != INCOMPLETE:  # finished by an earlier call
                return version_ref(mv, CHALLENGER if CHALLENGER in mv.aliases else None)
            return _finish_registration(client, name, run, str(mv.version))
    except TrackingUnavailable as exc:
        raise TrackingUnavailable(
            f"{exc}. Registering training run {run_id} did not finish; once the server "
            "answers, run the registration again (vae-anomaly train, or the train flow): it "
            f"finishes or replaces the unfinished version ({REGISTRATION_STATE}: {INCOMPLETE}) "
            "instead of adding another."
        ) from exc


# Version tag: INCOMPLETE from creation until the last step of registration sets COMPLETE.
# Set, not deleted: deleting a version's tag needs MANAGE on the registered model (MLflow's
# basic-auth), which the trainers' role (EDIT) does not have (tracking.users.ROLES).
REGISTRATION_STATE = "registration_state"
INCOMPLETE, COMPLETE = "incomplete", "complete"
FINGERPRINT_TAG = "training_fingerprint"  # run_notes.training_fingerprint of the run


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
            _delete_superseded(client, name, mv.version)
    return ours


def _delete_superseded(client: MlflowClient, name: str, version: str) -> None:
    """Delete an unfinished version that this registration supersedes. Deleting needs MANAGE
    (MLflow's basic-auth); a trainer's EDIT leaves it unfinished, which promotion refuses,
    for a reviewer to delete."""
    try:
        client.delete_model_version(name, version)
    except MlflowException as exc:
        if exc.error_code != "PERMISSION_DENIED":
            raise


def _create_version(client: MlflowClient, name: str, run: RunRecord):
    """A new version of the run's packaged model, tagged ``registration_state: incomplete``."""
    ensure_registered_model(client, name)
    with contextlib.redirect_stderr(io.StringIO()):  # two progress lines; we report the version
        return mlflow.register_model(run.tags[MODEL_URI_TAG], name, tags=version_tags(run))


def _finish_registration(
    client: MlflowClient, name: str, run: RunRecord, version: str
) -> ModelVersionRef:
    """Write the review, move ``challenger`` to ``version``, and mark it complete (last:
    ``registration_state: complete``)."""
    champion = version_by_alias(client, name, CHAMPION)
    champion_run = _record_with_schema(client, champion.run_id) if champion else None
    run = dataclasses.replace(run, schema=_feature_schema(client, run.run_id))
    old = None if champion is None else str(champion.version)
    description = review_description(name, version, run, old, champion_run)
    client.update_model_version(name, version, description=description)
    client.set_registered_model_alias(name, CHALLENGER, version)
    client.set_model_version_tag(name, version, REGISTRATION_STATE, COMPLETE)
    return version_ref(client.get_model_version(name, version), CHALLENGER)


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
        run_record(client.get_run(run_id)), schema=_feature_schema(client, run_id)
    )


# --------------------------------------------------------------------------- promotion


@tracking_call
def promote_challenger(
    target: TrackingTarget,
    gate: PromotionConfig,
    measure: Callable[..., dict],
    *,
    version: str | int | None = None,
    force: bool = False,
    reason: str | None = None,
    data_description: str = "held-out rows",
) -> PromotionDecision:
    """Hand the challenger (``version``, default the ``challenger`` alias) and the champion to
    ``measure`` and move ``champion`` to the challenger iff its numbers pass the gate
    (``promotion.gate_checks``); ``force`` with a ``reason`` moves it regardless, recorded as
    a manual override. The decision goes on the version (its ``promotion`` tag, a line in its
    description); a promoted version loses the ``challenger`` alias.

    measure : ``promotion.HeldOut`` (detector -> ``promotion.held_out_metrics``, called
        with ``baseline=False`` for the champion); the pipeline scores, not this layer:
        ``promotion.measure_on(*pipeline.held_out(data, cfg.split))`` scores both models on
        the same held-out rows or images.
    """
    if force and not (reason and reason.strip()):
        raise ValueError("a forced promotion needs a reason (--reason TEXT)")
    client, name = mlflow_client(target), target.model_name
    challenger = _challenger_version(client, name, version)
    champion = version_by_alias(client, name, CHAMPION)
    old = None if champion is None else str(champion.version)
    if old == str(challenger.version):
        return PromotionDecision(name, old, old, "unchanged")
    ours = measure(load_packaged_detector(name, challenger.version))
    # the IsolationForest baseline is the challenger's to beat: not refitted for the champion
    theirs = None if old is None else measure(load_packaged_detector(name, old), baseline=False)
    note = f"Scored on {data_description} ({ours['rows']} rows)"
    decision = decide(
        name, str(challenger.version), old, gate, ours, theirs, reason if force else None, note
    )
    if decision.promoted:
        _move_champion(client, decision)
    _record_decision(client, decision)
    return decision


@tracking_call
def training_data_of(target: TrackingTarget, version: str | int | None = None) -> dict:
    """Where a version's held-out rows came from, as its training run recorded it: the
    version, ``source`` (the run's ``data.source`` tag: the file or folder it was trained
    on) and ``settings`` (the run's ``data.*``, ``split.*`` and ``images.*`` parameters, as
    logged). ``version`` None: the ``challenger`` alias."""
    client, name = mlflow_client(target), target.model_name
    mv = _challenger_version(client, name, version)
    run = client.get_run(mv.run_id)
    settings = {
        k: v for k, v in run.data.params.items() if k.startswith(("data.", "split.", "images."))
    }
    return {
        "version": str(mv.version),
        "source": run.data.tags.get("data.source"),
        "settings": settings,
        "params": dict(run.data.params),
    }


@tracking_call
def add_review_section(target: TrackingTarget, version: str, text: str) -> None:
    """Put ``text`` at the head of a version's review, under its title."""
    client, name = mlflow_client(target), target.model_name
    description = client.get_model_version(name, version).description or ""
    title, sep, rest = description.partition("\n\n")
    client.update_model_version(name, version, description=f"{title}{sep}{text}\n\n{rest}")


@tracking_call
def mark_recalibration(target: TrackingTarget, run_id: str, of_version: str, counts: dict):
    """Tag a training run as the recalibration of ``of_version`` (``vae.step``:
    recalibration) and log what it rested on as ``recalibration.*`` parameters, which also
    make its training fingerprint its own."""
    client = mlflow_client(target)
    client.set_tag(run_id, "vae.step", "recalibration")
    client.log_batch(
        run_id,
        params=[Param("recalibration.of_version", str(of_version))]
        + [Param(f"recalibration.{k}", str(v)) for k, v in sorted(counts.items())],
    )


@tracking_call
def champion_version(target: TrackingTarget) -> str | None:
    """The version that holds ``champion`` (what scheduled scoring loads), or None."""
    mv = version_by_alias(mlflow_client(target), target.model_name, CHAMPION)
    return None if mv is None else str(mv.version)


def _challenger_version(client: MlflowClient, name: str, version: str | int | None):
    if version is not None:
        mv = version_by_number(client, name, version)
    else:
        mv = version_by_alias(client, name, CHALLENGER)
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
    """Move ``champion`` first: a refused move leaves both aliases as they were."""
    name, version = decision.model_name, decision.version
    model = f"{access.MODEL} {name!r}"
    with access.acting(f"move @{CHAMPION} of {model} to version {version}", f"EDIT on {model}"):
        client.set_registered_model_alias(name, CHAMPION, version)
    current = version_by_alias(client, name, CHALLENGER)
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
