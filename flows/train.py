"""The training flow: ingest -> split -> fit -> calibrate -> evaluate -> log and register as
@challenger -> promote through the gate in mlflow.yml.

Tables or images, as ``data.kind`` says: ``vae_core.steps.dataset`` reads either into one dataset
interface (``features_at(rows)`` / ``labels_at(rows)``, ...) and holds what differs (the
review, the examples a run shows), so no task here asks which kind it has.

Run it: ``python -m flows.train [--config configs/mnist.yml]`` or
``prefect deployment run 'train/weekly'``.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows import run_names
from flows.retry import BACKOFF, transient_only
from vae_core.evaluation.meaning import stopping_line
from vae_core.foundations.config import PipelineConfig, load_config
from vae_core.steps import dataset, feedback, pipeline
from vae_core.steps.dataset import Data
from vae_core.steps.image_pipeline import skipped_markdown
from vae_core.steps.promotion import measure_split
from vae_core.steps.recalibration import measure_with_verdicts
from vae_core.tracking import registry

STEP = dict(cache_policy=NO_CACHE)
IO_RETRIES = STEP | dict(retries=3, retry_delay_seconds=BACKOFF, retry_condition_fn=transient_only)


@task(**IO_RETRIES)
def ingest(path: str, cfg: PipelineConfig) -> Data:
    return dataset.load_dataset(path, cfg)


@task(**IO_RETRIES)
def confirmed(data: Data, cfg: PipelineConfig):
    """Positions of the rows reviewers confirmed as anomalies (``vae-anomaly feedback``)."""
    verdicts = registry.reviewed_verdicts(registry.TrackingTarget.from_config(cfg))
    return feedback.confirmed_positions(data, verdicts)


@task(**STEP)
def split(data: Data, cfg: PipelineConfig, leave_out) -> pipeline.Splits:
    """The splits, with ``leave_out`` kept out of training."""
    return pipeline.leave_out_of_training(pipeline.split_data(data, cfg.split), leave_out)


@task(**STEP)
def fit(data: Data, rows, cfg: PipelineConfig, run_id: str):
    callback = registry.epoch_logger(registry.TrackingTarget.from_config(cfg), run_id)
    return pipeline.fit_detector(data.features_at(rows), cfg, [callback])


@task(**STEP)
def calibrate(det, data: Data, rows, cfg: PipelineConfig):
    return pipeline.calibrate_detector(
        det, data.features_at(rows), data.labels_at(rows), cfg.calibration
    )


@task(**STEP)
def evaluate(det, data: Data, rows, train_rows, cfg: PipelineConfig):
    return pipeline.evaluate_detector(
        det,
        data.features_at(rows),
        data.labels_at(rows),
        cfg.calibration,
        cfg.split.seed,
        train_features=data.features_at(train_rows),
    )


@task(**IO_RETRIES)
def save(det, report, scores, data: Data, rows, out_dir: str):
    return pipeline.save_outcome(det, report, scores, data.labels_at(rows), Path(out_dir))


@task(**IO_RETRIES)
def review(det, data: Data, rows, scores, out_dir: str, cfg: PipelineConfig) -> dict:
    return dataset.write_review(det, data, rows, scores, Path(out_dir), cfg)


@task(**STEP)
def examples(det, data: Data, rows, scores, cfg: PipelineConfig) -> dict:
    return dataset.examples(det, data, rows, scores, cfg)


@task(**IO_RETRIES)
def start_run(cfg: PipelineConfig, source: str) -> str:
    return registry.start_training_run(registry.TrackingTarget.from_config(cfg), cfg, source)


@task(**IO_RETRIES)
def log_run(cfg, run_id, data: Data, outcome, source) -> str:
    target = registry.TrackingTarget.from_config(cfg)
    return registry.log_training_run(target, run_id, cfg, data, outcome, source)


@task(**IO_RETRIES)
def register(cfg: PipelineConfig, run_id: str):
    return registry.register_challenger(registry.TrackingTarget.from_config(cfg), run_id)


@task(**IO_RETRIES)
def promote(cfg: PipelineConfig, data: Data, splits, version: str, source: str):
    """Through the gate on the test split this run held out (not split again), the
    IsolationForest baseline fitted on its training split, and the rows reviewers judged."""
    target = registry.TrackingTarget.from_config(cfg)
    measure = measure_split(data, cfg.split, splits)
    return registry.promote_challenger(
        target,
        cfg.promotion,
        measure_with_verdicts(measure, registry.reviewed_verdicts(target)),
        version=version,
        data_description=f"the test split of {source}",
    )


@flow(name="train", log_prints=True, flow_run_name=run_names.train_run_name)
def train(
    data_path: str | None = None,
    out_dir: str = "runs/train",
    promote_after: bool = True,
    config_path: str = "mlflow.yml",
) -> dict:
    """Train, calibrate and evaluate on ``data_path`` (default data.train_path), register the
    model as @challenger, and (``promote_after``) promote it if it passes the gate.

    Writes ``out_dir/model``, ``out_dir/report`` and, for images, ``out_dir/review`` (grids
    of prior samples and reconstructions, anomaly maps of the top test anomalies)."""
    cfg = load_config(config_path)
    source = str(cfg.path(data_path or cfg.data.train_path))
    out = cfg.path(out_dir)
    data = ingest(source, cfg)
    splits = split(data, cfg, confirmed(data, cfg))
    if splits.left_out:
        print(f"left out of training: {splits.left_out} rows reviewers confirmed as anomalies")
    run_id = start_run(cfg, source)
    try:
        det = fit(data, splits.train, cfg, run_id)
        epochs, patience = cfg.training.epochs, cfg.training.patience
        print(stopping_line(len(det.history_), det.best_epoch_ + 1, epochs, patience))
        det = calibrate(det, data, splits.calibration, cfg)
        report, scores = evaluate(det, data, splits.test, splits.train, cfg)
        paths = save(det, report, scores, data, splits.test, str(out))
        review_files = review(det, data, splits.test, scores, str(out / "review"), cfg)
        shown = examples(det, data, splits.test, scores, cfg)
        outcome = pipeline.TrainOutcome(det, splits, report, scores, paths, review_files, shown)
        log_run(cfg, run_id, data, outcome, source)
    except BaseException:
        with contextlib.suppress(Exception):  # keep the original error
            registry.end_failed_run(registry.TrackingTarget.from_config(cfg), run_id)
        raise
    ref = register(cfg, run_id)
    run_names.rename_run(f"train-{ref.name}-v{ref.version}")
    summary = {"run_id": run_id, "version": ref.version, "promoted": None}
    text = report.to_markdown() + skipped_markdown(data.skipped)
    for path, reason in data.skipped:
        get_run_logger().warning("skipped image %s: %s", path, reason)
    if review_files:
        summary["review"] = str(out / "review")
    if promote_after:
        decision = promote(cfg, data, splits, ref.version, source)
        summary["promoted"] = decision.promoted
        summary["promotion"] = decision.summary()
        text += f"\n## Promotion\n\n{decision.summary()}\n"
    promoted = {None: "promotion not run", True: "promoted", False: "not promoted (gate)"}
    create_markdown_artifact(
        text,
        key="training-report",
        description=f"{ref.name} v{ref.version} (run {run_id}): test metrics with intervals, "
        f"the threshold; {promoted[summary['promoted']]}",
    )
    print(f"registered {ref.name} v{ref.version} (run {run_id}); promoted: {summary['promoted']}")
    return summary


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Run the train flow once.")
    parser.add_argument("--config", default="mlflow.yml", help="pipeline config file")
    train(config_path=parser.parse_args().config)
