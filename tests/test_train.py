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
    assert [h["beta"] for h in det.history_] == [0.25, 0.5, 0.75, 1.0, 1.0]
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
