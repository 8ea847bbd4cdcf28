"""The loss, term by term, against torch.distributions on random tensors."""

import math

import torch
from torch.distributions import Bernoulli, Categorical, Normal, kl_divergence

from vae_core.network.likelihood import (
    elbo_terms,
    gaussian_nll,
    importance_weighted_log_likelihood,
    kl_to_standard_normal,
    negative_elbo,
    reconstruction_nll_terms,
    training_loss,
)
from vae_core.network.model import VAE, DecoderOutput, FeatureLayout, VAEConfig

torch.manual_seed(0)


def test_gaussian_nll_matches_normal_log_prob():
    x, mean, log_var = torch.randn(50, 7), torch.randn(50, 7), torch.randn(50, 7)
    expected = -Normal(mean, torch.exp(0.5 * log_var)).log_prob(x)
    torch.testing.assert_close(gaussian_nll(x, mean, log_var), expected)


def test_kl_matches_torch_kl_divergence_summed_over_latents():
    mu, log_var = torch.randn(40, 5), torch.randn(40, 5)
    q = Normal(mu, torch.exp(0.5 * log_var))
    p = Normal(torch.zeros_like(mu), torch.ones_like(mu))
    torch.testing.assert_close(kl_to_standard_normal(mu, log_var), kl_divergence(q, p).sum(-1))


def test_reconstruction_terms_for_every_likelihood():
    layout = FeatureLayout(n_gaussian=3, n_bernoulli=2, categorical_sizes=(4, 2))
    n, L = 30, 5
    x_g = torch.randn(n, 3)
    x_b = torch.randint(0, 2, (n, 2)).float()
    c1, c2 = torch.randint(0, 4, (n,)), torch.randint(0, 2, (n,))
    x = torch.cat([x_g, x_b, torch.eye(4)[c1], torch.eye(2)[c2]], dim=1)
    out = DecoderOutput(
        mean=torch.randn(L, n, 3), log_var=torch.randn(L, n, 3), logits=torch.randn(L, n, 8)
    )
    terms = reconstruction_nll_terms(x, out, layout)
    assert terms.shape == (L, n, 3 + 2 + 2)
    gauss = -Normal(out.mean, torch.exp(0.5 * out.log_var)).log_prob(x_g)
    bern = -Bernoulli(logits=out.logits[..., :2]).log_prob(x_b)
    cat1 = -Categorical(logits=out.logits[..., 2:6]).log_prob(c1)
    cat2 = -Categorical(logits=out.logits[..., 6:8]).log_prob(c2)
    expected = torch.cat([gauss, bern, cat1[..., None], cat2[..., None]], dim=-1)
    torch.testing.assert_close(terms, expected)


def _model(layout=None, latent=3):
    layout = layout or FeatureLayout(n_gaussian=6)
    torch.manual_seed(1)
    return VAE(VAEConfig(layout=layout, latent_dim=latent, hidden_dims=(16,))).eval()


def test_negative_elbo_is_kl_plus_monte_carlo_reconstruction():
    model, x = _model(), torch.randn(20, 6)
    eps = torch.randn(7, 20, 3)
    with torch.no_grad():
        mu, log_var = model.encode(x)
        q = Normal(mu, torch.exp(0.5 * log_var))
        z = mu + torch.exp(0.5 * log_var) * eps  # the reparameterization, by hand
        out = model.decode(z)
        log_px = Normal(out.mean, torch.exp(0.5 * out.log_var)).log_prob(x).sum(-1)
        kl = kl_divergence(q, Normal(torch.zeros_like(mu), torch.ones_like(mu))).sum(-1)
        expected = kl - log_px.mean(0)
        torch.testing.assert_close(negative_elbo(model, x, eps), expected)


def test_training_loss_is_the_batch_mean_and_beta_weights_only_kl():
    model, x, eps = _model(), torch.randn(20, 6), torch.randn(1, 20, 3)
    with torch.no_grad():
        t = elbo_terms(model, x, eps)
        loss, _kl, _rec = training_loss(model, x, eps, beta=1.0)
        torch.testing.assert_close(loss, negative_elbo(model, x, eps).mean())
        half, _, _ = training_loss(model, x, eps, beta=0.5)
        torch.testing.assert_close(half, 0.5 * t.kl.mean() + t.reconstruction.mean())


def test_iwae_with_one_sample_is_the_one_sample_elbo_and_bounds_tighten():
    model, x = _model(), torch.randn(200, 6)
    with torch.no_grad():
        eps1 = torch.randn(1, 200, 3)
        # With K = 1, log w = log p(x|z) + log p(z) - log q(z|x), whose expectation is the ELBO;
        # with the same noise the one-sample estimates agree up to the KL's Monte Carlo form.
        iw1 = importance_weighted_log_likelihood(model, x, eps1)
        mu, log_var = model.encode(x)
        z = mu + torch.exp(0.5 * log_var) * eps1
        out = model.decode(z)
        log_joint = (
            Normal(out.mean, torch.exp(0.5 * out.log_var)).log_prob(x).sum(-1)
            + Normal(0.0, 1.0).log_prob(z).sum(-1)
            - Normal(mu, torch.exp(0.5 * log_var)).log_prob(z).sum(-1)
        )
        torch.testing.assert_close(iw1, log_joint[0])
        # On average over rows: ELBO <= IWAE(64) (Burda et al., theorem 1).
        elbo = -negative_elbo(model, x, torch.randn(64, 1, 3))
        iw64 = importance_weighted_log_likelihood(model, x, torch.randn(64, 1, 3))
        assert iw64.mean() > elbo.mean()


def test_log_2pi_constant_is_included():
    zero = torch.zeros(1, 1)
    value = gaussian_nll(zero, zero, zero).item()
    assert math.isclose(value, 0.5 * math.log(2 * math.pi), rel_tol=1e-6)
