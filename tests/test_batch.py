"""Batch scoring: partitions, schema validation, atomic and idempotent output, drift."""

import copy

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.helpers import mixed_frame, scoring_config
from vae_core.kinds.table_input import list_partitions, read_partition
from vae_core.steps.batch import batch_identity, commit_scores, score_partition, staging_dir
from vae_core.steps.batch_report import population_stability_index


@pytest.fixture(scope="module")
def calibrated(fitted_mixed, mixed_data):
    from vae_core.foundations.calibrate import TargetFPR

    det = copy.deepcopy(fitted_mixed)  # the session fixture stays as fit left it
    return det.calibrate(mixed_data.iloc[:300], policy=TargetFPR(fpr=0.05))


def with_ids(frame):
    return frame.assign(row_id=[f"r{i}" for i in range(len(frame))])


def score_source(det, source, dest, chunk_rows=50):
    parts = list_partitions(source)
    staging = staging_dir(dest, "b")
    staged = [
        score_partition(det, p, staging, i, scoring_config(["row_id"], chunk_rows=chunk_rows))
        for i, p in enumerate(parts)
    ]
    return commit_scores(staged, dest, staging), staged


def test_partitions_of_a_file_a_folder_a_glob_and_row_groups(tmp_path, mixed_data):
    df = with_ids(mixed_data)
    df.iloc[:200].to_parquet(tmp_path / "a.parquet")
    df.iloc[200:].to_csv(tmp_path / "b.csv", index=False)
    pq.write_table(pa.Table.from_pandas(df), tmp_path / "big.pq", row_group_size=250)
    assert [p.row_group for p in list_partitions(tmp_path / "big.pq")] == [0, 1, 2]
    assert len(list_partitions(tmp_path)) == 1 + 1 + 3
    assert [file_name(p) for p in list_partitions(tmp_path / "*.csv")] == ["b.csv"]
    rows = sum(len(c) for p in list_partitions(tmp_path / "big.pq") for c in read_partition(p, 64))
    assert rows == len(df)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list_partitions(tmp_path / "nothing.parquet")


def file_name(p):
    from pathlib import Path

    return Path(p.path).name


def test_chunked_partitioned_scores_equal_in_memory_scores(calibrated, mixed_data, tmp_path):
    df = with_ids(mixed_data)
    pq.write_table(pa.Table.from_pandas(df), tmp_path / "in.parquet", row_group_size=130)
    dest, staged = score_source(calibrated, tmp_path / "in.parquet", tmp_path / "out.parquet")
    out = pd.read_parquet(dest)
    assert list(out["row_id"]) == list(df["row_id"])  # every row once, in input order
    np.testing.assert_array_equal(out["anomaly_score"], calibrated.threshold_score(mixed_data))
    assert sum(s.rows for s in staged) == len(df)
    assert not staging_dir(dest, "b").exists()


def test_rerunning_a_batch_replaces_its_output(calibrated, mixed_data, tmp_path):
    with_ids(mixed_data).to_csv(tmp_path / "in.csv", index=False)
    score_source(calibrated, tmp_path / "in.csv", tmp_path / "out.parquet")
    again, _ = score_source(calibrated, tmp_path / "in.csv", tmp_path / "out.parquet")
    assert len(pd.read_parquet(again)) == len(mixed_data)


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (
            lambda d: d.assign(pressure=d["pressure"].astype(object)).pipe(_set, "pressure", "abc"),
            r"column 'pressure': not a number at line\(s\) 252 \(values: 'abc'\)",
        ),
        (lambda d: _set(d, "temperature", np.inf), r"column 'temperature': infinite value"),
        (lambda d: d.drop(columns=["pressure"]), r"missing column 'pressure'$"),
        (lambda d: d.drop(columns=["site"]), r"missing column 'site'$"),
    ],
)
def test_bad_input_fails_before_writing_and_keeps_earlier_output(
    calibrated, mixed_data, tmp_path, corrupt, message
):
    good = with_ids(mixed_data)
    good.to_csv(tmp_path / "in.csv", index=False)
    dest, _ = score_source(calibrated, tmp_path / "in.csv", tmp_path / "out.parquet")
    before = dest.read_bytes()
    corrupt(good).to_csv(tmp_path / "in.csv", index=False)
    with pytest.raises(ValueError, match=message) as info:
        score_source(calibrated, tmp_path / "in.csv", tmp_path / "out.parquet")
    assert "in.csv" in str(info.value)
    assert dest.read_bytes() == before


