"""The latent space of a fitted ``VAEDetector``: the posterior means of rows (``transform``,
the scikit-learn transformer), their reconstructions, paths between two rows or images
(``interpolate``), the decoder at any code (``decode``), and new rows from the generative
model (``sample``).

``LatentSpaceMixin`` holds these methods; ``VAEDetector`` inherits them and supplies what
they build on: the fitted ``model_``, ``preprocessor_`` (its ``from_model_space`` puts
decoder means back in the data's terms) and ``config_``, ``_chunked`` (model input in
fixed-size zero-padded chunks) and ``_decoder_means`` (the decoder's mean at codes, in the
same chunks), so a row gets the same bits whatever batch it arrives in.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch
from sklearn.base import TransformerMixin
from sklearn.utils.validation import check_is_fitted


class LatentSpaceMixin(TransformerMixin):
    """Representation, reconstruction, interpolation and sampling for ``VAEDetector``: its
    scikit-learn transformer side (``TransformerMixin`` wraps the ``transform`` defined here
    for ``set_output``)."""

    def sample(self, n: int, random_state: int | None = None, mean: bool = False):
        """n new rows from the generative model (AEVB section 2.1): z ~ p(z) = N(0, I), then
        x ~ p(x|z) (``mean=False``, the default: a draw, with the decoder's noise), or the mean
        of p(x|z) (``mean=True``: numbers at the decoder mean, categories at their most
        probable label, images as uint8; the smooth pictures of the review grids).

        Returns a DataFrame in the original columns for tables; for images an array
        (n, C, H, W): float pixel values (0..255 units, not clipped) for draws, uint8 for means.
        """
        check_is_fitted(self, "model_")
        gen = torch.Generator().manual_seed(
            self.random_state if random_state is None else random_state
        )
        z = torch.randn(int(n), int(self.latent_dim), generator=gen)
        if mean:
            u = self._decoder_means(z.numpy().astype("float64"))
            return self.preprocessor_.from_model_space(u)
        with torch.no_grad():
            out = self.model_.decode(z.to(self.device))
            std = torch.exp(0.5 * out.log_var)
            gauss = out.mean + std * torch.randn(out.mean.shape, generator=gen).to(self.device)
            discrete = self._discrete_draws(out.logits, gen)
        u = torch.cat([gauss, discrete], dim=1).cpu().numpy()
        return self.preprocessor_.inverse_transform(u, np.random.default_rng(gen.initial_seed()))

    # ---- the latent space: representation, reconstruction, interpolation ----------------------
    def transform(self, X, return_std: bool = False):
        """The latent representation: the mean of q(z|x) per row, (n, latent_dim) float64
        (columns ``get_feature_names_out()``: z0 .. z{k-1}); with ``return_std=True`` also the
        posterior standard deviations, as a tuple (means, stds).

        A scikit-learn transformer: ``Pipeline([("vae", VAEDetector()), ("clf", ...)])`` fits
        the VAE unsupervised and hands the next step the posterior means. Deterministic (no
        noise: the mean, not a draw). A cell missing at scoring time gets the training median,
        as in scoring. Images: (n, H, W) or (n, C, H, W) uint8.
        """
        check_is_fitted(self, "model_")
        k = int(self.latent_dim)

        def encode(x, obs):
            mu, log_var = self.model_.encode(x)
            return torch.cat([mu, torch.exp(0.5 * log_var)], dim=1)

        both = self._chunked(X, encode, 1)
        return (both[:, :k], both[:, k:]) if return_std else both[:, :k]

    def fit_transform(self, X, y=None, **fit_params) -> np.ndarray:
        """``fit(X, y, **fit_params).transform(X)``."""
        return self.fit(X, y, **fit_params).transform(X)

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        """The names of ``transform``'s columns: z0 .. z{latent_dim - 1}."""
        check_is_fitted(self, "model_")
        return np.asarray([f"z{i}" for i in range(int(self.latent_dim))], dtype=object)

    def reconstruct(self, X):
        """The decoder's mean at the posterior mean, E[x | z = mu(x)], in X's own terms:
        a DataFrame in the original columns for tables (numbers unscaled, a category at its
        most probable label, a value blanked where the decoder says "missing" is more likely
        than not), uint8 images (n, H, W) or (n, C, H, W) shaped as X for images."""
        return self.preprocessor_.from_model_space(self._decoder_means(self.transform(X)), like=X)

    def interpolate(self, a, b, steps: int = 8, method: str = "linear"):
        """Rows (or images) decoded along the path between the posterior means of ``a`` and
        ``b``, endpoints included: ``steps`` points at t = 0, 1/(steps-1), ..., 1, each
        decoded as ``reconstruct`` does, so the first and last equal ``reconstruct(a)`` and
        ``reconstruct(b)``.

        a, b : one row each (a one-row DataFrame or a Series for tables; one image, (H, W) or
            (C, H, W), or a batch of one, for images).
        method : "linear" (a straight line in z) or "spherical" (slerp, White 2016,
            "Sampling generative networks": the path keeps the norm typical of N(0, I)).
        Returns a DataFrame of ``steps`` rows (index t) or uint8 images (steps, ...).
        """
        if method not in ("linear", "spherical"):
            raise ValueError(f"method must be 'linear' or 'spherical', got {method!r}")
        if int(steps) < 2:
            raise ValueError(f"steps must be at least 2 (the two endpoints), got {steps}")
        check_is_fitted(self, "model_")
        ends = [self.preprocessor_.as_one(v, name) for v, name in ((a, "a"), (b, "b"))]
        mu_a, mu_b = (self.transform(v)[0] for v in ends)  # each as reconstruct sees it
        t = np.linspace(0.0, 1.0, int(steps))
        path = _slerp(mu_a, mu_b, t) if method == "spherical" else _lerp(mu_a, mu_b, t)
        path[0], path[-1] = mu_a, mu_b  # exactly: the endpoints are the reconstructions
        index = pd.Index(t, name="t")  # the rows of a table
        return self.preprocessor_.from_model_space(self._decoder_means(path), ends[0], index)

    def decode(self, z) -> pd.DataFrame | np.ndarray:
        """The decoder's mean E[x | z] at latent codes ``z`` (n, latent_dim), in the data's
        terms as ``reconstruct`` gives them: for looking at any point of the latent space."""
        z = np.asarray(z, dtype="float64")
        if z.ndim != 2 or z.shape[1] != int(self.latent_dim):
            raise ValueError(f"z must be (n, {self.latent_dim}), got shape {z.shape}")
        return self.preprocessor_.from_model_space(self._decoder_means(z))

    def _discrete_draws(self, logits: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Bernoulli draws for binary columns; probabilities for categorical blocks."""
        layout = self.config_.layout
        n_b = layout.n_bernoulli
        p = torch.sigmoid(logits[:, :n_b])
        parts = [(torch.rand(p.shape, generator=gen).to(p.device) < p).float()]
        start = n_b
        for size in layout.categorical_sizes:
            parts.append(torch.softmax(logits[:, start : start + size], dim=1))
            start += size
        return torch.cat(parts, dim=1)


def _lerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    return (1.0 - t)[:, None] * a[None] + t[:, None] * b[None]


def _slerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Spherical interpolation (Shoemake 1985) between two codes of any norms; linear where
    they are (anti)parallel within float precision, where the great circle is undefined."""
    cos = float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-300))
    omega = math.acos(min(1.0, max(-1.0, cos)))
    if math.sin(omega) < 1e-6:
        return _lerp(a, b, t)
    wa = np.sin((1.0 - t) * omega) / math.sin(omega)
    wb = np.sin(t * omega) / math.sin(omega)
    return wa[:, None] * a[None] + wb[:, None] * b[None]
