"""The feedback flow: reviewers' verdicts on scored rows recorded with the registry, as
``vae-anomaly feedback`` records them (the same functions, in the same order: read and check
the file, the ids the model's scoring runs scored, the earlier verdicts, merge, store).

Run it: ``python -m flows.feedback --data verdicts.csv --id-column record_id`` or
``prefect deployment run 'feedback/reviews' --param data_path=verdicts.csv
--param id_columns='["record_id"]'``. A verdict on an id no scoring run scored, or one that
is not 0/1, fails the run with one line naming the rows, and records nothing.
"""

from __future__ import annotations

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.retry import BACKOFF, transient_only
from vae_core.foundations.config import load_config
from vae_core.steps import feedback as fb
from vae_core.tracking import registry

STEP = dict(cache_policy=NO_CACHE)
IO_RETRIES = STEP | dict(retries=3, retry_delay_seconds=BACKOFF, retry_condition_fn=transient_only)


@task(**STEP)
def read_verdicts(path: str, id_columns: list[str], label_column: str):
    return fb.read_verdicts(path, id_columns, label_column)


@task(**IO_RETRIES)
def scored_rows(target, id_columns: list[str]):
    return registry.scored_rows(target, id_columns)


@task(**IO_RETRIES)
def earlier_verdicts(target):
    return registry.read_feedback(target)


@task(**STEP)
def prepare(verdicts, scored, history, id_columns, path: str, name: str):
    return fb.prepare_submission(verdicts, scored, history, id_columns, path, name)


@task(**IO_RETRIES)
def record(target, submission: fb.Submission, scored):
    return registry.record_feedback(target, submission, scored)


@flow(name="feedback", log_prints=True)
def feedback(
    data_path: str,
    id_columns: list[str],
    label_column: str = "label",
    registered_model: str | None = None,
    config_path: str = "mlflow.yml",
) -> dict:
    """Record the verdicts in ``data_path`` (0 normal, 1 anomaly in ``label_column``) on
    rows that scoring runs of ``registered_model`` (default tracking.registered_model)
    scored; returns the counts and the feedback run's id."""
    overrides = {"tracking": {"registered_model": registered_model}} if registered_model else None
    cfg = load_config(config_path, overrides)
    target = registry.TrackingTarget.from_config(cfg)
    path = str(cfg.path(data_path))
    verdicts = read_verdicts(path, id_columns, label_column)
    scored = scored_rows(target, id_columns)
    submission = prepare(
        verdicts, scored, earlier_verdicts(target), id_columns, path, target.model_name
    )
    run_id = record(target, submission, scored)
    text = submission.summary(target.model_name)
    lines = [
        f"- scoring run `{run}`: {c} of {n} reviewed flagged rows confirmed (precision {c / n:.2f})"
        for run, (c, n) in submission.precision.items()
    ]
    create_markdown_artifact(
        f"# Verdicts on {target.model_name}\n\n{text}; MLflow feedback run `{run_id}`.\n\n"
        + "\n".join(lines)
        + "\n",
        key="feedback-summary",
        description=f"{submission.new} verdicts recorded on {target.model_name}",
    )
    print(text)
    return {"run_id": run_id, **submission.counts, "new": submission.new}


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Run the feedback flow once.")
    parser.add_argument("--data", required=True, help="verdicts file (CSV or Parquet)")
    parser.add_argument("--id-column", action="append", required=True, help="id column(s)")
    parser.add_argument("--label-column", default="label", help="0/1 verdict column")
    parser.add_argument("--registered-model", default=None)
    parser.add_argument("--config", default="mlflow.yml", help="pipeline config file")
    args = parser.parse_args()
    feedback(args.data, args.id_column, args.label_column, args.registered_model, args.config)