def test_rows_are_named_as_in_the_file_lines_of_a_csv_rows_of_parquet(
    calibrated, mixed_data, tmp_path
):
    """Data row 250 (0-based) is line 252 of a CSV (the header is line 1) and row 251 of a
    Parquet file, also when it lies in a later row group."""
    bad = _set(with_ids(mixed_data).astype({"pressure": object}), "pressure", "abc")
    bad.to_csv(tmp_path / "in.csv", index=False)
    with pytest.raises(ValueError, match=r"in\.csv: .*\n.*not a number at line\(s\) 252 "):
        score_source(calibrated, tmp_path / "in.csv", tmp_path / "out.parquet")
    bad = bad.assign(pressure=bad["pressure"].astype(str))
    pq.write_table(pa.Table.from_pandas(bad), tmp_path / "in.parquet", row_group_size=100)
    with pytest.raises(ValueError, match=r"row group 2\).*\n.*not a number at row\(s\) 251 "):
        score_source(calibrated, tmp_path / "in.parquet", tmp_path / "out.parquet")


def test_a_renamed_column_is_reported_with_the_unexpected_name_beside_the_missing_one(
    calibrated, mixed_data, tmp_path
):
    with_ids(mixed_data).rename(columns={"pressure": "Pressure"}).to_csv(
        tmp_path / "in.csv", index=False
    )
    with pytest.raises(ValueError) as info:
        score_source(calibrated, tmp_path / "in.csv", tmp_path / "out.parquet")
    assert "missing column 'pressure'; unexpected column 'Pressure'" in str(info.value)


def test_a_mistyped_id_column_is_an_id_column_not_found_naming_it_and_the_file(
    calibrated, mixed_data, tmp_path
):
    with_ids(mixed_data).to_parquet(tmp_path / "in.parquet", index=False)
    (part,) = list_partitions(tmp_path / "in.parquet")
    with pytest.raises(ValueError) as info:
        score_partition(calibrated, part, tmp_path / "staging", 0, scoring_config(["rowid"]))
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'in.parquet'}: id column(s) 'rowid' not found")
    assert "'row_id'" in message and "schema" not in message  # the file's columns are listed


def _set(d, column, value, row=250):
    d = d.copy()
    d.loc[row, column] = value
    return d


def test_corrupt_parquet_names_the_file(tmp_path):
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(ValueError, match=r"bad\.parquet"):
        list_partitions(tmp_path / "bad.parquet")


def test_batch_identity_follows_content(tmp_path, mixed_data, calibrated):
    mixed_data.to_csv(tmp_path / "a.csv", index=False)
    first = batch_identity(calibrated, tmp_path / "a.csv")
    assert first == batch_identity(calibrated, tmp_path / "a.csv")
    mixed_data.iloc[:10].to_csv(tmp_path / "a.csv", index=False)
    assert batch_identity(calibrated, tmp_path / "a.csv") != first
    assert (
        batch_identity(calibrated, tmp_path / "a.csv", "nightly-2026-11-25") == "nightly-2026-11-25"
    )
    with pytest.raises(ValueError, match="batch id"):
        batch_identity(calibrated, tmp_path / "a.csv", "../escape")


def test_population_stability_index():
    assert population_stability_index([100] * 10) == pytest.approx(0.0)
    shifted = population_stability_index([10] * 5 + [190] * 5)
    assert shifted > 0.25
    with pytest.raises(ValueError, match="10 bin counts"):
        population_stability_index([1, 2])


def test_decile_counts_against_calibration_reference(calibrated, mixed_data, tmp_path):
    with_ids(mixed_data.iloc[:300]).to_csv(tmp_path / "cal.csv", index=False)
    _, staged = score_source(calibrated, tmp_path / "cal.csv", tmp_path / "o.parquet")
    counts = np.sum([s.decile_counts for s in staged], axis=0)
    # Scoring the calibration rows themselves reproduces the reference: no drift.
    assert population_stability_index(counts) < 0.02


