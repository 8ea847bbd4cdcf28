"""The Prefect flows under prefect_test_harness, against a real sqlite MLflow store.

One training flow run per module registers and promotes a model; the scoring tests use it.
"""

import itertools
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from tests.helpers import CARDIO, ROOT, write_pipeline_config


def split_rows(frame: pd.DataFrame, n: int) -> list[pd.DataFrame]:
    bounds = np.linspace(0, len(frame), n + 1).astype(int)
    return [frame.iloc[a:b] for a, b in itertools.pairwise(bounds)]


@pytest.fixture(scope="module")
def store(tmp_path_factory, harness):
    """A config in a fresh folder (its own sqlite store) and the train flow's result there."""
    from flows.train import train

    folder = tmp_path_factory.mktemp("flows")
    config = write_pipeline_config(
        folder,
        {
            "tracking": {"uri": "sqlite:///mlflow.db", "max_retries": 1},
            "scoring": {"output_dir": "scores", "chunk_rows": 500},
        },
    )
    env_uri = os.environ.pop("MLFLOW_TRACKING_URI", None)
    try:
        result = train(config_path=str(config), out_dir=str(folder / "run"))
    finally:
        if env_uri is not None:
            os.environ["MLFLOW_TRACKING_URI"] = env_uri
    return folder, config, result


def test_train_flow_registers_and_promotes_the_first_model(store):
    _, _, result = store
    assert result["version"] == "1"
    assert result["promoted"] is True


def test_score_flow_writes_each_row_once_and_logs_to_mlflow(store):
    from mlflow import MlflowClient

    from flows.score import score

    folder, config, _ = store
    first = score(data_path=str(CARDIO), config_path=str(config))
    out = pd.read_parquet(first["output"])
    assert len(out) == 1831 and out["record_id"].is_unique
    assert {"anomaly_score", "is_anomaly", "anomaly_probability", "top_feature_1"} <= set(out)
    assert first["model_version"] == "1"
    again = score(data_path=str(CARDIO), config_path=str(config))
    assert again["batch_id"] == first["batch_id"]  # the input's content hash
    assert len(pd.read_parquet(again["output"])) == 1831  # replaced, not appended
    run = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}").get_run(first["mlflow_run_id"])
    assert run.data.tags["model.version"] == "1"
    assert run.data.metrics["rows"] == 1831
    # the scoring run's parameters, its dataset and its description
    params = run.data.params
    assert params["batch.id"] == first["batch_id"] and params["model.version"] == "1"
    assert params["scoring.chunk_rows"] == "500" and params["scoring.top_features"] == "3"
    (data,) = run.inputs.dataset_inputs
    assert data.dataset.name == "cardio.csv" and str(CARDIO) in data.dataset.source
    assert {t.key: t.value for t in data.tags}["mlflow.data.context"] == "scoring"
    assert "1831 rows" in run.data.tags["mlflow.note.content"]


def test_prefect_artifacts_have_descriptions(store):
    """The training report and the scoring summary and table say what they are in the
    Prefect UI's artifact list ("No description" otherwise)."""
    from prefect.client.orchestration import get_client

    from flows.score import score

    _, config, _ = store
    score(data_path=str(CARDIO), batch_id="described", config_path=str(config))
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts()
    described: dict[str, list[str]] = {}  # the session's Prefect server: other tests' too
    for a in artifacts:
        if a.key:
            described.setdefault(a.key, []).append(a.description or "")
    assert {"training-report", "scoring-summary", "top-anomalies"} <= set(described)
    ours = [d for d in described["training-report"] if d.startswith("vae-anomaly v1 ")]
    assert ours and all("promoted" in d for d in ours)
    assert any("described: " in d and "rows flagged" in d for d in described["scoring-summary"])
    assert any("highest-scoring rows" in d for d in described["top-anomalies"])


