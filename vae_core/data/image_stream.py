"""Images into the model a block at a time, so that memory is bounded by a block (or a
minibatch), not by the number of images: training rows read on demand (``PixelRows``), model
input in consecutive blocks (``image_blocks``), and one pass over the images for the fit's
variance floors and fingerprint (``scan_images``). X is an ndarray of uint8 images or an
``images.ImageFiles`` (decoded when indexed); a row's model input does not depend on its block.

``pre`` is a fitted ``image_preprocess.ImagePreprocessor`` throughout; it is not imported
here, as that module calls these functions (no import cycle).
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import torch

from vae_core.data.input_stats import grid_variance

# Images turned into model input at a time where no minibatch applies (variance floors,
# fingerprints): at most IMAGE_BLOCK images and BLOCK_VALUES pixel values (64 MB of float32),
# so that memory stays bounded for large colour images too.
IMAGE_BLOCK = 1024
BLOCK_VALUES = 1 << 24


class PixelRows:
    """Training rows read on demand (a row source for ``train_vae``): the images at
    ``rows[index]`` of X (an ndarray or ``ImageFiles``), as model input on ``device``."""

    def __init__(self, X, pre, rows: np.ndarray, device: str):
        self.X, self.pre, self.rows, self.device = X, pre, rows, device

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index) -> torch.Tensor:
        if isinstance(index, torch.Tensor):
            index = index.numpy()
        pixels = np.asarray(self.X[self.rows[index]])
        return torch.from_numpy(self.pre.transform(pixels)).to(self.device)


def image_blocks(pre, X, block: int):
    """``pre``'s model input for consecutive blocks of ``block`` images of X (an ndarray or
    ``ImageFiles``): memory ~ one block."""
    for start in range(0, len(X), block):
        yield pre.transform(np.asarray(X[start : start + block]), start)


def image_block_size(pre) -> int:
    """Images per block: IMAGE_BLOCK, fewer for large images (BLOCK_VALUES)."""
    return max(1, min(IMAGE_BLOCK, BLOCK_VALUES // math.prod(pre.image_shape)))


def scan_images(pre, X, floors: bool) -> tuple[np.ndarray | None, str]:
    """(``grid_variance`` of the images' model input or None, its ``fingerprint``), from
    one pass over the images, a block at a time.

    uint8 pixels take at most 256 values: the values present per pixel are collected
    block by block, and the smallest gap between them gives the same floors as
    ``grid_variance`` on the whole array (same float32 arithmetic). Images already in
    float are in memory: the whole-array rule applies.
    """
    d = math.prod(pre.image_shape)
    h = hashlib.sha256(str((len(X), d)).encode())  # as fingerprint() of the whole input
    grid = floors and X.dtype == np.uint8
    present = np.zeros((d, 256) if grid else (0, 256), dtype=bool)
    flat = present.reshape(-1)  # pixel j, value v -> j * 256 + v
    offsets = np.arange(d, dtype=np.int64) * 256
    block = image_block_size(pre)
    for start in range(0, len(X), block):
        raw = np.asarray(X[start : start + block])
        h.update(np.ascontiguousarray(pre.transform(raw, start)))  # no copy
        if grid:
            flat[(offsets + raw.reshape(-1, d)).ravel()] = True  # one block of indices
    if not floors:
        return None, h.hexdigest()
    if not grid:
        return grid_variance(pre.transform(np.asarray(X))), h.hexdigest()
    levels = np.arange(256, dtype="float32") / np.float32(pre.pixel_scale)
    column, value = np.nonzero(present)  # sorted by column, then value
    same = column[1:] == column[:-1]
    gaps = levels[value[1:][same]] - levels[value[:-1][same]]
    smallest = np.full(d, np.inf, dtype="float32")
    np.minimum.at(smallest, column[1:][same], gaps)
    floor = np.where(np.isfinite(smallest), smallest**2 / np.float32(12.0), 0.0)
    return floor.astype("float32"), h.hexdigest()
