"""Prefect events for each scored batch, and the automations that act on them.

The score flow ends every batch (table or images) with ``emit_batch_events``:

* ``vae-anomaly.batch.scored``: always. Resource: the registered model version
  (``vae-anomaly.model.<name>.v<version>``, labels ``vae-anomaly.model``,
  ``vae-anomaly.model-version``, ``vae-anomaly.drift-warning``); payload: batch id, rows,
  flagged count and share, PSI, drift warning, output path, the MLflow scoring run.
* ``vae-anomaly.batch.limit-crossed``: only when the batch crosses ``alerts.max_flagged_share``
  or ``alerts.max_psi``; its payload adds what crossed which limit and a message a person can
  act on.

``python -m flows.deploy`` calls ``notification_destination`` (before it deploys anything) and
``ensure_automations``, which creates or updates (by name, so a second run changes nothing)
one automation of each:

* ``<model>: notify on a crossed limit``: the limit event -> ``SendNotification`` through the
  block named in ``alerts.notify_block`` (Slack, e-mail, ... : the block keeps the secret), or
  a custom-webhook block saved from ``alerts.webhook_url``;
* ``<model>: retrain on drift``: a batch event with the drift label -> ``RunDeployment`` of the
  training deployment, at most once per ``alerts.retrain_cooldown_hours``. A reactive
  trigger with a window fires on the first event and ignores the rest until the window
  ends (``prefect.server.events.triggers.evaluate`` opens the next bucket at the window's
  end): that window is the cool-down. The training run registers a challenger and its gate
  decides promotion; the automation promotes nothing.

Pause either with ``prefect automation pause '<name>'``; a later deploy keeps it paused.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from uuid import UUID

from vae_core.foundations.config import AlertsConfig, PipelineConfig
from vae_core.steps.batch_report import BatchSummary

SCORED = "vae-anomaly.batch.scored"
LIMIT_CROSSED = "vae-anomaly.batch.limit-crossed"
MODEL_LABEL, VERSION_LABEL = "vae-anomaly.model", "vae-anomaly.model-version"
DRIFT_LABEL = "vae-anomaly.drift-warning"
NOTIFY, RETRAIN = "notify on a crossed limit", "retrain on drift"
# The custom-webhook block's JSON body: "text" is what Slack-like receivers show.
WEBHOOK_JSON = {"text": "{{subject}}\n{{body}}"}


@dataclass(frozen=True)
class Crossing:
    """One limit a batch crossed: ``value`` is above ``limit`` (the config key ``key``)."""

    key: str
    what: str
    value: float
    limit: float

    def describe(self) -> str:
        return f"{self.what} {self.value:.3f} > limit {self.limit:g} (alerts.{self.key})"


def limits_crossed(summary: BatchSummary, alerts: AlertsConfig) -> list[Crossing]:
    """The configured limits the batch is above (strictly: a value at a limit is inside)."""
    checks = [
        ("max_flagged_share", "flagged share", summary.flagged_rate, alerts.max_flagged_share),
        ("max_psi", "score PSI", summary.psi, alerts.max_psi),
    ]
    return [
        Crossing(key, what, float(value), float(limit))
        for key, what, value, limit in checks
        if limit is not None and value is not None and value > limit
    ]


def model_resource(name: str, version: str, drift_warning: bool) -> dict[str, str]:
    """The event's resource: the registered model version, with labels automations match."""
    return {
        "prefect.resource.id": f"vae-anomaly.model.{name}.v{version}",
        "prefect.resource.name": f"{name} v{version}",
        MODEL_LABEL: name,
        VERSION_LABEL: str(version),
        DRIFT_LABEL: "true" if drift_warning else "false",
    }


