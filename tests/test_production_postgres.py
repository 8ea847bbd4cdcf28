"""The production profile end to end, on PostgreSQL (docs/production.md):

* ``mlflow server`` with a PostgreSQL backend store and proxied artifacts
  (``--artifacts-destination``, ``--serve-artifacts``);
* ``prefect server start`` on PostgreSQL (PREFECT_API_DATABASE_CONNECTION_URL, asyncpg);
* a process work pool with two workers and the deployments of flows/deploy.py.

train -> register -> promote through the CLI against the MLflow server, then
``prefect deployment run 'score/nightly'`` four times at once with different batches, and the
same batch id twice at once (``dup``, the bytes of batch ``b0`` under another id).

The test creates its own databases on $VAE_TEST_POSTGRES (default
postgresql://postgres@127.0.0.1:5432, trust authentication) and drops them at the end; it
skips where no PostgreSQL answers or a driver (psycopg2, asyncpg) is missing. Every server and
worker runs in its own process group and is stopped, the whole group, even when the test fails.
"""

import contextlib
import os
import subprocess
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest
import requests

from tests.helpers import CARDIO, ROOT, free_port, write_pipeline_config
from tests.postgres_servers import (
    BIN,
    POSTGRES,
    Processes,
    admin_connection,
    deploy_command,
    mlflow_server_command,
    prefect_server_command,
    profile_env,
    tail,
)

pytestmark = pytest.mark.e2e

RUNS_TIMEOUT_S = 420  # six flow runs on two workers, on a loaded 2-core box
BATCHES = ["b0", "b1", "b2", "b3"]


@pytest.fixture
def postgres_databases():
    """Make fresh databases on the test server: ``make(label) -> URL``; all dropped at the end."""
    conn = admin_connection()
    made: list[str] = []

    def make(label: str) -> str:
        name = f"vae_e2e_{label}_{uuid.uuid4().hex[:8]}"
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        made.append(name)
        return f"{POSTGRES}/{name}"

    try:
        yield make
    finally:
        with conn.cursor() as cur:
            for name in made:  # FORCE: ends sessions a killed server may have left
                cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.close()


def _query(url: str, sql: str) -> list[tuple]:
    import psycopg2

    with contextlib.closing(psycopg2.connect(url, connect_timeout=5)) as conn:
        with conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchall()


