"""The image kind's work on a fitted detector: the scores frame of images, a batch's chunks
and its anomaly maps, the packaged model's scores and latent frames, the latent coordinates of
a folder, and the reviewer's files.

Scores are in threshold units (the negative ELBO in nats unless calibrated on the IWAE
score); higher = more anomalous; ``is_anomaly`` is ``score > threshold`` (the project's tie
rule).
"""

from __future__ import annotations

import json
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from vae_core.data.image_input import (
    packaged_reading,
    parse_image_input,
    read_in_chunks,
    reading_as_model,
)
from vae_core.data.image_npz import is_npz_member
from vae_core.data.images import ImageSet, image_manifest, read_images, require_readable
from vae_core.evaluation.drawing import score_images, write_review_grids, write_top_maps
from vae_core.evaluation.image_maps import reconstruction_retrieval
from vae_core.evaluation.latent_review import latent_coordinates, write_latent_review
from vae_core.foundations.atomic import atomic_write, atomic_write_frame, replace_folder
from vae_core.foundations.calibrate import flag_anomalies
from vae_core.foundations.config import ImagesConfig
from vae_core.kinds.image_sets import is_npz, load_images, read_npz
from vae_core.kinds.protocol import BatchOutputs, Chunk


def read_images_as_model(det, source, images_cfg: ImagesConfig):
    """The ImageSet of a folder or an .npz, read at the model's size and colour mode (the rest
    of ``images_cfg``, such as ``on_error``, applies)."""
    return load_images(source, reading_as_model(det, images_cfg)).images


def image_scores(det, images: ImageSet) -> pd.DataFrame:
    """path, class, label (when known), anomaly_score, is_anomaly, anomaly_probability (NaN
    when the detector was not calibrated); one row per image, in order."""
    frame = images.manifest()
    scores = det.threshold_score(images.images)
    frame["anomaly_score"] = scores
    frame["is_anomaly"] = flag_anomalies(scores, det.threshold_)
    calibrated = det.probability_
    frame["anomaly_probability"] = np.nan if calibrated is None else calibrated.probability(scores)
    return frame


def image_chunks(det, source: str | Path, cfg: ImagesConfig) -> Iterator[Chunk]:
    """The images of ``source`` read at ``det``'s size and colour mode (the rest of ``cfg``,
    such as ``on_error``, applies): a flat folder or class subfolders ``cfg.chunk_images``
    files at a time (memory ~ one chunk whatever the number of files), or an ``.npz`` whole.
    ValueError naming ``source`` when none of its files could be read."""
    reading = reading_as_model(det, cfg)
    if is_npz(source):
        yield Chunk(read_npz(Path(source), reading))
        return
    manifest = image_manifest(source)
    n_read, skipped = 0, []
    for part in read_in_chunks(manifest, reading):
        n_read, skipped = n_read + len(part), skipped + part.skipped
        yield Chunk(part, list(part.skipped))
    require_readable(n_read, len(manifest), skipped, source)


def write_batch_outputs(det, top: pd.DataFrame, skipped, dest: Path, cfg: ImagesConfig):
    """Beside a batch's scores ``dest`` (``<batch id>.parquet``), replacing an earlier run's:
    ``<batch id>.maps/rank001_<file>.png`` ..., the anomaly maps of the ``top`` images (the
    highest scores, highest first), and ``<batch id>.skipped.csv``, path and reason of the
    files ``skipped``. Returns the ``BatchOutputs``: those files, and ``map_path`` (empty
    outside the top) added to the scores."""
    ident = Path(dest).stem
    maps = _write_batch_maps(det, top, reading_as_model(det, cfg), dest.with_name(f"{ident}.maps"))
    skipped_path = dest.with_name(f"{ident}.skipped.csv")
    if skipped:
        atomic_write_frame(pd.DataFrame(skipped, columns=["path", "reason"]), skipped_path)
    else:
        skipped_path.unlink(missing_ok=True)  # from an earlier run of this batch
    artifacts = {"anomaly_maps": maps and maps[0], "skipped": skipped_path if skipped else None}
    by_path = maps[1] if maps else {}

    def add_map_path(frame: pd.DataFrame) -> pd.DataFrame:
        return frame.assign(map_path=[by_path.get(p, "") for p in frame["path"]])

    return BatchOutputs({k: Path(v) for k, v in artifacts.items() if v}, add_map_path)


