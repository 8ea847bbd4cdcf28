"""The training flow: ingest -> split -> fit -> calibrate -> evaluate -> log and register as
@challenger -> promote through the gate in mlflow.yml.

Run it: ``python -m flows.train`` or ``prefect deployment run 'train/weekly'``.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.retry import BACKOFF, transient_only
from vae_core import pipeline, registry
from vae_core.config import PipelineConfig, load_config
from vae_core.ingest import LabelledTable, load_table
from vae_core.promotion import held_out_rows

STEP = dict(cache_policy=NO_CACHE)
IO_RETRIES = STEP | dict(retries=3, retry_delay_seconds=BACKOFF, retry_condition_fn=transient_only)


@task(**IO_RETRIES)
def ingest(path: str, cfg: PipelineConfig) -> LabelledTable:
    return load_table(path, cfg.data)


@task(**STEP)
def split(table: LabelledTable, cfg: PipelineConfig) -> pipeline.Splits:
    return pipeline.split_table(table, cfg.split)


@task(**STEP)
def fit(table: LabelledTable, rows, cfg: PipelineConfig, run_id: str):
    callback = registry.epoch_logger(registry.TrackingTarget.from_config(cfg), run_id)
    return pipeline.fit_detector(table.features.iloc[rows], cfg, [callback])


@task(**STEP)
def calibrate(det, table: LabelledTable, rows, cfg: PipelineConfig):
    return pipeline.calibrate_detector(
        det, table.features.iloc[rows], _labels(table, rows), cfg.calibration
    )


@task(**STEP)
def evaluate(det, table: LabelledTable, rows, cfg: PipelineConfig):
    return pipeline.evaluate_detector(
        det, table.features.iloc[rows], _labels(table, rows), cfg.calibration, cfg.split.seed
    )


@task(**IO_RETRIES)
def save(det, report, scores, table: LabelledTable, rows, out_dir: str):
    return pipeline.save_outcome(det, report, scores, _labels(table, rows), Path(out_dir))


@task(**IO_RETRIES)
def start_run(cfg: PipelineConfig, source: str) -> str:
    return registry.start_training_run(registry.TrackingTarget.from_config(cfg), cfg, source)


@task(**IO_RETRIES)
def log_run(cfg, run_id, table, outcome, source) -> str:
    target = registry.TrackingTarget.from_config(cfg)
    return registry.log_training_run(target, run_id, cfg, table, outcome, source)


@task(**IO_RETRIES)
def register(cfg: PipelineConfig, run_id: str):
    return registry.register_challenger(registry.TrackingTarget.from_config(cfg), run_id)


@task(**IO_RETRIES)
def promote(cfg: PipelineConfig, table: LabelledTable, version: str, source: str):
    features, labels = held_out_rows(table, cfg.split)
    return registry.promote_challenger(
        registry.TrackingTarget.from_config(cfg),
        cfg.promotion,
        features,
        labels,
        version=version,
        data_description=f"the test split of {source}",
    )


def _labels(table: LabelledTable, rows):
    return None if table.labels is None else table.labels[rows]


@flow(name="train", log_prints=True)
def train(
    data_path: str | None = None,
    out_dir: str = "runs/train",
    promote_after: bool = True,
    config_path: str = "mlflow.yml",
) -> dict:
    """Train, calibrate and evaluate on ``data_path`` (default data.train_path), register the
    model as @challenger, and (``promote_after``) promote it if it passes the gate."""
    cfg = load_config(config_path)
    source = str(cfg.path(data_path or cfg.data.train_path))
    table = ingest(source, cfg)
    splits = split(table, cfg)
    run_id = start_run(cfg, source)
    try:
        det = fit(table, splits.train, cfg, run_id)
        det = calibrate(det, table, splits.calibration, cfg)
        report, scores = evaluate(det, table, splits.test, cfg)
        paths = save(det, report, scores, table, splits.test, str(cfg.path(out_dir)))
        outcome = pipeline.TrainOutcome(det, splits, report, scores, paths)
        log_run(cfg, run_id, table, outcome, source)
    except BaseException:
        with contextlib.suppress(Exception):  # keep the original error
            registry.end_failed_run(registry.TrackingTarget.from_config(cfg), run_id)
        raise
    ref = register(cfg, run_id)
    summary = {"run_id": run_id, "version": ref.version, "promoted": None}
    text = report.to_markdown()
    if promote_after:
        decision = promote(cfg, table, ref.version, source)
        summary["promoted"] = decision.promoted
        text += f"\n## Promotion\n\n{decision.summary()}\n"
    create_markdown_artifact(text, key="training-report")
    print(f"registered {ref.name} v{ref.version} (run {run_id}); promoted: {summary['promoted']}")
    return summary


if __name__ == "__main__":
    train()
