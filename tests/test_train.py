"""The training loop: callbacks, early stopping, KL warm-up, best-epoch restore."""

import numpy as np
import pytest
import torch

from vae_core import VAEDetector
from vae_core.network.train import StopTraining, kl_weight


def data(n=300, seed=0):
    rng = np.random.default_rng(seed)
    t = rng.normal(size=(n, 1))
    return np.hstack([t, 2 * t, -t]) + rng.normal(0, 0.1, (n, 3))


def test_callbacks_see_every_epoch_and_can_stop_training():
    seen = []

    def stop_at_three(log):
        seen.append(log.epoch)
        if log.epoch == 2:
            raise StopTraining

    det = VAEDetector(epochs=50, hidden_dims=(8,), latent_dim=2).fit(
        data(), callbacks=[stop_at_three]
    )
    assert seen == [0, 1, 2]
    assert len(det.history_) == 3


def test_early_stopping_restores_the_best_epoch():
    det = VAEDetector(epochs=400, patience=3, hidden_dims=(8,), latent_dim=2, lr=3e-3)
    det.fit(data())
    vals = [h["val_loss"] for h in det.history_]
    assert len(vals) < 400  # it stopped
    best = vals[det.best_epoch_]
    # The kept epoch is the minimum, up to the relative min_delta that counts as progress.
    assert best - min(vals) <= 1e-4 * abs(best)
    assert len(vals) - 1 - det.best_epoch_ == 3  # exactly `patience` epochs without progress


def test_kl_warm_up_weights_rise_linearly_to_one():
    assert [kl_weight(e, 4) for e in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert kl_weight(0, 0) == 1.0
    det = VAEDetector(epochs=5, kl_warmup_epochs=4, hidden_dims=(8,), latent_dim=2).fit(data())
    fit = [h["beta"] for h in det.history_ if h["phase"] == "fit"]
    assert fit == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert all(h["beta"] == 1.0 for h in det.history_ if h["phase"] == "refine")
    assert det.best_epoch_ >= 3  # only fully weighted epochs can be kept


def test_training_loss_decreases():
    det = VAEDetector(epochs=30, hidden_dims=(16,), latent_dim=2).fit(data())
    losses = [h["train_loss"] for h in det.history_]
    assert losses[-1] < losses[0] - 0.3


def test_training_does_not_touch_the_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    VAEDetector(epochs=2, hidden_dims=(8,), latent_dim=2).fit(data())
    assert torch.rand(1) == expected


@pytest.mark.parametrize("device", ["cpu"])
def test_device_option(device):
    det = VAEDetector(epochs=1, hidden_dims=(8,), latent_dim=2, device=device).fit(data())
    assert next(det.model_.parameters()).device.type == device


# ---- the refinement after the trimmed fit (TrainConfig.refine_cutoff) ---------------------
def _with_far_rows(n=600, far=30, seed=0):
    """``data`` plus ``far`` rows far from the line the others lie on, last."""
    rng = np.random.default_rng(seed)
    return np.vstack([data(n, seed), rng.normal(0, 1, (far, 3)) + np.array([6.0, -6.0, 6.0])])


def test_the_refinement_leaves_out_the_rows_the_trimmed_model_finds_improbable():
    x = _with_far_rows()
    det = VAEDetector(epochs=60, hidden_dims=(16,), latent_dim=2, refine_cutoff=3.0).fit(x)
    phases = [h["phase"] for h in det.history_]
    assert phases[0] == "fit" and "refine" in phases
    assert phases == sorted(phases)  # the fit, then the refinement
    # Hampel's rule on the trimmed model's -ELBO left out at least the far rows (27 or so of
    # the 30 are training rows, the rest validation), and fewer than the trimmed fit's 30%.
    assert 20 <= det.n_left_out_ < 0.3 * len(x)
    scores = det.anomaly_score(x)
    assert det.loss_cutoff_ is not None
    assert np.median(scores[-30:]) > np.quantile(scores[:-30], 0.99)


def test_by_default_there_is_no_refinement():
    det = VAEDetector(epochs=20, hidden_dims=(8,), latent_dim=2).fit(data())
    assert {h["phase"] for h in det.history_} == {"fit"}
    assert det.loss_cutoff_ is None and det.n_left_out_ is None


def test_the_refinement_is_recorded_with_the_saved_model(tmp_path):
    det = VAEDetector(epochs=20, hidden_dims=(8,), latent_dim=2, refine_cutoff=3.0)
    det.fit(_with_far_rows(200, 10))
    det.save(tmp_path / "m")
    back = VAEDetector.load(tmp_path / "m")
    assert (back.loss_cutoff_, back.n_left_out_) == (det.loss_cutoff_, det.n_left_out_)
    np.testing.assert_array_equal(back.anomaly_score(data()), det.anomaly_score(data()))
