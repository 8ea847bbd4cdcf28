"""The detector's view of images, a block at a time: per-pixel anomaly maps,
reconstructions, how well reconstructions follow their input, and what the model has learnt.

For a detector fitted on images, the anomaly score (negative ELBO, nats of the data as given)
splits exactly into the KL term and one reconstruction term per pixel and channel,
``E_q[-log p(x_pixel | z)]`` with the pixel scaling's log-Jacobian (``log 255`` per pixel for
a Gaussian on uint8 data), over the same fixed scoring noise. ``anomaly_maps`` sums the
channels, so that, per image and up to float rounding,

    anomaly_maps(det, X).sum(axis=(1, 2)) + det.kl_divergence(X) == det.anomaly_score(X).

Everything here works in blocks of ``block_size`` images, so memory is bounded by the block,
not by the number of images (the scores do not depend on the block). Drawing them is
``vae_core.evaluation.drawing``'s; reading files is ``vae_core.data.images``'.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from sklearn.utils.validation import check_is_fitted

from vae_core.data.images import image_rows


def detector_image_shape(det) -> tuple[int, int, int]:
    """(C, H, W) of a detector fitted on images; ValueError for any other detector (its
    preprocessor's ``image_shape`` is None)."""
    check_is_fitted(det, "model_")
    shape = det.preprocessor_.image_shape
    if shape is None:
        raise ValueError("this needs a detector fitted on images (architecture='conv')")
    return shape


def in_blocks(fn: Callable, images, block_size: int) -> np.ndarray:
    """fn applied to consecutive blocks of images, rows concatenated (memory ~ one block)."""
    if int(block_size) < 1:
        raise ValueError(f"block_size must be a positive integer, got {block_size}")
    images = image_rows(images)
    if len(images) == 0:
        raise ValueError("the input has no images")
    step = int(block_size)
    return np.concatenate([fn(images[i : i + step]) for i in range(0, len(images), step)])


def anomaly_maps(det, images, block_size: int = 1024) -> np.ndarray:
    """Per-pixel anomaly maps (n, H, W): E_q[-log p(x_pixel | z)] in nats, summed over channels.

    Higher = that pixel made the image more anomalous. Same fixed scoring noise and the same
    units as ``det.anomaly_score``, so ``maps.sum((1, 2)) + det.kl_divergence(images)`` equals
    ``det.anomaly_score(images)`` (see the module docstring). A Gaussian pixel's term can be
    slightly negative (a density above 1 per grey level); a Bernoulli pixel's is >= 0.
    """
    channels, height, width = detector_image_shape(det)
    terms = in_blocks(det.reconstruction_terms, images, block_size)
    return terms.reshape(len(terms), channels, height, width).sum(axis=1)


def reconstructions(det, images, block_size: int = 256) -> np.ndarray:
    """``det.reconstruct``, a block of images at a time: the decoder mean at z = mu(x) as
    uint8 pixels, shaped as ``images``."""
    detector_image_shape(det)
    return in_blocks(det.reconstruct, images, block_size)


def reconstruction_retrieval(det, images, max_images: int = 1000) -> float:
    """Share of the images whose reconstruction (``reconstructions``) is nearer, in Euclidean
    distance in the model's input space, to its own image than to every other image of the
    set; the first ``max_images`` images are used. Chance is 1 / n; a decoder that ignores
    its input (every reconstruction the same blur) scores about that.

    Meant for normal images: it asks whether a reconstruction follows its input, which an
    anomaly map ("original | reconstruction | map") needs in order to point at a defect.
    """
    originals = np.asarray(image_rows(images)[: int(max_images)])
    if len(originals) < 2:
        raise ValueError("reconstruction retrieval needs at least 2 images")
    x = det.model_input(originals).astype("float64")
    r = reconstructions(det, originals).reshape(len(x), -1) / det.preprocessor_.pixel_scale
    # |r_i - x_j|^2 = |r_i|^2 - 2 r_i.x_j + |x_j|^2; the |r_i|^2 term does not change argmin_j.
    distances = (x**2).sum(1)[None, :] - 2.0 * r @ x.T
    return float(np.mean(distances.argmin(1) == np.arange(len(x))))


def prior_means(det, n: int, random_state: int = 0) -> np.ndarray:
    """Decoder means at n draws z ~ N(0, I), uint8 (n, C, H, W): ``det.sample(mean=True)``.

    What the model has learnt, for review. A draw (``mean=False``) adds the per-pixel noise of
    p(x|z), which with a Gaussian decoder buries the structure under speckle.
    """
    detector_image_shape(det)
    return det.sample(int(n), random_state=int(random_state), mean=True)
