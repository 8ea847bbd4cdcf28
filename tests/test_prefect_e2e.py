"""End to end through a real Prefect server: a process work pool, the deployments from
flows/deploy.py, `prefect deployment run`, and a worker that executes the run.

Every process the test starts is stopped in a finally block, even when the test fails.
"""

import json
import os
import subprocess
import sys
import urllib.request

import pandas as pd
import pytest

from tests.helpers import (
    CARDIO,
    PREFECT,
    ROOT,
    free_port,
    stop_process,
    wait_healthy,
    write_pipeline_config,
)

pytestmark = pytest.mark.e2e


def _run(args, env, timeout=180):
    result = subprocess.run(
        args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"{args}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_deployment_run_is_executed_by_a_worker(tmp_path, mlflow_uri):
    from vae_core.foundations.config import load_config
    from vae_core.kinds.choice import load_dataset
    from vae_core.steps import pipeline, training
    from vae_core.steps.promotion import measure_on
    from vae_core.tracking import registry

    # A champion in this test's own sqlite store, for the deployment to score with.
    config = write_pipeline_config(tmp_path, {"scoring": {"output_dir": "scores"}})
    cfg = load_config(config)
    target = registry.TrackingTarget.from_config(cfg)
    table = load_dataset(CARDIO, cfg)
    run_id = registry.start_training_run(target, cfg, str(CARDIO))
    outcome = training.train_and_evaluate(table, cfg, tmp_path / "run")
    registry.log_training_run(target, run_id, cfg, table, outcome, str(CARDIO))
    registry.register_challenger(target, run_id)
    measure = measure_on(*pipeline.held_out(table, cfg.split))
    assert registry.promote_challenger(target, cfg.promotion, measure).promoted

    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = dict(
        os.environ,
        PREFECT_HOME=str(tmp_path / "prefect-home"),
        PREFECT_API_URL=api,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="true",
        PREFECT_LOGGING_LEVEL="WARNING",
        MLFLOW_TRACKING_URI=mlflow_uri,
    )
    server = worker = None
    log = tmp_path / "server.log"
    try:
        with open(log, "w") as out:
            server = subprocess.Popen(
                [*PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_healthy(api, server, log)
        _run([*PREFECT, "work-pool", "create", "e2e-pool", "--type", "process"], env)
        _run(
            [
                sys.executable,
                "-m",
                "flows.deploy",
                "--pool",
                "e2e-pool",
                "--config",
                str(config),
                "--paused",
            ],
            env,
        )
        started = _run(
            [
                *PREFECT,
                "deployment",
                "run",
                "score/nightly",
                "--param",
                f"data_path={CARDIO}",
                "--param",
                "batch_id=e2e",
            ],
            env,
        )
        # by its id: the score flow renames its run after the batch and the model version
        run_id = next(
            line.split("UUID:")[1].strip() for line in started.splitlines() if "UUID:" in line
        )
        worker = subprocess.Popen(
            [*PREFECT, "worker", "start", "--pool", "e2e-pool", "--run-once"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            text=True,
        )
        output, _ = worker.communicate(timeout=300)
        with urllib.request.urlopen(f"{api}/flow_runs/{run_id}") as r:
            state = json.load(r)["state_type"]
        assert state == "COMPLETED", output[-3000:]
    finally:
        stop_process(worker)
        stop_process(server)

    scores = pd.read_parquet(tmp_path / "scores" / "e2e.parquet")
    assert len(scores) == 1831 and scores["record_id"].is_unique
    from mlflow import MlflowClient

    runs = MlflowClient(mlflow_uri).search_runs(
        [MlflowClient(mlflow_uri).get_experiment_by_name(cfg.tracking.experiment).experiment_id],
        filter_string="tags.`vae.step` = 'scoring'",
    )
    assert len(runs) == 1 and runs[0].data.tags["model.version"] == "1"
