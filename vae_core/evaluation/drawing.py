"""Pictures of images and of what the detector makes of them: PNG grids, anomaly-map panels,
one PNG per image, and the per-image score CSV with maps for the top anomalies.

Above the detector (it takes a fitted one) and apart from reading (``vae_core.data.images``):
the numbers come from ``vae_core.evaluation.image_maps``. Files are written atomically
(temporary file, then ``os.replace``); PIL and matplotlib are imported inside the functions
that draw, so importing
``vae_core`` loads neither.
"""

from __future__ import annotations

import io
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from vae_core.data.images import ImageSet, image_rows
from vae_core.evaluation.image_maps import (
    anomaly_maps,
    detector_image_shape,
    in_blocks,
    prior_means,
    reconstructions,
)
from vae_core.foundations.atomic import atomic_write_bytes
from vae_core.foundations.calibrate import flag_anomalies


def _to_display(images, pixel_max: float) -> np.ndarray:
    """uint8 (n, H, W) or (n, H, W, 3) for drawing, from (n, H, W) or (n, C, H, W) data."""
    arr = np.asarray(images, dtype="float64")
    if arr.ndim == 4:
        arr = arr[:, 0] if arr.shape[1] == 1 else arr.transpose(0, 2, 3, 1)
    if arr.ndim not in (3, 4):
        raise ValueError(f"expected images (n, H, W) or (n, C, H, W), got shape {arr.shape}")
    return np.clip(np.rint(arr * (255.0 / pixel_max)), 0, 255).astype(np.uint8)


