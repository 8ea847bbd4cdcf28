"""The score flow on a real Dask cluster (issue 13): ``dask scheduler`` and two ``dask worker``
processes on 127.0.0.1, the flow pointed at it with ``scoring.task_runner: dask`` and
``scoring.dask_address``, the workers reporting to the test's Prefect API (PREFECT_API_URL).

* a multi-partition batch is scored with every row exactly once, with the scores the saved
  detector gives in-process;
* a worker SIGKILLed mid-batch: the batch completes on the survivor or fails cleanly (no
  partial output, the earlier output intact), and a rerun scores every row exactly once;
* the local cluster (no ``dask_address``) listens on 127.0.0.1 only.
"""

from __future__ import annotations

import io
import itertools
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.helpers import (
    CARDIO,
    config_store,
    free_port,
    promote,
    register,
    scoring_config,
    write_pipeline_config,
)

pytestmark = pytest.mark.e2e

DASK = Path(sys.executable).with_name("dask")
LOOPBACK = "127.0.0.1"


def dask_command(kind: str) -> list[str]:
    """``dask scheduler|worker`` from this venv (the CLI, else the module)."""
    if DASK.exists():
        return [str(DASK), kind]
    return [sys.executable, "-m", f"distributed.cli.dask_{kind}"]


def stop_group(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM the process's group, SIGKILL it if it is still there after ``grace`` s."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(wait)
            # the group leader is gone; SIGKILL the rest of its group (a nanny's child)
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            break
        except subprocess.TimeoutExpired:
            continue
        break
    if proc.poll() is None:
        proc.wait(10)


def split_rows(frame: pd.DataFrame, n: int) -> list[pd.DataFrame]:
    bounds = np.linspace(0, len(frame), n + 1).astype(int)
    return [frame.iloc[a:b] for a, b in itertools.pairwise(bounds)]


def write_partitions(frame: pd.DataFrame, folder: Path, n: int) -> Path:
    folder.mkdir(parents=True)
    for i, chunk in enumerate(split_rows(frame, n)):
        chunk.to_parquet(folder / f"part-{i:03d}.parquet", index=False)
    return folder


class Cluster:
    """A scheduler and two single-threaded workers, each in its own process group."""

    def __init__(self, folder: Path, env: dict):
        self.folder, self.env = folder, env
        self.port = free_port()
        self.address = f"tcp://{LOOPBACK}:{self.port}"
        self.procs: dict[str, subprocess.Popen] = {}
        self.client = None
        self.warm: list = []

    def _spawn(self, name: str, args: list[str]) -> None:
        log = open(self.folder / f"{name}.log", "wb")
        self.procs[name] = subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.folder,  # not the checkout: workers import the installed package
            start_new_session=True,
        )
        log.close()

    def start(self) -> None:
        from distributed import Client

        self._spawn(
            "scheduler",
            [
                *dask_command("scheduler"),
                "--host", LOOPBACK, "--port", str(self.port),
                "--dashboard-address", f"{LOOPBACK}:0",
            ],
        )  # fmt: skip
        for name in ("w0", "w1"):
            self._spawn(
                name,
                [
                    *dask_command("worker"), self.address,
                    "--nthreads", "1", "--nworkers", "1", "--name", name,
                    "--host", LOOPBACK, "--dashboard-address", f"{LOOPBACK}:0",
                ],
            )  # fmt: skip
        # not the default client: prefect_dask's runner would take a default client's
        # cluster over its own address or local cluster, and the test would prove nothing
        self.client = Client(self.address, timeout=60, set_as_default=False)
        self.client.wait_for_workers(2, timeout=90)
        # import the flow's modules in the workers while the test trains and registers
        self.warm = [
            self.client.submit(exec, "import flows.score", workers=[a], pure=False)
            for a in self.worker_names()
        ]

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
            for p in sorted(self.folder.glob("*.log"))
        )

    def worker_names(self) -> dict[str, str]:
        """address -> name of the live workers."""
        info = self.client.scheduler_info(n_workers=-1)["workers"]
        return {addr: str(w["name"]) for addr, w in info.items()}

    def stop(self) -> None:
        if self.client is not None:
            self.client.close(timeout=10)
        for name in ("w0", "w1", "scheduler"):  # workers first: no reconnect storm
            if name in self.procs:
                stop_group(self.procs[name])


@pytest.fixture(scope="module")
def cluster(harness, tmp_path_factory):
    """The cluster; its workers talk to the harness's Prefect API, not temporary servers."""
    from prefect.settings import PREFECT_API_URL

    env = dict(os.environ, PREFECT_API_URL=PREFECT_API_URL.value())
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("PYTHONPATH", None)
    cl = Cluster(tmp_path_factory.mktemp("dask"), env)
    try:
        cl.start()
        yield cl
    except BaseException:
        print(cl.logs())
        raise
    finally:
        cl.stop()