def _write_batch_maps(det, top: pd.DataFrame, reading: ImagesConfig, folder: Path):
    """Maps of the ``top`` images into ``folder`` (replaced whole): (folder, {image path: map
    path}), or None (and no folder) without images."""
    if not len(top):
        shutil.rmtree(folder, ignore_errors=True)
        return None
    staging = folder.with_name(f".{folder.name}.{uuid.uuid4().hex}.tmp")
    try:
        images = _reread(top, reading)
        written = write_top_maps(det, images, top["anomaly_score"].to_numpy(), staging)
        replace_folder(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder, {p: str(folder / w.name) for p, w in zip(top["path"], written, strict=True)}


_MEMBER = re.compile(r"^(?P<file>.*)::[^:]*\[(?P<i>\d+)\]$")


def _reread(top: pd.DataFrame, reading: ImagesConfig) -> ImageSet:
    """The images of a batch's ``top`` rows, read again (an .npz's by their place in it)."""
    paths = top["path"].tolist()
    if paths and is_npz_member(paths[0]):
        members = [_MEMBER.match(p) for p in paths]
        images = read_npz(Path(members[0]["file"]), reading)
        return images.take([int(m["i"]) for m in members])
    manifest = top[[c for c in ("path", "class", "label") if c in top.columns]]
    return read_images(
        manifest.reset_index(drop=True),
        reading.size,
        reading.mode,
        reading.on_size_mismatch,
        "raise",
    )


def _score_in_chunks(det, manifest: pd.DataFrame, cfg: ImagesConfig):
    frames, skipped = [], []
    for part in read_in_chunks(manifest, cfg):
        skipped += part.skipped
        if len(part):
            frames.append(image_scores(det, part))
    scores = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return scores, skipped


def score_image_input(
    det, model_input, *, on_size_mismatch: str = "reject", chunk_images: int | None = None
) -> pd.DataFrame:
    """Scores for the packaged model's input, one row per image, in order.

    model_input : a DataFrame with a column ``path`` (image files, read at the detector's
        size and colour mode, ``chunk_images`` at a time, by default the config's
        ``images.chunk_images``; an unreadable file is a ValueError naming it), or a column
        ``image`` (per row an (H, W) or (C, H, W) array or nested list of 0..255 integers),
        or an array of images (n, H, W) / (n, C, H, W) (``image_input.parse_image_input``).
    Returns ``path`` (for path input), ``anomaly_score``, ``is_anomaly``,
    ``anomaly_probability``.
    """
    parsed = parse_image_input(model_input)
    if isinstance(parsed, pd.DataFrame):
        reading = packaged_reading(det, on_size_mismatch, chunk_images)
        scores, _ = _score_in_chunks(det, parsed, reading)
        return scores.drop(columns="class")
    images = ImageSet(parsed, [""] * len(parsed), [""] * len(parsed))
    return image_scores(det, images).drop(columns=["path", "class"])


def latent_image_input(
    det, model_input, *, on_size_mismatch: str = "reject", chunk_images: int | None = None
) -> pd.DataFrame:
    """The packaged model's ``output="latent"`` for an image model: z0 .. z{k-1} per input
    image, in order, for a ``path`` column (kept in the output, read ``chunk_images`` at a
    time, by default the config's ``images.chunk_images``), an ``image`` column or an array
    (``image_input.parse_image_input``)."""
    names = list(det.get_feature_names_out())
    parsed = parse_image_input(model_input)
    if isinstance(parsed, pd.DataFrame):
        reading = packaged_reading(det, on_size_mismatch, chunk_images)
        parts = [det.transform(part.images) for part in read_in_chunks(parsed, reading)]
        return pd.concat([parsed, pd.DataFrame(np.concatenate(parts), columns=names)], axis=1)
    return pd.DataFrame(det.transform(parsed), columns=names)


def embed_images(det, images) -> pd.DataFrame:
    """path, ``z0`` .. ``z{k-1}`` and anomaly_score of an ImageSet."""
    return latent_coordinates(det, images.images, pd.DataFrame({"path": images.paths}))


def find_image(images, name: str, source) -> np.ndarray:
    """The one image whose file name (or path relative to ``source``, or full path) is
    ``name``, as a batch of one; ValueError naming it and the source otherwise."""
    root = Path(source)
    hits = [
        i
        for i, p in enumerate(images.paths)
        if name in (Path(p).name, str(p)) or _relative(p, root) == name
    ]
    if not hits:
        raise ValueError(f"image {name!r} not found in {source}")
    if len(hits) > 1:
        shown = ", ".join(images.paths[i] for i in hits[:3])
        raise ValueError(f"image name {name!r} is not unique in {source} ({shown}); "
                         "give its path relative to the folder")  # fmt: skip
    return np.asarray(images.take([hits[0]]).images)


def _relative(path: str, root: Path) -> str | None:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return None


def write_review(det, data, rows, out_dir: str | Path, *, top_maps: int, scores=None) -> dict:
    """What a reviewer looks at, from the images at ``rows`` (the test split), in ``out_dir``:
    ``prior_samples.png`` and ``reconstructions.png`` grids, ``maps/`` (anomaly maps of the
    ``top_maps`` highest scores, beside the original and its reconstruction),
    ``image_scores.csv``, ``review.json`` (the reconstruction retrieval of the normal test
    images, ``image_maps.reconstruction_retrieval``) and the latent space
    (``latent.write_latent_review``: ``latent_map.png``, ``interpolations.png``). Returns
    {name: path}, and the retrieval under ``reconstruction_retrieval`` (None with fewer than
    2 normal test images). scores : the test images' scores where the caller has them (the
    evaluation's), so they are not scored again."""
    out_dir = Path(out_dir)
    shutil.rmtree(out_dir / "maps", ignore_errors=True)  # an earlier run's maps
    test = data.images.take(rows)
    paths = write_review_grids(det, test.images, out_dir)
    scored = score_images(det, test, out_dir, top_k=top_maps, scores=scores)
    latent = write_latent_review(
        det, test.images, scored["score"].to_numpy(), test.labels, out_dir, interpolations=True
    )
    normal = np.arange(len(test)) if test.labels is None else np.flatnonzero(test.labels == 0)
    retrieval = (
        reconstruction_retrieval(det, test.take(normal).images) if len(normal) >= 2 else None
    )
    summary = {"reconstruction_retrieval": retrieval, "normal_test_images": len(normal)}
    summary_path = atomic_write(
        out_dir / "review.json", lambda fh: fh.write(json.dumps(summary, indent=2).encode())
    )
    return (
        paths
        | latent
        | {
            "maps": out_dir / "maps",
            "test_scores": out_dir / "image_scores.csv",
            "summary": summary_path,
            "reconstruction_retrieval": retrieval,
        }
    )
