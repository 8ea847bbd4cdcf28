"""The snapshot member (``snapshot_fraction``): two networks of one training run, one score.

A row's score is the mean of the members' negative ELBOs, so everything built on the score
(contributions per column, the KL, the IWAE bound, saving and loading, batch-size
invariance) must hold for the mean exactly as for one network.
"""

import json

import numpy as np
import pytest

from vae_core import VAEDetector
from vae_core.network.train import _Snapshots


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(600, 5)) @ rng.normal(size=(5, 5)) + rng.normal(size=5)
    return x[:500], x[500:]


@pytest.fixture(scope="module")
def fitted(data):
    train, _ = data
    return VAEDetector(epochs=30, hidden_dims=(16,), latent_dim=2, random_state=0).fit(train)


def _alone(det, member) -> VAEDetector:
    """The same fitted detector scoring with one member only."""
    import copy

    one = copy.copy(det)
    one.members_ = [member]
    return one


def test_two_members_the_snapshot_at_half_the_best_epoch(fitted):
    assert len(fitted.members_) == 2 and fitted.members_[0] is fitted.model_
    assert fitted.snapshot_epoch_ == max(0, round(0.5 * (fitted.best_epoch_ + 1)) - 1)
    assert fitted.snapshot_epoch_ < fitted.best_epoch_  # an earlier network, not a copy
    first = dict(fitted.members_[0].named_parameters())
    differs = [
        not np.array_equal(p.detach().numpy(), first[n].detach().numpy())
        for n, p in fitted.members_[1].named_parameters()
    ]
    assert any(differs)


def test_the_score_is_the_mean_of_the_members_negative_elbos(fitted, data):
    _, test = data
    both = fitted.anomaly_score(test)
    each = [_alone(fitted, m).anomaly_score(test) for m in fitted.members_]
    np.testing.assert_allclose(both, np.mean(each, axis=0), rtol=1e-10)
    assert not np.allclose(each[0], each[1])  # two different models, really averaged
    iwae = fitted.log_likelihood(test, k=16)
    iwae_each = [_alone(fitted, m).log_likelihood(test, k=16) for m in fitted.members_]
    np.testing.assert_allclose(iwae, np.mean(iwae_each, axis=0), rtol=1e-10)


def test_columns_and_kl_add_up_to_the_mean_score(fitted, data):
    _, test = data
    score, by_column = fitted.score_with_contributions(test)
    assert np.array_equal(score, fitted.anomaly_score(test))
    total = by_column.to_numpy().sum(1) + fitted.kl_divergence(test)
    np.testing.assert_allclose(total, score, rtol=1e-10)


def test_a_row_scores_the_same_in_any_batch(fitted, data):
    _, test = data
    whole = fitted.anomaly_score(test)
    assert np.array_equal(fitted.anomaly_score(test[:3]), whole[:3])
    assert np.array_equal(fitted.anomaly_score(test[37:41]), whole[37:41])


def test_saved_and_loaded_both_members_score_the_same(fitted, data, tmp_path):
    _, test = data
    fitted.save(tmp_path / "m")
    back = VAEDetector.load(tmp_path / "m")
    assert len(back.members_) == 2 and back.snapshot_epoch_ == fitted.snapshot_epoch_
    assert np.array_equal(back.anomaly_score(test), fitted.anomaly_score(test))


def test_none_is_one_network(data):
    train, _ = data
    det = VAEDetector(
        epochs=10, hidden_dims=(16,), latent_dim=2, random_state=0, snapshot_fraction=None
    ).fit(train)
    assert det.members_ == [det.model_] and det.snapshot_epoch_ is None


def test_a_model_saved_before_snapshots_loads_as_one_network(data, tmp_path):
    """Its model.json has no snapshot_fraction and its weights no member: one network, and
    the parameter reads None (what it was fitted with), not today's default."""
    train, test = data
    det = VAEDetector(
        epochs=5, hidden_dims=(16,), latent_dim=2, random_state=0, snapshot_fraction=None
    ).fit(train)
    det.save(tmp_path / "old")
    meta_path = tmp_path / "old" / "model.json"
    meta = json.loads(meta_path.read_text())
    del meta["params"]["snapshot_fraction"], meta["state"]["snapshot_epoch_"]
    meta_path.write_text(json.dumps(meta))
    back = VAEDetector.load(tmp_path / "old")
    assert back.snapshot_fraction is None and len(back.members_) == 1
    assert back.snapshot_epoch_ is None
    assert np.array_equal(back.anomaly_score(test), det.anomaly_score(test))


@pytest.mark.parametrize("bad", [0.0, 1.0, 1.5, -0.2])
def test_a_fraction_outside_0_1_is_refused_by_name(data, bad):
    with pytest.raises(ValueError, match="snapshot_fraction"):
        VAEDetector(snapshot_fraction=bad).fit(data[0])


def test_old_weights_are_dropped_as_the_best_epoch_moves_on():
    """Memory holds the epochs a snapshot may still come from, not the whole run."""
    import torch

    snaps, net = _Snapshots(0.5), torch.nn.Linear(2, 2)
    for epoch in range(40):
        snaps.after_epoch(epoch, net, best=epoch)  # improving every epoch
    assert min(snaps.states) == round(0.5 * 40) - 1 and len(snaps.states) <= 21
    assert snaps.chosen(39)[0] == 19
    assert _Snapshots(None).chosen(10) == (None, None)