def test_commit_to_csv_equals_parquet(calibrated, mixed_data, tmp_path):
    with_ids(mixed_data).to_csv(tmp_path / "in.csv", index=False)
    as_parquet, _ = score_source(calibrated, tmp_path / "in.csv", tmp_path / "out.parquet", 64)
    as_csv, _ = score_source(calibrated, tmp_path / "in.csv", tmp_path / "out.csv", 64)
    a, b = pd.read_parquet(as_parquet), pd.read_csv(as_csv)
    assert len(b) == len(a) and list(b.columns) == list(a.columns)
    np.testing.assert_allclose(b["anomaly_score"], a["anomaly_score"], rtol=1e-12)


def test_a_header_that_names_a_column_twice_is_refused_naming_it(calibrated, mixed_data, tmp_path):
    good = with_ids(mixed_data)
    good.to_csv(tmp_path / "in.csv", index=False)
    dest, _ = score_source(calibrated, tmp_path / "in.csv", tmp_path / "out.parquet")
    before = dest.read_bytes()
    text = (tmp_path / "in.csv").read_text().splitlines()
    text[0] = text[0].replace("pressure", "temperature")  # two 'temperature' columns
    (tmp_path / "in.csv").write_text("\n".join(text) + "\n")
    message = r"in\.csv: the header names a column more than once \('temperature' at columns 1, 2\)"
    with pytest.raises(ValueError, match=message):
        score_source(calibrated, tmp_path / "in.csv", tmp_path / "out.parquet")
    assert dest.read_bytes() == before
    from vae_core.data.ingest import read_table

    with pytest.raises(ValueError, match=message):
        read_table(tmp_path / "in.csv")
    table = pa.table({"a": [1.0, 2.0], "b": [3.0, 4.0]}).rename_columns(["x", "x"])
    pq.write_table(table, tmp_path / "dup.parquet")
    with pytest.raises(ValueError, match=r"dup\.parquet: .*'x' at columns 1, 2"):
        list_partitions(tmp_path / "dup.parquet")


def test_a_few_empty_cells_do_not_stop_the_batch(calibrated, mixed_data, tmp_path):
    frame = with_ids(mixed_data)
    frame.loc[[5, 250], "temperature"] = np.nan  # no missing temperature at fit
    frame.to_csv(tmp_path / "in.csv", index=False)
    dest, _ = score_source(calibrated, tmp_path / "in.csv", tmp_path / "out.parquet")
    out = pd.read_parquet(dest)
    assert len(out) == len(frame) and np.isfinite(out["anomaly_score"]).all()
    assert out.loc[[5, 250], "missing_columns"].tolist() == ["temperature", "temperature"]
    assert (out["missing_columns"].drop(index=[5, 250]) == "").all()
    refusing = copy.deepcopy(calibrated).set_params(missing="refuse")
    message = r"column 'temperature': missing value \(NaN\) where the training data had none"
    with pytest.raises(ValueError, match=message + r" at line\(s\) 7 "):
        score_source(refusing, tmp_path / "in.csv", tmp_path / "other.parquet")
    assert not (tmp_path / "other.parquet").exists()


def test_batch_csv_reading_papers_over_nothing_that_read_table_refuses(tmp_path):
    """The batch reader checks a CSV as ``ingest.read_table`` does: a first data row wider
    than the header is refused naming the line (pandas would shift every column), and in a
    one-column file an empty line is a row with a missing value, not skipped."""
    wide = tmp_path / "wide.csv"
    wide.write_text("a,b\n1,2,3\n4,5,6\n")
    with pytest.raises(ValueError, match=r"wide\.csv: line 2 has 3 fields but the header"):
        list_partitions(wide)
    one = tmp_path / "one.csv"
    one.write_text("a\n1\n\n3\n")
    (part,) = list_partitions(one)
    rows = pd.concat(read_partition(part, chunk_rows=2))
    assert rows["a"].isna().tolist() == [False, True, False]


