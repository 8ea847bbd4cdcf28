"""Images to the model's input space and back.

Pixel values are divided by 255 when the array is ``uint8`` (else used as given) and
flattened; the model reshapes them. The images come in as an ndarray or as an
``images.ImageFiles`` read on demand, a block at a time (``image_stream``).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from vae_core.data.columns import MIN_FIT_ROWS
from vae_core.data.image_stream import image_block_size, image_blocks, scan_images
from vae_core.data.images import image_rows
from vae_core.network.model import FeatureLayout


class ImagePreprocessor:
    """Images (n, H, W) or (n, C, H, W) -> flat model input in [0, 1] (uint8 divided by 255)."""

    def __init__(self, likelihood: str = "gaussian"):
        self.likelihood = likelihood
        self.image_shape: tuple[int, int, int] | None = None
        self.pixel_scale = 1.0

    def _as_nchw(self, X) -> np.ndarray:
        arr = np.asarray(X)
        if arr.ndim == 3:
            arr = arr[:, None]
        if arr.ndim != 4:
            raise ValueError(f"images must be (n, H, W) or (n, C, H, W), got shape {arr.shape}")
        if len(arr) == 0:
            raise ValueError("the input has no images")
        return arr

    def fit(self, X) -> ImagePreprocessor:
        """Record the image shape and the pixel scale (255 for uint8). Reads only ``shape``
        and ``dtype``, so X may be images that stay in their files (``images.ImageFiles``)."""
        if not isinstance(getattr(X, "dtype", None), np.dtype):
            X = np.asarray(X)
        shape = tuple(int(s) for s in X.shape)
        if len(shape) == 3:
            shape = (shape[0], 1, *shape[1:])
        if len(shape) != 4:
            raise ValueError(f"images must be (n, H, W) or (n, C, H, W), got shape {shape}")
        if shape[0] < MIN_FIT_ROWS:
            raise ValueError(f"need at least {MIN_FIT_ROWS} images to fit, got {shape[0]}")
        self.image_shape = shape[1:]
        self.pixel_scale = 255.0 if X.dtype == np.uint8 else 1.0
        return self

    def transform(self, X, first_index: int = 0) -> np.ndarray:
        """Flat float32 model input (n, C*H*W) in [0, 1] for uint8 images.

        first_index : position of X's first image in the caller's data, so that an error
        names the caller's index when X is one chunk of it.
        """
        arr = self._as_nchw(X)
        if tuple(arr.shape[1:]) != self.image_shape:
            raise ValueError(f"images must have shape {self.image_shape}, got {arr.shape[1:]}")
        flat = arr.reshape(len(arr), -1).astype("float32") / self.pixel_scale
        bad = ~np.isfinite(flat).all(1)
        if bad.any():
            raise ValueError(
                "images with NaN or infinite pixels at index "
                f"{np.flatnonzero(bad)[:5] + int(first_index)}"
            )
        return flat

    # ---- what the detector asks of its preprocessor (as ``TabularPreprocessor``) -------------
    def transform_rows(self, X, rows=None) -> np.ndarray:
        """``transform`` of the images at positions ``rows`` of X (default all); X may be an
        ``ImageFiles``, of which only those images are read."""
        X = image_rows(X)
        return self.transform(np.asarray(X if rows is None else X[rows]))

    def transform_blocks(self, X):
        """``transform`` of all of X in consecutive blocks (``image_stream.image_block_size``
        images): memory ~ one block."""
        return image_blocks(self, image_rows(X), image_block_size(self))

    def scoring_blocks(self, X, chunk: int, marginalise: bool):
        """(model input, None) of X in blocks of ``chunk`` images, turned into model input a
        block at a time. A pixel is never missing: ``marginalise`` is for tables."""
        X = image_rows(X)
        if len(X) == 0:
            raise ValueError("the input has no images")
        return ((u, None) for u in image_blocks(self, X, chunk))

    def input_fingerprint(self, X) -> str:
        """``input_stats.fingerprint`` of X's model input, hashed a block at a time."""
        return scan_images(self, image_rows(X), floors=False)[1]

    def left_out_columns(self, X, index=None) -> pd.Series:
        """Per image, the columns left out of the likelihood: "" (a pixel is never missing),
        labelled ``index`` (default 0..n-1)."""
        return pd.Series("", index=index if index is not None else range(len(X)))

    def as_one(self, v, name: str) -> np.ndarray:
        """``v``, one image ((H, W), (C, H, W) or a batch of one), as a batch of one;
        ValueError naming ``name`` otherwise."""
        arr = np.asarray(v)
        if arr.ndim == len(self.image_shape) or (arr.ndim == 2 and self.image_shape[0] == 1):
            arr = arr[None]
        if len(arr) != 1:
            raise ValueError(f"{name}: expected one image, got {len(arr)}")
        return arr

    def from_model_space(self, u: np.ndarray, like=None, index=None) -> np.ndarray:
        """Decoder means ``u`` (n, C*H*W) as uint8 images (n, C, H, W), or (n, H, W) where
        ``like``, the images they stand for, is (n, H, W). ``index`` labels a table's rows."""
        pixels = np.clip(np.rint(self.inverse_transform(u, None)), 0, 255).astype(np.uint8)
        return pixels[:, 0] if like is not None and image_rows(like).ndim == 3 else pixels

    # ---- the fitted mapping ----------------------------------------------------------------
    @property
    def layout(self) -> FeatureLayout:
        d = math.prod(self.image_shape)
        return FeatureLayout(d, 0) if self.likelihood == "gaussian" else FeatureLayout(0, d)

    @property
    def feature_names(self) -> list[str]:
        c, h, w = self.image_shape
        return [f"c{k}_y{i}_x{j}" for k in range(c) for i in range(h) for j in range(w)]

    term_columns = feature_names

    @property
    def term_log_scale(self) -> np.ndarray:
        scale = math.log(self.pixel_scale) if self.likelihood == "gaussian" else 0.0
        return np.full(math.prod(self.image_shape), scale)

    def inverse_transform(self, u: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return (u * self.pixel_scale).reshape(len(u), *self.image_shape)

    def to_dict(self) -> dict:
        return {
            "kind": "image",
            "likelihood": self.likelihood,
            "image_shape": list(self.image_shape),
            "pixel_scale": self.pixel_scale,
        }

    @classmethod
    def from_dict(cls, d: dict) -> ImagePreprocessor:
        pre = cls(d["likelihood"])
        pre.image_shape, pre.pixel_scale = tuple(d["image_shape"]), float(d["pixel_scale"])
        return pre
