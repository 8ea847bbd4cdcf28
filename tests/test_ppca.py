"""Exactness on data with a known likelihood: a linear-Gaussian (probabilistic PCA) model.

x = W z + b + noise, z ~ N(0, I_q), noise ~ N(0, s^2 I_d) has the closed-form density
x ~ N(b, W W^T + s^2 I) (Tipping & Bishop, 1999). A Gaussian VAE can represent this model, so
after training its ELBO must sit just below the exact log-likelihood, and the importance-weighted
estimate between the two. Everything is in nats of the raw data, so the preprocessing's
log-Jacobian is checked too (columns are on very different scales).
"""

import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import multivariate_normal

from vae_core import VAEDetector

# benchmarks/ is not a package: its folder on the path, as tests/test_benchmarks.py does
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import ppca as ppca_benchmark

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
    # The plain negative ELBO (trim_fraction=0) of one network (snapshot_fraction=None): on
    # clean data the maximum-likelihood fit is what must come close to log p(x). The default
    # trims the worst-explained rows, for training data that holds anomalies, and so underfits
    # the tails on purpose, and averages in a half-trained snapshot (a product of experts).
    det = VAEDetector(
        latent_dim=Q,
        hidden_dims=(64,),
        epochs=150,
        random_state=0,
        trim_fraction=0.0,
        snapshot_fraction=None,
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


# ---- issue 23's protocol, with the refinement (latent_dim=2, refine_cutoff=3.0) ---------------
# d = 10, k = 2, W ~ N(0, 2^2), mu ~ N(0, 3^2), noise variance 0.1, 20,000 training rows, 5,000
# clean test rows; benchmarks/ppca.py prints the same figures over seeds and settings. Measured
# on this machine kind (Intel Xeon, 1 torch thread), seed 0: ELBO gap 0.0074 nats/dim, IWAE(200)
# gap 0.0045, ELBO gap with 5% outliers 0.0058, outliers found at ROC-AUC 0.9999; without the
# refinement (the defaults) 0.101 / 0.045 / 0.087 / 0.9997. The bounds are the targets.
# The defaults do not meet them: the refinement is off by default (it costs clustered
# anomalies, docs/benchmarks.md), and so is scoring with the final network alone (the default
# averages in an earlier snapshot), so these tests fit with the refinement on, one network.
D10, K2 = ppca_benchmark.D, ppca_benchmark.K


@pytest.fixture(scope="module")
def refined_fit():
    data = ppca_benchmark.ppca_data(0)  # the benchmark's draws, so the two measure one thing
    x_train, x_dirty, outlier = data["x_train"], data["x_dirty"], data["is_outlier"]
    x_test, exact = data["x_test"], data["exact"]
    exact_settings = {"latent_dim": K2, "refine_cutoff": 3.0, "snapshot_fraction": None}
    clean = VAEDetector(**exact_settings).fit(x_train)
    dirty = VAEDetector(**exact_settings).fit(x_dirty)
    return clean, dirty, outlier, x_dirty, x_test, exact


@pytest.mark.slow
def test_refined_the_elbo_is_within_002_nats_per_dim_of_exact(refined_fit):
    clean, _, _, _, x, exact = refined_fit
    gap = (exact.mean() + clean.anomaly_score(x, n_samples=1024).mean()) / D10
    assert 0 < gap < 0.02, f"ELBO {gap:.4f} nats/dim below the exact log p(x) (target 0.02)"


@pytest.mark.slow
def test_refined_the_iwae_bound_is_within_0008_nats_per_dim(refined_fit):
    clean, _, _, _, x, exact = refined_fit
    gap = (exact.mean() - clean.log_likelihood(x, k=200).mean()) / D10
    assert 0 < gap < 0.008, f"IWAE(200) {gap:.4f} nats/dim below exact (target 0.008)"


@pytest.mark.slow
def test_refined_5pct_outliers_neither_bend_the_fit_nor_hide(refined_fit):
    from sklearn.metrics import roc_auc_score

    _, dirty, outlier, x_dirty, x, exact = refined_fit
    gap = (exact.mean() + dirty.anomaly_score(x, n_samples=1024).mean()) / D10
    assert gap < 0.05, f"with 5% outliers in training the ELBO is {gap:.4f} nats/dim off"
    auc = roc_auc_score(outlier, dirty.anomaly_score(x_dirty))
    assert auc >= 0.99, f"the training outliers are found at ROC-AUC {auc:.4f}"
    # The data decided how many rows stay out: about the outliers (90% of the rows are
    # training rows, 10% validation), not a fixed 30%.
    assert 0.8 * 0.9 * outlier.sum() <= dirty.n_left_out_ < 0.15 * len(x_dirty)