def batch_payload(summary: BatchSummary, name: str, version: str, run_id: str | None) -> dict:
    """What a batch reports, as JSON values."""
    return {
        "model": name,
        "version": str(version),
        "batch_id": summary.batch_id,
        "rows": summary.rows,
        "unit": summary.unit,
        "flagged": summary.flagged,
        "flagged_share": summary.flagged_rate,
        "threshold": summary.threshold,
        "psi": summary.psi,
        "drift_warning": summary.drift_warning,
        "output": None if summary.output is None else str(summary.output),
        "mlflow_run_id": run_id,
    }


def alert_message(payload: dict, crossed: list[Crossing]) -> str:
    """One paragraph a person can act on: which model, which batch, what crossed which limit,
    and where the scores and the run are."""
    psi = "n/a" if payload["psi"] is None else f"{payload['psi']:.3f}"
    return (
        f"{payload['model']} v{payload['version']}, batch {payload['batch_id']}: "
        + "; ".join(c.describe() for c in crossed)
        + f". {payload['flagged']} of {payload['rows']} {payload['unit']} flagged "
        f"(share {payload['flagged_share']:.3f}), score PSI {psi}. "
        f"Scores: {payload['output']}. MLflow scoring run: {payload['mlflow_run_id']}."
    )


def emit_batch_events(
    summary: BatchSummary, name: str, version: str, run_id: str | None, alerts: AlertsConfig
) -> list[Crossing]:
    """Emit the batch event, and the limit event when a limit is crossed; the crossings."""
    from prefect.events import emit_event

    resource = model_resource(name, version, summary.drift_warning)
    payload = batch_payload(summary, name, version, run_id)
    emit_event(event=SCORED, resource=resource, payload=payload)
    crossed = limits_crossed(summary, alerts)
    if crossed:
        limits = [{"limit": f"alerts.{c.key}", "value": c.value, "max": c.limit} for c in crossed]
        emit_event(
            event=LIMIT_CROSSED,
            resource=resource,
            payload=payload | {"crossed": limits, "message": alert_message(payload, crossed)},
        )
    return crossed


# ---- automations (flows/deploy.py) -----------------------------------------------------------


def automation_name(model: str, what: str) -> str:
    return f"{model}: {what}"


def _model_match(model: str) -> dict[str, str]:
    return {"prefect.resource.id": "vae-anomaly.model.*", MODEL_LABEL: model}


def notify_automation(model: str, block_id: UUID):
    """A crossed limit of this model's batches -> a notification through the block."""
    from prefect.automations import AutomationCore, EventTrigger, Posture, SendNotification

    return AutomationCore(
        name=automation_name(model, NOTIFY),
        description=f"A batch scored by {model} crossed a limit of the alerts section "
        "(max_flagged_share, max_psi): tell the team, through a notification block.",
        trigger=EventTrigger(
            expect={LIMIT_CROSSED},
            match=_model_match(model),
            posture=Posture.Reactive,
            threshold=1,
            within=timedelta(0),
        ),
        actions=[
            SendNotification(
                block_document_id=block_id,
                subject="{{ event.resource.name }}: batch {{ event.payload.batch_id }} "
                "crossed a limit",
                body="{{ event.payload.message }}",
            )
        ],
    )


def retrain_automation(model: str, deployment_id: UUID, cooldown: timedelta):
    """A drift warning on this model's batches -> one run of the training deployment, then
    nothing more until ``cooldown`` has passed."""
    from prefect.automations import AutomationCore, EventTrigger, Posture, RunDeployment

    return AutomationCore(
        name=automation_name(model, RETRAIN),
        description=f"A batch scored by {model} drifted past scoring.drift_psi_warning: run "
        f"the training deployment (its gate decides promotion), at most once per {cooldown}.",
        trigger=EventTrigger(
            expect={SCORED},
            match=_model_match(model) | {DRIFT_LABEL: "true"},
            posture=Posture.Reactive,
            threshold=1,
            within=cooldown,
        ),
        actions=[RunDeployment(source="selected", deployment_id=deployment_id)],
    )


