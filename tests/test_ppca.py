"""Exactness on data with a known likelihood: a linear-Gaussian (probabilistic PCA) model.

x = W z + b + noise, z ~ N(0, I_q), noise ~ N(0, s^2 I_d) has the closed-form density
x ~ N(b, W W^T + s^2 I) (Tipping & Bishop, 1999). A Gaussian VAE can represent this model, so
after training its ELBO must sit just below the exact log-likelihood, and the importance-weighted
estimate between the two. Everything is in nats of the raw data, so the preprocessing's
log-Jacobian is checked too (columns are on very different scales).
"""

import numpy as np
import pytest
from scipy.stats import multivariate_normal

from vae_core import VAEDetector

D, Q = 8, 2


@pytest.fixture(scope="module")
def ppca():
    rng = np.random.default_rng(42)
    W = rng.normal(size=(D, Q)) * np.geomspace(0.1, 50, D)[:, None]
    b = rng.normal(size=D) * 10
    noise = 0.3 * np.geomspace(0.1, 50, D)

    def draw(n):
        return rng.normal(size=(n, Q)) @ W.T + b + rng.normal(size=(n, D)) * noise

    cov = W @ W.T + np.diag(noise**2)
    x_train, x_test = draw(6000), draw(3000)
    # The plain negative ELBO (trim_fraction=0): on clean data the maximum-likelihood fit is
    # what must come close to log p(x). The default trims the worst-explained rows, for
    # training data that holds anomalies, and so underfits the tails on purpose.
    det = VAEDetector(
        latent_dim=Q, hidden_dims=(64,), epochs=150, random_state=0, trim_fraction=0.0
    )
    det.fit(x_train)
    return det, x_test, multivariate_normal(b, cov).logpdf(x_test)


def test_elbo_below_but_close_to_the_exact_log_likelihood(ppca):
    det, x, exact = ppca
    elbo = -det.anomaly_score(x, n_samples=1024)  # enough samples to resolve a small gap
    gap_per_dim = (exact.mean() - elbo.mean()) / D
    assert elbo.mean() < exact.mean()
    assert gap_per_dim < 0.02, f"ELBO is {gap_per_dim:.4f} nats/dim below the exact log p(x)"


def test_importance_weighted_estimate_lies_between(ppca):
    det, x, exact = ppca
    elbo = -det.anomaly_score(x, n_samples=1024)
    iwae = det.log_likelihood(x, k=1024)
    assert elbo.mean() < iwae.mean() < exact.mean()
