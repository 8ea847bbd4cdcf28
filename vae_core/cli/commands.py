"""The ``vae-anomaly`` command: train (and register), promote, score; embed, sample and
interpolate (the latent space, ``vae_core.cli.latent``).

Tables or images, as ``data.kind`` in the config says (``score`` goes by the model: an image
model scores a folder or an .npz into a folder of Parquet scores and anomaly maps).

User mistakes (a missing file, a bad column, an invalid config key, an unreachable tracking
server) and a full output disk end with one line on stderr and exit code 2; anything else is a
bug and keeps its traceback. MLflow is imported only by the commands that use it
(``vae_core.tracking.registry``, inside them): it adds about 1.5 s of CPU to every start
(measured: importing vae_core.cli 4.6 s, with the registry 6.1 s, on this 2-core machine),
which ``--help``, ``score`` of a saved folder and ``train --no-register`` do not need. The
pipeline's modules cost nothing measurable beyond vae_core.cli and are imported here.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from vae_core.cli.common import (
    ConfigOpt,
    ExperimentOpt,
    ModelNameOpt,
    announce_new_store,
    app,
    as_recorded,
    console,
    reading,
    tracking_overrides,
    user_errors,
)
from vae_core.evaluation.meaning import meaning_lines, stopping_line
from vae_core.foundations.calibrate import Calibration
from vae_core.foundations.config import load_config
from vae_core.kinds.choice import load_dataset
from vae_core.steps.batch_report import skipped_markdown
from vae_core.steps.feedback import confirmed_positions
from vae_core.steps.promotion import measure_split
from vae_core.steps.recalibration import measure_with_verdicts
from vae_core.steps.training import train_and_evaluate


def _epoch_progress(max_epochs: int):
    progress = Progress(
        TextColumn("[bold]training[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("val -ELBO {task.fields[val]:.3f} nats"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )
    task = progress.add_task("train", total=max_epochs, val=float("nan"))

    def on_epoch_end(log) -> None:
        progress.update(task, completed=log.epoch + 1, val=log.val_loss)

    return progress, on_epoch_end


@app.command(short_help="Fit, calibrate, evaluate, save and register a model.")
@user_errors
def train(
    data: Annotated[
        Path,
        typer.Option(
            help="Training table: CSV or Parquet. The config's data.label_column, "
            "data.id_columns and data.drop_columns apply only when this is the config's own "
            "data (data.train_path or data.score_path); for any other file only "
            "--label-column and --id-column name columns. With data.kind images (--config): "
            "a folder of images (MVTec-AD-like or class subfolders) or an .npz."
        ),
    ],
    out: Annotated[Path, typer.Option(help="Folder for the model and its report.")],
    label_column: Annotated[
        str | None, typer.Option(help="0/1 label column, 1 = anomaly (tables only).")
    ] = None,
    id_column: Annotated[
        list[str] | None,
        typer.Option(help="Pass-through id column(s), never modelled (tables only)."),
    ] = None,
    config: ConfigOpt = None,
    epochs: Annotated[int | None, typer.Option(help="Override training.epochs.")] = None,
    registered_model: ModelNameOpt = None,
    experiment: ExperimentOpt = None,
    register: Annotated[
        bool,
        typer.Option(
            "--register/--no-register",
            help="Track the run in MLflow and register the model as @challenger "
            "(--no-register: only write --out).",
        ),
    ] = True,
) -> None:
    """Fit the VAE, calibrate its threshold on held-out rows, evaluate, save, register.

    Images (data.kind images in --config) also get OUT/review: grids of prior samples and
    reconstructions, and anomaly maps of the top test anomalies."""

    overrides: dict = {}
    if epochs is not None:
        overrides["training"] = {"epochs": epochs}
    if tracking := tracking_overrides(registered_model, experiment):
        overrides["tracking"] = tracking
    cfg = reading(load_config(config, overrides), data, label_column, id_column)

    dataset = load_dataset(data, cfg, require_label=label_column is not None)
    if register:
        outcome = _train_registered(dataset, cfg, data, out, config)
    else:
        outcome = _train(dataset, cfg, out)
    det = outcome.detector

    typer.echo(outcome.report.to_markdown(Calibration(**det.calibration_)))

    typer.echo("\n".join(meaning_lines(outcome.report.to_dict(), cfg.calibration.policy)))
    typer.echo(f"\nmodel:  {out / 'model'}\nreport: {out / 'report' / 'report.md'}")

    typer.echo(f"review: {out / 'review'}" + skipped_markdown(dataset.skipped))


def _train(dataset, cfg, out: Path, callbacks=(), leave_out=None):

    progress, on_epoch = _epoch_progress(cfg.training.epochs)
    with progress:
        outcome = train_and_evaluate(
            dataset, cfg, out, callbacks=[on_epoch, *callbacks], leave_out=leave_out
        )
    if outcome.splits.left_out:
        console.print(
            f"left out of training: {outcome.splits.left_out} rows reviewers confirmed as "
            "anomalies (vae-anomaly feedback)"
        )
    det = outcome.detector

    stopped = stopping_line(
        len(det.history_), det.best_epoch_ + 1, cfg.training.epochs, cfg.training.patience
    )
    console.print(f"{stopped}; splits {outcome.splits.sizes()}", highlight=False)
    return outcome


def _train_registered(dataset, cfg, data: Path, out: Path, config: Path | None = None):
    """Train inside an MLflow run, log it, and register the model as the challenger."""
    from vae_core.tracking import registry

    announce_new_store(cfg)
    target = registry.TrackingTarget.from_config(cfg)
    source = str(Path(data).resolve())  # recorded: promote finds the rows from anywhere
    confirmed = confirmed_positions(dataset, registry.reviewed_verdicts(target))
    with registry.training_run(target, cfg, source) as run_id:
        outcome = _train(dataset, cfg, out, [registry.epoch_logger(target, run_id)], confirmed)
        registry.log_training_run(target, run_id, cfg, dataset, outcome, source)
    ref = registry.register_challenger(target, run_id)
    again = (f" --config {config}" if config else "") + (
        f" --registered-model {ref.name}" if ref.name != "vae-anomaly" else ""
    )
    ui = target.ui_command()
    if ui.startswith("mlflow "):  # a local store: the mlflow of this environment, as installed
        ui = _script("mlflow") + ui.removeprefix("mlflow")
    typer.echo(
        f"registered {ref.name} version {ref.version} as @{ref.alias} in {target.uri} "
        f"(run {run_id})\nreview it:  {ui}\npromote it: {_script('vae-anomaly')} promote"
        + again
        + "\n"
    )
    return outcome


def _script(name: str) -> str:
    """The command ``name`` as installed beside the running Python (``.venv/bin/mlflow``, as
    the README writes it), relative to the working directory when under it; else ``name``."""
    script = Path(sys.executable).parent / name
    if not script.exists():
        return name
    try:
        return str(script.relative_to(Path.cwd()))
    except ValueError:
        return str(script)


@app.command(short_help="Move @champion to the challenger if it passes the gate.")
@user_errors
def promote(
    version: Annotated[
        int | None, typer.Option(help="Version to promote (default: alias challenger).")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Promote even if the gate says no (needs --reason).")
    ] = False,
    reason: Annotated[
        str | None, typer.Option(help="Why the gate is overridden; recorded on the version.")
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(
            help="Table (or image folder) whose test split both models are scored on "
            "(default: data.train_path). As for train, the config's label and id columns "
            "apply only to its own data; for another file give --label-column, --id-column."
        ),
    ] = None,
    label_column: Annotated[
        str | None, typer.Option(help="0/1 label column of --data (tables only).")
    ] = None,
    id_column: Annotated[
        list[str] | None, typer.Option(help="Id column(s) of --data (tables only).")
    ] = None,
    registered_model: ModelNameOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Score challenger and champion on the same held-out rows; move @champion if the gate
    in mlflow.yml passes (or with --force --reason). The decision is recorded on the version."""
    from vae_core.tracking import registry

    if reason is not None and not force:
        raise ValueError("--reason goes with --force (it records why the gate was overridden)")
    tracking = tracking_overrides(registered_model, None)
    cfg = reading(
        load_config(config, {"tracking": tracking} if tracking else None),
        data,
        label_column,
        id_column,
    )
    announce_new_store(cfg)
    target = registry.TrackingTarget.from_config(cfg)
    if data is None and label_column is None and not id_column:
        # the rows the version was trained and tested on, as its training run recorded them
        cfg, source = as_recorded(cfg, registry.training_data_of(target, version))
    else:
        source = data or cfg.path(cfg.data.train_path)
    measure = measure_split(load_dataset(source, cfg), cfg.split)
    measure = measure_with_verdicts(measure, registry.reviewed_verdicts(target))
    decision = registry.promote_challenger(
        target,
        cfg.promotion,
        measure,
        version=version,
        force=force,
        reason=reason,
        data_description=f"the test split of {source}",
    )
    typer.echo(f"{decision.model_name} {decision.summary()}")
    typer.echo(f"models:/{decision.model_name}@champion -> version {decision.champion or '-'}")


# score, access (the users of an MLflow server with authentication), embed, sample and
# interpolate (the latent space), feedback and recalibrate (the loop) live in their own
# modules and register here, in that order.
# isort: off
import vae_core.cli.scoring  # noqa: E402
import vae_core.cli.access  # noqa: E402
import vae_core.cli.latent  # noqa: E402
import vae_core.cli.loop  # noqa: E402, F401
# isort: on


def main() -> None:  # pragma: no cover - console-script entry
    sys.exit(app())


if __name__ == "__main__":  # pragma: no cover
    main()
