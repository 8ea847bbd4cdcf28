"""``vae-anomaly embed``, ``sample`` and ``interpolate``: the latent space from the command line.

Registered on ``vae_core.cli.app`` (imported at the end of ``vae_core.cli``). The model is a
folder written by ``vae-anomaly train`` or a registry URI (``models:/NAME@champion``); inputs
are read and validated as ``vae-anomaly score`` reads them. Outputs are written atomically
(a temporary file renamed into place), so an error leaves nothing half-written. Mistakes (a
bad id or file name, a bad output name) end with one line on stderr and exit code 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vae_core.cli.common import ConfigOpt, app, scoring_model, user_errors
from vae_core.data.ingest import table_output
from vae_core.foundations.atomic import atomic_write_frame
from vae_core.foundations.config import load_config
from vae_core.kinds.choice import kind_of_model


def _model(model: str, config):

    cfg = load_config(config)
    return scoring_model(model, cfg)[0], cfg


def _id_columns(given, cfg, det, data: Path, kind) -> list[str]:
    """--id-column, else the config's data.id_columns where ``data`` is the config's own data
    (``DataConfig.for_file``: a demo's id columns never apply to a user's file) and the model
    does not use them as features; [] means rows are named by their 1-based position
    (column ``row``). None for images, named by their paths."""
    if not kind.columns:
        return []
    if given:
        return list(given)
    features = set(det.preprocessor_.feature_names)
    return [c for c in cfg.data.for_file(data, cfg.root).id_columns if c not in features]


@app.command()
@user_errors
def embed(
    model: Annotated[str, typer.Option(help="Folder written by `train`, or models:/NAME@ALIAS.")],
    data: Annotated[
        Path, typer.Option(help="Table (file, glob or folder of partitions), image folder or npz.")
    ],
    out: Annotated[Path, typer.Option(help="Output: .parquet or .csv.")],
    id_column: Annotated[
        list[str] | None,
        typer.Option(
            help="Id column(s) to carry (tables; default: the config's data.id_columns "
            "present in the data, else a 1-based `row` column)."
        ),
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Write the latent coordinates of every row or image.

    Columns: ids (or path), z0..z{k-1} (the posterior means of q(z|x)), anomaly_score."""

    det, cfg = _model(model, config)
    table_output(out)
    kind = kind_of_model(det)
    frame = kind.embed(det, data, cfg, _id_columns(id_column, cfg, det, data, kind))
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_frame(frame, out)
    typer.echo(f"embedded {len(frame)} rows in {det.latent_dim} dimensions -> {out}")


@app.command(short_help="Generate rows or images from the prior: z ~ N(0, I).")
@user_errors
def sample(
    model: Annotated[str, typer.Option(help="Folder written by `train`, or models:/NAME@ALIAS.")],
    out: Annotated[
        Path, typer.Option(help="Tables: a .csv or .parquet file. Images: a folder of PNGs.")
    ],
    n: Annotated[int, typer.Option("-n", "--n", min=1, help="How many samples.")] = 100,
    seed: Annotated[int, typer.Option(help="Seed of z ~ N(0, I) and of the draws.")] = 0,
    mean: Annotated[
        bool,
        typer.Option(
            "--mean/--draw",
            help="The decoder mean at z (--mean) or a draw x ~ p(x|z) (--draw, the default).",
        ),
    ] = False,
    config: ConfigOpt = None,
) -> None:
    """Generate new rows or images: z ~ N(0, I), then x ~ p(x|z) (or its mean)."""

    det, _ = _model(model, config)
    decoded = det.sample(n, random_state=seed, mean=mean)
    count, unit = kind_of_model(det).write_decoded(decoded, out, "sample")
    typer.echo(f"wrote {count} {unit} -> {out}")


@app.command()
@user_errors
def interpolate(
    model: Annotated[str, typer.Option(help="Folder written by `train`, or models:/NAME@ALIAS.")],
    data: Annotated[Path, typer.Option(help="The table or image folder/npz holding both ends.")],
    from_: Annotated[
        str, typer.Option("--from", help="Start: an id value (tables) or a file name (images).")
    ],
    to: Annotated[str, typer.Option(help="End: an id value or a file name.")],
    out: Annotated[
        Path, typer.Option(help="Tables: a .csv or .parquet file. Images: a folder of PNGs.")
    ],
    steps: Annotated[int, typer.Option(min=2, help="Points on the path, ends included.")] = 8,
    method: Annotated[
        str, typer.Option(help="linear, or spherical (slerp) in the latent space.")
    ] = "linear",
    id_column: Annotated[
        list[str] | None,
        typer.Option(help="Id column(s) naming the rows (tables; default data.id_columns)."),
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Decode the path between two rows' (or images') latent codes.

    `steps` rows or images along the line (or great circle) between the two posterior means,
    the first and last the reconstructions of the two ends."""

    det, cfg = _model(model, config)
    kind = kind_of_model(det)
    ids = _id_columns(id_column, cfg, det, data, kind)
    a, b = kind.ends(det, data, cfg, ids, (from_, to))
    path = det.interpolate(a, b, steps=steps, method=method)
    count, unit = kind.write_decoded(path, out, "step")
    typer.echo(f"wrote {count} {unit} from {from_} to {to} -> {out}")