def _run(args: list, env: dict, timeout: float = 300) -> str:
    done = subprocess.run(
        [str(a) for a in args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"{args}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def _flow_runs(api: str, ids: list[str]) -> dict[str, dict]:
    body = {"flow_runs": {"id": {"any_": ids}}}
    response = requests.post(f"{api}/flow_runs/filter", json=body, timeout=10)
    response.raise_for_status()
    return {r["id"]: r for r in response.json()}


def _wait_finished(api: str, runs: dict[str, str], logs: list[Path]) -> dict[str, dict]:
    """Poll until every flow run (label -> id) is in a final state; label -> flow run."""
    deadline = time.monotonic() + RUNS_TIMEOUT_S
    final = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
    while True:
        states = _flow_runs(api, list(runs.values()))
        if all(states[i]["state_type"] in final for i in runs.values()):
            return {label: states[i] for label, i in runs.items()}
        if time.monotonic() > deadline:
            seen = {label: states[i]["state_type"] for label, i in runs.items()}
            pytest.fail(f"flow runs not finished after {RUNS_TIMEOUT_S} s: {seen}\n" + "\n".join(
                tail(log) for log in logs
            ))  # fmt: skip
        time.sleep(1)


def test_production_profile_on_postgres(tmp_path, postgres_databases, monkeypatch):
    mlflow_db, prefect_db = postgres_databases("mlflow"), postgres_databases("prefect")
    mlflow_url = f"http://127.0.0.1:{free_port()}"
    api = f"http://127.0.0.1:{free_port()}/api"
    artifacts = tmp_path / "mlflow-artifacts"
    env = profile_env(os.environ, tmp_path / "prefect-home", api, mlflow_url)
    server_env = dict(
        env,
        PREFECT_API_DATABASE_CONNECTION_URL=prefect_db.replace(
            "postgresql://", "postgresql+asyncpg://", 1
        ),
    )
    processes = Processes(tmp_path)
    logs = processes.logs

    config = write_pipeline_config(
        tmp_path, {"tracking": {"uri": mlflow_url}, "scoring": {"output_dir": "scores"}}
    )
    cardio = pd.read_csv(CARDIO)
    data = tmp_path / "batches"
    data.mkdir()
    for i, name in enumerate(BATCHES):  # four different batches of about 450 rows
        cardio.iloc[i::4].to_csv(data / f"{name}.csv", index=False)
    started = time.monotonic()
    try:
        backend_store = mlflow_db.replace("postgresql://", "postgresql+psycopg2://")
        processes.start_servers(
            (mlflow_server_command(backend_store, artifacts, mlflow_url, 2), server_env),
            (prefect_server_command(api), server_env),
            (mlflow_url, api),
        )
        phases = {"servers ready": time.monotonic() - started}
        # The work pool and the deployments (flows/deploy.py), while the model trains.
        deploy = processes.start("deploy", deploy_command("pg-pool", config), env)
        # train -> register (@challenger) -> promote (@champion), through the CLI
        cli = BIN / "vae-anomaly"
        _run(
            [cli, "train", "--data", CARDIO, "--out", tmp_path / "train", "--config", config,
             "--label-column", "label", "--id-column", "record_id"],
            env,
        )  # fmt: skip
        promoted = _run([cli, "promote", "--config", config], env)
        assert "champion -> version 1" in promoted, promoted
        phases["trained, promoted"] = time.monotonic() - started
        assert deploy.wait(timeout=300) == 0, tail(logs[-1])
        for worker in ("w1", "w2"):
            processes.start(worker, [BIN / "prefect", "worker", "start", "--pool", "pg-pool",
                                     "--name", worker], env)  # fmt: skip

        # Six `prefect deployment run` at once: four batches, and batch b0's rows twice as "dup".
        params = {name: (data / f"{name}.csv", name) for name in BATCHES}
        params |= {"dup-1": (data / "b0.csv", "dup"), "dup-2": (data / "b0.csv", "dup")}
        triggers = {}
        for label, (path, batch_id) in params.items():
            args = ["deployment", "run", "score/nightly", "--param", f"data_path={path}",
                    "--param", f"batch_id={batch_id}"]  # fmt: skip
            triggers[label] = subprocess.Popen(
                [str(BIN / "prefect"), *args],
                env=env,
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        phases["deployed"] = time.monotonic() - started
        run_ids = {}
        for label, trigger in triggers.items():
            out, _ = trigger.communicate(timeout=180)
            assert trigger.returncode == 0, out[-3000:]
            run_ids[label] = next(
                line.split("UUID:")[1].strip() for line in out.splitlines() if "UUID:" in line
            )
        finished = _wait_finished(api, run_ids, logs[2:])
        phases["runs finished"] = time.monotonic() - started
        _check_outputs(finished, tmp_path / "scores", cardio, logs[2:])
        _check_scoring_runs(mlflow_url, finished, config)
        _check_stores(mlflow_db, prefect_db, artifacts, len(finished))
        phases["checked"] = time.monotonic() - started
        print("seconds since start:", {k: round(v) for k, v in phases.items()})
        for label, run in finished.items():
            message = (run["state"]["message"] or "")[:300]
            print(f"flow run {label}: {run['state_type']} {message!r}")
    finally:
        processes.stop()


def _check_outputs(finished: dict, scores: Path, cardio: pd.DataFrame, logs: list[Path]) -> None:
    """All four batches Completed, each with its rows exactly once; the two runs of batch id
    "dup" both Completed (the second waits for the first's batch lock), and "dup" holds b0's
    rows exactly as b0's single run wrote them; no staging folder, lock or temporary file is
    left."""
    states = {label: run["state_type"] for label, run in finished.items()}
    logs_text = "\n".join(tail(log) for log in logs)
    for name in BATCHES:
        assert states[name] == "COMPLETED", f"{name}: {states}\n{logs_text}"
    assert states["dup-1"] == states["dup-2"] == "COMPLETED", f"{states}\n{logs_text}"
    for i, name in enumerate(BATCHES):
        out = pd.read_parquet(scores / f"{name}.parquet")
        assert out["record_id"].is_unique, name
        assert sorted(out["record_id"]) == sorted(cardio.iloc[i::4]["record_id"]), name
    pd.testing.assert_frame_equal(
        pd.read_parquet(scores / "dup.parquet"), pd.read_parquet(scores / "b0.parquet")
    )
    left = sorted(p.name for p in scores.iterdir())
    assert left == sorted(f"{n}.parquet" for n in [*BATCHES, "dup"]), left


def _check_scoring_runs(mlflow_url: str, finished: dict, config: Path) -> None:
    """One FINISHED scoring run per completed flow run, tagged with and taking as input the
    LoggedModel of registered version 1 (the champion), its scores file on the server."""
    from mlflow import MlflowClient

    from vae_core.foundations.config import load_config

    cfg = load_config(config)
    client = MlflowClient(tracking_uri=mlflow_url, registry_uri=mlflow_url)
    version = client.get_model_version_by_alias(cfg.tracking.registered_model, "champion")
    assert version.version == "1"
    model_id = version.model_id or version.source.removeprefix("models:/")  # m-...
    assert model_id.startswith("m-"), version.source
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    runs = client.search_runs(
        [experiment.experiment_id], filter_string="tags.`vae.step` = 'scoring'"
    )
    completed = [label for label, run in finished.items() if run["state_type"] == "COMPLETED"]
    by_batch: dict[str, list] = {}
    for run in runs:
        by_batch.setdefault(run.data.tags["batch.id"], []).append(run)
    expected = {name: 1 for name in BATCHES} | {
        "dup": sum(label.startswith("dup") for label in completed)
    }
    assert {k: len(v) for k, v in by_batch.items()} == expected
    for run in runs:
        assert run.info.status == "FINISHED"
        assert run.data.tags["model.version"] == "1"
        assert run.data.tags["model.name"] == cfg.tracking.registered_model
        linked = client.get_run(run.info.run_id).inputs.model_inputs  # search omits inputs
        assert [m.model_id for m in linked] == [model_id]
        assert [f.path for f in client.list_artifacts(run.info.run_id, "scores")] == [
            f"scores/{run.data.tags['batch.id']}.parquet"
        ]


def _check_stores(mlflow_db: str, prefect_db: str, artifacts: Path, flow_runs: int) -> None:
    """The servers really kept their state in PostgreSQL and the artifact folder."""
    assert _query(mlflow_db, "SELECT count(*) FROM model_versions")[0][0] == 1
    assert _query(prefect_db, "SELECT count(*) FROM flow_run WHERE parent_task_run_id IS NULL"
                  " AND deployment_id IS NOT NULL")[0][0] == flow_runs  # fmt: skip
    assert list(artifacts.rglob("weights.pt")) and list(artifacts.rglob("*.parquet"))
