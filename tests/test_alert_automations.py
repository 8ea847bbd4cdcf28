"""Alerts and retraining on drift as Prefect automations, against a real Prefect server, a
process work pool and a long-lived worker (one of each for the module), with the deployments
and automations of flows/deploy.py and an HTTP server of the test's own as the webhook:

* deploying twice (and again with an automation paused) leaves one automation of each, the
  paused one paused; ``alerts.notify_block`` finds a block saved on the server by
  "<type slug>/<name>" and refuses a missing one or one that is no notification block;
* a batch inside the limits (all of cardio: flags about 1.5%, PSI about 0.05) delivers no
  notification and starts no training;
* a batch over a limit (cardio's 176 anomalies: PSI about 2.7 against calibration, limit 1)
  delivers the notification, naming model, version, batch, the PSI and the scores file,
  within a bound; the time from the batch's end (its event) to the POST is printed;
* two such batches, started together (inside the one-hour cool-down), drift: the training
  deployment runs once, to completion, and registers a new version (the challenger).

Every process the module starts is stopped by its fixture, even when a test fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest

from flows.alerts import LIMIT_CROSSED, NOTIFY, RETRAIN, SCORED, automation_name
from tests.helpers import (
    CARDIO,
    PREFECT,
    PROCESS_POOL_SCRIPT,
    ROOT,
    config_store,
    free_port,
    lean_prefect_server,
    promote,
    register,
    stop_process,
    wait_healthy,
    write_pipeline_config,
)

pytestmark = pytest.mark.e2e

MODEL = "vae-anomaly"
MAX_PSI = 1.0  # cardio against its own calibration: about 0.05; its anomalies alone: about 2.7
QUIET_S = 5  # after a batch's event: time in which an automation that was to act has acted
ALERT_BOUND_S = 30  # batch end -> notification, at most (measured: well under a second)
RUN_BOUND_S = 300  # a deployment run from creation to a final state, at most

# The server's services: the automations need its triggers and event persister (flushed every
# second); the others are off, to leave the cores to the worker.
_SERVER_ENV = lean_prefect_server("TRIGGERS", "EVENT_PERSISTER") | {
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL": "1"
}

# The pool (tests.helpers.PROCESS_POOL_SCRIPT), then flows/deploy.py's command line three
# times (the third with the retraining automation paused, then resumed); prints what each
# deploy said and whether the paused automation stayed paused.
_SET_UP = (
    PROCESS_POOL_SCRIPT
    + """
import contextlib, io, json
from flows import deploy

config = sys.argv[2]