def test_flow_runs_are_named_after_their_batch_and_model_version(store):
    """Not Prefect's random two words: a score run is named after its batch id and the model
    version that scored it (its subflow, which scores the partitions, after the batch), a
    train run after the version it registered."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    from flows.score import score

    _, config, _ = store
    score(data_path=str(CARDIO), batch_id="named", config_path=str(config))
    wanted = ["score-named-vae-anomaly-v1", "score-named-partitions", "train-vae-anomaly-v1"]
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=wanted))
        )
    assert set(wanted) <= {r.name for r in runs}


def test_dask_task_runner_gives_the_same_scores_as_threads(store, tmp_path):
    from flows.score import score

    _, config, _ = store
    parts = tmp_path / "parts"
    parts.mkdir()
    frame = pd.read_csv(CARDIO)
    for i, chunk in enumerate(split_rows(frame, 3)):
        chunk.to_parquet(parts / f"part-{i}.parquet")
    threads = score(data_path=str(parts), batch_id="threads", config_path=str(config))
    (config.parent / "dask").mkdir()
    dask_cfg = write_pipeline_config(
        config.parent / "dask",
        {
            "tracking": {"uri": f"sqlite:///{config.parent / 'mlflow.db'}", "max_retries": 1},
            "scoring": {"output_dir": str(config.parent / "scores"), "task_runner": "dask"},
        },
    )
    dask = score(data_path=str(parts), batch_id="dask", config_path=str(dask_cfg))
    pd.testing.assert_frame_equal(
        pd.read_parquet(threads["output"]), pd.read_parquet(dask["output"])
    )


def test_bad_input_fails_before_any_output_and_keeps_earlier_output(store, tmp_path):
    from flows.score import score

    _, config, _ = store
    good = score(data_path=str(CARDIO), batch_id="daily", config_path=str(config))
    before = open(good["output"], "rb").read()
    bad = pd.read_csv(CARDIO).astype({"ASTV": object})
    bad.loc[1500, "ASTV"] = "sensor fault"
    bad.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ValueError, match=r"(?s)bad\.csv.*'ASTV': not a number at line\(s\) 1502"):
        score(data_path=str(tmp_path / "bad.csv"), batch_id="daily", config_path=str(config))
    assert open(good["output"], "rb").read() == before
    assert not list((config.parent / "scores").glob(".*staging"))


def test_sigkill_mid_batch_then_rerun_gives_every_row_once(store, tmp_path):
    """Kill -9 a scoring process while it stages partitions; the rerun is complete."""
    from prefect.settings import PREFECT_API_URL

    _, config, _ = store
    frame = pd.read_csv(CARDIO)
    big = pd.concat([frame] * 40, ignore_index=True)
    big["record_id"] = [f"r{i}" for i in range(len(big))]
    parts = tmp_path / "big"
    parts.mkdir()
    for i, chunk in enumerate(split_rows(big, 8)):
        chunk.to_parquet(parts / f"part-{i}.parquet")
    env = dict(os.environ, PREFECT_API_URL=PREFECT_API_URL.value(), PYTHONPATH=str(ROOT))
    env.pop("MLFLOW_TRACKING_URI", None)
    code = (
        "from flows.score import score; "
        f"score(data_path={str(parts)!r}, batch_id='killed', config_path={str(config)!r})"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=ROOT, start_new_session=True)
    staging = config.parent / "scores" / ".killed.staging"
    deadline = time.time() + 120
    while not list(staging.glob("part-*.parquet")) and time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail("the scoring process ended before it could be killed")
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    dest = config.parent / "scores" / "killed.parquet"
    assert not dest.exists()  # nothing half-written where readers look
    from flows.score import score

    result = score(data_path=str(parts), batch_id="killed", config_path=str(config))
    out = pd.read_parquet(result["output"])
    assert len(out) == len(big) and out["record_id"].is_unique
    assert set(out["record_id"]) == set(big["record_id"])


def test_transient_failures_are_retried_and_user_errors_are_not(harness):
    from prefect import flow, task

    from flows.retry import transient_only

    attempts = {"io": 0, "user": 0}

    @task(retries=2, retry_delay_seconds=0, retry_condition_fn=transient_only)
    def flaky(kind: str) -> str:
        attempts[kind] += 1
        if kind == "io" and attempts[kind] < 3:
            raise ConnectionError("tracking server busy")
        if kind == "user":
            raise ValueError("column 'x' is missing")
        return "ok"

    @flow
    def run(kind: str) -> str:
        return flaky(kind)

    assert run("io") == "ok" and attempts["io"] == 3
    with pytest.raises(ValueError, match="column 'x'"):
        run("user")
    assert attempts["user"] == 1


def test_feedback_flow_records_verdicts_on_scored_rows_and_refuses_unknown_ids(store):
    """The feedback flow, as `vae-anomaly feedback`: an id no scoring run scored fails the
    flow run naming the row, with nothing recorded; verdicts on scored rows are recorded
    and the scoring run gets its reviewed precision."""
    from mlflow import MlflowClient

    from flows.feedback import feedback
    from flows.score import score
    from vae_core.tracking.registry import FEEDBACK_RUN_TAG

    folder, config, _ = store
    scored = score(data_path=str(CARDIO), batch_id="reviewed", config_path=str(config))
    labels = pd.read_csv(CARDIO)[["record_id", "label"]]
    scores = pd.read_parquet(scored["output"]).merge(labels)
    verdicts = pd.concat([scores[scores["is_anomaly"]], scores.head(20)])[["record_id", "label"]]
    unknown = pd.concat([verdicts, pd.DataFrame({"record_id": [-5], "label": [1]})])
    unknown.to_csv(folder / "unknown.csv", index=False)
    verdicts.to_csv(folder / "verdicts.csv", index=False)
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    with pytest.raises(ValueError, match=r"no scoring run of 'vae-anomaly' scored: line\(s\)"):
        feedback(str(folder / "unknown.csv"), ["record_id"], config_path=str(config))
    assert FEEDBACK_RUN_TAG not in client.get_registered_model("vae-anomaly").tags
    result = feedback(str(folder / "verdicts.csv"), ["record_id"], config_path=str(config))
    assert result["reviewed"] == verdicts["record_id"].nunique() and result["new"] == len(verdicts)
    run = client.get_run(scored["mlflow_run_id"])
    flagged = scores[scores["is_anomaly"]]
    assert run.data.metrics["reviewed_precision"] == pytest.approx(flagged["label"].mean())
