"""Faults during batch scoring, with real processes, a real Prefect server and a real file
system (no mocks):

* a Prefect process worker SIGKILLed (its whole process group, and the flow run it started)
  in the middle of a ``score/nightly`` deployment run: a rerun by a new worker, started as a
  user would start it, leaves every input row exactly once in the output, nothing temporary
  beside it, and earlier outputs byte for byte;
* a scoring process SIGKILLed while it commits the output file: the next run of the batch
  leaves nothing temporary beside the outputs;
* the output folder on a small tmpfs that fills up, while the scores are staged and while the
  final file is written: the batch fails naming the output path and "No space left on
  device", leaves no partial or temporary file and no used space, and the earlier output keeps
  its bytes; through ``vae_core.steps.batch`` and through the ``vae-anomaly score`` command.

Every process a test starts is killed in a finally block, and every mount is unmounted.
"""

from __future__ import annotations

import errno
import math
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.helpers import (
    CARDIO,
    PREFECT,
    PROCESS_POOL_SCRIPT,
    ROOT,
    free_port,
    lean_prefect_server,
    prefect_flow_run_by_id,
    promote,
    register,
    scoring_config,
    stop_process,
    wait_healthy,
    write_pipeline_config,
)

BATCH = "nightly-2026-12-01"
EARLIER = "nightly-2026-11-30.parquet"  # another batch's output, which no fault may touch
PAGE = 4096  # tmpfs counts whole pages


def _cardio_copies(folder: Path, copies: int) -> int:
    """``copies`` Parquet partitions of cardio, ids unique across them; the row count."""
    folder.mkdir(parents=True)
    frame = pd.read_csv(CARDIO)
    for k in range(copies):
        part = frame.assign(record_id=[f"p{k}-{i}" for i in range(len(frame))])
        part.to_parquet(folder / f"part-{k}.parquet", index=False)
    return copies * len(frame)


def _earlier_outputs(folder: Path) -> dict[str, bytes]:
    """Another batch's output and an older output of this batch; their bytes."""
    pd.DataFrame({"record_id": ["a", "b"], "anomaly_score": [1.0, 2.0]}).to_parquet(
        folder / EARLIER
    )
    pd.DataFrame({"record_id": ["x"], "anomaly_score": [0.5]}).to_parquet(
        folder / f"{BATCH}.parquet"
    )
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def _temporary_files(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.rglob("*") if p.name.endswith(".tmp"))


# ---- (a) a worker killed in the middle of a deployment run ------------------------------------

# The process pool (tests.helpers.PROCESS_POOL_SCRIPT), the deployments (flows/deploy.py)
# and the first run, in one interpreter that does its imports while the server starts.
_SET_UP = (
    PROCESS_POOL_SCRIPT
    + """
print("pool ready", flush=True)
from prefect.deployments import run_deployment
from flows.deploy import deploy_all

config, data, batch_id = sys.argv[2:]
deploy_all(pool, config, paused=True)
params = {"data_path": data, "batch_id": batch_id}
run = run_deployment("score/nightly", parameters=params, flow_run_name="killed", timeout=0)
print(run.id, flush=True)  # the score flow renames its run (batch, model version): by id
"""
)


def _process_groups_of_flow_run(run_id: str) -> set[int]:
    """Process groups of the live processes that run the flow run: the process worker starts
    each run in a session of its own, so killing the worker's group does not reach them."""
    groups = set()
    marker = f"PREFECT__FLOW_RUN_ID={run_id}".encode()
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        try:
            if entry.name.isdigit() and marker in (entry / "environ").read_bytes().split(b"\0"):
                groups.add(os.getpgid(int(entry.name)))
        except OSError:  # gone, or not ours to read
            continue
    return groups - {os.getpgrp()}  # never this test's own group


def _kill_groups(groups) -> None:
    for group in groups:
        try:
            os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _start_worker(env: dict, log: Path, *extra: str) -> subprocess.Popen:
    with open(log, "a") as out:
        return subprocess.Popen(
            [*PREFECT, "worker", "start", "--pool", "fault-pool", *extra],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a process group of its own, killed as one
        )


def _wait_for(predicate, what: str, timeout: float, log: Path, poll: float = 0.1):
    deadline = time.time() + timeout
    while not (found := predicate()):
        assert time.time() < deadline, f"{what}: not after {timeout} s\n{log.read_text()[-3000:]}"
        time.sleep(poll)
    return found