def deploy_cli():
    sys.argv = ["flows.deploy", "--pool", pool, "--config", config, "--paused"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        deploy.main()
    return out.getvalue().splitlines()

said = [deploy_cli(), deploy_cli()]
with get_client(sync_client=True) as client:
    (retrain,) = client.read_automations_by_name("vae-anomaly: retrain on drift")
    client.pause_automation(retrain.id)
    said.append(deploy_cli())
    paused = not client.read_automation(retrain.id).enabled
    client.resume_automation(retrain.id)
# alerts.notify_block: a block the team saved is found by "<type slug>/<name>"; a missing one,
# or one that sends nothing, is refused naming it.
from prefect.blocks.notifications import SlackWebhook
from prefect.blocks.system import Secret
from flows.alerts import notification_block
from vae_core.foundations.config import AlertsConfig

slack = SlackWebhook(url="http://127.0.0.1:9/never-called").save("ops-alerts")
Secret(value="s3cr3t").save("not-a-notifier")
refused = []
with get_client(sync_client=True) as client:
    found = notification_block(client, AlertsConfig(notify_block="slack-webhook/ops-alerts"), "m")
    for reference in ("slack-webhook/missing", "secret/not-a-notifier"):
        try:
            notification_block(client, AlertsConfig(notify_block=reference), "m")
        except ValueError as exc:
            refused.append(str(exc))

# flows/deploy.py with a block that is not there: exit code 2 naming it, nothing deployed.
import yaml
from prefect.exceptions import ObjectNotFound

bad = yaml.safe_load(open(config))
bad["alerts"] |= {"webhook_url": None, "notify_block": "slack-webhook/missing"}
bad["schedules"] = {"score_deployment": "refused", "train_deployment": "refused"}
bad_config = os.path.join(os.path.dirname(config), "bad.yml")
yaml.safe_dump(bad, open(bad_config, "w"))
err = io.StringIO()
sys.argv = ["flows.deploy", "--pool", pool, "--config", bad_config]
with contextlib.redirect_stderr(err):
    try:
        deploy.main()
        code = 0
    except SystemExit as exc:
        code = exc.code
with get_client(sync_client=True) as client:
    try:
        client.read_deployment_by_name("score/refused")
        deployed = True
    except ObjectNotFound:
        deployed = False
print(json.dumps({"said": said, "stayed_paused": paused, "named_block": found == slack,
                  "refused": refused, "bad_block": [code, err.getvalue(), deployed]}))
"""
)


@dataclass
class Received:
    """The webhook's POSTs: (time received, path, JSON body)."""

    posts: list[tuple[float, str, dict]] = field(default_factory=list)
    arrived: threading.Condition = field(default_factory=threading.Condition)

    def handler(self):
        received = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                now = time.time()
                self.send_response(200)
                self.end_headers()
                with received.arrived:
                    received.posts.append((now, self.path, json.loads(body or b"{}")))
                    received.arrived.notify_all()

            def log_message(self, *args):  # quiet
                pass

        return Handler

    def wait_for(self, text: str, timeout: float) -> tuple[float, str, dict] | None:
        deadline = time.time() + timeout
        with self.arrived:
            while True:
                for post in self.posts:
                    if text in json.dumps(post[2]):
                        return post
                if time.time() >= deadline:
                    return None
                self.arrived.wait(deadline - time.time())


@dataclass
class Stack:
    api: str
    folder: Path
    received: Received
    set_up: dict
    batches: dict[str, Path]
    drifted: dict = field(default_factory=dict)


def _api(api: str, method: str, path: str, body=None):
    req = urllib.request.Request(
        api + path,
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=15) as r:
        return json.load(r)


def _start(stack: Stack, batch: str, data: Path) -> dict:
    """Start a run of score/nightly on ``data`` as batch ``batch``, for the worker."""
    deployment = _api(stack.api, "GET", "/deployments/name/score/nightly")
    return _api(
        stack.api,
        "POST",
        f"/deployments/{deployment['id']}/create_flow_run",
        {"name": f"score-{batch}", "parameters": {"data_path": str(data), "batch_id": batch}},
    )


def _final(api: str, run_id: str) -> dict:
    deadline = time.time() + RUN_BOUND_S
    while time.time() < deadline:
        run = _api(api, "GET", f"/flow_runs/{run_id}")
        if run["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            return run
        time.sleep(1)
    raise TimeoutError(f"flow run {run_id} not finished after {RUN_BOUND_S} s: {run['state']}")


def _event(api: str, name: str, batch: str, timeout: float = 30) -> dict | None:
    """The event ``name`` of batch ``batch`` once the server has stored it (None after
    ``timeout``)."""
    deadline = time.time() + timeout
    while True:
        found = _api(api, "POST", "/events/filter", {"filter": {"event": {"name": [name]}}})
        for event in found["events"]:
            if event["payload"].get("batch_id") == batch:
                return event
        if time.time() >= deadline:
            return None
        time.sleep(0.5)


def _training_runs(stack: Stack) -> list[dict]:
    deployment = _api(stack.api, "GET", "/deployments/name/train/weekly")
    body = {"flow_runs": {"deployment_id": {"any_": [deployment["id"]]}}}
    return _api(stack.api, "POST", "/flow_runs/filter", body)


def _occurred(event: dict) -> float:
    return pd.Timestamp(event["occurred"]).timestamp()


def _champion(config: Path, folder: Path) -> None:
    """A tiny model, registered and promoted in the config's own sqlite store."""
    from vae_core.foundations.config import load_config
    from vae_core.kinds.choice import load_dataset
    from vae_core.steps import training

    with config_store():
        cfg = load_config(config)
        table = load_dataset(CARDIO, cfg)
        target, _ = register(cfg, table, training.train_and_evaluate(table, cfg, folder / "run"))
        assert promote(target, cfg, table).promoted


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    folder = tmp_path_factory.mktemp("alerts")
    received = Received()
    hook = ThreadingHTTPServer(("127.0.0.1", 0), received.handler())
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    config = write_pipeline_config(
        folder,
        {
            "tracking": {"uri": "sqlite:///mlflow.db", "max_retries": 1},
            "scoring": {"output_dir": "scores"},
            "alerts": {
                "max_flagged_share": 0.5,
                "max_psi": MAX_PSI,
                "webhook_url": f"http://127.0.0.1:{hook.server_port}/alerts",
                "retrain_cooldown_hours": 1,
            },
        },
    )
    frame = pd.read_csv(CARDIO)
    batches = {"inside": CARDIO, "anomalies": folder / "anomalies.csv"}
    frame[frame["label"] == 1].to_csv(batches["anomalies"], index=False)

    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env |= {
        "PREFECT_HOME": str(folder / "prefect-home"),
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "true",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "PREFECT_WORKER_QUERY_SECONDS": "1",
    }
    server = set_up = worker = None
    log = folder / "server.log"
    try:
        with open(log, "w") as out:
            server = subprocess.Popen(
                [*PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                env=env | _SERVER_ENV,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        set_up = subprocess.Popen(
            [sys.executable, "-c", _SET_UP, "alerts-pool", str(config)],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        _champion(config, folder)  # while the server starts and the set-up imports Prefect
        said, errors = set_up.communicate(timeout=300)
        assert set_up.returncode == 0, errors[-3000:] + log.read_text()[-2000:]
        wait_healthy(api, server, log)
        with open(folder / "worker.log", "w") as out:
            worker = subprocess.Popen(
                [*PREFECT, "worker", "start", "--pool", "alerts-pool", "--name", "w1"],
                env=env,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        said = json.loads(said.strip().splitlines()[-1])
        yield Stack(api, folder, received, said, batches)
    finally:
        stop_process(worker)
        stop_process(set_up)
        stop_process(server)
        hook.shutdown()


@pytest.fixture(scope="module")
def drifted(stack):
    """The anomalies scored as batches drift-1 and drift-2, started together (two drifting
    nights inside one cool-down); their limit events."""
    runs = [_start(stack, batch, stack.batches["anomalies"]) for batch in ("drift-1", "drift-2")]
    for run in runs:
        run = _final(stack.api, run["id"])
        assert run["state_type"] == "COMPLETED", run["state"]
    limits = {b: _event(stack.api, LIMIT_CROSSED, b) for b in ("drift-1", "drift-2")}
    assert None not in limits.values(), f"a drifting batch emitted no limit event: {limits}"
    return limits


def test_deploying_twice_leaves_one_automation_of_each(stack):
    notify, retrain = automation_name(MODEL, NOTIFY), automation_name(MODEL, RETRAIN)
    first, second, third = stack.set_up["said"]
    assert f"automation '{notify}': created" in first
    assert f"automation '{retrain}': created" in first
    assert f"automation '{notify}': unchanged" in second
    assert f"automation '{retrain}': unchanged" in second
    assert f"automation '{retrain}': unchanged (paused)" in third and stack.set_up["stayed_paused"]
    automations = _api(stack.api, "POST", "/automations/filter", {})
    assert sorted(a["name"] for a in automations) == sorted([notify, retrain])
    assert all(a["enabled"] for a in automations)  # resumed after the check


def test_a_named_notification_block_is_found_and_a_wrong_one_refused(stack):
    assert stack.set_up["named_block"]
    missing, not_a_notifier = stack.set_up["refused"]
    assert "no block 'slack-webhook/missing' on the Prefect server" in missing
    assert "'secret/not-a-notifier' is not a notification block" in not_a_notifier
    code, message, deployed = stack.set_up["bad_block"]  # flows/deploy.py with the missing one
    assert code == 2 and "no block 'slack-webhook/missing'" in message and not deployed


def test_a_batch_inside_the_limits_alerts_nobody_and_trains_nothing(stack):
    run = _final(stack.api, _start(stack, "inside", stack.batches["inside"])["id"])
    assert run["state_type"] == "COMPLETED", run["state"]
    scored = _event(stack.api, SCORED, "inside")
    assert scored is not None, "the batch emitted no event"
    payload = scored["payload"]
    assert payload["rows"] == 1831 and payload["psi"] < MAX_PSI and not payload["drift_warning"]
    assert payload["flagged_share"] < 0.5 and payload["model"] == MODEL
    assert scored["resource"]["prefect.resource.id"] == f"vae-anomaly.model.{MODEL}.v1"
    time.sleep(QUIET_S)
    assert _event(stack.api, LIMIT_CROSSED, "inside", timeout=0) is None
    assert stack.received.posts == []
    assert _training_runs(stack) == []


def test_a_batch_over_a_limit_delivers_an_alert(stack, drifted):
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    for batch, event in drifted.items():
        post = stack.received.wait_for(f"batch {batch}:", ALERT_BOUND_S)
        assert post is not None, f"no notification for {batch} within {ALERT_BOUND_S} s"
        received, path, body = post
        psi = event["payload"]["psi"]
        assert path == "/alerts" and psi > MAX_PSI
        assert f"{MODEL} v1, batch {batch}: score PSI {psi:.3f} > limit {MAX_PSI:g}" in body["text"]
        assert str(stack.folder / "scores" / f"{batch}.parquet") in body["text"]
        latency = received - _occurred(event)
        print(f"\n{batch}: batch end (limit event) -> webhook POST {latency:.3f} s (load {load})")
        assert 0 <= latency < ALERT_BOUND_S
    assert not any("batch inside" in json.dumps(body) for _, _, body in stack.received.posts)


def test_drift_runs_the_training_deployment_once_within_the_cooldown(stack, drifted):
    scored = [_event(stack.api, SCORED, batch) for batch in drifted]
    assert all(event["payload"]["drift_warning"] for event in scored)
    deadline = time.time() + ALERT_BOUND_S
    while not _training_runs(stack) and time.time() < deadline:
        time.sleep(0.5)
    time.sleep(QUIET_S)  # for a second run, if the cool-down let one through
    (training,) = _training_runs(stack)  # one run for two drifting batches
    finished = _final(stack.api, training["id"])
    assert finished["state_type"] == "COMPLETED", finished["state"]
    end = min(_occurred(event) for event in scored)
    created, started = (pd.Timestamp(finished[k]).timestamp() for k in ("created", "start_time"))
    print(
        f"\nbatch end (first drift event) -> training run created {created - end:.3f} s, "
        f"started {started - end:.1f} s"
    )
    from mlflow import MlflowClient

    versions = MlflowClient(f"sqlite:///{stack.folder / 'mlflow.db'}").search_model_versions(
        f"name = '{MODEL}'"
    )
    assert sorted(int(v.version) for v in versions) == [1, 2]  # the run registered v2
    assert len(_training_runs(stack)) == 1
