"""The ``vae-anomaly`` command: train (and register), promote, score.

User mistakes (a missing file, a bad column, an invalid config key, an unreachable tracking
server) end with one line on stderr and exit code 2; anything else is a bug and keeps its
traceback. MLflow is imported only by the commands that use it (``vae_core.registry``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Anomaly detection with a variational auto-encoder.",
)
console = Console(stderr=True)

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="mlflow.yml to read.")]


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


def _user_errors(fn):
    """Turn the exceptions that mean 'bad input' into one line and exit code 2."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (ValueError, FileNotFoundError, KeyError, ConnectionError) as exc:
            _fail(str(exc).strip("'\""))

    return wrapper


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


@app.command()
@_user_errors
def train(
    data: Annotated[Path, typer.Option(help="Training table: CSV or Parquet.")],
    out: Annotated[Path, typer.Option(help="Folder for the model and its report.")],
    label_column: Annotated[str | None, typer.Option(help="0/1 label column, 1 = anomaly.")] = None,
    id_column: Annotated[list[str] | None, typer.Option(help="Pass-through id column(s).")] = None,
    config: ConfigOpt = None,
    epochs: Annotated[int | None, typer.Option(help="Override training.epochs.")] = None,
    register: Annotated[
        bool,
        typer.Option(
            "--register/--no-register",
            help="Track the run in MLflow and register the model as @challenger "
            "(--no-register: only write --out).",
        ),
    ] = True,
) -> None:
    """Fit the VAE, calibrate its threshold on held-out rows, evaluate, save, register."""
    from vae_core.config import load_config
    from vae_core.ingest import load_table

    overrides: dict = {"data": {}}
    if label_column is not None:
        overrides["data"]["label_column"] = label_column
    if id_column:
        overrides["data"]["id_columns"] = id_column
    if epochs is not None:
        overrides["training"] = {"epochs": epochs}
    cfg = load_config(config, overrides)
    if cfg.data.kind == "images":
        raise ValueError(
            f"{config}: data.kind is images; train images with the flow: "
            f"python -m flows.train --config {config}"
        )
    table = load_table(data, cfg.data, require_label=label_column is not None)
    if register:
        outcome = _train_registered(table, cfg, data, out)
    else:
        outcome = _train(table, cfg, out)
    det = outcome.detector
    from vae_core.calibrate import Calibration

    typer.echo(outcome.report.to_markdown(Calibration(**det.calibration_)))
    typer.echo(f"\nmodel:  {out / 'model'}\nreport: {out / 'report' / 'report.md'}")


def _train(table, cfg, out: Path, callbacks=()):
    from vae_core.pipeline import train_and_evaluate

    progress, on_epoch = _epoch_progress(cfg.training.epochs)
    with progress:
        outcome = train_and_evaluate(table, cfg, out, callbacks=[on_epoch, *callbacks])
    det = outcome.detector
    console.print(
        f"stopped after {len(det.history_)} epochs (best {det.best_epoch_ + 1}); "
        f"splits {outcome.splits.sizes()}"
    )
    return outcome


def _train_registered(table, cfg, data: Path, out: Path):
    """Train inside an MLflow run, log it, and register the model as the challenger."""
    import contextlib

    from vae_core import registry

    target = registry.TrackingTarget.from_config(cfg)
    run_id = registry.start_training_run(target, cfg, str(data))
    try:
        outcome = _train(table, cfg, out, [registry.epoch_logger(target, run_id)])
        registry.log_training_run(target, run_id, cfg, table, outcome, str(data))
    except BaseException:
        with contextlib.suppress(Exception):  # keep the original error
            registry.end_failed_run(target, run_id)
        raise
    ref = registry.register_challenger(target, run_id)
    typer.echo(
        f"registered {ref.name} version {ref.version} as @{ref.alias} in {target.uri} "
        f"(run {run_id})\nreview it:  {target.ui_command()}\npromote it: vae-anomaly promote\n"
    )
    return outcome


