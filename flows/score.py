"""The nightly batch-scoring flow.

    resolve the model (models:/NAME@champion, or a version) -> ``batch.score_batch``, the
    one batch engine ``vae-anomaly score`` runs too: list the batch's partitions -> score each
    partition (read, validated, chunked, staged) as a Prefect task on the configured task
    runner -> commit one Parquet file atomically -> log the run to MLflow (drift included)
    -> Prefect events (the batch, and a crossed limit: flows/alerts.py) -> Prefect artifacts.

An image model (``data.kind: images``) goes through the same engine: its one partition, the
folder (or .npz), is read in chunks of ``images.chunk_images``, with anomaly maps for the top
``images.top_maps``, into one Parquet file (path, class, anomaly_score, is_anomaly,
anomaly_probability, map_path); its MLflow run also holds the maps and the skipped files.

Run it: ``python -m flows.score [--config configs/mnist.yml]`` or
``prefect deployment run 'score/nightly'``.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from prefect import flow, get_run_logger, task, unmapped
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows import alerts, run_names
from flows.retry import BACKOFF, transient_only
from vae_core.estimator.detector import VAEDetector
from vae_core.foundations.config import PipelineConfig, load_config
from vae_core.kinds.protocol import Partition
from vae_core.network import devices
from vae_core.steps import batch
from vae_core.steps.batch_report import BatchSummary, StagedPart, summary_markdown

IO_RETRIES = dict(retries=3, retry_delay_seconds=BACKOFF, retry_condition_fn=transient_only)


@task(**IO_RETRIES)
def fetch_model(cfg: PipelineConfig, model_uri: str):
    """Resolve a registry URI and keep a local copy of its detector; (version, folder)."""
    from vae_core.tracking import registry

    loaded = registry.load_registered(registry.TrackingTarget.from_config(cfg), model_uri)
    ref = loaded.ref
    folder = cfg.path(cfg.scoring.model_cache) / f"{ref.name}-v{ref.version}"
    loaded.detector.save(folder)
    return ref, str(folder)


@functools.lru_cache(maxsize=4)
def _detector(folder: str) -> VAEDetector:
    return VAEDetector.load(folder)


@task(**IO_RETRIES)
def score_partition(
    model_dir: str, part: Partition, staging: str, index: int, cfg: PipelineConfig
) -> StagedPart:
    _check_visible(model_dir, Path(staging).parent)
    det = _detector(model_dir).set_params(missing=cfg.scoring.missing)
    return batch.score_partition(det, part, Path(staging), index, cfg)


def _check_visible(model_dir: str, out_dir: Path) -> None:
    """On a Dask cluster the partitions are scored in the workers, which read the model's local
    copy and write the staged parts beside the output: both folders must be on storage they
    share with the flow. Say so, rather than failing on a missing file of the model or
    staging the parts on a worker's own disk where the commit cannot find them."""
    import socket

    for what, folder in (("model folder", Path(model_dir)), ("output folder", out_dir)):
        if not folder.is_dir():
            raise FileNotFoundError(
                f"the {what} {folder} is not visible on {socket.gethostname()} (pid "
                f"{os.getpid()}), where this partition is scored: on a Dask cluster, "
                "scoring.model_cache and scoring.output_dir must be on storage that the flow "
                "and every worker share, at the same path"
            )


def task_runner(cfg: PipelineConfig):
    """The configured runner: threads, or Dask (a local cluster, or an existing scheduler)."""
    if cfg.scoring.task_runner == "threads":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=cfg.scoring.max_workers)
    import logging

    from prefect_dask import DaskTaskRunner

    if cfg.scoring.dask_address:
        return _dask_runner_class()(address=cfg.scoring.dask_address)
    # Threads inside the Dask workers: torch releases the GIL, and worker processes would each
    # start their own temporary Prefect API server unless PREFECT_API_URL points at a server.
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": cfg.scoring.max_workers,
            "threads_per_worker": 1,
            "processes": False,
            # loopback only; ":0" is every interface. Each worker has an HTTP server (health,
            # metrics) of its own, on every interface unless told otherwise.
            "dashboard_address": "127.0.0.1:0",
            "worker_dashboard_address": "127.0.0.1:0",
            "silence_logs": logging.ERROR,
        }
    )


def _in_this_process(cfg: PipelineConfig) -> bool:
    """Whether the partitions are scored by threads of this process (the thread runner, or a
    local Dask cluster of threads), which then share its cores."""
    return cfg.scoring.task_runner == "threads" or not cfg.scoring.dask_address


@functools.cache
def _dask_runner_class():
    """A DaskTaskRunner that always connects to its ``address``: prefect_dask's own prefers a
    default Dask client of the process (its cluster) over the address it was given, so a flow
    run inside a Dask worker, or beside a notebook's client, would score elsewhere than
    ``scoring.dask_address`` says. Built on first use: dask is imported only when asked for."""
    from prefect_dask import DaskTaskRunner
    from prefect_dask.client import PrefectDaskClient

    class DaskAtAddress(DaskTaskRunner):
        @property
        def client(self) -> PrefectDaskClient:
            if not self._client:
                self._client = self._exit_stack.enter_context(
                    PrefectDaskClient(self.address, **self.client_kwargs)
                )
            return self._client

    return DaskAtAddress