@pytest.fixture(scope="module")
def store(tmp_path_factory, _mlflow_template_db, cardio_table, trained_cardio, cluster):
    """A sqlite MLflow store with the tiny cardio model registered and promoted to champion,
    and a config that scores on the cluster; (folder, config path)."""
    from vae_core.foundations.config import load_config

    folder = tmp_path_factory.mktemp("dask-store")
    shutil.copy(_mlflow_template_db, folder / "mlflow.db")
    config = write_pipeline_config(
        folder,
        {
            "tracking": {"uri": f"sqlite:///{folder / 'mlflow.db'}", "max_retries": 1},
            "scoring": {
                "output_dir": "scores",
                "chunk_rows": 2000,
                "task_runner": "dask",
                "dask_address": cluster.address,
            },
        },
    )
    cfg = load_config(config)
    with config_store():
        target, _ = register(cfg, cardio_table, trained_cardio)
        assert promote(target, cfg, cardio_table).outcome == "promoted"
    return folder, config


def run_score(config: Path, **kwargs) -> dict:
    from flows.score import score

    with config_store():
        return score(config_path=str(config), **kwargs)


def reference_scores(folder: Path, frame: pd.DataFrame, version: str) -> pd.DataFrame:
    """The rows scored in this process with the detector the flow saved."""
    from vae_core.estimator.detector import VAEDetector
    from vae_core.kinds.table_scores import score_table

    (model_dir,) = (folder / "outputs" / "models").glob(f"*-v{version}")
    det = VAEDetector.load(model_dir)
    return score_table(det, frame, frame[["record_id"]], top_features=3)


def assert_every_row_once(out: pd.DataFrame, expected: pd.DataFrame) -> None:
    assert len(out) == len(expected), (len(out), len(expected))
    assert out["record_id"].is_unique
    assert set(out["record_id"]) == set(expected["record_id"])


def test_multi_partition_batch_on_the_cluster_scores_every_row_once(store, cluster):
    folder, config = store
    frame = pd.read_csv(CARDIO)
    parts = write_partitions(frame, folder / "batch", 6)
    cluster.client.gather(cluster.warm)  # the warm-up tasks are not counted below
    executed = cluster.client.run(lambda dask_worker: dask_worker.state.executed_count)
    result = run_score(config, data_path=str(parts), batch_id="cluster")
    out = pd.read_parquet(result["output"])
    assert result["rows"] == len(frame)
    assert_every_row_once(out, frame)
    ref = reference_scores(folder, frame, result["model_version"])
    got = out.set_index("record_id").loc[ref["record_id"]]
    np.testing.assert_allclose(got["anomaly_score"], ref["anomaly_score"], rtol=1e-5)
    assert (got["is_anomaly"].to_numpy() == ref["is_anomaly"].to_numpy()).all()
    assert (got["top_feature_1"].to_numpy() == ref["top_feature_1"].to_numpy()).all()
    assert not list((folder / "scores").glob(".*staging"))
    # The partitions really ran in the cluster's workers (not in a local cluster).
    ran = cluster.client.run(lambda dask_worker: dask_worker.state.executed_count)
    assert sum(ran.values()) - sum(executed.values()) >= 6, (executed, ran)
    # and everything the cluster listens on is loopback
    listening = _listening_addresses([p.pid for p in cluster.procs.values()])
    assert listening and all(ip == LOOPBACK for ip, _ in listening), listening


def _listening_addresses(pids: list[int]) -> set[tuple[str, int]]:
    import psutil

    found = set()
    for pid in pids:
        root = psutil.Process(pid)
        for proc in [root, *root.children(recursive=True)]:
            for conn in proc.net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN:
                    found.add((conn.laddr.ip, conn.laddr.port))
    return found


