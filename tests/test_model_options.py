"""The model options of issue 16: point masses and gated Gaussians, the trimmed objective, the
decoder variance kinds, robust scaling and the encoder clip, against torch.distributions and by
hand on tiny data."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch.distributions import Bernoulli, Normal

from vae_core import VAEDetector
from vae_core.data.preprocess import TabularPreprocessor
from vae_core.network.likelihood import observed_gaussians, reconstruction_nll_terms, trimmed_mean
from vae_core.network.model import VAE, DecoderOutput, FeatureLayout, VAEConfig


def test_a_gate_leaves_its_gaussian_out_and_keeps_the_indicator_probability():
    # Gaussian columns 0, 1; Bernoulli 0 gates Gaussian 1 (on the point mass), Bernoulli 1 is
    # free. Where the gate is on, p(x_1|z) is the indicator's probability alone.
    layout = FeatureLayout(n_gaussian=2, n_bernoulli=2, gates=(1, -1))
    n, L = 20, 3
    x_g, x_b = torch.randn(n, 2), torch.randint(0, 2, (n, 2)).float()
    x = torch.cat([x_g, x_b], dim=1)
    out = DecoderOutput(torch.randn(L, n, 2), torch.randn(L, n, 2), torch.randn(L, n, 2))
    terms = reconstruction_nll_terms(x, out, layout)
    gauss = -Normal(out.mean, torch.exp(0.5 * out.log_var)).log_prob(x_g)
    gauss[..., 1] = torch.where(x_b[:, 0] > 0.5, 0.0, gauss[..., 1])
    bern = -Bernoulli(logits=out.logits).log_prob(x_b)
    torch.testing.assert_close(terms, torch.cat([gauss, bern], dim=-1))
    assert observed_gaussians(x, layout)[:, 0].eq(1).all()


def test_two_gates_on_one_column_need_only_one_to_be_on():
    layout = FeatureLayout(n_gaussian=1, n_bernoulli=2, gates=(0, 0))
    x = torch.tensor([[0.3, 0.0, 0.0], [0.3, 1.0, 0.0], [0.3, 0.0, 1.0]])
    assert observed_gaussians(x, layout)[:, 0].tolist() == [1.0, 0.0, 0.0]


def test_trimmed_mean_drops_the_largest_values():
    values = torch.tensor([1.0, 2.0, 3.0, 100.0, 4.0])
    assert trimmed_mean(values, 0.0) == values.mean()
    assert trimmed_mean(values, 0.2) == 2.5  # 100 left out
    assert trimmed_mean(values, 0.99) == 1.0  # at least one row is kept


def _zero_inflated(n=400, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    t = rng.normal(size=n)
    amount = np.where(rng.random(n) < 0.6, 0.0, np.exp(1 + 0.3 * t + rng.normal(0, 0.1, n)))
    return pd.DataFrame({"amount": amount, "level": 3 * t + rng.normal(0, 0.2, n)})


def test_a_frequent_value_becomes_a_point_mass_with_an_indicator():
    frame = _zero_inflated()
    pre = TabularPreprocessor(point_mass_share=0.2).fit(frame)
    spec = {c.name: c for c in pre.columns}
    assert spec["amount"].point_mass == 0.0 and spec["level"].point_mass is None
    assert pre.layout == FeatureLayout(n_gaussian=2, n_bernoulli=1, gates=(0,))
    u = pre.transform(frame)
    np.testing.assert_array_equal(u[:, 2], (frame["amount"] == 0).to_numpy())
    assert pre.term_columns == ["amount", "level", "amount"]
    assert TabularPreprocessor.from_dict(pre.to_dict()).layout == pre.layout
    # Drawn rows with the indicator on take the point-mass value exactly.
    back = pre.inverse_transform(np.c_[u[:5, :2], np.ones(5)], np.random.default_rng(0))
    assert (back["amount"] == 0.0).all()


def test_without_point_mass_share_the_layout_is_the_old_one():
    pre = TabularPreprocessor().fit(_zero_inflated())
    assert pre.layout == FeatureLayout(n_gaussian=2)
    assert all(c.point_mass is None for c in pre.columns)


def test_scores_with_point_masses_add_up_and_rows_on_the_mass_get_no_density_reward():
    frame = _zero_inflated()
    det = VAEDetector(point_mass_share=0.2, epochs=30, random_state=0).fit(frame)
    scores, contrib = det.score_with_contributions(frame)
    np.testing.assert_array_equal(scores, det.anomaly_score(frame))
    total = contrib.sum(axis=1).to_numpy() + det.kl_divergence(frame)
    np.testing.assert_allclose(total, scores, rtol=1e-9, atol=1e-9)
    terms = det.reconstruction_terms(frame)  # amount's Gaussian term is the first
    on_mass = (frame["amount"] == 0).to_numpy()
    assert (terms[on_mass, 0] == 0).all() and (terms[~on_mass, 0] != 0).all()
    # The indicator's term is a probability: between 0 and a few nats on the mass.
    assert (terms[on_mass, 2] >= 0).all() and np.median(terms[on_mass, 2]) < 1.0
    # The log-likelihood bound and the score agree in units (nats of the data).
    assert abs(np.median(-det.log_likelihood(frame, k=16) - scores)) < 1.0


def test_a_missing_value_is_marginalised_out_of_the_gaussian():
    frame = _zero_inflated()
    frame.loc[::10, "level"] = np.nan
    det = VAEDetector(point_mass_share=0.2, epochs=5, random_state=0).fit(frame)
    assert det.config_.layout.gates == (1, 0)  # level's missing indicator, amount's mass
    terms = det.reconstruction_terms(frame)
    missing = frame["level"].isna().to_numpy()
    assert (terms[missing, 1] == 0).all() and (terms[~missing, 1] != 0).all()


@pytest.mark.parametrize(("kind", "count"), [("feature", 5), ("shared", 1)])
def test_decoder_variance_that_does_not_depend_on_z(kind, count):
    cfg = VAEConfig(FeatureLayout(n_gaussian=5), latent_dim=2, hidden_dims=(8,))
    model = VAE(VAEConfig(**{**cfg.to_dict(), "layout": cfg.layout, "decoder_variance": kind}))
    assert model.raw_variance.shape == (count,)
    out = model.decode(torch.randn(7, 2))
    assert torch.allclose(out.log_var, out.log_var[:1].expand_as(out.log_var))
    # softplus(raw) starts at 1, plus the floor
    torch.testing.assert_close(out.log_var[0], torch.full((5,), math.log(1.0 + 1e-3)))


def test_shared_variance_for_images_is_one_per_channel():
    cfg = VAEConfig(
        FeatureLayout(n_gaussian=3 * 8 * 8), latent_dim=2, hidden_dims=(4,), architecture="conv",
        image_shape=(3, 8, 8), decoder_variance="shared",
    )  # fmt: skip
    model = VAE(cfg)
    with torch.no_grad():
        model.raw_variance.copy_(torch.tensor([0.0, 1.0, 2.0]))
    var = model.decode(torch.randn(4, 2)).log_var.exp()[0].reshape(3, 8, 8)
    for c in range(3):
        assert torch.allclose(var[c], var[c, 0, 0].expand(8, 8))
    assert var[0, 0, 0] < var[1, 0, 0] < var[2, 0, 0]


def test_robust_scaling_uses_the_median_and_iqr():
    rng = np.random.default_rng(0)
    x = np.r_[rng.normal(10, 2, 990), np.full(10, 1e4)]  # 1% of huge values
    pre = TabularPreprocessor(scaling="robust").fit(pd.DataFrame({"x": x}))
    spec = pre.columns[0]
    q25, q50, q75 = np.percentile(x, [25, 50, 75])
    assert spec.mean == pytest.approx(q50) and spec.scale == pytest.approx((q75 - q25) / 1.349)
    assert 1.5 < spec.scale < 2.5  # the standard deviation would be about 315
    with pytest.raises(ValueError, match="scaling"):
        TabularPreprocessor(scaling="minmax")


def test_encoder_clip_bounds_what_the_encoder_sees_not_what_is_scored():
    layout = FeatureLayout(n_gaussian=2, n_bernoulli=1)
    torch.manual_seed(0)
    model = VAE(VAEConfig(layout, latent_dim=2, hidden_dims=(8,), encoder_clip=3.0)).eval()
    far = torch.tensor([[50.0, -40.0, 1.0]])
    at_bound = torch.tensor([[3.0, -3.0, 1.0]])
    for a, b in zip(model.encode(far), model.encode(at_bound), strict=True):
        torch.testing.assert_close(a, b)
    eps = torch.zeros(1, 1, 2)
    from vae_core.network.likelihood import negative_elbo

    assert negative_elbo(model, far, eps) > negative_elbo(model, at_bound, eps) + 100


def test_an_observed_mask_leaves_gaussian_cells_out_like_a_gate():
    layout = FeatureLayout(n_gaussian=3)
    n, L = 12, 2
    x = torch.randn(n, 3)
    out = DecoderOutput(torch.randn(L, n, 3), torch.randn(L, n, 3), torch.zeros(L, n, 0))
    observed = torch.ones(n, 3)
    observed[::3, 1] = 0.0
    terms = reconstruction_nll_terms(x, out, layout, observed)
    expected = -Normal(out.mean, torch.exp(0.5 * out.log_var)).log_prob(x) * observed
    torch.testing.assert_close(terms, expected)


def test_a_cell_missing_at_scoring_is_marginalised_and_named(fitted_mixed, mixed_data):
    # 'temperature' had no missing values at fit; 'load' had some (its own indicator).
    rows = mixed_data.iloc[:6].copy()
    rows.loc[rows.index[2], "temperature"] = np.nan
    complete = fitted_mixed.anomaly_score(mixed_data.iloc[:6])
    scores, contrib = fitted_mixed.score_with_contributions(rows)
    unchanged = np.arange(6) != 2
    np.testing.assert_array_equal(scores[unchanged], complete[unchanged])
    assert np.isfinite(scores[2]) and contrib.loc[rows.index[2], "temperature"] == 0.0
    total = contrib.sum(axis=1).to_numpy() + fitted_mixed.kl_divergence(rows)
    np.testing.assert_allclose(total, scores, rtol=1e-9, atol=1e-9)
    assert fitted_mixed.missing_columns(rows).tolist() == ["", "", "temperature", "", "", ""]
    assert np.isfinite(fitted_mixed.log_likelihood(rows, k=8)).all()
    refusing = fitted_mixed.set_params(missing="refuse")
    try:
        with pytest.raises(ValueError, match=r"column 'temperature' had no missing values"):
            refusing.anomaly_score(rows)
    finally:
        fitted_mixed.set_params(missing="marginalise")
