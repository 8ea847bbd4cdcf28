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

import numpy as np
import typer

from vae_core.cli_common import ConfigOpt, _scoring_model, _user_errors, app


def _model(model: str, config):
    from vae_core.config import load_config

    cfg = load_config(config)
    return _scoring_model(model, cfg)[0], cfg


def _table_out(out: Path) -> None:
    from vae_core.ingest import TABLE_SUFFIXES

    if TABLE_SUFFIXES.get(out.suffix.lower()) is None:
        raise ValueError(f"--out {out}: use a .csv or .parquet file name")


def _id_columns(given, cfg, det, data: Path) -> list[str]:
    """--id-column, else the config's data.id_columns where ``data`` is the config's own data
    (``DataConfig.for_file``: a demo's id columns never apply to a user's file) and the model
    does not use them as features; [] means rows are named by their 1-based position
    (column ``row``)."""
    if given:
        return list(given)
    features = set(det.preprocessor_.feature_names)
    return [c for c in cfg.data.for_file(data, cfg.root).id_columns if c not in features]


def _write_pngs(images: np.ndarray, folder: Path, stem: str) -> list[Path]:
    """One PNG per image (uint8 after rounding and clipping), written atomically."""
    from vae_core.drawing import write_image_png

    folder.mkdir(parents=True, exist_ok=True)
    return [
        write_image_png(image, folder / f"{stem}_{i:04d}.png") for i, image in enumerate(images)
    ]


def _no_images(det, out: Path) -> None:
    if out.suffix:
        raise ValueError(f"--out {out}: for an image model, a folder (one PNG per image)")


@app.command()
@_user_errors
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
    from vae_core import latent
    from vae_core.atomic import atomic_write_frame
    from vae_core.image_pipeline import read_images_as_model

    det, cfg = _model(model, config)
    _table_out(out)
    if latent.is_image_model(det):
        frame = latent.embed_images(det, read_images_as_model(det, data, cfg.images))
    else:
        ids = _id_columns(id_column, cfg, det, data)
        frame = latent.embed_table(det, data, ids, cfg.scoring.chunk_rows)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_frame(frame, out)
    typer.echo(f"embedded {len(frame)} rows in {det.latent_dim} dimensions -> {out}")


@app.command()
@_user_errors
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
    from vae_core import latent
    from vae_core.atomic import atomic_write_frame

    det, _ = _model(model, config)
    if latent.is_image_model(det):
        _no_images(det, out)
        paths = _write_pngs(det.sample(n, random_state=seed, mean=mean), out, "sample")
        typer.echo(f"wrote {len(paths)} images -> {out}")
        return
    _table_out(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_frame(det.sample(n, random_state=seed, mean=mean), out)
    typer.echo(f"wrote {n} rows -> {out}")


@app.command()
@_user_errors
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
    from vae_core import latent
    from vae_core.atomic import atomic_write_frame
    from vae_core.image_pipeline import read_images_as_model

    det, cfg = _model(model, config)
    if latent.is_image_model(det):
        _no_images(det, out)
        images = read_images_as_model(det, data, cfg.images)
        a, b = (latent.find_image(images, name, data) for name in (from_, to))
        path = det.interpolate(a, b, steps=steps, method=method)
        paths = _write_pngs(path[:, None] if path.ndim == 3 else path, out, "step")
        typer.echo(f"wrote {len(paths)} images from {from_} to {to} -> {out}")
        return
    _table_out(out)
    ids = _id_columns(id_column, cfg, det, data)
    a, b = latent.find_table_rows(det, data, ids, (from_, to), cfg.scoring.chunk_rows)
    path = det.interpolate(a, b, steps=steps, method=method)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_frame(path.reset_index(), out)
    typer.echo(f"wrote {steps} rows from {from_} to {to} -> {out}")
