"""The pipeline's steps for images ("nodes"); ``vae_core.steps.dataset`` takes them through the
same path as tables.

    load_images -> ImageData (the dataset interface: ``features_at(rows)``, ...) ->
    pipeline.split_data / fit_detector / calibrate_detector / evaluate_detector /
    save_outcome -> write_review (grids, anomaly maps, image scores, the latent space)
    score_image_batch: a fitted detector and a folder (or .npz) -> one Parquet file (path,
        class, anomaly_score, is_anomaly, anomaly_probability, map_path), anomaly-map PNGs
    score_image_input: the packaged model's input (image paths or arrays) -> scores

Scores are in threshold units (the negative ELBO in nats unless calibrated on the IWAE
score); higher = more anomalous; ``is_anomaly`` is ``score > threshold`` (the project's tie
rule). Nothing here knows about Prefect or MLflow.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd

from vae_core.data.image_input import MODES as MODES  # re-exported: callers read it here
from vae_core.data.image_input import (
    packaged_reading,
    parse_image_input,
    read_in_chunks,
    reading_as_model,
)
from vae_core.data.image_npz import read_image_npz
from vae_core.data.images import (
    CHANNELS,
    ImageFiles,
    ImageSet,
    image_manifest,
    index_images,
    read_images,
    require_readable,
)
from vae_core.evaluation.drawing import score_images, write_review_grids, write_top_maps
from vae_core.evaluation.image_maps import reconstruction_retrieval
from vae_core.foundations.atomic import atomic_write, atomic_write_frame, exclusive, replace_folder
from vae_core.foundations.calibrate import flag_anomalies
from vae_core.foundations.config import ImagesConfig
from vae_core.steps.batch import BatchSummary, checked_batch_id, files_identity
from vae_core.steps.batch import skipped_markdown as skipped_markdown  # re-exported
from vae_core.steps.latent import write_latent_review


@dataclass
class ImageData:
    """Images to train, calibrate and test on, read from one folder.

    images : every image read (arrays, paths, classes, labels and the files skipped).
    n_fit_only : how many of them, first, come from ``root/train`` of an MVTec-AD-like
        layout: training only, while ``root/test`` is split into calibration and test. 0 for
        class subfolders or a flat folder, whose images are split like table rows.
    """

    images: ImageSet
    n_fit_only: int = 0

    kind: ClassVar[str] = "images"

    def __len__(self) -> int:
        return len(self.images)

    @property
    def labels(self) -> np.ndarray | None:
        return self.images.labels

    @property
    def skipped(self) -> list[tuple[str, str]]:
        """Files left out while reading under ``on_error: skip``, (path, reason)."""
        return self.images.skipped

    def fingerprint(self) -> dict[str, str | int]:
        """``image_fingerprint`` of the images (files that stay on disk are read once)."""
        return image_fingerprint(self.images)

    @property
    def streamed(self) -> bool:
        """True when the images stay in their files and are read as needed (too many to hold
        in memory, see ``images.in_memory_mb``)."""
        return isinstance(self.images.images, ImageFiles)

    def features_at(self, rows):
        """The images at positions ``rows``: uint8 (n, H, W) or (n, 3, H, W), an ndarray or,
        when ``streamed``, an unread ``ImageFiles`` (both go to VAEDetector as they are)."""
        return self.images.take(rows).images

    def labels_at(self, rows) -> np.ndarray | None:
        return None if self.labels is None else self.labels[rows]


def read_images_as_model(det, source, images_cfg: ImagesConfig):
    """The ImageSet of a folder or an .npz, read at the model's size and colour mode (the rest
    of ``images_cfg``, such as ``on_error``, applies)."""
    return load_images(source, reading_as_model(det, images_cfg)).images


def load_images(path: str | Path, cfg: ImagesConfig) -> ImageData:
    """Read training images: a folder, MVTec-AD-like (``train/`` and ``test/``) or with class
    subfolders, or an ``.npz`` file (its image array, of ``cfg.size``; labelled when
    ``cfg.npz_class_key`` and ``cfg.npz_normal_classes`` say how).

    A folder whose decoded pixels fit in ``cfg.in_memory_mb`` is read into one uint8 array;
    a larger one is listed and checked file by file (``images.index_images``: unreadable files
    raise or are skipped as ``cfg.on_error`` says, ``cfg.chunk_images`` at a time) and stays in
    its files, which training and scoring then read a minibatch or a chunk at a time
    (``ImageData.streamed``). An ``.npz`` is always read whole."""
    root = Path(path)
    if _is_npz(root):
        return ImageData(_read_npz(root, cfg))
    mvtec = (root / "train").is_dir() and (root / "test").is_dir()
    manifests = [image_manifest(root, s) for s in (("train", "test") if mvtec else (None,))]
    pixels = sum(len(m) for m in manifests) * int(np.prod(cfg.size)) * CHANNELS[cfg.mode]
    stream = pixels > cfg.in_memory_mb * 2**20

    def read(manifest: pd.DataFrame) -> ImageSet:
        args = (manifest, cfg.size, cfg.mode, cfg.on_size_mismatch, cfg.on_error)
        got = index_images(*args, cfg.chunk_images) if stream else read_images(*args)
        require_readable(len(got), len(manifest), got.skipped, root)
        return got

    if mvtec:
        fit_only, held = (read(m) for m in manifests)
        return ImageData(_concat(fit_only, held), len(fit_only))
    return ImageData(read(manifests[0]))


def _is_npz(path: str | Path) -> bool:
    return Path(path).suffix.lower() == ".npz"


def _read_npz(path: Path, cfg: ImagesConfig) -> ImageSet:
    images = read_image_npz(path, cfg.npz_image_key, cfg.npz_class_key, cfg.npz_normal_classes)
    expected = tuple(cfg.size) if cfg.mode == "L" else (3, *cfg.size)
    if images.images.shape[1:] != expected:
        raise ValueError(
            f"{path}: images of shape {images.images.shape[1:]}, expected {cfg.size} in mode "
            f"{cfg.mode} (images.size, images.mode)"
        )
    return images


def _concat(a: ImageSet, b: ImageSet) -> ImageSet:
    labels = None if a.labels is None or b.labels is None else np.concatenate([a.labels, b.labels])
    files = isinstance(a.images, ImageFiles)
    return ImageSet(
        a.images.concat(b.images) if files else np.concatenate([a.images, b.images]),
        a.paths + b.paths,
        a.classes + b.classes,
        labels,
        a.skipped + b.skipped,
    )


def image_fingerprint(images: ImageSet, chunk: int = 1024) -> dict[str, str | int]:
    """SHA-256 of the images' shape, pixels and labels; ``rows`` images of ``columns`` values.
    Pixels are hashed ``chunk`` images at a time (files that stay on disk are read once)."""
    pixels = images.images
    h = hashlib.sha256(str(tuple(pixels.shape)).encode())
    for start in range(0, len(pixels), chunk):
        h.update(np.ascontiguousarray(pixels[start : start + chunk]).tobytes())
    if images.labels is not None:
        h.update(np.asarray(images.labels, dtype=np.int64).tobytes())
    n, columns = len(pixels), int(np.prod(pixels.shape[1:]))
    return {"sha256": h.hexdigest(), "rows": n, "columns": columns}


def write_review(
    det, data: ImageData, rows, out_dir: str | Path, top_maps: int, scores=None
) -> dict:
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


# ---- scoring ---------------------------------------------------------------------------------
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


def score_image_batch(
    det, source: str | Path, cfg: ImagesConfig, out_dir: str | Path, batch_id: str | None = None
) -> BatchSummary:
    """Score every image of ``source``, read at the detector's size and colour mode (the rest
    of ``cfg`` applies), and write, replacing an earlier run of the same batch:

    * ``out_dir/<batch id>.parquet``: ``image_scores`` and ``map_path`` (empty outside the
      top ``cfg.top_maps``), written under a temporary name and renamed;
    * ``out_dir/<batch id>.maps/rank001_<file>.png`` ...: the anomaly maps;
    * ``out_dir/<batch id>.skipped.csv``: path, reason of files skipped (``on_error: skip``).

    source : a flat folder or class subfolders, read ``cfg.chunk_images`` files at a time so
        that memory is bounded by one chunk whatever the number of files; or an ``.npz``
        file (read whole). The batch id is ``batch_id``, or a hash of the files' names and
        bytes.
    Returns the ``batch.BatchSummary`` (unit "images"; every score in ``score_sample``, the
    top ``cfg.top_maps`` in ``top``, the maps folder and the skipped list in ``artifacts``).
    """
    cfg = reading_as_model(det, cfg)
    if _is_npz(source):
        images = _read_npz(Path(source), cfg)
        files, scores, skipped = [source], image_scores(det, images), []
        reread = images.take
    else:
        manifest = image_manifest(source)
        files, (scores, skipped) = manifest["path"], _score_in_chunks(det, manifest, cfg)
        reread = lambda rows: read_images(  # noqa: E731 - only the top images come back
            scores.iloc[rows], cfg.size, cfg.mode, cfg.on_size_mismatch, "raise"
        )
    ident = checked_batch_id(batch_id) if batch_id else files_identity(files)
    require_readable(len(scores), len(files), skipped, source)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # One run of a batch writes its three outputs at a time: never maps of one run beside
    # the scores of another.
    with exclusive(out_dir / f".{ident}.lock"):
        maps = _write_batch_maps(det, scores, reread, cfg.top_maps, out_dir / f"{ident}.maps")
        skipped_path = out_dir / f"{ident}.skipped.csv"
        if skipped:
            atomic_write_frame(pd.DataFrame(skipped, columns=["path", "reason"]), skipped_path)
        else:
            skipped_path.unlink(missing_ok=True)  # from an earlier run of this batch
        output = atomic_write_frame(scores, out_dir / f"{ident}.parquet")
    artifacts = {"anomaly_maps": maps, "skipped": skipped_path if skipped else None}
    values = scores["anomaly_score"].to_numpy(dtype="float64")
    return BatchSummary(
        batch_id=ident,
        rows=len(scores),
        flagged=int(scores["is_anomaly"].sum()),
        threshold=float(det.threshold_),
        psi=None,
        drift_warning=False,
        score_sample=values,
        top=scores.nlargest(cfg.top_maps, "anomaly_score"),
        output=Path(output),
        artifacts={k: Path(v) for k, v in artifacts.items() if v is not None},
        skipped_files=list(skipped),
        unit="images",
    )


def _score_in_chunks(det, manifest: pd.DataFrame, cfg: ImagesConfig):
    frames, skipped = [], []
    for part in read_in_chunks(manifest, cfg):
        skipped += part.skipped
        if len(part):
            frames.append(image_scores(det, part))
    scores = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return scores, skipped


def _write_batch_maps(det, scores: pd.DataFrame, reread, top_maps: int, folder: Path):
    """Maps of the ``top_maps`` highest scores into ``folder`` (replaced whole), their
    images from ``reread(rows)``; sets ``scores["map_path"]``. Returns the folder or None."""
    scores["map_path"] = ""
    order = np.argsort(-scores["anomaly_score"].to_numpy(), kind="stable")[:top_maps]
    if not len(order):
        shutil.rmtree(folder, ignore_errors=True)
        return None
    staging = folder.with_name(f".{folder.name}.{uuid.uuid4().hex}.tmp")
    try:
        top_scores = scores["anomaly_score"].to_numpy()[order]
        written = write_top_maps(det, reread(order), top_scores, staging)
        replace_folder(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    scores.loc[order, "map_path"] = [str(folder / p.name) for p in written]
    return folder


def score_image_input(
    det, model_input, on_size_mismatch: str = "reject", chunk_images: int | None = None
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
