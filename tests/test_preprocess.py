"""Preprocessing: the JSON-kept mapping equals the fitted scikit-learn ColumnTransformer."""

import json

import numpy as np
import pandas as pd
import pytest

from vae_core.data.columns import MISSING_CATEGORY, to_category
from vae_core.data.input_stats import grid_variance
from vae_core.data.preprocess import TabularPreprocessor


def test_numpy_mapping_equals_the_fitted_column_transformer(mixed_data):
    pre = TabularPreprocessor().fit(mixed_data)
    numeric = [c.name for c in pre.columns if c.kind == "numeric"]
    categorical = [c.name for c in pre.columns if c.kind == "categorical"]
    ct = pre._column_transformer(numeric, categorical)
    data = (
        mixed_data[numeric]
        .astype("float64")
        .assign(**{c: to_category(mixed_data[c]) for c in categorical})
    )
    reference = ct.fit_transform(data)
    ours = pre.transform(mixed_data)
    # Ours adds one "unseen category" slot per categorical block; drop those to compare.
    keep = np.ones(ours.shape[1], dtype=bool)
    pos = len(numeric) + sum(c.missing_indicator for c in pre.columns)
    for c in pre.columns:
        if c.kind == "categorical":
            pos += len(c.categories)
            keep[pos] = False
            pos += 1
    np.testing.assert_allclose(ours[:, keep], reference, rtol=1e-6, atol=1e-6)


def test_state_round_trips_through_json(mixed_data):
    pre = TabularPreprocessor().fit(mixed_data)
    again = TabularPreprocessor.from_dict(json.loads(json.dumps(pre.to_dict())))
    np.testing.assert_array_equal(again.transform(mixed_data), pre.transform(mixed_data))


def test_layout_and_log_jacobian(mixed_data):
    pre = TabularPreprocessor().fit(mixed_data)
    layout = pre.layout
    assert layout.n_gaussian == 3  # temperature, pressure, load
    assert layout.n_bernoulli == 1  # load had missing values
    assert layout.categorical_sizes == (3 + 1, 2 + 1)
    assert pre.term_columns == ["temperature", "pressure", "load", "load", "site", "mode"]
    scales = [c.scale for c in pre.columns if c.kind == "numeric"]
    np.testing.assert_allclose(pre.term_log_scale[:3], np.log(scales))
    assert (pre.term_log_scale[3:] == 0).all()


def test_missing_category_is_its_own_level():
    df = pd.DataFrame({"x": np.arange(20.0), "c": ["a", None] * 10})
    pre = TabularPreprocessor().fit(df)
    assert sorted(pre.columns[1].categories) == sorted(["a", MISSING_CATEGORY])


def test_id_like_text_column_warns():
    df = pd.DataFrame({"x": np.arange(30.0) % 7, "key": [f"k{i}" for i in range(30)]})
    with pytest.warns(UserWarning, match="'key' .* looks like an id"):
        TabularPreprocessor().fit(df)


def test_grid_variance_is_the_dequantization_variance():
    rng = np.random.default_rng(0)
    u = np.stack([rng.integers(0, 5, 200) * 0.5, rng.normal(size=200)], axis=1)
    floors = grid_variance(u.astype("float32"))
    assert floors[0] == pytest.approx(0.5**2 / 12)
    assert floors[1] < 1e-4