def test_two_runs_of_one_batch_id_at_once_both_finish_with_one_whole_output(
    calibrated, mixed_data, tmp_path
):
    """Two runs of batch id "b" at once on different inputs (a retry beside a late run): the
    second waits for the first's commit (batch_lock), neither removes the other's staging
    folder, and the output is one run's whole file, never a mix. Before the lock, the second
    run's clean-up deleted the first's staged parts mid-run and both failed."""
    import threading

    from vae_core.steps.batch import staging_for

    df = with_ids(mixed_data)
    inputs = {"a": df.iloc[:400], "z": df.iloc[400:]}
    for name, part in inputs.items():
        part.to_csv(tmp_path / f"{name}.csv", index=False)
    dest = tmp_path / "out" / "b.parquet"
    dest.parent.mkdir()
    waits, errors = [], []

    def run(name):
        try:
            with staging_for(dest, "b", on_wait=lambda: waits.append(name)) as staging:
                parts = list_partitions(tmp_path / f"{name}.csv")
                cfg = scoring_config(["row_id"], chunk_rows=20)
                staged = [score_partition(calibrated, p, staging, i, cfg) for i, p in
                          enumerate(parts)]  # fmt: skip
                commit_scores(staged, dest, staging)
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(name,)) for name in inputs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert len(waits) == 1  # one of them waited for the other
    out = pd.read_parquet(dest)
    assert list(out["row_id"]) in [list(p["row_id"]) for p in inputs.values()]
    assert sorted(p.name for p in dest.parent.iterdir()) == ["b.parquet"]  # no lock, no staging


def test_the_batch_lock_outlives_a_killed_holder_and_leaves_no_file(tmp_path):
    """A holder killed with SIGKILL leaves the lock file but not the lock: the next run takes
    it at once and removes the file on release."""
    import signal
    import subprocess
    import sys
    import time

    from vae_core.foundations.atomic import exclusive

    lock = tmp_path / ".b.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from vae_core.foundations.atomic import exclusive\n"
         "with exclusive(sys.argv[1]):\n print('held', flush=True); time.sleep(600)", lock],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        waited = []
        import threading

        def take():
            with exclusive(lock, on_wait=lambda: waited.append(time.monotonic())):
                pass

        taker = threading.Thread(target=take)
        taker.start()
        taker.join(timeout=1.0)
        assert taker.is_alive() and waited, "the second holder must wait for the first"
        holder.send_signal(signal.SIGKILL)
        taker.join(timeout=30)
        assert not taker.is_alive(), "the lock of a killed holder must be free"
    finally:
        holder.kill()
        holder.wait()
    assert not lock.exists()


def test_top_contributors_are_the_stable_sorts_first_k_ties_and_non_finite_included():
    """The top columns of a row are the first k of a stable descending sort: the largest
    first, a tie to the leftmost column; rows with NaN or infinities keep the sort's order."""
    from vae_core.kinds.table_scores import top_contributors

    rng = np.random.default_rng(0)
    values = rng.integers(-3, 3, size=(400, 7)).astype(float)  # many ties
    values[:100] = rng.normal(size=(100, 7))
    values[values == 0] = -0.0  # -0.0 ties with 0.0
    names = [f"c{j}" for j in range(7)]
    for frame in (
        values,
        np.where(values > 2, np.inf, values),
        np.where(values < -2, np.nan, values),
    ):
        contrib = pd.DataFrame(frame, columns=names)
        order = np.argsort(-frame, axis=1, kind="stable")
        for k in (1, 3, 7, 9):
            top = top_contributors(contrib, k)
            for j in range(min(k, 7)):
                assert top[f"top_feature_{j + 1}"].tolist() == [names[i] for i in order[:, j]]
                np.testing.assert_array_equal(
                    top[f"top_feature_{j + 1}_nats"].to_numpy(),
                    np.take_along_axis(frame, order[:, j : j + 1], 1)[:, 0],
                )