def notification_block(client, alerts: AlertsConfig, model: str) -> UUID | None:
    """The block the notifications go through: ``alerts.notify_block`` (looked up), or a
    custom-webhook block saved from ``alerts.webhook_url`` (rewritten only when it differs);
    None when neither is set."""
    if alerts.notify_block:
        return _named_block(client, alerts.notify_block)
    if not alerts.webhook_url:
        return None
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    name = _block_name(model)
    wanted = dict(url=alerts.webhook_url, json_data=WEBHOOK_JSON, method="POST")
    try:
        saved = CustomWebhookNotificationBlock.load(name)
        if all(getattr(saved, k) == v for k, v in wanted.items()):
            return saved._block_document_id
    except ValueError:  # not saved yet
        pass
    block = CustomWebhookNotificationBlock(name=f"{model} alerts", **wanted)
    return block.save(name, overwrite=True)


def _block_name(model: str) -> str:
    """A block name from the model name (block names are lowercase, digits and dashes)."""
    import re

    return re.sub(r"[^a-z0-9-]+", "-", model.lower()).strip("-") + "-alerts"


def _named_block(client, reference: str) -> UUID:
    from prefect.exceptions import ObjectNotFound

    slug, name = reference.split("/", 1)
    try:
        document = client.read_block_document_by_name(name=name, block_type_slug=slug)
    except ObjectNotFound:
        raise ValueError(
            f"alerts.notify_block: no block {reference!r} on the Prefect server; save it "
            "first (docs/production.md, 'Alerts') or check `prefect block ls`"
        ) from None
    if "notify" not in (document.block_schema.capabilities if document.block_schema else []):
        raise ValueError(f"alerts.notify_block: {reference!r} is not a notification block")
    return document.id


def notification_destination(cfg: PipelineConfig) -> UUID | None:
    """``notification_block`` for this config, on the Prefect server of ``PREFECT_API_URL``.
    flows/deploy.py asks first, so that a wrong block name stops it before it deploys."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return notification_block(client, cfg.alerts, cfg.tracking.registered_model)


def ensure_automations(
    cfg: PipelineConfig, train_deployment_id: UUID, block_id: UUID | None
) -> list[str]:
    """Create, update or remove this model's two automations to match ``cfg.alerts`` (the
    notifications through ``block_id``, none if None); one line per automation saying which.
    An unchanged automation is left alone (its cool-down and a pause survive a redeploy)."""
    from prefect.client.orchestration import get_client

    model, alerts = cfg.tracking.registered_model, cfg.alerts
    with get_client(sync_client=True) as client:
        cooldown = timedelta(hours=alerts.retrain_cooldown_hours)
        notify = None if block_id is None else notify_automation(model, block_id)
        retrain = None
        if alerts.retrain_on_drift:
            retrain = retrain_automation(model, train_deployment_id, cooldown)
        return [
            f"automation '{name}': {_ensure(client, name, automation)}"
            for name, automation in (
                (automation_name(model, NOTIFY), notify),
                (automation_name(model, RETRAIN), retrain),
            )
        ]


def _ensure(client, name: str, wanted) -> str:
    """Make the automations called ``name`` exactly ``wanted`` (None: none); what it did."""
    existing = client.read_automations_by_name(name)
    if wanted is None:
        for automation in existing:
            client.delete_automation(automation.id)
        return "removed" if existing else "off"
    if not existing:
        client.create_automation(wanted)
        return "created"
    keep, *extra = existing
    for automation in extra:  # an older deploy's duplicates
        client.delete_automation(automation.id)
    if _spec(keep) == _spec(wanted) and not extra:
        return "unchanged" if keep.enabled else "unchanged (paused)"
    client.update_automation(keep.id, wanted.model_copy(update={"enabled": keep.enabled}))
    return "updated"


def _spec(automation) -> dict:
    """What the deploy decides about an automation (not its id, nor whether it is paused)."""
    return automation.model_dump(mode="json", include={"name", "description", "trigger", "actions"})
