"""The nightly batch-scoring flow.

    resolve the model (models:/NAME@champion, or a version) -> list the batch's partitions ->
    score each partition (validated, chunked, staged) on the configured task runner ->
    commit one Parquet file atomically -> log the run to MLflow -> Prefect artifacts.

For images (``data.kind: images``): resolve the model -> score the folder (or .npz) in
chunks of ``images.chunk_images``, anomaly maps for the top ``images.top_maps`` -> one
Parquet file (path, class, anomaly_score, is_anomaly, anomaly_probability, map_path) ->
an MLflow run with the maps and the skipped files -> Prefect artifacts.

Run it: ``python -m flows.score [--config configs/mnist.yml]`` or
``prefect deployment run 'score/nightly'``.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from prefect import flow, get_run_logger, task, unmapped
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.retry import BACKOFF, transient_only
from vae_core import batch, image_pipeline
from vae_core.config import PipelineConfig, load_config
from vae_core.detector import VAEDetector

IO_RETRIES = dict(retries=3, retry_delay_seconds=BACKOFF, retry_condition_fn=transient_only)


@task(**IO_RETRIES)
def fetch_model(cfg: PipelineConfig, model_uri: str):
    """Resolve a registry URI and keep a local copy of its detector; (version, folder)."""
    from vae_core import registry

    loaded = registry.load_registered(registry.TrackingTarget.from_config(cfg), model_uri)
    ref = loaded.ref
    folder = cfg.path(cfg.scoring.model_cache) / f"{ref.name}-v{ref.version}"
    loaded.detector.save(folder)
    return ref, str(folder)


@functools.lru_cache(maxsize=4)
def _detector(folder: str) -> VAEDetector:
    return VAEDetector.load(folder)


@task(**IO_RETRIES)
def list_partitions(source: str) -> list[batch.Partition]:
    return batch.list_partitions(source)


@task(**IO_RETRIES)
def batch_identity(source: str, batch_id: str | None) -> str:
    return batch.batch_identity(source, batch_id)


@task(**IO_RETRIES)
def score_partition(
    model_dir: str,
    part: batch.Partition,
    staging: str,
    index: int,
    id_columns: list[str],
    chunk_rows: int,
    top_features: int,
    missing: str = "marginalise",
) -> batch.StagedPart:
    _check_visible(model_dir, Path(staging).parent)
    det = _detector(model_dir).set_params(missing=missing)
    return batch.score_partition(
        det, part, Path(staging), index, id_columns, chunk_rows, top_features
    )


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


@task(**IO_RETRIES)
def commit_scores(staged: list[batch.StagedPart], dest: str, staging: str) -> str:
    return str(batch.commit_scores(staged, Path(dest), Path(staging)))


@task(**IO_RETRIES)
def log_scoring_run(
    cfg: PipelineConfig, model, summary: batch.BatchSummary, dest: str, source: str
) -> str:
    from vae_core import registry

    target, settings = registry.TrackingTarget.from_config(cfg), registry.scoring_settings(cfg)
    return registry.log_batch_scoring(target, model, summary, dest, source, settings=settings)


@task(**IO_RETRIES)
def score_image_batch(
    model_dir: str, source: str, cfg: PipelineConfig, out_dir: str, batch_id: str | None
) -> image_pipeline.ImageBatch:
    return image_pipeline.score_image_batch(
        _detector(model_dir), source, cfg.images, out_dir, batch_id
    )


@task(**IO_RETRIES)
def log_image_scoring_run(
    cfg: PipelineConfig, model, scored: image_pipeline.ImageBatch, source: str
) -> str:
    from vae_core import registry

    target, settings = registry.TrackingTarget.from_config(cfg), registry.scoring_settings(cfg)
    return registry.log_image_batch_scoring(target, model, scored, source, settings=settings)


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


@flow(name="score-partitions")
def score_partitions(
    model_dir: str, parts: list[batch.Partition], staging: str, cfg: PipelineConfig
) -> list[batch.StagedPart]:
    """Score every partition on this flow's task runner; a failure fails the batch."""
    futures = score_partition.map(
        unmapped(model_dir),
        parts,
        unmapped(staging),
        list(range(len(parts))),
        unmapped(cfg.data.id_columns),
        unmapped(cfg.scoring.chunk_rows),
        unmapped(cfg.scoring.top_features),
        unmapped(cfg.scoring.missing),
    )
    return [f.result() for f in futures]


