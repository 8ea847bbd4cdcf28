"""The scores of a fitted ``VAEDetector``, in nats of the data as given: the negative ELBO
(``anomaly_score``), the IWAE log-likelihood, KL and per-term or per-column reconstruction
NLL, the score the threshold applies to, and the loop they all run through.

``ScoringMixin`` holds these methods; ``VAEDetector`` inherits them and supplies the fitted
``model_``, ``config_`` and ``preprocessor_``, the parameters (``random_state``,
``latent_dim``, ``device``, ``missing``) and ``_scoring_blocks``, its model input a block at a
time. Scores are deterministic: the Monte Carlo noise is drawn once from ``random_state`` and
shared by every row, and rows are evaluated in fixed-size, zero-padded chunks (``_chunked``,
``_decoder_means``), so a row's score is bit-for-bit the same whatever the batch it arrives in
(on a given device).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from sklearn.utils.validation import check_is_fitted

from vae_core.network.likelihood import (
    ElboTerms,
    elbo_terms,
    importance_weighted_log_likelihood,
    observed_terms,
)

# Rows per forward pass at scoring time, times Monte Carlo samples. Fixed for a given model so
# that padding makes scores independent of the caller's batch size (see module docstring).
_CHUNK_BUDGET = 1 << 18  # about 1 MB of float32 per input column


class ScoringMixin:
    """Scoring for ``VAEDetector``: the negative ELBO, IWAE, KL and reconstruction terms, the
    score the threshold applies to, the columns a score left out (``missing_columns``), their
    Monte Carlo noise and the fixed-size chunk loop every score runs through."""

    def _noise(self, n_samples: int, salt: int) -> torch.Tensor:
        """Fixed N(0, I) noise (n_samples, 1, latent_dim) shared by every row.

        Scrambled Sobol points mapped through the normal quantile function: quasi-Monte Carlo
        (Buchholz et al., ICML 2018) cuts the error of the expectation over q(z|x) several
        times against i.i.d. draws of the same size, for the same cost.
        """
        seed = int(self.random_state) * 1_000_003 + salt
        engine = torch.quasirandom.SobolEngine(int(self.latent_dim), scramble=True, seed=seed)
        u = engine.draw(n_samples, dtype=torch.float64).clamp(1e-7, 1 - 1e-7)
        return torch.special.ndtri(u).float()[:, None, :]

    def threshold_score(self, X) -> np.ndarray:
        """The score ``threshold_`` applies to, higher = more anomalous: the negative ELBO, or
        -log_likelihood(X, k) after ``calibrate(score="iwae")``. (n,)"""
        if getattr(self, "score_kind_", "negative_elbo") == "iwae":
            return -self.log_likelihood(X, self.iwae_samples_)
        return self.anomaly_score(X)

    def anomaly_probability(self, X) -> np.ndarray:
        """Probability in [0, 1] that a row is anomalous, from the calibration data. (n,)

        Without calibration labels: the share of normal calibration rows the row's score
        exceeds (a conformal p-value turned around); with labels: isotonic regression.
        """
        if getattr(self, "probability_", None) is None:
            raise ValueError("anomaly_probability needs calibrate() first")
        return self.probability_.probability(self.threshold_score(X))

    def _chunked(self, X, fn, n_samples: int) -> np.ndarray:
        """Apply ``fn(x, observed)`` to the model input in fixed-size zero-padded chunks;
        concatenate rows. ``observed`` is None, or (chunk, n_gaussian) 1/0 where cells missing
        at scoring time are left out of the likelihood (``missing="marginalise"``)."""
        check_is_fitted(self, "model_")
        chunk = max(1, _CHUNK_BUDGET // (n_samples * max(1, self.config_.layout.param_dim)))
        chunk = 1 << (chunk.bit_length() - 1)  # a power of two, fixed for this model
        parts = self._scoring_blocks(X, chunk)
        outputs = []
        with torch.no_grad():
            for u, observed in parts:
                for start in range(0, len(u), chunk):
                    x = _padded(u[start : start + chunk], chunk, 0.0)
                    obs = (
                        None
                        if observed is None
                        else _padded(observed[start : start + chunk], chunk, 1.0)
                    )
                    out = fn(
                        _tensor(x, self.device), None if obs is None else _tensor(obs, self.device)
                    )
                    outputs.append(out[: min(chunk, len(u) - start)].double().cpu().numpy())
        return np.concatenate(outputs)

    def missing_columns(self, X) -> pd.Series:
        """Per row, the numeric columns whose missing value was left out of the likelihood
        (``missing="marginalise"``; the column had no missing values at fit), joined by ";"
        ("" for a complete row)."""
        check_is_fitted(self, "preprocessor_")
        index = X.index if isinstance(X, pd.DataFrame) else None
        return self.preprocessor_.left_out_columns(X, index)

    def _log_jacobian(self, x: torch.Tensor, observed: torch.Tensor | None = None) -> torch.Tensor:
        """log |dx/du| per row and likelihood term (n, t), float64: the preprocessing's
        log-Jacobian where a term is a density of an observed value, 0 where it is a
        probability (indicators, categories, a value on its point mass) or left out."""
        scale = torch.as_tensor(
            self.preprocessor_.term_log_scale, dtype=torch.float64, device=x.device
        )
        if not self.config_.layout.gates and observed is None:
            return scale.expand(len(x), -1)
        return observed_terms(x, self.config_.layout, observed).double() * scale

    def _score_noise(self, n_samples: int | None) -> torch.Tensor:
        check_is_fitted(self, "model_")
        if n_samples is None:
            return self.score_eps_.to(self.device)
        if int(n_samples) < 1:
            raise ValueError(f"n_samples must be a positive integer, got {n_samples}")
        return self._noise(int(n_samples), salt=1).to(self.device)

    def anomaly_score(self, X, n_samples: int | None = None) -> np.ndarray:
        """Negative ELBO per row in nats of the data as given; higher = more anomalous. (n,)

        n_samples : Monte Carlo samples of z per row; default ``n_score_samples``.
        """
        eps = self._score_noise(n_samples)
        return self._chunked(X, lambda x, obs: self._negative_elbo(x, eps, obs), len(eps))

    def _members(self) -> list:
        """The networks a score averages over (``members_``; a model saved before snapshots
        existed has its one network)."""
        return getattr(self, "members_", None) or [self.model_]

    def _terms(self, x: torch.Tensor, eps: torch.Tensor, obs=None) -> ElboTerms:
        """KL and reconstruction terms, each the mean over the members (float64 where there
        are several; one network's own terms otherwise). The mean of the members' negative
        ELBOs is -log of the geometric mean of their ELBO bounds, g = prod_m p_m^(1/M) at
        best; g integrates to Z <= 1 (Hölder), so the score is also an upper bound on
        -log(g / Z), a proper density's: nats of the data, as for one network."""
        members = self._members()
        if len(members) == 1:
            return elbo_terms(members[0], x, eps, obs)
        parts = [elbo_terms(m, x, eps, obs) for m in members]
        return ElboTerms(
            kl=sum(p.kl.double() for p in parts) / len(parts),
            reconstruction_terms=sum(p.reconstruction_terms.double() for p in parts) / len(parts),
        )

    def _negative_elbo(self, x: torch.Tensor, eps: torch.Tensor, obs=None) -> torch.Tensor:
        """Negative ELBO per row in nats of the data, float64 (one arithmetic for all)."""
        t = self._terms(x, eps, obs)
        return _negative_elbo64(t) + self._log_jacobian(x, obs).sum(1)

    def score_with_contributions(self, X) -> tuple[np.ndarray, pd.DataFrame]:
        """``anomaly_score`` and ``feature_contributions`` from one pass over the data.

        The scores are bit-identical to ``anomaly_score`` (same arithmetic per row); use this
        when both are needed, as batch scoring does, to halve the cost.
        """
        eps = self._score_noise(None)

        def both(x, obs):
            t, jacobian = self._terms(x, eps, obs), self._log_jacobian(x, obs)
            nelbo = _negative_elbo64(t) + jacobian.sum(1)
            return torch.cat([nelbo[:, None], t.reconstruction_terms.double() + jacobian], 1)

        out = self._chunked(X, both, len(eps))
        return out[:, 0], self._by_column(out[:, 1:], X)

    def log_likelihood(self, X, k: int = 64) -> np.ndarray:
        """Importance-weighted estimate of log p(x) with k samples (IWAE); higher = more normal.

        In nats of the data as given; for k = 1 it is a one-sample ELBO, and it tightens
        towards log p(x) as k grows. (n,)
        """
        if int(k) < 1:
            raise ValueError(f"k must be a positive integer, got {k}")
        eps = self._noise(int(k), salt=2 + int(k)).to(self.device)
        return self._chunked(
            X,
            lambda x, obs: (
                sum(
                    importance_weighted_log_likelihood(m, x, eps, obs).double()
                    for m in self._members()
                )
                / len(self._members())
                - self._log_jacobian(x, obs).sum(1)
            ),
            len(eps),
        )

    def reconstruction_terms(self, X) -> np.ndarray:
        """E_q[-log p(x_t|z)] per likelihood term, in nats of the data as given. (n, t)

        Terms follow ``preprocessor_.term_columns`` (for images: one per pixel and channel, in
        (C, H, W) order) and include the preprocessing's log-Jacobian, so the row sums equal
        ``anomaly_score - kl_divergence``. Higher = that term made the row more anomalous.
        """
        eps = self._score_noise(None)
        return self._chunked(
            X,
            lambda x, obs: (
                self._terms(x, eps, obs).reconstruction_terms.double() + self._log_jacobian(x, obs)
            ),
            len(eps),
        )

    def feature_contributions(self, X) -> pd.DataFrame:
        """Each input column's term of the reconstruction NLL E_q[-log p(x|z)], in nats. (n, d)

        A column's missing-value indicator and one-hot block count towards that column; the
        row sums equal ``anomaly_score - KL``. Higher = that column made the row more anomalous.
        """
        return self._by_column(self.reconstruction_terms(X), X)

    def _by_column(self, terms: np.ndarray, X) -> pd.DataFrame:
        """Per-term NLL (n, t) summed into the input columns the terms come from. (n, d)"""
        sources = self.preprocessor_.term_columns
        names = [n for n in self.preprocessor_.feature_names if n in set(sources)]
        column_of = {name: j for j, name in enumerate(names)}
        to_columns = np.zeros((len(sources), len(names)))  # term -> its source column
        to_columns[np.arange(len(sources)), [column_of[c] for c in sources]] = 1.0
        index = X.index if isinstance(X, pd.DataFrame) else None
        return pd.DataFrame(terms @ to_columns, columns=names, index=index)

    def kl_divergence(self, X) -> np.ndarray:
        """KL(q(z|x) || N(0, I)) per row, in nats. (n,)"""
        eps = self._score_noise(None)
        return self._chunked(X, lambda x, obs: self._terms(x, eps, obs).kl, len(eps))

    def _decoder_means(self, z: np.ndarray) -> np.ndarray:
        """E[x | z] in model space (n, input_dim), float64: Gaussian means, Bernoulli
        probabilities, categorical probabilities; decoded in fixed-size zero-padded chunks
        (as scores are), so a code decodes to the same bits wherever it sits in a batch."""
        check_is_fitted(self, "model_")
        chunk = max(1, _CHUNK_BUDGET // max(1, self.config_.layout.param_dim))
        chunk = 1 << (chunk.bit_length() - 1)
        layout, parts = self.config_.layout, []
        with torch.no_grad():
            for start in range(0, len(z), chunk):
                block = _padded(np.asarray(z[start : start + chunk], "float32"), chunk, 0.0)
                out = self.model_.decode(_tensor(block, self.device))
                probs = [torch.sigmoid(out.logits[:, : layout.n_bernoulli])]
                pos = layout.n_bernoulli
                for size in layout.categorical_sizes:
                    probs.append(torch.softmax(out.logits[:, pos : pos + size], dim=1))
                    pos += size
                mean = torch.cat([out.mean, *probs], dim=1)
                parts.append(mean[: min(chunk, len(z) - start)].double().cpu().numpy())
        return np.concatenate(parts)


def _padded(rows: np.ndarray, size: int, fill: float) -> np.ndarray:
    """``rows`` (m <= size, ...) as float32 (size, ...), the rest filled with ``fill``."""
    out = np.full((size, *rows.shape[1:]), fill, dtype="float32")
    out[: len(rows)] = rows
    return out


def _tensor(array: np.ndarray, device: str) -> torch.Tensor:
    return torch.from_numpy(array).to(device)


def _negative_elbo64(t) -> torch.Tensor:
    """KL + reconstruction NLL per row, summed in float64 (one arithmetic for every caller)."""
    return t.kl.double() + t.reconstruction_terms.double().sum(-1)
