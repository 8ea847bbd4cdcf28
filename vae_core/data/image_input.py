"""Images as a fitted detector takes them: its files read at the training size and colour mode,
a chunk at a time, and the packaged model's input parsed once for every output it gives
(scores, ``kinds.image_scores.score_image_input``; latent coordinates,
``kinds.image_scores.latent_image_input``).

The packaged model takes a DataFrame with a ``path`` column (image files), a DataFrame with an
``image`` column (per row an (H, W) or (C, H, W) array or nested list of 0..255 integers), or
an array of images (n, H, W) / (n, C, H, W). Nothing here knows about MLflow.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd

from vae_core.data.images import ImageSet, as_image_array, read_images
from vae_core.foundations.config import ImagesConfig

MODES = {1: "L", 3: "RGB"}  # channels of a fitted detector -> the colour mode its files are read in


def reading_as_model(det, cfg: ImagesConfig | None = None) -> ImagesConfig:
    """``cfg`` (default: the config's defaults) at the size and colour mode ``det`` was
    fitted on; the rest of it (``on_size_mismatch``, ``on_error``, ``chunk_images``) applies."""
    channels, height, width = det.preprocessor_.image_shape
    update = {"size": (height, width), "mode": MODES[channels]}
    return (cfg or ImagesConfig()).model_copy(update=update)


def packaged_reading(
    det, on_size_mismatch: str = "reject", chunk_images: int | None = None
) -> ImagesConfig:
    """How the packaged model reads image files: at ``det``'s size and colour mode,
    ``on_size_mismatch`` as configured at training, ``chunk_images`` at a time (default: the
    config's ``images.chunk_images``), an unreadable file a ValueError naming it."""
    given = {} if chunk_images is None else {"chunk_images": int(chunk_images)}
    return reading_as_model(det, ImagesConfig(on_size_mismatch=on_size_mismatch, **given))


def read_in_chunks(manifest: pd.DataFrame, cfg: ImagesConfig) -> Iterator[ImageSet]:
    """The files of ``manifest`` (``path``, optional ``class`` and ``label``) read
    ``cfg.chunk_images`` at a time, in order: memory ~ one chunk whatever the number of files.
    Unreadable files raise or are skipped (listed in each chunk's ``skipped``) as
    ``cfg.on_error`` says."""
    step = int(cfg.chunk_images)
    for start in range(0, len(manifest), step):
        part = manifest.iloc[start : start + step]
        yield read_images(part, cfg.size, cfg.mode, cfg.on_size_mismatch, cfg.on_error)


def parse_image_input(model_input) -> pd.DataFrame | np.ndarray:
    """The packaged model's image input (see the module docstring) as a manifest of the files
    to read (a DataFrame with one column, ``path``, as text) or uint8 images (n, H, W) or
    (n, 3, H, W). ValueError for a DataFrame with neither column, images of different shapes,
    or values that are not 0..255 integers."""
    if isinstance(model_input, pd.DataFrame):
        if "path" in model_input.columns and "image" not in model_input.columns:
            return pd.DataFrame({"path": model_input["path"].astype(str).tolist()})
        if "image" not in model_input.columns:
            raise ValueError(
                "expected a column 'path' (image files) or 'image' (arrays), got "
                f"{list(model_input.columns)}"
            )
        model_input = _stack(model_input["image"])
    return as_image_array(model_input, "model input")


def _stack(column: pd.Series) -> np.ndarray:
    try:
        return np.stack([np.asarray(v) for v in column])
    except ValueError as exc:
        raise ValueError(f"column 'image': the images do not share one shape ({exc})") from exc
