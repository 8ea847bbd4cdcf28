"""The scikit-learn outlier contract, determinism, persistence and mixed-type tables."""

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from vae_core import VAEDetector


def test_fit_returns_self_and_sets_fitted_state(mixed_data):
    det = VAEDetector(epochs=2, hidden_dims=(8,), latent_dim=2)
    assert det.fit(mixed_data) is det
    assert det.n_features_in_ == mixed_data.shape[1]
    assert list(det.feature_names_in_) == list(mixed_data.columns)
    assert det.offset_ == -det.threshold_
    assert len(det.history_) == 2


def test_init_only_stores_arguments_and_clone_works():
    det = VAEDetector(latent_dim=3, hidden_dims=(5, 4), contamination=0.2)
    cloned = clone(det)
    assert cloned.get_params() == det.get_params()
    assert not hasattr(cloned, "model_")


def test_contract_identities(fitted_mixed, mixed_data):
    det = fitted_mixed
    s = det.score_samples(mixed_data)
    np.testing.assert_array_equal(s, -det.anomaly_score(mixed_data))
    np.testing.assert_array_equal(det.decision_function(mixed_data), s - det.offset_)
    pred = det.predict(mixed_data)
    assert set(np.unique(pred)) <= {-1, 1}
    np.testing.assert_array_equal(pred == -1, det.anomaly_score(mixed_data) > det.threshold_)
    # The threshold comes from contamination: that share of training rows lies above it.
    assert abs((pred == -1).mean() - det.contamination) < 0.02


def test_tie_rule_a_score_equal_to_the_threshold_is_normal(fitted_mixed, mixed_data):
    det = clone(fitted_mixed)
    det.__dict__.update({k: v for k, v in fitted_mixed.__dict__.items() if k.endswith("_")})
    scores = det.anomaly_score(mixed_data)
    det.set_threshold(scores[7])
    assert det.decision_function(mixed_data)[7] == 0.0
    assert det.predict(mixed_data)[7] == 1
    det.set_threshold(np.nextafter(scores[7], -np.inf))
    assert det.predict(mixed_data)[7] == -1


def test_outliers_score_above_inliers(fitted_mixed, mixed_data):
    odd = mixed_data.head(20).copy()
    odd["temperature"] = odd["temperature"] + 15  # 5 sd off, and breaks its link to pressure
    normal = fitted_mixed.anomaly_score(mixed_data.head(20))
    assert np.all(fitted_mixed.anomaly_score(odd) > normal)


def test_scores_are_deterministic_and_batch_size_independent(fitted_mixed, mixed_data):
    full = fitted_mixed.anomaly_score(mixed_data)
    np.testing.assert_array_equal(full, fitted_mixed.anomaly_score(mixed_data))
    one_by_one = np.concatenate(
        [fitted_mixed.anomaly_score(mixed_data.iloc[i : i + 1]) for i in range(0, 40)]
    )
    np.testing.assert_array_equal(one_by_one, full[:40])
    chunks = np.concatenate(
        [fitted_mixed.anomaly_score(mixed_data.iloc[i : i + 7]) for i in range(0, 600, 7)]
    )
    np.testing.assert_array_equal(chunks, full)
    ll = fitted_mixed.log_likelihood(mixed_data, k=16)
    np.testing.assert_array_equal(ll[5:9], fitted_mixed.log_likelihood(mixed_data[5:9], k=16))


def test_a_table_preprocessed_in_blocks_scores_as_one_block(fitted_mixed, mixed_data, monkeypatch):
    """Scoring preprocesses a large table a block of rows at a time (bounded memory); the
    scores and contributions are bit-identical to one block, for a DataFrame and an array."""
    import vae_core.data.preprocess as preprocess
    import vae_core.estimator.detector as detector

    whole = fitted_mixed.anomaly_score(mixed_data)
    _, whole_terms = fitted_mixed.score_with_contributions(mixed_data)
    monkeypatch.setattr(preprocess, "_TABLE_BLOCK", 1)  # one padded chunk per block
    np.testing.assert_array_equal(fitted_mixed.anomaly_score(mixed_data), whole)
    _, terms = fitted_mixed.score_with_contributions(mixed_data)
    pd.testing.assert_frame_equal(terms, whole_terms)
    numeric = mixed_data.select_dtypes("number")
    det = detector.VAEDetector(epochs=2, hidden_dims=(8,), latent_dim=2).fit(numeric.to_numpy())
    blocked = det.anomaly_score(numeric.to_numpy())
    monkeypatch.setattr(preprocess, "_TABLE_BLOCK", 1 << 16)
    np.testing.assert_array_equal(det.anomaly_score(numeric.to_numpy()), blocked)