@pytest.mark.e2e
def test_a_worker_killed_mid_run_then_a_rerun_scores_every_row_once(
    tmp_path, mlflow_uri, trained_cardio, cardio_table
):
    from vae_core.foundations.config import load_config

    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = dict(
        os.environ,
        PREFECT_HOME=str(tmp_path / "prefect-home"),
        PREFECT_API_URL=api,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="true",
        PREFECT_LOGGING_LEVEL="WARNING",
        PREFECT_WORKER_QUERY_SECONDS="1",  # default 10: each worker would idle up to 10 s
        MLFLOW_TRACKING_URI=mlflow_uri,
    )
    # Small chunks: each partition takes seconds, so the run is caught in the middle.
    settings = {"output_dir": "scores", "chunk_rows": 200, "max_workers": 2}
    config = write_pipeline_config(tmp_path, {"scoring": settings})
    rows = _cardio_copies(tmp_path / "in", copies=4)
    scores = tmp_path / "scores"
    scores.mkdir()
    before = _earlier_outputs(scores)
    staging = scores / f".{BATCH}.staging"
    server_log, worker_log = tmp_path / "server.log", tmp_path / "worker.log"
    server = set_up = worker = rerun_worker = None
    run_ids: list[str] = []
    try:
        with open(server_log, "w") as out:
            server = subprocess.Popen(
                [*PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                env={**env, **lean_prefect_server()},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        args = ["fault-pool", str(config), str(tmp_path / "in"), BATCH]
        with open(tmp_path / "set-up.log", "w") as err:
            set_up = subprocess.Popen(
                [sys.executable, "-c", _SET_UP, *args],
                env=env,
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                start_new_session=True,
            )
        # A champion to score with, registered while the server starts.
        cfg = load_config(config)
        target, _ = register(cfg, cardio_table, trained_cardio)
        assert promote(target, cfg, cardio_table).promoted
        wait_healthy(api, server, server_log)
        ready = set_up.stdout.readline()  # "" if the script died
        assert ready.startswith("pool ready"), (tmp_path / "set-up.log").read_text()[-3000:]
        worker = _start_worker(env, worker_log)  # boots while the deployments are created
        assert set_up.wait(timeout=300) == 0, (tmp_path / "set-up.log").read_text()[-3000:]
        first_id = set_up.stdout.read().split()[-1]  # its last line

        # Kill when the run is RUNNING and a partition is half written (a .tmp in staging).
        def mid_run():
            run = prefect_flow_run_by_id(api, first_id)
            ended = run.get("state_type") in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
            assert not ended, f"the run ended ({run['state_type']}) before the kill"
            half_written = staging.is_dir() and any(staging.glob("*.tmp"))
            return run if run.get("state_type") == "RUNNING" and half_written else None

        killed = _wait_for(mid_run, "a RUNNING run with a half-written part", 240, worker_log)
        run_ids.append(killed["id"])
        # The worker's process group dies; so does the flow run's (its own session): the
        # machine went down, not only the worker.
        run_groups = _process_groups_of_flow_run(killed["id"])
        os.killpg(worker.pid, signal.SIGKILL)
        _kill_groups(run_groups)
        worker.wait(timeout=30)
        assert prefect_flow_run_by_id(api, first_id)["state_type"] == "RUNNING"  # never finished
        assert {p.name: p.read_bytes() for p in scores.glob("*.parquet")} == before
        assert _temporary_files(staging), "the kill was meant to leave a half-written part"

        # The rerun, as a user starts it: `prefect deployment run`, and a new worker.
        rerun_worker = _start_worker(env, worker_log)
        trigger = [*PREFECT, "deployment", "run", "score/nightly", "--flow-run-name", "rerun"]
        params = ["--param", f"data_path={tmp_path / 'in'}", "--param", f"batch_id={BATCH}"]
        done = subprocess.run(
            [*trigger, *params], env=env, cwd=ROOT, capture_output=True, text=True, timeout=180
        )
        assert done.returncode == 0, done.stdout + done.stderr
        rerun_id = next(
            line.split("UUID:")[1].strip() for line in done.stdout.splitlines() if "UUID:" in line
        )
        ended = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")

        def rerun_ended():
            run = prefect_flow_run_by_id(api, rerun_id)
            return run if run.get("state_type") in ended else None

        rerun = _wait_for(rerun_ended, "the rerun", 300, worker_log, poll=0.5)
        run_ids.append(rerun["id"])
        assert rerun["state_type"] == "COMPLETED", worker_log.read_text()[-3000:]
        # Its process reports COMPLETED, then exits: let it, before the worker is stopped.
        _wait_for(lambda: not _process_groups_of_flow_run(rerun["id"]), "exit", 60, worker_log)
    finally:
        for run_id in run_ids:
            _kill_groups(_process_groups_of_flow_run(run_id))
        stop_process(rerun_worker)
        for proc in (set_up, worker, rerun_worker):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if set_up is not None:
            set_up.stdout.close()
        stop_process(server)

    out = pd.read_parquet(scores / f"{BATCH}.parquet")
    assert len(out) == rows and out["record_id"].is_unique
    assert set(out["record_id"]) == {f"p{k}-{i}" for k in range(4) for i in range(rows // 4)}
    assert sorted(os.listdir(scores)) == sorted(before)  # no staging folder, no .tmp
    assert (scores / EARLIER).read_bytes() == before[EARLIER]


def test_a_run_killed_while_committing_leaves_nothing_beside_the_outputs(tmp_path):
    """SIGKILL a real process in ``commit_scores``; the next run of the batch first discards
    the staging folder (the flow and the CLI do), and nothing else may be left over."""
    from vae_core.steps.batch import StagedPart, commit_scores, discard_staging, staging_dir

    scores = tmp_path / "scores"
    scores.mkdir()
    before = _earlier_outputs(scores)
    dest = scores / f"{BATCH}.parquet"
    staging = staging_dir(dest, BATCH)
    staging.mkdir()
    n = 200_000
    ids = pa.array([f"r{i}" for i in range(n)])
    table = pa.table({"record_id": ids, "anomaly_score": np.random.default_rng(0).random(n)})
    pq.write_table(table, staging / "part-00000.parquet", row_group_size=5_000)
    for k in range(1, 8):  # the same bytes under eight names: a commit of 1.6 M rows
        os.link(staging / "part-00000.parquet", staging / f"part-{k:05d}.parquet")
    parts = [StagedPart(str(staging / f"part-{k:05d}.parquet")) for k in range(8)]

    # fork: a real second process, without paying the imports of a new interpreter
    proc = multiprocessing.get_context("fork").Process(
        target=commit_scores, args=(parts, dest, staging)
    )
    proc.start()
    try:
        deadline = time.time() + 60
        while not _temporary_files(scores):
            assert proc.is_alive(), "the commit ended before the kill: stage more rows"
            assert time.time() < deadline, "no temporary file after 60 s"
            time.sleep(0.002)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.join(timeout=30)
        if proc.is_alive():
            os.kill(proc.pid, signal.SIGKILL)
    assert proc.exitcode == -signal.SIGKILL
    assert {p.name: p.read_bytes() for p in scores.glob("*.parquet")} == before

    discard_staging(staging)  # what the next run of the batch does first
    assert sorted(os.listdir(scores)) == sorted(before), "a temporary file outlived the kill"


# ---- (b) the output folder on a disk that fills up ----------------------------------------------


@pytest.fixture
def small_tmpfs(tmp_path):
    """``mount(name, size)``: a tmpfs of ``size`` bytes at tmp_path/name, unmounted after the
    test. Skips where mounting is not permitted (not root, or no CAP_SYS_ADMIN)."""
    mounted: list[Path] = []

    def mount(name: str, size: int) -> Path:
        point = tmp_path / name
        point.mkdir()
        args = ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(point)]
        try:
            done = subprocess.run(args, capture_output=True, text=True, timeout=30)
        except FileNotFoundError:
            pytest.skip("no `mount` command: the full-disk tests mount a small tmpfs")
        if done.returncode != 0:
            pytest.skip(
                f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode}): the "
                "full-disk tests need root (CAP_SYS_ADMIN) to mount a small tmpfs"
            )
        mounted.append(point)
        return point

    try:
        yield mount
    finally:
        for point in reversed(mounted):
            if subprocess.run(["umount", str(point)], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", str(point)], capture_output=True)


def _pages(size: int) -> int:
    return math.ceil(size / PAGE)


@pytest.fixture(scope="module")
def full_disk_batch(tmp_path_factory, trained_cardio):
    """A detector, a three-partition batch, a good earlier output of that batch, and the
    sizes the batch's staged parts and final file take (measured on an ordinary disk)."""
    from vae_core.kinds.table_input import list_partitions
    from vae_core.steps.batch import commit_scores, score_partition, staging_dir

    folder = tmp_path_factory.mktemp("full-disk")
    det = trained_cardio.detector
    _cardio_copies(folder / "in", copies=3)
    pd.read_csv(CARDIO).head(100).to_csv(folder / "small.csv", index=False)
    sizes = {}
    for name, source in (("earlier", folder / "small.csv"), ("batch", folder / "in")):
        dest = folder / name / "b.parquet"
        dest.parent.mkdir()
        staging = staging_dir(dest, "b")
        staged = [
            score_partition(det, p, staging, i, scoring_config(["record_id"], chunk_rows=500))
            for i, p in enumerate(list_partitions(source))
        ]
        sizes[name] = [Path(s.path).stat().st_size for s in staged]
        commit_scores(staged, dest, staging)
        sizes[name + " final"] = dest.stat().st_size
    model = folder / "model"
    det.save(model)
    return {
        "det": det,
        "model": model,
        "input": folder / "in",
        "earlier": (folder / "earlier" / "b.parquet").read_bytes(),
        "staged pages": [_pages(s) for s in sizes["batch"]],
        "final pages": _pages(sizes["batch final"]),
    }


def _disk_size(batch: dict, fails_in: str) -> int:
    """A tmpfs size that holds the earlier output and then fills up while the batch's
    scores are staged (``fails_in="staging"``) or while its final file is written
    (``"commit"``: every staged part fits, half the final file does not)."""
    pages = _pages(len(batch["earlier"]))
    if fails_in == "staging":
        pages += batch["staged pages"][0] // 2
    else:
        pages += sum(batch["staged pages"]) + batch["final pages"] // 2
    return pages * PAGE


@pytest.mark.parametrize("fails_in", ["staging", "commit"])
def test_a_full_output_disk_fails_the_batch_naming_the_path_and_keeps_earlier_output(
    small_tmpfs, full_disk_batch, fails_in
):
    from vae_core.kinds.table_input import list_partitions
    from vae_core.steps.batch import commit_scores, discard_staging, score_partition, staging_dir

    disk = small_tmpfs("scores", _disk_size(full_disk_batch, fails_in))
    dest = disk / "b.parquet"
    dest.write_bytes(full_disk_batch["earlier"])
    used = shutil.disk_usage(disk).used
    staging = staging_dir(dest, "b")
    step = "staging"
    with pytest.raises(OSError) as info:
        staged = [
            score_partition(
                full_disk_batch["det"], p, staging, i, scoring_config(["record_id"], chunk_rows=500)
            )
            for i, p in enumerate(list_partitions(full_disk_batch["input"]))
        ]
        step = "commit"
        commit_scores(staged, dest, staging)
    assert step == fails_in  # the disk filled up where this case meant it to
    assert info.value.errno == errno.ENOSPC
    message = str(info.value)
    assert "No space left on device" in message and str(disk) in message
    if fails_in == "commit":
        assert str(dest) in message
    assert _temporary_files(disk) == []  # no half-written file, before any clean-up
    discard_staging(staging)  # as the flow and the CLI do when a batch fails
    assert os.listdir(disk) == ["b.parquet"]
    assert dest.read_bytes() == full_disk_batch["earlier"]
    assert shutil.disk_usage(disk).used == used  # the failed batch holds no space


def test_the_cli_on_a_full_output_disk_fails_in_one_line_naming_the_path(
    tmp_path, small_tmpfs, full_disk_batch
):
    disk = small_tmpfs("scores", _disk_size(full_disk_batch, "commit"))
    dest = disk / "b.parquet"
    dest.write_bytes(full_disk_batch["earlier"])
    used = shutil.disk_usage(disk).used
    config = write_pipeline_config(tmp_path)
    args = ["score", "--model", full_disk_batch["model"], "--data", full_disk_batch["input"]]
    args += ["--out", dest, "--id-column", "record_id", "--chunk-rows", "500", "-c", config]
    done = subprocess.run(
        [sys.executable, "-m", "vae_core.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=dict(os.environ, COLUMNS="400"),  # the message on one line, however long the path
        timeout=300,
    )
    assert done.returncode == 2, done.stdout + done.stderr  # one line, not a traceback
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if "No space left on device" in line]
    assert any(str(dest) in line for line in lines), done.stderr[-3000:]
    assert os.listdir(disk) == ["b.parquet"]
    assert dest.read_bytes() == full_disk_batch["earlier"]
    assert shutil.disk_usage(disk).used == used