@flow(name="score", log_prints=True)
def score(
    data_path: str | None = None,
    model_uri: str | None = None,
    batch_id: str | None = None,
    output_dir: str | None = None,
    config_path: str = "mlflow.yml",
) -> dict:
    """Score one batch with the champion (or ``model_uri``) and write
    ``<output_dir>/<batch id>.parquet``: ids, anomaly_score, is_anomaly, anomaly_probability,
    top contributing columns. Rerunning a batch replaces its output.
    """
    cfg = load_config(config_path)
    logger = get_run_logger()
    source = str(cfg.path(data_path or cfg.data.score_path))
    uri = model_uri or f"models:/{cfg.tracking.registered_model}@champion"
    model, model_dir = fetch_model(cfg, uri)
    if cfg.data.kind == "images":
        return _score_images(cfg, model, model_dir, source, batch_id, output_dir)
    ident = batch_identity(source, batch_id)
    out_dir = cfg.path(output_dir or cfg.scoring.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dest = out_dir / f"{ident}.parquet"
    parts = list_partitions(source)
    waiting = functools.partial(logger.warning, "batch %s: waiting for its other run", ident)
    with batch.staging_for(dest, ident, on_wait=waiting) as staging:
        runner = score_partitions.with_options(task_runner=task_runner(cfg))
        staged = runner(model_dir, parts, str(staging), cfg)
        written = commit_scores(staged, str(dest), str(staging))
    det = _detector(model_dir)
    summary = batch.summarise_batch(ident, staged, det.threshold_, cfg.scoring.drift_psi_warning)
    run_id = log_scoring_run(cfg, model, summary, written, source)
    text = batch.summary_markdown(summary, f"{model.name} v{model.version}", source, written)
    if summary.drift_warning:
        logger.warning("score drift: PSI %.3f > %.3f", summary.psi, cfg.scoring.drift_psi_warning)
    create_markdown_artifact(
        text + f"\nMLflow run: `{run_id}`\n",
        key="scoring-summary",
        description=f"Batch {ident}: {summary.flagged} of {summary.rows} rows flagged by "
        f"{model.name} v{model.version}; drift, output file and MLflow run",
    )
    if len(summary.top):
        create_table_artifact(
            summary.top.round(4).astype(str).to_dict("records"),
            key="top-anomalies",
            description=f"Batch {ident}: the highest-scoring rows (higher score = more "
            "anomalous) with their ids and the columns that contributed most",
        )
    print(text)
    return {
        "batch_id": ident,
        "output": written,
        "rows": summary.rows,
        "flagged": summary.flagged,
        "psi": summary.psi,
        "mlflow_run_id": run_id,
        "model_version": model.version,
    }


def _score_images(cfg, model, model_dir, source, batch_id, output_dir) -> dict:
    """The image branch of ``score``: ``<output_dir>/<batch id>.parquet``, ``.maps/`` and,
    with skipped files, ``.skipped.csv``."""
    out_dir = cfg.path(output_dir or cfg.scoring.output_dir)
    scored = score_image_batch(model_dir, source, cfg, str(out_dir), batch_id)
    run_id = log_image_scoring_run(cfg, model, scored, source)
    for path, reason in scored.skipped_files:
        get_run_logger().warning("skipped image %s: %s", path, reason)
    text = scored.summary_markdown(f"{model.name} v{model.version}", source)
    create_markdown_artifact(
        text + f"\nMLflow run: `{run_id}`\n",
        key="scoring-summary",
        description=f"Image batch {scored.batch_id}: {scored.flagged} of {len(scored.scores)} "
        f"images flagged by {model.name} v{model.version}; files and MLflow run",
    )
    top = scored.scores.nlargest(cfg.images.top_maps, "anomaly_score")
    if len(top):
        create_table_artifact(
            top.round(4).astype(str).to_dict("records"),
            key="top-anomalies",
            description=f"Image batch {scored.batch_id}: the highest-scoring images (higher "
            "score = more anomalous) and their anomaly maps",
        )
    print(text)
    return {
        "batch_id": scored.batch_id,
        "output": str(scored.output),
        "maps": None if scored.maps is None else str(scored.maps),
        "skipped": None if scored.skipped is None else str(scored.skipped),
        "rows": len(scored.scores),
        "flagged": scored.flagged,
        "mlflow_run_id": run_id,
        "model_version": model.version,
    }


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Run the score flow once.")
    parser.add_argument("--config", default="mlflow.yml", help="pipeline config file")
    score(config_path=parser.parse_args().config)
