"""Every user mistake gets a ValueError whose message names the problem, never a torch trace."""

import copy

import numpy as np
import pandas as pd
import pytest

from vae_core import VAEDetector

FAST = dict(epochs=1, hidden_dims=(8,), latent_dim=2)


def test_empty_frame():
    with pytest.raises(ValueError, match="at least 10 rows"):
        VAEDetector(**FAST).fit(pd.DataFrame({"a": []}))


def test_single_row():
    with pytest.raises(ValueError, match="at least 10 rows to fit, got 1"):
        VAEDetector(**FAST).fit(pd.DataFrame({"a": [1.0], "b": [2.0]}))


def test_no_columns():
    with pytest.raises(ValueError, match="no feature columns"):
        VAEDetector(**FAST).fit(pd.DataFrame(index=range(20)))


def test_all_nan_column_is_named():
    df = pd.DataFrame({"a": np.arange(20.0), "empty": np.nan})
    with pytest.raises(ValueError, match="'empty' is entirely missing"):
        VAEDetector(**FAST).fit(df)


def test_infinite_values_name_column_and_rows():
    df = pd.DataFrame({"a": np.arange(20.0), "b": np.arange(20.0)})
    df.loc[3, "b"] = np.inf
    with pytest.raises(ValueError, match=r"column 'b' has infinite values at row\(s\) 3"):
        VAEDetector(**FAST).fit(df)


def test_constant_column_is_left_out_with_a_warning(mixed_data):
    df = mixed_data.assign(unit=1.0)
    with pytest.warns(UserWarning, match="'unit' is constant"):
        det = VAEDetector(**FAST).fit(df)
    assert "unit" not in det.feature_contributions(df.head()).columns
    assert np.isfinite(det.anomaly_score(df.head())).all()


def test_every_column_constant():
    with pytest.raises(ValueError, match="every column is constant"), pytest.warns(UserWarning):
        VAEDetector(**FAST).fit(pd.DataFrame({"a": np.ones(20)}))


@pytest.fixture(scope="module")
def tiny(mixed_data):
    return VAEDetector(**FAST).fit(mixed_data)


def test_missing_column_at_scoring(tiny, mixed_data):
    with pytest.raises(ValueError, match=r"missing column.*'pressure'"):
        tiny.anomaly_score(mixed_data.drop(columns=["pressure"]))


def test_wrong_number_of_columns_for_an_array(tiny, mixed_data):
    with pytest.raises(ValueError, match="expected 5 columns as at fit"):
        tiny.anomaly_score(np.zeros((3, 4)))


def test_mistyped_column_names_column_rows_and_values(tiny, mixed_data):
    bad = mixed_data.head(6).astype({"temperature": object})
    bad.loc[bad.index[4], "temperature"] = "hot"
    with pytest.raises(ValueError, match=r"'temperature' must be numeric.*'hot'.*row\(s\) 4"):
        tiny.anomaly_score(bad)


def test_numbers_as_strings_are_accepted(tiny, mixed_data):
    as_text = mixed_data.head(4).astype({"temperature": str})
    np.testing.assert_allclose(
        tiny.anomaly_score(as_text), tiny.anomaly_score(mixed_data.head(4)), rtol=1e-6
    )


def test_nan_where_none_was_seen_at_fit_is_refused_when_asked(tiny, mixed_data):
    bad = mixed_data.head(6).copy()
    bad.loc[bad.index[2], "pressure"] = np.nan
    refusing = copy.deepcopy(tiny).set_params(missing="refuse")
    with pytest.raises(ValueError, match=r"'pressure' had no missing values at fit.*row\(s\) 2"):
        refusing.anomaly_score(bad)
    assert np.isfinite(tiny.anomaly_score(bad)).all()  # the default: marginalised


def test_empty_frame_at_scoring(tiny, mixed_data):
    with pytest.raises(ValueError, match="no rows"):
        tiny.anomaly_score(mixed_data.head(0))


