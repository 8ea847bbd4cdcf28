"""The ``vae-anomaly`` command: train (and register), promote, score; embed, sample and
interpolate (the latent space, ``vae_core.cli.latent``).

Tables or images, as ``data.kind`` in the config says (``score`` goes by the model: an image
model scores a folder or an .npz into a folder of Parquet scores and anomaly maps).

User mistakes (a missing file, a bad column, an invalid config key, an unreachable tracking
server) and a full output disk end with one line on stderr and exit code 2; anything else is a
bug and keeps its traceback. MLflow is imported only by the commands that use it
(``vae_core.tracking.registry``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from vae_core.cli.common import (  # noqa: F401 - the command's shared parts, importable here
    ConfigOpt,
    ExperimentOpt,
    ModelNameOpt,
    _as_recorded,
    _fail,
    _scoring_model,
    _tracking_overrides,
    _user_errors,
    announce_new_store,
    app,
    console,
)


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
@_user_errors
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
    from vae_core.foundations.config import load_config

    overrides: dict = {}
    if epochs is not None:
        overrides["training"] = {"epochs": epochs}
    if tracking := _tracking_overrides(registered_model, experiment):
        overrides["tracking"] = tracking
    cfg = _reading(load_config(config, overrides), data, label_column, id_column)
    from vae_core.steps.dataset import load_dataset

    dataset = load_dataset(data, cfg, require_label=label_column is not None)
    if register:
        outcome = _train_registered(dataset, cfg, data, out, config)
    else:
        outcome = _train(dataset, cfg, out)
    det = outcome.detector
    from vae_core.foundations.calibrate import Calibration

    typer.echo(outcome.report.to_markdown(Calibration(**det.calibration_)))
    from vae_core.evaluation.meaning import meaning_lines

    typer.echo("\n".join(meaning_lines(outcome.report.to_dict(), cfg.calibration.policy)))
    typer.echo(f"\nmodel:  {out / 'model'}\nreport: {out / 'report' / 'report.md'}")
    from vae_core.steps.image_pipeline import skipped_markdown

    typer.echo(f"review: {out / 'review'}" + skipped_markdown(dataset.skipped))


def _reading(cfg, data: Path | None, label_column: str | None, id_column: list[str] | None):
    """``cfg`` with the data section for reading ``data``: the config's label, id and dropped
    columns only when ``data`` is the config's own data (``DataConfig.for_file``), and the
    flags over them (a flag wins)."""
    from vae_core.foundations.config import DataConfig
    from vae_core.steps.dataset import kind_named

    if not kind_named(cfg.data.kind).columns:
        _no_table_options(label_column=label_column, id_column=id_column)
    flags = {"label_column": label_column, "id_columns": id_column or None}
    section = cfg.data.for_file(data, cfg.root).model_dump()
    section |= {k: v for k, v in flags.items() if v is not None}
    return cfg.model_copy(update={"data": DataConfig(**section)})


def _no_table_options(**given) -> None:
    """ValueError naming the table-only options given for images."""
    named = [f"--{k.replace('_', '-')}" for k, v in given.items() if v]
    if named:
        raise ValueError(
            f"{' and '.join(named)}: table options, not for images (data.kind images): labels "
            "come from the folder names (good = 0) or images.npz_class_key, and each image is "
            "identified by its path"
        )


def _train(dataset, cfg, out: Path, callbacks=(), leave_out=None):
    from vae_core.steps.dataset import train_and_evaluate

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
    from vae_core.evaluation.meaning import stopping_line

    stopped = stopping_line(
        len(det.history_), det.best_epoch_ + 1, cfg.training.epochs, cfg.training.patience
    )
    console.print(f"{stopped}; splits {outcome.splits.sizes()}", highlight=False)
    return outcome


def _train_registered(dataset, cfg, data: Path, out: Path, config: Path | None = None):
    """Train inside an MLflow run, log it, and register the model as the challenger."""
    import contextlib

    from vae_core.tracking import registry

    announce_new_store(cfg)
    target = registry.TrackingTarget.from_config(cfg)
    source = str(Path(data).resolve())  # recorded: promote finds the rows from anywhere
    from vae_core.steps.feedback import confirmed_positions

    confirmed = confirmed_positions(dataset, registry.reviewed_verdicts(target))
    run_id = registry.start_training_run(target, cfg, source)
    try:
        outcome = _train(dataset, cfg, out, [registry.epoch_logger(target, run_id)], confirmed)
        registry.log_training_run(target, run_id, cfg, dataset, outcome, source)
    except BaseException:
        with contextlib.suppress(Exception):  # keep the original error
            registry.end_failed_run(target, run_id)
        raise
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
@_user_errors
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
    from vae_core.foundations.config import load_config
    from vae_core.steps.dataset import load_dataset
    from vae_core.steps.promotion import measure_split
    from vae_core.steps.recalibration import measure_with_verdicts
    from vae_core.tracking import registry

    if reason is not None and not force:
        raise ValueError("--reason goes with --force (it records why the gate was overridden)")
    tracking = _tracking_overrides(registered_model, None)
    cfg = _reading(
        load_config(config, {"tracking": tracking} if tracking else None),
        data,
        label_column,
        id_column,
    )
    announce_new_store(cfg)
    target = registry.TrackingTarget.from_config(cfg)
    if data is None and label_column is None and not id_column:
        # the rows the version was trained and tested on, as its training run recorded them
        cfg, source = _as_recorded(cfg, registry.training_data_of(target, version))
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


@app.command(short_help="Score a table or images with a saved or registered model.")
@_user_errors
def score(
    model: Annotated[
        str,
        typer.Option(
            help="Folder written by `vae-anomaly train`, or a registry URI such as "
            "models:/vae-anomaly@champion (the scoring run is then logged to MLflow)."
        ),
    ],
    data: Annotated[
        Path,
        typer.Option(
            help="Table to score: CSV or Parquet (a file, a glob or a folder of partitions). "
            "For an image model: a folder of images (flat or class subfolders) or an .npz."
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(
            help="Output file: .csv or .parquet. For an image model: a folder, which gets "
            "BATCH.parquet (one row per image), BATCH.maps/ (anomaly maps of the top "
            "images.top_maps scores) and, if files were skipped, BATCH.skipped.csv."
        ),
    ],
    id_column: Annotated[
        list[str] | None,
        typer.Option(
            help="Pass-through id column(s) (tables only; default: the config's "
            "data.id_columns when --data is the config's own data, else the id columns the "
            "model was trained with if --data has them)."
        ),
    ] = None,
    top_features: Annotated[
        int | None,
        typer.Option(
            help="Contributing columns per row (tables only; default scoring.top_features).", min=0
        ),
    ] = None,
    chunk_rows: Annotated[
        int | None,
        typer.Option(
            help="Rows scored at a time (tables, default scoring.chunk_rows; images: "
            "images.chunk_images).",
            min=1,
        ),
    ] = None,
    batch_id: Annotated[
        str | None,
        typer.Option(
            help="Images: the BATCH that names the output files (default: a hash of the "
            "files' names and bytes, so rescoring the same files replaces their output)."
        ),
    ] = None,
    experiment: ExperimentOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Score a table (or images) with a saved model; write ids, scores, flags and top columns.

    The input (a file, a glob or a folder of partitions) is validated and scored chunk by
    chunk, and the output appears only when every row is scored (see vae_core.steps.batch).

    An image model (trained with data.kind images) scores every image of --data, read at the
    model's size and colour mode and as the config's images section says (on_error,
    chunk_images, top_maps), and writes path, class, label, anomaly_score, is_anomaly,
    anomaly_probability and map_path per image (see image_pipeline.score_image_batch)."""
    from vae_core.foundations.config import load_config
    from vae_core.steps.dataset import kind_named, kind_of_model, score_batch, table_output

    tracking = _tracking_overrides(None, experiment)
    cfg = _reading(
        load_config(config, {"tracking": tracking} if tracking else None), data, None, id_column
    )
    det, registered = _scoring_model(model, cfg)
    kind = kind_of_model(det)
    if not kind_named(cfg.data.kind).columns and kind.columns:
        raise ValueError(f"{model} is a table model, but the config has data.kind images")
    if not kind.columns:
        _no_table_options(id_column=id_column)
    elif batch_id is not None:
        raise ValueError("--batch-id is for images; a table's batch is the --out file name")
    else:
        table_output(out)
        if not cfg.data.id_columns:
            cfg = _with_model_ids(cfg, det, data)
    # A flag wins over the config (mlflow.yml, then the defaults), as in the score flow.
    flags = (("chunk_rows", chunk_rows), ("top_features", top_features))
    settings = cfg.scoring.model_copy(update={k: v for k, v in flags if v is not None})
    if chunk_rows is not None:  # images: --chunk-rows is images.chunk_images
        images = cfg.images.model_copy(update={"chunk_images": chunk_rows})
        cfg = cfg.model_copy(update={"images": images})
    cfg = cfg.model_copy(update={"scoring": settings})
    waiting = lambda _batch: console.print(f"waiting for another run writing {out}")  # noqa: E731
    summary = score_batch(
        det, data, cfg, out, batch_id, score_parts=_with_progress(det, cfg), on_wait=waiting
    )
    _report(summary, cfg)
    if registered is None:
        return
    from vae_core.tracking import registry

    target, ref = registry.TrackingTarget.from_config(cfg), registered.ref
    # the settings it scored with (flags over the config) as the run's parameters, as the flow
    params = registry.scoring_settings(cfg)
    run_id = registry.log_batch_scoring(target, ref, summary, None, str(data), settings=params)
    typer.echo(f"scored with {ref.uri} (@{ref.alias or '-'}); logged as run {run_id}")


