"""Images to the model's input space and back.

Pixel values are divided by 255 when the array is ``uint8`` (else used as given) and
flattened; the model reshapes them.
"""

from __future__ import annotations

import math

import numpy as np

from vae_core.columns import MIN_FIT_ROWS
from vae_core.model import FeatureLayout


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
