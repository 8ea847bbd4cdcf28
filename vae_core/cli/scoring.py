"""``vae-anomaly score``: a batch of table rows or images scored with a saved or registered
model through the one batch engine (``vae_core.steps.batch.score_batch``), as the score flow
scores it; a registered model's scoring run is logged to MLflow (imported only then, see
``vae_core.cli.commands``). Registered on ``vae_core.cli.app`` by ``vae_core.cli.commands``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from vae_core.cli.common import (
    ConfigOpt,
    ExperimentOpt,
    app,
    console,
    no_table_options,
    reading,
    scoring_model,
    tracking_overrides,
    user_errors,
)
from vae_core.data.ingest import table_output
from vae_core.foundations.config import DataConfig, load_config
from vae_core.kinds.choice import kind_named, kind_of_model
from vae_core.kinds.table_input import source_columns
from vae_core.steps import batch


@app.command(short_help="Score a table or images with a saved or registered model.")
@user_errors
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
    anomaly_probability and map_path per image (see vae_core.kinds.images)."""

    tracking = tracking_overrides(None, experiment)
    cfg = reading(
        load_config(config, {"tracking": tracking} if tracking else None), data, None, id_column
    )
    det, registered = scoring_model(model, cfg)
    kind = kind_of_model(det)
    if not kind_named(cfg.data.kind).columns and kind.columns:
        raise ValueError(f"{model} is a table model, but the config has data.kind images")
    if not kind.columns:
        no_table_options(id_column=id_column)
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
    summary = batch.score_batch(
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
            local = batch.local_parts(det, cfg, advance)
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