@flow(name="score-partitions", flow_run_name=run_names.partitions_run_name)
def score_partitions(
    model_dir: str, parts: list[Partition], staging: str, cfg: PipelineConfig
) -> list[StagedPart]:
    """Score every partition on this flow's task runner; a failure fails the batch."""
    futures = score_partition.map(
        unmapped(model_dir), parts, unmapped(staging), list(range(len(parts))), unmapped(cfg)
    )
    return [f.result() for f in futures]


@task(**IO_RETRIES)
def log_scoring_run(cfg: PipelineConfig, model, summary: BatchSummary, source: str) -> str:
    from vae_core.tracking import registry

    target, settings = registry.TrackingTarget.from_config(cfg), registry.scoring_settings(cfg)
    return registry.log_batch_scoring(target, model, summary, None, source, settings=settings)


@flow(name="score", log_prints=True, flow_run_name=run_names.score_run_name)
def score(
    data_path: str | None = None,
    model_uri: str | None = None,
    batch_id: str | None = None,
    output_dir: str | None = None,
    config_path: str = "mlflow.yml",
) -> dict:
    """Score one batch with the champion (or ``model_uri``) and write
    ``<output_dir>/<batch id>.parquet``: ids, anomaly_score, is_anomaly, anomaly_probability,
    top contributing columns (images: path, class, scores and ``map_path``, with
    ``<batch id>.maps/`` and, for skipped files, ``<batch id>.skipped.csv``). Rerunning a
    batch replaces its output. ``batch.score_batch`` does the work, as for
    ``vae-anomaly score``; the partitions are Prefect tasks on the configured runner.
    """
    cfg = load_config(config_path)
    logger = get_run_logger()
    source = str(cfg.path(data_path or cfg.data.score_path))
    uri = model_uri or f"models:/{cfg.tracking.registered_model}@champion"
    model, model_dir = fetch_model(cfg, uri)
    out_dir = cfg.path(output_dir or cfg.scoring.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runner = score_partitions.with_options(task_runner=task_runner(cfg))

    def score_parts(parts, staging):
        if not _in_this_process(cfg):  # Dask workers elsewhere: their own cores and threads
            return runner(model_dir, parts, str(staging), cfg)
        with devices.shared_cores(min(cfg.scoring.max_workers, len(parts))):
            return runner(model_dir, parts, str(staging), cfg)

    summary = batch.score_batch(
        _detector(model_dir),
        source,
        cfg,
        out_dir,
        batch_id,
        score_parts=score_parts,
        on_wait=functools.partial(logger.warning, "batch %s: waiting for its other run"),
    )
    run_id = log_scoring_run(cfg, model, summary, source)
    run_names.rename_run(f"score-{summary.batch_id}-{model.name}-v{model.version}")
    for path, reason in summary.skipped_files:
        logger.warning("skipped image %s: %s", path, reason)
    if summary.drift_warning:
        logger.warning("score drift: PSI %.3f > %.3f", summary.psi, cfg.scoring.drift_psi_warning)
    crossed = alerts.emit_batch_events(summary, model.name, model.version, run_id, cfg.alerts)
    for limit in crossed:
        logger.warning("batch %s crossed a limit: %s", summary.batch_id, limit.describe())
    name, unit = f"{model.name} v{model.version}", summary.unit
    text = summary_markdown(summary, name, source)
    create_markdown_artifact(
        text + f"\nMLflow run: `{run_id}`\n",
        key="scoring-summary",
        description=f"Batch {summary.batch_id}: {summary.flagged} of {summary.rows} {unit} "
        f"flagged by {name}; drift, output files and MLflow run",
    )
    if len(summary.top):
        create_table_artifact(
            summary.top.round(4).astype(str).to_dict("records"),
            key="top-anomalies",
            description=f"Batch {summary.batch_id}: the highest-scoring {unit} (higher score = "
            "more anomalous) with their ids and the columns that contributed most, or their "
            "anomaly maps",
        )
    print(text)
    print(f"scores written to {summary.output} (MLflow run {run_id})")
    return {
        "batch_id": summary.batch_id,
        "output": str(summary.output),
        "rows": summary.rows,
        "flagged": summary.flagged,
        "psi": summary.psi,
        "maps": _path(summary.artifacts.get("anomaly_maps")),
        "skipped": _path(summary.artifacts.get("skipped")),
        "mlflow_run_id": run_id,
        "model_version": model.version,
        "limits_crossed": [limit.key for limit in crossed],
    }


def _path(path) -> str | None:
    return None if path is None else str(path)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Run the score flow once.")
    parser.add_argument("--config", default="mlflow.yml", help="pipeline config file")
    score(config_path=parser.parse_args().config)
