"""Images as a dataset: ``ImageData`` (the ``protocol.Dataset`` of the image kind) read from a
folder, MVTec-AD-like or with class subfolders, or from an ``.npz``; files too many for memory
stay on disk and are read a minibatch at a time.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd

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
from vae_core.foundations.config import ImagesConfig


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
    if is_npz(root):
        return ImageData(read_npz(root, cfg))
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


def is_npz(path: str | Path) -> bool:
    return Path(path).suffix.lower() == ".npz"


def read_npz(path: Path, cfg: ImagesConfig) -> ImageSet:
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
