"""``vae-anomaly feedback`` and ``recalibrate``: reviewers' verdicts on scored rows flow back
into the registry, and from there into the threshold (``docs/feedback.md``).

Registered on ``vae_core.cli.app`` (imported at the end of ``vae_core.cli.commands``). The
feedback flow (``flows/feedback.py``) calls the same functions in the same order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vae_core.cli.common import ConfigOpt, app, user_errors


@app.command()
@user_errors
def feedback(
    registered_model: Annotated[
        str, typer.Option("--registered-model", help="The model whose scored rows were reviewed.")
    ],
    data: Annotated[Path, typer.Option(help="Verdicts: a CSV or Parquet file.")],
    id_column: Annotated[
        list[str], typer.Option(help="Id column(s) of the verdicts, as the scores carry them.")
    ],
    label_column: Annotated[
        str, typer.Option(help="The verdict: 0 (normal) or 1 (anomaly).")
    ] = "label",
    config: ConfigOpt = None,
) -> None:
    """Record reviewers' verdicts on rows that a scoring run of the model scored: merged with
    the earlier ones (the latest verdict on an id counts; every verdict is kept), stored in
    the model's feedback run, and each scoring run's reviewed precision logged. An id no
    scoring run scored, or a verdict that is not 0/1, records nothing (exit code 2)."""
    from vae_core.foundations.config import load_config
    from vae_core.tracking import registry

    cfg = load_config(config, {"tracking": {"registered_model": registered_model}})
    target = registry.TrackingTarget.from_config(cfg)
    submission = submit_verdicts(target, data, id_column, label_column)
    typer.echo(submission.summary(registered_model))
    for run_id, (confirmed, reviewed) in submission.precision.items():
        typer.echo(
            f"scoring run {run_id}: {confirmed} of its {reviewed} reviewed flagged rows "
            f"confirmed (reviewed precision {confirmed / reviewed:.2f})"
        )


def submit_verdicts(target, path: Path, id_columns: list[str], label_column: str):
    """Read, check, merge and store the verdicts in ``path``: ``steps.feedback.Submission``.
    Every check runs before anything is written."""
    from vae_core.steps import feedback as fb
    from vae_core.tracking import registry

    verdicts = fb.read_verdicts(path, id_columns, label_column)
    scored = registry.scored_rows(target, id_columns)
    history = registry.read_feedback(target)
    submission = fb.prepare_submission(
        verdicts, scored, history, id_columns, path, target.model_name
    )
    registry.record_feedback(target, submission, scored)
    return submission


@app.command()
@user_errors
def recalibrate(
    registered_model: Annotated[
        str, typer.Option("--registered-model", help="The model whose verdicts to use.")
    ],
    version: Annotated[
        int | None, typer.Option(help="Version to recalibrate (default: alias champion).")
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Register a new version with the same weights and a threshold set by the config's
    calibration policy on the calibration split plus the reviewed rows; it enters as
    @challenger, and `vae-anomaly promote` takes it through the gate."""
    from vae_core.foundations.config import load_config
    from vae_core.tracking import registry

    cfg = load_config(config, {"tracking": {"registered_model": registered_model}})
    target = registry.TrackingTarget.from_config(cfg)
    ref, recal = recalibrate_version(target, cfg, version)
    typer.echo(
        f"registered {ref.name} version {ref.version} as @challenger: "
        f"{recal.description(recal.of_version, _policy(cfg))}\n"
        f"promote it: vae-anomaly promote --registered-model {ref.name}"
    )


def _policy(cfg) -> str:
    return cfg.calibration.policy.name


def recalibrate_version(target, cfg, version: int | None):
    """(the new version's ``ModelVersionRef``, ``recalibration.Recalibration``): the
    recalibration of ``version`` (default the champion) registered as @challenger, its
    review opened by what the reviewed rows said."""
    import tempfile

    from vae_core.cli.common import as_recorded
    from vae_core.kinds.choice import load_dataset
    from vae_core.steps import feedback as fb
    from vae_core.steps import recalibration as rc
    from vae_core.steps.pipeline import split_data
    from vae_core.tracking import registry

    name = target.model_name
    of = str(version) if version is not None else registry.champion_version(target)
    if of is None:
        raise ValueError(f"{name!r} has no champion: give --version")
    history = registry.read_feedback(target)
    if history is None:
        raise ValueError(f"no verdicts recorded on {name!r}: run vae-anomaly feedback first")
    id_columns = fb.id_columns_of(history)
    record = registry.training_data_of(target, of)
    sections = ("data", "split", "images", "model", "training")
    rcfg, source = as_recorded(cfg, record, sections)
    data = load_dataset(source, rcfg)
    splits = split_data(data, rcfg.split)
    det = registry.load_registered(target, f"models:/{name}/{of}").detector
    current = fb.current_verdicts(history, id_columns)
    rows, labels, missing = rc.reviewed_rows(
        current, registry.scored_rows(target, id_columns), id_columns
    )
    cal = splits.calibration
    recal = rc.recalibrate(
        det,
        data.features_at(cal),
        data.labels_at(cal),
        rows,
        labels,
        cfg.calibration,
        missing,
        of_version=of,
    )
    with tempfile.TemporaryDirectory() as tmp:
        outcome = rc.recalibrated_outcome(recal.detector, data, splits, rcfg, tmp)
        run_id = registry.start_training_run(target, rcfg, str(source))
        registry.mark_recalibration(target, run_id, of, recal.counts())
        registry.log_training_run(target, run_id, rcfg, data, outcome, str(source))
    ref = registry.register_challenger(target, run_id)
    registry.add_review_section(target, ref.version, recal.description(of, _policy(cfg)))
    return ref, recal