@pytest.mark.parametrize("missing", ["marginalise", "refuse"])
def test_a_chunk_passed_as_it_is_is_one_that_pandera_passes_unchanged(fitted_mixed, missing):
    """``validate_chunk`` skips pandera for a chunk its vectorised check passes: only where
    pandera passes it too and returns the same frame; every other chunk gets pandera's report."""
    from vae_core.kinds.table_input import _passes_as_it_is, input_schema, validate_chunk

    det = copy.deepcopy(fitted_mixed).set_params(missing=missing)
    schema = input_schema(det, ["row_id"])
    clean = with_ids(mixed_frame(200, seed=3)).assign(load=lambda f: f["load"].fillna(50.0))
    dirty = {
        "clean": clean,
        "a NaN": clean.assign(temperature=np.where(np.arange(200) == 7, np.nan, 1.0)),
        "NaN where training had some": with_ids(mixed_frame(200, seed=3)),
        "an infinity": clean.assign(pressure=np.where(np.arange(200) == 9, np.inf, 1.0)),
        "integers": clean.assign(pressure=np.arange(200)),
        "text": clean.assign(temperature=["1.5"] * 199 + ["warm"]),
        "numbers as text": clean.assign(temperature=["1.5"] * 200),
        "a column missing": clean.drop(columns="pressure"),
        "a column twice": pd.concat([clean, clean[["temperature"]]], axis=1),
        "an extra column": clean.assign(extra=1),
        "a category missing": clean.assign(site=None),
    }
    passed = []
    for name, frame in dirty.items():
        try:
            expected = schema.validate(frame, lazy=True)
        except Exception:  # pandera refuses it: the fast path must not pass it
            assert not _passes_as_it_is(frame, schema), name
            with pytest.raises(ValueError, match=r"does not match the model's schema|id column"):
                validate_chunk(frame, schema, "batch.parquet")
            continue
        if _passes_as_it_is(frame, schema):
            passed.append(name)
            pd.testing.assert_frame_equal(validate_chunk(frame, schema, "x"), expected)
    assert "clean" in passed and "an extra column" in passed and "integers" not in passed


def test_partitions_scored_on_threads_give_the_serial_output_in_order(
    calibrated, mixed_data, tmp_path
):
    """``local_parts`` with several workers: every row once, in input order, the scores of
    one worker, the progress callback once per partition; torch's thread count restored."""
    import threading

    import torch

    from vae_core.steps.batch import score_batch_into

    df = with_ids(mixed_data)
    pq.write_table(pa.Table.from_pandas(df), tmp_path / "in.parquet", row_group_size=70)
    outputs, threads_before = {}, torch.get_num_threads()
    for workers in (1, 3):
        cfg = scoring_config(["row_id"], chunk_rows=50, max_workers=workers)
        summary = score_batch_into(
            calibrated, tmp_path / "in.parquet", tmp_path / f"out{workers}.parquet",
            f"b{workers}", cfg,
        )  # fmt: skip
        assert summary.rows == len(df)
        outputs[workers] = pd.read_parquet(summary.output)
    assert torch.get_num_threads() == threads_before
    assert list(outputs[3]["row_id"]) == list(df["row_id"])
    pd.testing.assert_frame_equal(outputs[3], outputs[1], check_exact=False, rtol=1e-9)

    from vae_core.steps.batch import local_parts

    seen, lock = [], threading.Lock()

    def on_part():
        with lock:
            seen.append(threading.current_thread().name)

    parts = list_partitions(tmp_path / "in.parquet")
    scorer = local_parts(
        calibrated, scoring_config(["row_id"], chunk_rows=50, max_workers=3), on_part
    )
    staged = scorer(parts, staging_dir(tmp_path / "p.parquet", "p"))
    assert [s.path.rsplit("-", 1)[-1] for s in staged] == [
        f"{i:05d}.parquet" for i in range(len(parts))
    ]
    assert len(seen) == len(parts) == 9 and all(n.startswith("vae-score") for n in seen)


def test_a_bad_partition_on_threads_fails_the_batch_naming_it_and_starts_no_more(
    calibrated, tmp_path
):
    """A long first partition, then short ones of which the first is bad: the batch fails
    as soon as the bad one does, naming it, without waiting for the long one's turn (scoring
    results in order would run every short partition first)."""
    from vae_core.steps.batch import local_parts

    folder = tmp_path / "batch"
    folder.mkdir()
    with_ids(mixed_frame(20_000, seed=1)).to_parquet(folder / "a.parquet")
    for j, name in enumerate("bcdefghijklmnopqrstu"):
        small = with_ids(mixed_frame(200, seed=10 + j))
        if name == "b":
            small.loc[75, "temperature"] = np.inf
        small.to_parquet(folder / f"{name}.parquet")
    parts = list_partitions(folder)
    done = []
    scorer = local_parts(
        calibrated,
        scoring_config(["row_id"], chunk_rows=500, max_workers=2),
        lambda: done.append(1),
    )
    with pytest.raises(ValueError, match=r"(?s)b\.parquet.*infinite value at row\(s\) 76"):
        scorer(parts, staging_dir(tmp_path / "out.parquet", "b"))
    assert len(done) < len(parts) // 2  # most partitions after the bad one never started