def _png_bytes(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _write_file(path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_bytes(path, data)


def write_image_png(image, path, pixel_max: float = 255.0) -> Path:
    """Write one image, (H, W) or (C, H, W) in data units, as a PNG (values rounded and
    clipped to 0..255 after scaling ``pixel_max`` to white); returns the path."""
    return _write_file(path, _png_bytes(_to_display(np.asarray(image)[None], pixel_max)[0]))


def image_grid_png(
    images, path, ncols: int = 8, pixel_max: float = 255.0, scale: int = 1, pad: int = 2
) -> Path:
    """Write images (n, H, W) or (n, C, H, W) as one PNG grid, row by row; returns the path.

    pixel_max : the value drawn as white (255 for uint8 data). scale : integer upsampling
    (nearest neighbour, so pixels stay pixels). Tiles are separated by ``pad`` grey pixels.
    """
    tiles = _to_display(images, pixel_max)
    ncols = max(1, min(int(ncols), len(tiles)))
    return _write_file(path, _png_bytes(_grid_canvas(tiles, ncols, scale, pad)))


def _grid_canvas(tiles: np.ndarray, ncols: int, scale: int, pad: int) -> np.ndarray:
    """uint8 display tiles laid out row by row on grey, upsampled by ``scale``."""
    n, h, w = tiles.shape[:3]
    nrows = math.ceil(n / ncols)
    canvas = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, *tiles.shape[3:]), 128)
    for i, tile in enumerate(tiles):
        top, left = pad + (i // ncols) * (h + pad), pad + (i % ncols) * (w + pad)
        canvas[top : top + h, left : left + w] = tile
    return canvas.astype(np.uint8).repeat(int(scale), axis=0).repeat(int(scale), axis=1)


def labelled_grid_png(
    images,
    path,
    row_labels: list[str],
    title: str,
    ncols: int = 8,
    pixel_max: float = 255.0,
    scale: int = 1,
    pad: int = 2,
) -> Path:
    """``image_grid_png`` with words a reader needs: ``title`` above the grid and
    ``row_labels[i % len(row_labels)]`` left of grid row i (e.g. input / reconstruction).
    The grid itself is drawn pixel for pixel as ``image_grid_png`` draws it, on white."""
    from PIL import Image, ImageDraw, ImageFont

    tiles = _to_display(images, pixel_max)
    ncols = max(1, min(int(ncols), len(tiles)))
    grid = _grid_canvas(tiles, ncols, scale, pad)
    font = ImageFont.load_default(size=13)
    probe = ImageDraw.Draw(Image.new("L", (1, 1)))
    margin = 12 + int(max(probe.textlength(label, font=font) for label in row_labels))
    head = 24
    mode = "RGB" if grid.ndim == 3 else "L"
    white = (255, 255, 255) if mode == "RGB" else 255
    width = max(margin + grid.shape[1], 12 + int(probe.textlength(title, font=font)))
    page = Image.new(mode, (width, head + grid.shape[0]), white)
    page.paste(Image.fromarray(grid, mode), (margin, head))
    draw = ImageDraw.Draw(page)
    draw.text((6, 5), title, fill=0 if mode == "L" else (0, 0, 0), font=font)
    row_height = (tiles.shape[1] + pad) * scale
    for i in range(math.ceil(len(tiles) / ncols)):
        middle = head + pad * scale + i * row_height + tiles.shape[1] * scale // 2
        label = row_labels[i % len(row_labels)]
        draw.text((6, middle), label, fill=0 if mode == "L" else (0, 0, 0), font=font, anchor="lm")
    buf = io.BytesIO()
    page.save(buf, format="PNG")
    return _write_file(path, buf.getvalue())


def map_legend(amap, threshold: float | None) -> str:
    """What a map's colours mean against the threshold: the image's mean per pixel, and the
    threshold (nats per image, the KL term included) spread over its pixels, the mean above
    which an image is flagged whatever its KL term."""
    amap = np.asarray(amap, dtype="float64")
    said = f"this image: {amap.mean():.2f} nats per pixel on average"
    if threshold is None or not np.isfinite(threshold):
        return said
    return (
        f"{said};\nthe threshold, {threshold:.1f} nats an image, is {threshold / amap.size:.2f} "
        "per pixel (an image whose pixels average more is flagged)"
    )


def _map_range(maps: np.ndarray) -> tuple[float, float]:
    """Colour scale for maps: their minimum to their 99.5th percentile, in nats."""
    low, high = float(maps.min()), float(np.percentile(maps, 99.5))
    return low, max(high, low + 1e-6)


def save_anomaly_map_png(
    image,
    reconstruction,
    amap,
    path,
    title: str | None = None,
    pixel_max: float = 255.0,
    map_range: tuple[float, float] | None = None,
    threshold: float | None = None,
) -> Path:
    """Write original | reconstruction | anomaly map (nats per pixel) side by side as a PNG,
    with a legend under it (``map_legend``: the image's mean per pixel against the
    ``threshold``, nats an image, spread over its pixels) so a reader can tell what is normal.

    image, reconstruction : (H, W) or (C, H, W) in data units. amap : (H, W).
    map_range : colour scale of the map, (low, high) in nats; share one across images to
    compare them. By default the map's own minimum and 99.5th percentile, so that one extreme
    pixel does not wash out the rest (values above are drawn in the top colour).
    """
    from matplotlib.figure import Figure  # lazy: importing vae_core must not load matplotlib

    shown = _to_display(np.stack([image, reconstruction]), pixel_max)
    amap = np.asarray(amap, dtype="float64")
    low, high = map_range if map_range is not None else _map_range(amap)
    fig = Figure(figsize=(8.0, 3.4), layout="constrained")
    axes = fig.subplots(1, 3)
    for ax, picture, name in zip(axes[:2], shown, ("original", "reconstruction"), strict=True):
        ax.imshow(picture, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax.set_title(name, fontsize=9)
    heat = axes[2].imshow(amap, cmap="inferno", vmin=low, vmax=high, interpolation="nearest")
    axes[2].set_title("-log p(pixel | z)", fontsize=9)
    extend = "max" if amap.max() > high else "neither"
    fig.colorbar(heat, ax=axes[2], label="nats per pixel", shrink=0.9, extend=extend)
    for ax in axes:
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=10)
    fig.supxlabel(map_legend(amap, threshold), fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return _write_file(path, buf.getvalue())


def score_images(
    det, image_set: ImageSet, out_dir, top_k: int = 10, block_size: int = 1024, scores=None
) -> pd.DataFrame:
    """Score every image (or take its ``scores``, threshold units, where the caller has them:
    the evaluation's of the test split); write anomaly-map PNGs for the ``top_k`` highest
    scores and a CSV.

    Returns one row per image, in input order: path, class, label (when known), score (the
    score ``threshold_`` applies to; higher = more anomalous), is_anomaly (score >
    threshold_, the detector's tie rule), anomaly_probability (NaN before ``calibrate``),
    rank (1 = most anomalous) and map_path (empty outside the top k). Writes
    ``out_dir/image_scores.csv`` and ``out_dir/maps/rank001_<file>.png`` ...
    """
    out_dir = Path(out_dir)
    if scores is None:
        scores = in_blocks(det.threshold_score, image_set.images, block_size)
    scores = np.asarray(scores)
    frame = image_set.manifest()
    frame["score"] = scores
    frame["is_anomaly"] = flag_anomalies(scores, det.threshold_)  # a tie is normal
    probability = det.probability_
    frame["anomaly_probability"] = (
        probability.probability(scores) if probability is not None else np.nan
    )
    order = np.argsort(-scores, kind="stable")
    frame["rank"] = np.argsort(order) + 1
    frame["map_path"] = ""
    top = order[: int(top_k)]
    if len(top):
        paths = write_top_maps(det, image_set.take(top), scores[top], out_dir / "maps")
        frame.loc[top, "map_path"] = [str(p) for p in paths]
    _write_file(out_dir / "image_scores.csv", frame.to_csv(index=False).encode())
    return frame


def write_top_maps(det, top: ImageSet, scores, folder) -> list[Path]:
    """Anomaly-map PNGs for images given most anomalous first, on one shared colour scale:
    ``folder/rank001_<file>.png`` ...; their paths, in order.

    scores : the images' scores (threshold units), shown in the titles.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    originals = np.asarray(top.images)  # the top few, decoded once
    maps, recons = anomaly_maps(det, originals), reconstructions(det, originals)
    map_range = _map_range(maps)  # one scale for all, so the maps compare
    pixel_max = det.preprocessor_.pixel_scale
    paths = []
    for i, (source, score) in enumerate(zip(top.paths, scores, strict=True)):
        rank, source = i + 1, Path(source).name
        name = re.sub(r"\W+", "_", re.sub(r"(?i)\.(png|jpe?g)$", "", source)).strip("_")
        title = f"#{rank}   score {score:.1f} nats   {source}"
        paths.append(
            save_anomaly_map_png(
                originals[i],
                recons[i],
                maps[i],
                folder / f"rank{rank:03d}_{name}.png",
                title,
                pixel_max,
                map_range,
                threshold=float(det.threshold_) if det.threshold_ is not None else None,
            )
        )
    return paths


def write_review_grids(
    det, images, out_dir, n: int = 32, ncols: int = 8, random_state: int = 0
) -> dict[str, Path]:
    """PNG grids for the registry review, titled and with each row labelled
    (``labelled_grid_png``): ``prior_samples.png`` (decoder means at z ~ N(0, I)) and
    ``reconstructions.png`` (rows of inputs, each followed by a row of their reconstructions).

    Small images are upsampled (nearest neighbour) to tiles of at least 56 pixels.
    """
    _channels, height, width = detector_image_shape(det)
    out_dir, pixel_max = Path(out_dir), det.preprocessor_.pixel_scale
    scale = max(1, math.ceil(56 / min(height, width)))
    originals = np.asarray(image_rows(images)[: int(n)])
    recons = reconstructions(det, originals)
    pairs = []
    for start in range(0, len(originals), ncols):
        pairs += [originals[start : start + ncols], recons[start : start + ncols]]
    prior = prior_means(det, n, random_state)
    return {
        "prior_samples": labelled_grid_png(
            prior,
            out_dir / "prior_samples.png",
            ["sample"],
            "What the model learnt: decoder means at z ~ N(0, I)",
            ncols,
            pixel_max,
            scale,
        ),
        "reconstructions": labelled_grid_png(
            _pad_rows(pairs, ncols),
            out_dir / "reconstructions.png",
            ["input", "reconstruction"],
            f"{len(originals)} test inputs in split order; under each row, its reconstructions",
            ncols,
            pixel_max,
            scale,
        ),
    }


def interpolation_grid_png(det, pairs, path, steps: int = 8) -> Path:
    """One row per (a, b) pair of images: the original a, the decoded path from a to b
    (``det.interpolate``, linear, ends included: the reconstructions of a and b), then the
    original b; upsampled like the review grids."""
    _channels, height, width = detector_image_shape(det)
    scale = max(1, math.ceil(56 / min(height, width)))
    rows = []
    for a, b in pairs:
        walk = det.interpolate(a[None], b[None], steps=steps)
        ends = [np.asarray(v).reshape(1, *walk.shape[1:]) for v in (a, b)]
        rows.append(np.concatenate([ends[0], walk, ends[1]]))
    grid = np.concatenate(rows)
    return image_grid_png(grid, path, steps + 2, det.preprocessor_.pixel_scale, scale)


def _pad_rows(rows: list[np.ndarray], ncols: int) -> np.ndarray:
    """Stack rows of images, filling a short last row with black so pairs stay aligned."""
    full = [
        np.concatenate([r, np.zeros((ncols - len(r), *r.shape[1:]))]) if len(r) < ncols else r
        for r in rows
    ]
    return np.concatenate([np.asarray(r, dtype="float64") for r in full])
