"""The training flow: ingest -> the one training orchestration (split -> fit -> calibrate ->
evaluate -> save -> review -> examples, each step a Prefect task) -> log and register as
@challenger -> promote through the gate in mlflow.yml.

The steps are ``vae_core.steps.training.train_and_evaluate``'s, the same functions that
``vae-anomaly train`` calls: this flow hands it ``run_step=as_task``, which runs each step as a
task (retries on the steps that write files), and opens the MLflow run with the same context
manager (``registry.training_run``). Tables or images, as ``data.kind`` says: nothing here asks
which kind it has.

Run it: ``python -m flows.train [--config configs/mnist.yml]`` or
``prefect deployment run 'train/weekly'``.
"""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows import run_names
from flows.retry import BACKOFF, transient_only
from vae_core.evaluation.meaning import stopping_line
from vae_core.foundations.config import PipelineConfig, load_config
from vae_core.kinds.choice import load_dataset
from vae_core.kinds.protocol import Dataset
from vae_core.steps import feedback, training
from vae_core.steps.batch_report import skipped_markdown
from vae_core.steps.promotion import measure_split
from vae_core.steps.recalibration import measure_with_verdicts
from vae_core.tracking import registry

STEP = dict(cache_policy=NO_CACHE)
IO_RETRIES = STEP | dict(retries=3, retry_delay_seconds=BACKOFF, retry_condition_fn=transient_only)


def as_task(step, *args, **kwargs):
    """``run_step`` of the flow: ``step`` run as a Prefect task named after it, retried on a
    transient error where it writes files (``training.writes_files``)."""
    options = IO_RETRIES if training.writes_files(step) else STEP
    return task(step, name=step.__name__, **options)(*args, **kwargs)


@task(**IO_RETRIES)
def confirmed(data: Dataset, cfg: PipelineConfig):
    """Positions of the rows reviewers confirmed as anomalies (``vae-anomaly feedback``)."""
    verdicts = registry.reviewed_verdicts(registry.TrackingTarget.from_config(cfg))
    return feedback.confirmed_positions(data, verdicts)


@task(**IO_RETRIES)
def ingest(path: str, cfg: PipelineConfig) -> Dataset:
    return load_dataset(path, cfg)


@task(**IO_RETRIES)
def log_run(cfg, run_id, data: Dataset, outcome, source) -> str:
    target = registry.TrackingTarget.from_config(cfg)
    return registry.log_training_run(target, run_id, cfg, data, outcome, source)


@task(**IO_RETRIES)
def register(cfg: PipelineConfig, run_id: str):
    return registry.register_challenger(registry.TrackingTarget.from_config(cfg), run_id)


@task(**IO_RETRIES)
def promote(cfg: PipelineConfig, data: Dataset, splits, version: str, source: str):
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
    leave_out = confirmed(data, cfg)
    target = registry.TrackingTarget.from_config(cfg)
    with registry.training_run(target, cfg, source) as run_id:
        outcome = training.train_and_evaluate(
            data,
            cfg,
            out,
            callbacks=[registry.epoch_logger(target, run_id)],
            leave_out=leave_out,
            run_step=as_task,
        )
        log_run(cfg, run_id, data, outcome, source)
    report, splits, review_files = outcome.report, outcome.splits, outcome.review
    det, epochs, patience = outcome.detector, cfg.training.epochs, cfg.training.patience
    print(stopping_line(len(det.history_), det.best_epoch_ + 1, epochs, patience))
    if splits.left_out:
        print(f"left out of training: {splits.left_out} rows reviewers confirmed as anomalies")
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