def _with_model_ids(cfg, det, data: Path):
    """``cfg`` with the id columns the model was trained with (``det.id_columns_``) when the
    table to score has them all: scores keep their ids unless --id-column names others.
    Without them the rows can only be matched by order, which is said."""
    from vae_core.foundations.config import DataConfig
    from vae_core.steps.batch_input import source_columns

    trained = list(getattr(det, "id_columns_", []))
    if not trained:
        return cfg
    have = set(source_columns(data))
    if not set(trained) <= have:
        lacking = ", ".join(repr(c) for c in trained if c not in have)
        console.print(
            f"[yellow]note:[/] no id columns in the scores: {escape(str(data))} lacks the "
            f"model's id column(s) {escape(lacking)}; rows are in the input's order "
            "(--id-column names others)",
            highlight=False,
            soft_wrap=True,
        )
        return cfg
    console.print(f"ids: {', '.join(trained)} (the model's id columns; --id-column for others)")
    data_section = DataConfig(**(cfg.data.model_dump() | {"id_columns": trained}))
    return cfg.model_copy(update={"data": data_section})


def _with_progress(det, cfg):
    """``score_parts`` for a table: ``scoring.max_workers`` partitions at a time on threads,
    as the score flow's thread runner scores them, with a progress bar."""
    from vae_core.steps import batch

    def score_parts(parts, staging):
        with Progress(
            TextColumn("[bold]scoring[/]"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,  # gone when done: an error is not preceded by "scoring 0/1"
        ) as progress:
            task = progress.add_task("score", total=len(parts))
            advance = lambda: progress.update(task, advance=1)  # noqa: E731
            local = batch.local_parts(det, cfg.data.id_columns, cfg.scoring, advance)
            return local(parts, staging)

    return score_parts


def _report(summary, cfg) -> None:
    """What a scored batch wrote and found, on the console."""
    for path, reason in summary.skipped_files:
        console.print(
            f"[yellow]skipped[/] {escape(path)}: {escape(reason)}", highlight=False, soft_wrap=True
        )
    typer.echo(
        f"scored {summary.rows} {summary.unit}: {summary.flagged} flagged "
        f"({summary.flagged_rate:.1%}) at threshold {summary.threshold:.4g} -> {summary.output}"
    )
    if "anomaly_maps" in summary.artifacts or summary.unit == "images":
        typer.echo(f"anomaly maps: {summary.artifacts.get('anomaly_maps') or '-'}")
    if "skipped" in summary.artifacts:
        typer.echo(
            f"skipped {len(summary.skipped_files)} files, listed in {summary.artifacts['skipped']}"
        )
    if summary.drift_warning:
        console.print(
            f"[yellow]score drift:[/] PSI {summary.psi:.3f} > "
            f"{cfg.scoring.drift_psi_warning:.3f} (scoring.drift_psi_warning) against the "
            "calibration scores",
            highlight=False,
        )


# embed, sample and interpolate (the latent space), feedback and recalibrate (the loop) and
# access (the users of an MLflow server with authentication) live in their own modules and
# register here.
import vae_core.cli.access  # noqa: E402
import vae_core.cli.latent  # noqa: E402
import vae_core.cli.loop  # noqa: E402, F401


def main() -> None:  # pragma: no cover - console-script entry
    sys.exit(app())


if __name__ == "__main__":  # pragma: no cover
    main()
