"""The negative ELBO, the importance-weighted log-likelihood and per-feature terms, in nats.

Everything here is per sample and summed (never averaged) over features and latent
dimensions, with all constants, so numbers are log-densities a statistician can compare:

    -ELBO(x) = KL(q(z|x) || N(0, I)) + E_q[-log p(x|z)]                  (paper, eq. 3 / eq. 7)
    KL       = -1/2 sum_j (1 + log sigma_j^2 - mu_j^2 - sigma_j^2)       (paper, appendix B)
    -log N(x; m, v) = 1/2 (log 2 pi + log v + (x - m)^2 / v)

The expectation over q is a Monte Carlo average over the L noise draws passed in (``eps``), so
the caller controls randomness: training passes fresh noise, scoring passes fixed noise and gets
deterministic scores. The importance-weighted bound is Burda et al. (2016), eq. 8.

These functions work in the model's input space; ``detector.py`` adds the log-Jacobian of the
preprocessing so scores are in nats of the data as given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from vae_core.network.model import VAE, DecoderOutput, FeatureLayout

LOG_2PI = math.log(2.0 * math.pi)


def gaussian_nll(x: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """Elementwise -log N(x; mean, exp(log_var)), same shape as the broadcast inputs."""
    return 0.5 * (LOG_2PI + log_var + (x - mean) ** 2 * torch.exp(-log_var))


def kl_to_standard_normal(mu: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """Analytic KL(N(mu, diag exp(log_var)) || N(0, I)) per row: (n, k) -> (n,)."""
    return 0.5 * (mu**2 + torch.exp(log_var) - 1.0 - log_var).sum(-1)


def log_standard_normal(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) summed over the last dimension."""
    return -0.5 * (LOG_2PI + z**2).sum(-1)


def observed_gaussians(x: torch.Tensor, layout: FeatureLayout) -> torch.Tensor:
    """1 where a Gaussian column's value is modelled by its density, 0 where a gating
    indicator (``layout.gates``) says the value is missing or on the point mass. (n, n_gaussian)
    """
    n_g = layout.n_gaussian
    observed = torch.ones_like(x[:, :n_g])
    gated = [(b, g) for b, g in enumerate(layout.gates) if g >= 0]
    if gated:
        bern, gauss = (torch.tensor(i, device=x.device) for i in zip(*gated, strict=True))
        active = torch.zeros_like(observed).index_add_(1, gauss, x[:, n_g + bern])
        observed = 1.0 - active.clamp(max=1.0)
    return observed


def observed_terms(
    x: torch.Tensor, layout: FeatureLayout, observed: torch.Tensor | None = None
) -> torch.Tensor:
    """Per likelihood term, 1 where it is a density of an observed value (so the
    preprocessing's log-Jacobian applies), 0 for a Gaussian cell left out (gated, or 0 in
    ``observed``); 1 for the discrete terms. (n, t)"""
    rest = layout.n_bernoulli + len(layout.categorical_sizes)
    gaussian = observed_gaussians(x, layout)
    if observed is not None:
        gaussian = gaussian * observed
    return torch.cat([gaussian, torch.ones_like(x[:, :rest])], dim=1)


def reconstruction_nll_terms(
    x: torch.Tensor,
    out: DecoderOutput,
    layout: FeatureLayout,
    observed: torch.Tensor | None = None,
) -> torch.Tensor:
    """-log p(x|z), one term per modelled column: x (n, d) and out (..., n, .) -> (..., n, t).

    Terms are ordered as the layout: one per Gaussian column, one per Bernoulli column, one
    per categorical column (its one-hot block). ``t = n_gaussian + n_bernoulli + n_categorical``.
    A Gaussian column whose gate is on (``observed_gaussians``) contributes 0 nats: the value
    is missing (its density is marginalised out, exactly, for a diagonal decoder) or sits on a
    point mass, whose probability is the gating Bernoulli term. ``observed`` (n, n_gaussian),
    1 or 0, leaves out more Gaussian cells the same way: values missing at scoring time in a
    column that had none at fit (the encoder was given the training median).
    """
    n_g, n_b = layout.n_gaussian, layout.n_bernoulli
    gaussian = gaussian_nll(x[:, :n_g], out.mean, out.log_var)
    if layout.gates:
        gaussian = gaussian * observed_gaussians(x, layout)
    if observed is not None:
        gaussian = gaussian * observed
    terms = [gaussian]
    x_disc, logits = x[:, n_g:], out.logits
    if n_b:
        bern_logits = logits[..., :n_b]
        target = x_disc[:, :n_b].expand_as(bern_logits)
        terms.append(F.binary_cross_entropy_with_logits(bern_logits, target, reduction="none"))
    start = n_b
    for size in layout.categorical_sizes:
        block = slice(start, start + size)
        log_probs = torch.log_softmax(logits[..., block], dim=-1)
        terms.append(-(x_disc[:, block] * log_probs).sum(-1, keepdim=True))
        start += size
    return torch.cat(terms, dim=-1)


