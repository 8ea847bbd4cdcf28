"""The ``vae-anomaly`` command: train, score (and, with MLflow, promote).

User mistakes (a missing file, a bad column, an invalid config key) end with one line on
stderr and exit code 2; anything else is a bug and keeps its traceback.
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
        except (ValueError, FileNotFoundError, KeyError) as exc:
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
) -> None:
    """Fit the VAE, calibrate its threshold on held-out rows, evaluate, save."""
    from vae_core.config import load_config
    from vae_core.ingest import read_table, split_columns
    from vae_core.pipeline import train_and_evaluate

    overrides: dict = {"data": {}}
    if label_column is not None:
        overrides["data"]["label_column"] = label_column
    if id_column:
        overrides["data"]["id_columns"] = id_column
    if epochs is not None:
        overrides["training"] = {"epochs": epochs}
    cfg = load_config(config, overrides)
    table = split_columns(
        read_table(data),
        cfg.data.label_column,
        cfg.data.id_columns,
        cfg.data.drop_columns,
        source=str(data),
        require_label=label_column is not None,
    )
    progress, callback = _epoch_progress(cfg.training.epochs)
    with progress:
        outcome = train_and_evaluate(table, cfg, out, callbacks=[callback])
    det = outcome.detector
    console.print(
        f"stopped after {len(det.history_)} epochs (best {det.best_epoch_ + 1}); "
        f"splits {outcome.splits.sizes()}"
    )
    from vae_core.calibrate import Calibration

    typer.echo(outcome.report.to_markdown(Calibration(**det.calibration_)))
    typer.echo(f"\nmodel:  {out / 'model'}\nreport: {out / 'report' / 'report.md'}")


@app.command()
@_user_errors
def score(
    model: Annotated[Path, typer.Option(help="Folder written by `vae-anomaly train`.")],
    data: Annotated[Path, typer.Option(help="Table to score: CSV or Parquet.")],
    out: Annotated[Path, typer.Option(help="Output file: .csv or .parquet.")],
    id_column: Annotated[list[str] | None, typer.Option(help="Pass-through id column(s).")] = None,
    top_features: Annotated[int, typer.Option(help="Contributing columns per row.")] = 3,
    chunk_rows: Annotated[int, typer.Option(help="Rows scored at a time.")] = 100_000,
) -> None:
    """Score a table with a saved model; write ids, scores, flags and top columns."""
    import pandas as pd

    from vae_core.detector import VAEDetector
    from vae_core.ingest import TABLE_SUFFIXES, read_table
    from vae_core.persist import atomic_write_frame
    from vae_core.pipeline import score_table

    if TABLE_SUFFIXES.get(out.suffix.lower()) is None:
        raise ValueError(f"--out {out}: use a .csv or .parquet file name")
    det = VAEDetector.load(model)
    frame = read_table(data)
    ids = list(id_column or [])
    missing = [c for c in ids if c not in frame.columns]
    if missing:
        raise ValueError(f"{data}: id column(s) {missing} not found")
    features = frame  # the detector picks its fitted columns and checks them
    with Progress(
        TextColumn("[bold]scoring[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("score", total=len(frame))
        parts = []
        for start in range(0, len(frame), chunk_rows):
            rows = slice(start, start + chunk_rows)
            parts.append(score_table(det, features.iloc[rows], frame[ids].iloc[rows], top_features))
            progress.update(task, advance=len(parts[-1]))
    result = pd.concat(parts)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_frame(result, out)
    flagged = int(result["is_anomaly"].sum())
    typer.echo(
        f"scored {len(result)} rows: {flagged} flagged ({flagged / len(result):.1%}) "
        f"at threshold {det.threshold_:.4g} nats -> {out}"
    )


def main() -> None:  # pragma: no cover - console-script entry
    sys.exit(app())


if __name__ == "__main__":  # pragma: no cover
    main()