def test_fitting_twice_with_the_same_seed_gives_identical_scores(mixed_data):
    a = VAEDetector(epochs=3, hidden_dims=(8,), latent_dim=2, random_state=5).fit(mixed_data)
    b = VAEDetector(epochs=3, hidden_dims=(8,), latent_dim=2, random_state=5).fit(mixed_data)
    np.testing.assert_array_equal(a.anomaly_score(mixed_data), b.anomaly_score(mixed_data))


def test_save_load_round_trip_is_bit_identical(fitted_mixed, mixed_data, tmp_path):
    fitted_mixed.save(tmp_path / "model")
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["model.json", "weights.pt"]
    meta = json.loads((tmp_path / "model" / "model.json").read_text())
    assert meta["state"]["threshold_"] == fitted_mixed.threshold_
    loaded = VAEDetector.load(tmp_path / "model")
    for method in ("anomaly_score", "predict", "kl_divergence"):
        np.testing.assert_array_equal(
            getattr(loaded, method)(mixed_data), getattr(fitted_mixed, method)(mixed_data)
        )
    pd.testing.assert_frame_equal(
        loaded.feature_contributions(mixed_data), fitted_mixed.feature_contributions(mixed_data)
    )
    assert loaded.get_params() == fitted_mixed.get_params()