@app.command()
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
            "(default: data.train_path)."
        ),
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Score challenger and champion on the same held-out rows; move @champion if the gate
    in mlflow.yml passes (or with --force --reason). The decision is recorded on the version."""
    from vae_core import registry
    from vae_core.config import load_config
    from vae_core.ingest import load_table
    from vae_core.promotion import held_out_rows

    if reason is not None and not force:
        raise ValueError("--reason goes with --force (it records why the gate was overridden)")
    cfg = load_config(config)
    source = data or cfg.path(cfg.data.train_path)
    if cfg.data.kind == "images":
        from vae_core.image_pipeline import held_out_images, load_images

        features, labels = held_out_images(load_images(source, cfg.images), cfg.split)
    else:
        table = load_table(source, cfg.data)
        features, labels = held_out_rows(table, cfg.split)
    target = registry.TrackingTarget.from_config(cfg)
    decision = registry.promote_challenger(
        target,
        cfg.promotion,
        features,
        labels,
        version=version,
        force=force,
        reason=reason,
        data_description=f"held-out rows (the test split of {source})",
    )
    typer.echo(f"{decision.model_name} {decision.summary()}")
    typer.echo(f"models:/{decision.model_name}@champion -> version {decision.champion or '-'}")


@app.command()
@_user_errors
def score(
    model: Annotated[
        str,
        typer.Option(
            help="Folder written by `vae-anomaly train`, or a registry URI such as "
            "models:/vae-anomaly@champion (the scoring run is then logged to MLflow)."
        ),
    ],
    data: Annotated[Path, typer.Option(help="Table to score: CSV or Parquet.")],
    out: Annotated[Path, typer.Option(help="Output file: .csv or .parquet.")],
    id_column: Annotated[list[str] | None, typer.Option(help="Pass-through id column(s).")] = None,
    top_features: Annotated[int, typer.Option(help="Contributing columns per row.")] = 3,
    chunk_rows: Annotated[int, typer.Option(help="Rows scored at a time.")] = 100_000,
    config: ConfigOpt = None,
) -> None:
    """Score a table with a saved model; write ids, scores, flags and top columns.

    The input (a file, a glob or a folder of partitions) is validated and scored chunk by
    chunk, and the output appears only when every row is scored (see vae_core.batch)."""
    from vae_core import batch
    from vae_core.detector import VAEDetector
    from vae_core.ingest import TABLE_SUFFIXES

    if TABLE_SUFFIXES.get(out.suffix.lower()) is None:
        raise ValueError(f"--out {out}: use a .csv or .parquet file name")
    registered = None
    if model.startswith("models:/"):
        from vae_core import registry
        from vae_core.config import load_config

        target = registry.TrackingTarget.from_config(load_config(config))
        registered = registry.load_registered(target, model)
        det = registered.detector
    else:
        det = VAEDetector.load(Path(model))
    parts = batch.list_partitions(data)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = batch.staging_dir(out, out.stem)
    batch.discard_staging(staging)
    staged = []
    try:
        with Progress(
            TextColumn("[bold]scoring[/]"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        ) as progress:
            task = progress.add_task("score", total=len(parts))
            for i, part in enumerate(parts):
                staged.append(
                    batch.score_partition(
                        det, part, staging, i, list(id_column or []), chunk_rows, top_features
                    )
                )
                progress.update(task, advance=1)
        batch.commit_scores(staged, out, staging)
    finally:
        batch.discard_staging(staging)
    summary = batch.summarise_batch(out.stem, staged, det.threshold_, psi_warning=0.2)
    typer.echo(
        f"scored {summary.rows} rows: {summary.flagged} flagged ({summary.flagged_rate:.1%}) "
        f"at threshold {det.threshold_:.4g} -> {out}"
    )
    if registered is not None:
        ref = registered.ref
        run_id = registry.log_batch_scoring(target, ref, summary, out, str(data))
        typer.echo(f"scored with {ref.uri} (@{ref.alias or '-'}); logged as run {run_id}")


def main() -> None:  # pragma: no cover - console-script entry
    sys.exit(app())


if __name__ == "__main__":  # pragma: no cover
    main()