@dataclass
class ElboTerms:
    """Per-row pieces of the negative ELBO, in nats of the model input."""

    kl: torch.Tensor  # (n,)
    reconstruction_terms: torch.Tensor  # (n, t): E_q[-log p(x_t|z)] per modelled column

    @property
    def reconstruction(self) -> torch.Tensor:
        return self.reconstruction_terms.sum(-1)

    @property
    def negative_elbo(self) -> torch.Tensor:
        return self.kl + self.reconstruction


def elbo_terms(
    model: VAE, x: torch.Tensor, eps: torch.Tensor, observed: torch.Tensor | None = None
) -> ElboTerms:
    """KL and the Monte Carlo reconstruction terms for x (n, d), with noise eps (L, n|1, k);
    ``observed`` as in ``reconstruction_nll_terms``."""
    mu, log_var, _, out = model(x, eps)
    terms = reconstruction_nll_terms(x, out, model.cfg.layout, observed)  # (L, n, t)
    return ElboTerms(kl=kl_to_standard_normal(mu, log_var), reconstruction_terms=terms.mean(0))


def negative_elbo(model: VAE, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Per-row negative ELBO in nats (higher = less likely): x (n, d), eps (L, n|1, k) -> (n,)."""
    return elbo_terms(model, x, eps).negative_elbo


def trimmed_mean(per_row: torch.Tensor, trim_fraction: float) -> torch.Tensor:
    """Mean of the (1 - trim_fraction) smallest values: the rows a contaminated minibatch
    explains worst are left out of the gradient (a trimmed likelihood, as in least trimmed
    squares). ``trim_fraction = 0`` is the plain mean."""
    if trim_fraction <= 0.0:
        return per_row.mean()
    keep = max(1, math.ceil((1.0 - trim_fraction) * per_row.shape[0]))
    return torch.topk(per_row, keep, largest=False, sorted=False).values.mean()


def training_loss(
    model: VAE, x: torch.Tensor, eps: torch.Tensor, beta: float = 1.0, trim_fraction: float = 0.0
):
    """Batch mean of KL * beta + reconstruction NLL (beta < 1 only during KL warm-up).

    With ``trim_fraction`` > 0 the mean runs over the rows with the smallest loss only
    (``trimmed_mean``). Returns (loss, mean KL, mean reconstruction NLL) over the whole batch;
    with beta = 1 and no trimming the loss is the mean negative ELBO.
    """
    t = elbo_terms(model, x, eps)
    loss = trimmed_mean(beta * t.kl + t.reconstruction, trim_fraction)
    return loss, t.kl.mean(), t.reconstruction.mean()


def importance_weighted_log_likelihood(
    model: VAE, x: torch.Tensor, eps: torch.Tensor, observed: torch.Tensor | None = None
) -> torch.Tensor:
    """IWAE estimate of log p(x) with K = eps.shape[0] samples: (n, d) -> (n,), higher = likelier.

    log p(x) >= E[log 1/K sum_k p(x, z_k) / q(z_k|x)], z_k = mu + sigma * eps_k (Burda et al.,
    eq. 8). K = 1 gives the ELBO with one sample; the bound tightens as K grows.
    """
    _mu, log_var, z, out = model(x, eps)
    log_px_z = -reconstruction_nll_terms(x, out, model.cfg.layout, observed).sum(-1)  # (K, n)
    log_pz = log_standard_normal(z)
    # log q(z|x) with z = mu + sigma * eps: the standardised residual is eps itself.
    log_qz = -0.5 * (LOG_2PI + log_var + eps**2).sum(-1)
    log_w = log_px_z + log_pz - log_qz
    return torch.logsumexp(log_w, dim=0) - math.log(eps.shape[0])