def test_weights_file_holds_tensors_only(fitted_mixed, tmp_path):
    import torch

    fitted_mixed.save(tmp_path)
    tensors = torch.load(tmp_path / "weights.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in tensors.values())


def test_feature_contributions_add_up_to_the_reconstruction_nll(fitted_mixed, mixed_data):
    contrib = fitted_mixed.feature_contributions(mixed_data)
    assert list(contrib.columns) == list(mixed_data.columns)
    recon = fitted_mixed.anomaly_score(mixed_data) - fitted_mixed.kl_divergence(mixed_data)
    np.testing.assert_allclose(contrib.sum(axis=1).to_numpy(), recon, rtol=1e-6, atol=1e-4)


def test_contributions_point_at_the_broken_column(fitted_mixed, mixed_data):
    odd = mixed_data.head(10).copy()
    odd["pressure"] = odd["pressure"] + 80
    contrib = fitted_mixed.feature_contributions(odd)
    assert (contrib.idxmax(axis=1) == "pressure").all()


def test_unknown_category_and_missing_values_are_scored(fitted_mixed, mixed_data):
    rows = mixed_data.head(5).copy()
    rows.loc[rows.index[0], "site"] = "atlantis"  # never seen at fit
    rows.loc[rows.index[1], "load"] = np.nan  # seen missing at fit: imputed + indicator
    scores = fitted_mixed.anomaly_score(rows)
    assert np.isfinite(scores).all()
    base = fitted_mixed.anomaly_score(mixed_data.head(1))[0]
    assert scores[0] > base  # an unseen category is improbable


def test_sample_generates_rows_in_the_original_space(fitted_mixed, mixed_data):
    drawn = fitted_mixed.sample(500, random_state=1)
    assert list(drawn.columns) == list(mixed_data.columns)
    assert set(drawn["site"]) <= {"north", "south", "east"}
    assert abs(drawn["temperature"].mean() - mixed_data["temperature"].mean()) < 1.0
    # The learnt correlation survives generation.
    both = drawn[["temperature", "pressure"]].dropna()
    assert np.corrcoef(both.T)[0, 1] > 0.5  # independent draws would give about 0
    pd.testing.assert_frame_equal(drawn, fitted_mixed.sample(500, random_state=1))


def test_works_inside_a_pipeline(mixed_data):
    numeric = mixed_data[["temperature", "pressure"]].to_numpy()
    pipe = make_pipeline(
        FunctionTransformer(), VAEDetector(epochs=2, hidden_dims=(8,), latent_dim=2)
    )
    pipe.fit(numeric)
    assert pipe.predict(numeric).shape == (len(numeric),)
    assert pipe.score_samples(numeric).shape == (len(numeric),)


def test_numpy_input_gets_generated_names():
    X = np.random.default_rng(0).normal(size=(50, 3))
    det = VAEDetector(epochs=2, hidden_dims=(8,), latent_dim=2).fit(X)
    assert det.n_features_in_ == 3
    assert not hasattr(det, "feature_names_in_")
    assert list(det.feature_contributions(X).columns) == ["x0", "x1", "x2"]


def test_bernoulli_likelihood_on_binary_data():
    rng = np.random.default_rng(0)
    X = (rng.random((200, 6)) < np.array([0.1, 0.9, 0.5, 0.2, 0.8, 0.5])).astype(float)
    det = VAEDetector(likelihood="bernoulli", epochs=5, hidden_dims=(8,), latent_dim=2).fit(X)
    assert det.config_.layout.n_bernoulli == 6 and det.config_.layout.n_gaussian == 0
    assert np.isfinite(det.anomaly_score(X)).all()
    # Nats of a probability mass: -log p(x) >= 0 up to the ELBO's slack, never negative.
    assert (det.anomaly_score(X) > 0).all()
    with pytest.raises(ValueError, match="values in \\[0, 1\\]"):
        VAEDetector(likelihood="bernoulli", epochs=1).fit(X * 3)


def test_convolutional_vae_on_small_images():
    from sklearn.datasets import load_digits

    images = (load_digits().images * 16).astype(np.uint8)  # (1797, 8, 8), values 0..255
    det = VAEDetector(architecture="conv", hidden_dims=(8, 16), latent_dim=4, epochs=2)
    det.fit(images[:300])
    scores = det.anomaly_score(images[300:340])
    assert scores.shape == (40,) and np.isfinite(scores).all()
    assert det.sample(3).shape == (3, 1, 8, 8)


def test_one_pass_scores_and_contributions_equal_the_separate_methods(fitted_mixed, mixed_data):
    scores, contrib = fitted_mixed.score_with_contributions(mixed_data)
    np.testing.assert_array_equal(scores, fitted_mixed.anomaly_score(mixed_data))
    pd.testing.assert_frame_equal(contrib, fitted_mixed.feature_contributions(mixed_data))


def test_parameters_are_keyword_only_and_documented():
    """scikit-learn's style: keyword-only arguments, each documented with its type and
    default, and an Attributes section naming every fitted attribute a fit sets."""
    import ast
    import inspect
    import re

    with pytest.raises(TypeError):
        VAEDetector(8)
    params = inspect.signature(VAEDetector.__init__).parameters
    doc = inspect.getdoc(VAEDetector)
    documented, attributes = doc.split("Attributes\n----------")
    for name, param in list(params.items())[1:]:
        assert param.kind is inspect.Parameter.KEYWORD_ONLY, name
        line = re.search(rf"^{name} : .*default=(.+)$", documented, re.MULTILINE)
        assert line, f"{name}: its type and default are not documented"
        stated = ast.literal_eval(line.group(1))
        assert stated == param.default, f"{name}: documented {stated!r}, is {param.default!r}"
    det = VAEDetector(epochs=1, hidden_dims=(4,), latent_dim=2).fit(
        pd.DataFrame({"a": np.arange(20.0), "b": np.arange(20.0) % 3})
    )
    fitted = [k for k in vars(det) if k.endswith("_") and not k.startswith("_")]
    for name in fitted:
        assert re.search(rf"^{name} : ", attributes, re.MULTILINE), f"{name}: not in Attributes"
