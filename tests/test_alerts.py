"""The alerts section and what flows/alerts.py decides, without a server: which limits a batch
crosses, the message a person reads, the events' resource and the automations' triggers.
tests/test_alert_automations.py runs them against a real Prefect server and worker."""

from datetime import timedelta
from pathlib import Path
from uuid import uuid4

import numpy as np
import pandas as pd
import pytest

from vae_core.foundations.config import AlertsConfig, load_config
from vae_core.steps.batch_report import BatchSummary


def summary(rows=200, flagged=10, psi=0.1, drift=False) -> BatchSummary:
    return BatchSummary(
        batch_id="night-7",
        rows=rows,
        flagged=flagged,
        threshold=12.5,
        psi=psi,
        drift_warning=drift,
        score_sample=np.zeros(0),
        top=pd.DataFrame(),
        output=Path("/data/scores/night-7.parquet"),
    )


def test_no_limit_by_default():
    from flows.alerts import limits_crossed

    assert AlertsConfig().max_flagged_share is None and AlertsConfig().max_psi is None
    assert limits_crossed(summary(flagged=200, psi=50.0), AlertsConfig()) == []


def test_a_limit_is_crossed_above_it_not_at_it():
    from flows.alerts import limits_crossed

    alerts = AlertsConfig(max_flagged_share=0.05, max_psi=0.5)
    assert limits_crossed(summary(flagged=10, psi=0.5), alerts) == []  # 10/200 = 0.05
    (share,) = limits_crossed(summary(flagged=11, psi=0.5), alerts)
    assert share.key == "max_flagged_share" and share.value == pytest.approx(0.055)
    (psi,) = limits_crossed(summary(flagged=10, psi=0.51), alerts)
    assert psi.key == "max_psi" and psi.limit == 0.5
    both = limits_crossed(summary(flagged=100, psi=3.0), alerts)
    assert [c.key for c in both] == ["max_flagged_share", "max_psi"]


def test_a_batch_without_psi_crosses_only_the_share():
    from flows.alerts import limits_crossed

    alerts = AlertsConfig(max_flagged_share=0.05, max_psi=0.5)
    assert [c.key for c in limits_crossed(summary(flagged=50, psi=None), alerts)] == [
        "max_flagged_share"
    ]
    assert limits_crossed(summary(rows=0, flagged=0, psi=None), alerts) == []


def test_the_message_names_model_batch_limit_and_scores():
    from flows.alerts import alert_message, batch_payload, limits_crossed

    s = summary(flagged=60, psi=2.25)
    payload = batch_payload(s, "vae-anomaly", "4", "run-abc")
    text = alert_message(payload, limits_crossed(s, AlertsConfig(max_flagged_share=0.2)))
    assert text.startswith("vae-anomaly v4, batch night-7: flagged share 0.300 > limit 0.2")
    assert "(alerts.max_flagged_share)" in text and "60 of 200 rows flagged" in text
    assert "/data/scores/night-7.parquet" in text and "run-abc" in text and "PSI 2.250" in text


def test_an_image_batch_reports_the_same_way():
    """The events come from the BatchSummary whatever the kind of data: an image batch's
    message counts images."""
    from dataclasses import replace

    from flows.alerts import alert_message, batch_payload, limits_crossed

    s = replace(summary(flagged=30, psi=0.9), unit="images")
    payload = batch_payload(s, "vae-anomaly-mnist", "2", None)
    crossed = limits_crossed(s, AlertsConfig(max_psi=0.5))
    assert payload["unit"] == "images" and [c.key for c in crossed] == ["max_psi"]
    assert "30 of 200 images flagged" in alert_message(payload, crossed)


def test_the_event_resource_is_the_model_version_with_its_drift():
    from flows.alerts import model_resource

    resource = model_resource("vae-anomaly", "3", drift_warning=True)
    assert resource["prefect.resource.id"] == "vae-anomaly.model.vae-anomaly.v3"
    assert resource["vae-anomaly.drift-warning"] == "true"
    assert model_resource("m", "1", False)["vae-anomaly.drift-warning"] == "false"


def test_the_automations_match_their_model_and_the_retraining_cools_down():
    from prefect.events.schemas.automations import Posture

    from flows.alerts import LIMIT_CROSSED, SCORED, notify_automation, retrain_automation

    notify = notify_automation("vae-anomaly", uuid4())
    assert notify.trigger.expect == {LIMIT_CROSSED}
    assert notify.trigger.posture == Posture.Reactive and notify.trigger.threshold == 1
    assert notify.trigger.within == timedelta(0)  # every crossing notifies
    retrain = retrain_automation("vae-anomaly", uuid4(), timedelta(hours=6))
    assert retrain.trigger.expect == {SCORED} and retrain.trigger.within == timedelta(hours=6)
    match = retrain.trigger.match.model_dump()  # labels, as fnmatch globs
    assert match["vae-anomaly.model"] == "vae-anomaly"
    assert match["vae-anomaly.drift-warning"] == "true"
    assert notify.name != retrain.name and notify.name.startswith("vae-anomaly: ")


def test_alerts_config_refuses_secrets_and_two_destinations(tmp_path):
    config = tmp_path / "mlflow.yml"
    cases = {
        "webhook_url: https://user:pw@example.test/hook": "credentials is a secret",
        "webhook_url: ftp://example.test/hook": r"not an http\(s\) URL",
        "notify_block: ops-alerts": "not a block reference",
        "notify_block: slack-webhook/ops\n  webhook_url: http://127.0.0.1/x": "not both",
        "max_flagged_share: 1.5": "alerts.max_flagged_share",
        "retrain_cooldown_hours: 0": "alerts.retrain_cooldown_hours",
    }
    for line, message in cases.items():
        config.write_text(f"alerts:\n  {line}\n")
        with pytest.raises(ValueError, match=message):
            load_config(config)
    config.write_text("alerts:\n  notify_block: slack-webhook/ops-alerts\n  max_psi: 0.5\n")
    assert load_config(config).alerts.notify_block == "slack-webhook/ops-alerts"