def test_worker_killed_mid_batch_then_rerun_scores_every_row_once(store, cluster):
    folder, config = store
    assert len(cluster.worker_names()) == 2, "needs both workers (run this test first or alone)"
    frame = pd.read_csv(CARDIO)
    big = pd.concat([frame] * 10, ignore_index=True)
    big["record_id"] = [f"r{i}" for i in range(len(big))]
    n_parts = 12
    parts = write_partitions(big, folder / "big", n_parts)
    dest = folder / "scores" / "killed.parquet"
    staging = folder / "scores" / ".killed.staging"

    earlier = run_score(config, data_path=str(parts), batch_id="killed")
    assert Path(earlier["output"]) == dest
    before = dest.read_bytes()

    killed: dict = {}

    def kill_a_busy_worker() -> None:
        """SIGKILL the process group of a worker running a partition once some partitions
        are staged and others are still to come."""
        deadline = time.time() + 60
        names = cluster.worker_names()
        while time.time() < deadline and not done.is_set():
            staged = len(list(staging.glob("part-*.parquet")))
            busy = [a for a, keys in cluster.client.processing().items() if keys]
            if staged >= 2 and busy and staged < n_parts:
                name = names[busy[0]]
                os.killpg(cluster.procs[name].pid, signal.SIGKILL)
                killed.update(name=name, staged=staged)
                return
            time.sleep(0.01)

    done = threading.Event()
    watcher = threading.Thread(target=kill_a_busy_worker, daemon=True)
    watcher.start()
    outcome = None
    try:
        outcome = run_score(config, data_path=str(parts), batch_id="killed")
    except Exception as exc:  # a clean failure is allowed: checked below
        outcome = exc
    done.set()
    watcher.join(70)
    assert killed, "no worker was killed mid-batch (the batch ran too fast?)"
    assert 2 <= killed["staged"] < n_parts
    cluster.procs[killed["name"]].wait(10)
    if isinstance(outcome, Exception):
        assert dest.read_bytes() == before, "a failed batch changed the earlier output"
    else:
        assert_every_row_once(pd.read_parquet(outcome["output"]), big)
    assert not staging.exists()
    left = {p.name for p in (folder / "scores").iterdir()} - {"cluster.parquet", "killed.parquet"}
    assert not left, left  # no temporary or staged file anywhere in the output folder

    # the survivor alone scores the rerun: every row once, the same scores as before the kill
    assert len(cluster.worker_names()) == 1
    rerun = run_score(config, data_path=str(parts), batch_id="killed")
    out = pd.read_parquet(rerun["output"])
    assert_every_row_once(out, big)
    pd.testing.assert_frame_equal(out, pd.read_parquet(io.BytesIO(before)))


def test_the_local_cluster_listens_on_loopback_only(tmp_path):
    """No ``dask_address``: the flow's own Dask cluster (threads) binds only 127.0.0.1."""
    import psutil
    from distributed import LocalCluster

    from flows.score import task_runner
    from vae_core.foundations.config import load_config

    cfg = load_config(None, {"scoring": {"task_runner": "dask"}})
    me = psutil.Process()

    def listening() -> set:
        return {
            (c.laddr.ip, c.laddr.port)
            for c in me.net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN
        }

    before = listening()
    with task_runner(cfg) as runner:
        client = runner.client
        assert isinstance(runner._cluster, LocalCluster), runner._cluster  # its own cluster
        opened = listening() - before
        addresses = [client.scheduler.address, *client.scheduler_info()["workers"]]
    assert all(
        a.startswith("inproc://") or a.startswith(f"tcp://{LOOPBACK}:") for a in addresses
    ), addresses
    assert all(ip == LOOPBACK for ip, _ in opened), opened


def test_a_folder_the_worker_cannot_see_fails_naming_it(tmp_path):
    """A worker on another host without the flow's model copy or output folder: a clear
    error (a user error, not retried), not a missing model file or parts staged on the
    worker's own disk."""
    from flows.score import score_partition
    from vae_core.kinds.protocol import Partition

    model = tmp_path / "models" / "cardio-v1"
    model.mkdir(parents=True)
    staging = tmp_path / "elsewhere" / ".b.staging"
    args = (Partition(str(CARDIO)), str(staging), 0, scoring_config(["record_id"], chunk_rows=100))
    with pytest.raises(FileNotFoundError, match=r"model folder .*models/gone is not visible"):
        score_partition.fn(str(tmp_path / "models" / "gone"), *args)
    shared = r"(?s)output folder .*elsewhere is not visible.*scoring.model_cache and scoring"
    with pytest.raises(FileNotFoundError, match=shared):
        score_partition.fn(str(model), *args)
    assert not staging.parent.exists()


def test_dask_address_wins_over_a_default_client_of_the_process(tmp_path):
    """A process that already holds a default Dask client (a flow run inside a Dask worker,
    a notebook) still scores on ``scoring.dask_address``; prefect_dask's own runner would take
    the default client's cluster."""
    import logging

    from dask.distributed import Client, LocalCluster

    from flows.score import task_runner
    from vae_core.foundations.config import PipelineConfig

    kwargs = dict(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp://",
                  host=LOOPBACK, dashboard_address=f"{LOOPBACK}:0",
                  silence_logs=logging.ERROR)  # fmt: skip
    with LocalCluster(**kwargs) as wanted, LocalCluster(**kwargs) as other:
        with Client(other):  # the process's default client, on the other cluster
            cfg = PipelineConfig.model_validate(
                {"scoring": {"task_runner": "dask", "dask_address": wanted.scheduler_address}}
            )
            with task_runner(cfg) as runner:
                assert runner.client.scheduler.address == wanted.scheduler_address
                assert runner.client.scheduler.address != other.scheduler_address
