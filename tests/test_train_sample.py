"""Training on tables larger than memory: ``data.max_train_rows`` reads a fixed uniform
sample of the table, streamed a chunk at a time (``ingest.read_table_sample``)."""

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vae_core.data import ingest
from vae_core.data.ingest import load_table, read_table, read_table_sample, table_rows
from vae_core.foundations.config import PipelineConfig


def table(n: int) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {"record_id": [f"r{i}" for i in range(n)], "x": rng.normal(size=n), "pos": np.arange(n)}
    )


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(ingest, "SAMPLE_CHUNK_ROWS", 700)  # many chunks on a small file


def test_a_table_over_the_bound_is_a_uniform_sample_in_file_order(tmp_path, small_chunks):
    df = table(10_000)
    pq.write_table(pa.Table.from_pandas(df), tmp_path / "t.parquet", row_group_size=1_000)
    sample = read_table_sample(tmp_path / "t.parquet", 2_000)
    assert len(sample) == 2_000
    assert sample["pos"].is_monotonic_increasing and sample["pos"].is_unique
    assert list(sample.index) == list(sample["pos"])  # the index is the place in the file
    # uniform: each tenth of the file holds about a tenth of the sample (binomial sd ~ 13)
    per_tenth = np.bincount(sample["pos"].to_numpy() // 1_000, minlength=10)
    assert per_tenth.min() > 200 - 60 and per_tenth.max() < 200 + 60, per_tenth
    again = read_table_sample(tmp_path / "t.parquet", 2_000)
    pd.testing.assert_frame_equal(sample, again)  # the same file, the same sample


def test_csv_parquet_and_a_folder_of_parts_give_the_same_sample(tmp_path, small_chunks):
    df = table(5_000)
    df.to_csv(tmp_path / "t.csv", index=False)
    pq.write_table(pa.Table.from_pandas(df), tmp_path / "t.parquet")
    (tmp_path / "parts").mkdir()
    for i in range(5):
        df.iloc[i * 1_000 : (i + 1) * 1_000].to_parquet(tmp_path / "parts" / f"p{i}.parquet")
    assert table_rows(tmp_path / "t.csv") == table_rows(tmp_path / "t.parquet") == 5_000
    assert table_rows(tmp_path / "parts") == 5_000
    samples = [read_table_sample(tmp_path / name, 777) for name in ("t.csv", "t.parquet", "parts")]
    for other in samples[1:]:
        assert list(other["pos"]) == list(samples[0]["pos"])
        np.testing.assert_array_equal(other["x"], samples[0]["x"])


def test_a_table_within_the_bound_is_read_whole(tmp_path):
    df = table(500)
    df.to_csv(tmp_path / "t.csv", index=False)
    pd.testing.assert_frame_equal(
        read_table_sample(tmp_path / "t.csv", 500), read_table(tmp_path / "t.csv")
    )


def test_the_sample_keeps_the_readers_checks(tmp_path, small_chunks):
    (tmp_path / "dup.csv").write_text("a,b,a\n" + "1,2,3\n" * 2_000)
    with pytest.raises(ValueError, match=r"dup\.csv"):
        read_table_sample(tmp_path / "dup.csv", 100)
    (tmp_path / "parts").mkdir()
    table(1_000).to_parquet(tmp_path / "parts" / "a.parquet")
    table(1_000).drop(columns="x").to_parquet(tmp_path / "parts" / "b.parquet")
    with pytest.raises(ValueError, match=r"b\.parquet.*columns differ"):
        read_table_sample(tmp_path / "parts", 100)
    with pytest.raises(ValueError, match="positive"):
        read_table_sample(tmp_path / "dup.csv", 0)


def test_load_table_applies_max_train_rows(tmp_path):
    table(3_000).to_parquet(tmp_path / "t.parquet")
    data = PipelineConfig.model_validate(
        {"data": {"max_train_rows": 1_000, "label_column": None}}
    ).data
    loaded = load_table(tmp_path / "t.parquet", data)
    assert len(loaded.features) == 1_000 and list(loaded.ids.columns) == ["record_id"]
    unbounded = data.model_copy(update={"max_train_rows": None})
    assert len(load_table(tmp_path / "t.parquet", unbounded).features) == 3_000


def test_sample_positions_are_distinct_sorted_uniform_and_fixed():
    from vae_core.data.ingest import sample_positions

    picked = sample_positions(3_000_000, 30_000, block=100_000)
    assert len(picked) == 30_000 and len(np.unique(picked)) == 30_000
    assert (np.diff(picked) > 0).all() and picked[0] >= 0 and picked[-1] < 3_000_000
    per_tenth = np.bincount(picked // 300_000, minlength=10)  # binomial sd ~ 52
    assert per_tenth.min() > 3_000 - 250 and per_tenth.max() < 3_000 + 250, per_tenth
    np.testing.assert_array_equal(picked, sample_positions(3_000_000, 30_000, block=100_000))