def test_bad_parameters():
    X = np.random.default_rng(0).normal(size=(30, 2))
    with pytest.raises(ValueError, match="contamination"):
        VAEDetector(contamination=0.7).fit(X)
    with pytest.raises(ValueError, match="likelihood"):
        VAEDetector(likelihood="poisson").fit(X)
    with pytest.raises(ValueError, match="latent_dim"):
        VAEDetector(latent_dim=0).fit(X)


def test_unfitted_detector():
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        VAEDetector().anomaly_score(np.zeros((2, 2)))


@pytest.mark.parametrize(
    ("suffix", "where"), [(".csv", r"line\(s\) 5, 7"), (".parquet", r"row\(s\) 4, 6")]
)
def test_a_bad_label_is_named_by_its_line_or_row_in_the_file(tmp_path, suffix, where):
    """Data rows 3 and 5 (0-based) are lines 5 and 7 of a CSV (the header is line 1), as a
    spreadsheet or editor shows them, and rows 4 and 6 of a Parquet file."""
    from vae_core.data.ingest import read_table, split_columns

    frame = pd.DataFrame({"a": np.arange(8.0), "y": [0, 0, 0, 2, 0, "x", 0, 1]})
    path = tmp_path / f"t{suffix}"
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.astype({"y": str}).to_parquet(path, index=False)
    with pytest.raises(ValueError, match=rf"t\{suffix}: label column 'y' .* at {where}$"):
        split_columns(read_table(path), "y", source=str(path))


@pytest.mark.parametrize(
    ("suffix", "where"), [(".csv", r"line\(s\) 9"), (".parquet", r"row\(s\) 8")]
)
def test_text_among_numbers_is_named_by_its_line_not_read_as_a_category(tmp_path, suffix, where):
    """A numeric column with a typo ('abc' in data row 7) would be read as a category with a
    level per number; training refuses it naming the file, column, value and line (row)."""
    from vae_core.data.ingest import load_table
    from vae_core.foundations.config import PipelineConfig

    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.normal(size=40).round(3).astype(str), "b": rng.normal(size=40)})
    frame.loc[7, "a"] = "abc"
    path = tmp_path / f"t{suffix}"
    frame.to_csv(path, index=False) if suffix == ".csv" else frame.to_parquet(path)
    data = PipelineConfig.model_validate({"data": {"label_column": None, "id_columns": []}}).data
    with pytest.raises(
        ValueError, match=rf"column 'a' holds numbers but also text: 'abc' at {where}"
    ):
        load_table(path, data)
    with pytest.raises(
        ValueError, match=r"column 'a' holds numbers but also text: 'abc' at row\(s\) 7"
    ):
        VAEDetector(**FAST).fit(frame)  # the library names the DataFrame's index label


def test_an_infinite_value_is_named_by_its_line(tmp_path):
    from vae_core.data.ingest import load_table
    from vae_core.foundations.config import PipelineConfig

    frame = pd.DataFrame({"a": np.arange(20.0), "b": np.ones(20)})
    frame.loc[3, "a"] = np.inf
    frame.to_csv(tmp_path / "t.csv", index=False)
    data = PipelineConfig.model_validate({"data": {"label_column": None, "id_columns": []}}).data
    with pytest.raises(ValueError, match=r"t\.csv: column 'a' has infinite values at line\(s\) 5"):
        load_table(tmp_path / "t.csv", data)


def test_categories_and_mostly_text_columns_are_still_categories():
    """Only a column that is almost all numbers (>= 95%) counts as numbers with typos: codes,
    and a column with many text values, stay categorical."""
    from vae_core.data.ingest import text_among_numbers

    assert text_among_numbers(pd.Series(["A1", "B2", "C3"] * 10)) is None
    assert text_among_numbers(pd.Series(["1", "2", "x"] * 10)) is None  # 1/3 text
    assert text_among_numbers(pd.Series(["1.5", "2", None] * 10)) is None  # all numbers
    assert text_among_numbers(pd.Series(np.arange(30.0))) is None  # a numeric dtype
    mask = text_among_numbers(pd.Series([str(i) for i in range(39)] + ["n/a"]))
    assert mask is not None and mask.tolist() == [False] * 39 + [True]
