"""Property-based tests (hypothesis) where arbitrary user data meets the library.

Ingestion (``vae_core.data.ingest.read_table``, ``TabularPreprocessor.fit`` / ``transform``):

- CSV and Parquet: a table of random columns (unicode, empty, whitespace-only, duplicated and
  near-duplicated names; ints, floats with NaN and inf, bools, strings, categories, datetimes,
  all-missing and mixed object columns) written to a real file reads back with the same
  column names in the same order and the same number of rows, or raises a ValueError, raised
  by vae_core, that names the file. A header that cannot be read back as written (a repeated
  or a blank name) must raise.
- CSV rows with more or fewer fields than the header, and a folder of Parquet parts whose
  columns differ: the same rule, never a column shifted into the index or filled in silently.
- Whatever ``read_table`` returns, and in-memory frames with any column labels:
  ``TabularPreprocessor.fit`` records every column (no silent drop) and ``transform`` gives a
  finite (n, input_dim) matrix, or ``fit`` raises a ValueError from vae_core that names the
  column (or the table-level problem).

Calibration (``vae_core.foundations.calibrate``), on any scores (finite, huge, NaN, inf, ties),
any labels (all 0, all 1, wrong length, NaN, None, non-binary) and any policy parameters:

- ``calibrate_threshold`` gives a finite threshold that obeys the tie rule (flagged iff
  ``score > threshold``) and its policy: the best F-beta / the least cost over every possible
  threshold (brute force), the highest threshold reaching the target recall, the lowest
  reaching the target precision, at most ``rate`` of the reference scores above an order
  statistic; or a ValueError, raised by vae_core or by the policy's validation, that names the
  problem.
- ``AnomalyProbability``: probabilities in [0, 1], non-decreasing in the score, the same after
  a JSON round trip; ``flag_anomalies`` and ``metrics_at_threshold`` agree with the tie rule.

Every test runs a fixed set of examples (``derandomize=True``, no example database), so a run
in CI is the run on a developer's machine. Counterexamples found while writing these are kept
as ``@example`` cases.
"""

from __future__ import annotations

import csv
import json
import math
import traceback
import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

import vae_core
from vae_core.data.ingest import read_table
from vae_core.data.preprocess import MIN_FIT_ROWS, TabularPreprocessor
from vae_core.foundations.calibrate import (
    CalibrationFallbackWarning,
    CalibrationPolicy,
    Contamination,
    MinCost,
    calibrate_threshold,
    flag_anomalies,
    metrics_at_threshold,
)
from vae_core.foundations.score_distribution import AnomalyProbability

VAE_CORE = Path(vae_core.__file__).resolve().parent


def props(max_examples: int):
    """Fixed examples (derandomized, no database), no deadline: reproducible in CI."""
    return settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
        ],
    )


def assert_raised_by_vae_core(exc: BaseException) -> None:
    """The error was raised by a ``raise`` in vae_core, not let through from a dependency."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = Path(frames[-1].filename).resolve()
    assert VAE_CORE in where.parents, (
        f"{type(exc).__name__} from inside {where}:{frames[-1].lineno}: {exc}"
    )


_counter = iter(range(10**9))


def fresh_dir(tmp_path: Path) -> Path:
    """A new folder per hypothesis example (tmp_path is shared by the examples of a test)."""
    d = tmp_path / f"ex{next(_counter)}"
    d.mkdir()
    return d


# =========================================================================== ingestion

NAMES = st.one_of(
    *[st.text(min_size=1, max_size=5)] * 4,
    st.text(max_size=5),
    st.sampled_from(
        [
            *("", " ", "\t", " \u3000", "a", "a ", " a", "A", "b"),
            *("Unnamed: 0", "a.1", "NA", "nan", "null", "0", "1.0", "True"),
            *("é", "e\u0301", "\ufeffa", "x,y", 'q"q', "two\nlines", "cr\rlf", "naïve 列"),
        ]
    ),
)
TEXT = st.one_of(
    st.none(),
    st.text(max_size=4),
    st.sampled_from(["", " ", "NA", "inf", "-inf", "1", "2.5", "1e400", "True", "日本", "a,b"]),
)
# repeated kinds are drawn more often: most tables should get as far as fit
CSV_KINDS = [
    *("int", "float", "float", "bool", "str", "str", "category", "datetime", "mixed"),
    *("float_dirty", "nan"),
]
PARQUET_KINDS = [k for k in CSV_KINDS if k != "mixed"] + ["null"]


@st.composite
def columns(draw, n: int, kinds: list[str]) -> pd.Series:
    """One column of n values of a random kind."""
    kind = draw(st.sampled_from(kinds))

    def values(strategy):
        return draw(st.lists(strategy, min_size=n, max_size=n))

    if kind == "int":
        return pd.Series(values(st.integers(-(2**63), 2**63 - 1)), dtype="int64")
    if kind == "float":
        return pd.Series(values(st.floats(-1e6, 1e6) | st.none()), dtype="float64")
    if kind == "float_dirty":  # huge, tiny, NaN and infinite values
        return pd.Series(values(st.floats()), dtype="float64")
    if kind == "bool":
        if draw(st.booleans()):
            return pd.Series(values(st.booleans()), dtype="bool")
        return pd.Series(values(st.booleans() | st.none()), dtype="boolean")
    if kind == "str":
        return pd.Series(values(TEXT), dtype=object)
    if kind == "category":
        return pd.Series(values(st.sampled_from(["x", "y", "é", ""]) | st.none()), dtype="category")
    if kind == "datetime":
        moments = st.datetimes(pd.Timestamp("1700-01-01"), pd.Timestamp("2200-01-01"))
        return pd.Series(pd.to_datetime(values(moments | st.none())), dtype="datetime64[ns]")
    if kind == "nan":
        return pd.Series(np.full(n, np.nan))
    if kind == "null":
        return pd.Series([None] * n, dtype=object)
    mixed = st.one_of(st.integers(), st.floats(), st.booleans(), TEXT)
    return pd.Series(values(mixed), dtype=object)


@st.composite
def tables(draw, kinds: list[str], min_rows: int = 1) -> pd.DataFrame:
    """A DataFrame of 1..5 random columns under random (possibly repeated) names."""
    n = draw(st.integers(min_rows, 25) | st.integers(max(min_rows, MIN_FIT_ROWS), 25))
    names = draw(st.lists(NAMES, min_size=1, max_size=5))
    # a repeated name, or two that differ only by surrounding whitespace, now and then
    if len(names) > 1 and draw(st.integers(0, 3)) == 0:
        i, j = draw(st.permutations(range(len(names))))[:2]
        names[j] = draw(st.sampled_from([names[i], f" {names[i]}", f"{names[i]} "]))
    cols = [draw(columns(n, kinds)) for _ in names]
    frame = pd.concat(cols, axis=1, ignore_index=True)
    frame.columns = names
    return frame


def readable_names(names: list[str]) -> bool:
    """Names a table can be read back under: each non-blank and unique."""
    return all(str(n).strip() for n in names) and len(set(names)) == len(names)


def check_read(path: Path, frame: pd.DataFrame, expected_names: list[str]) -> pd.DataFrame | None:
    """read_table(path) is the frame's shape under the expected names, or a ValueError from
    vae_core naming the file; names that cannot be read back must raise."""
    try:
        got = read_table(path)
    except ValueError as exc:
        assert_raised_by_vae_core(exc)
        assert str(path) in str(exc), str(exc)
        assert not readable_names(expected_names), f"a readable table was refused: {exc}"
        event(f"read: refused ({str(exc).replace(str(path), '')[:30]})")
        return None
    assert readable_names(expected_names), f"read {list(got.columns)} from {expected_names}"
    assert list(got.columns) == expected_names
    assert got.shape == frame.shape
    event("read: ok")
    return got


TABLE_LEVEL_PROBLEMS = (
    f"at least {MIN_FIT_ROWS} rows",
    "no feature columns",
    "every column is constant",
)


def check_fit(frame: pd.DataFrame, scaling: str) -> None:
    """fit records every column and transform is finite, or fit names the column."""
    pre = TabularPreprocessor(scaling=scaling)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # constant or id-like columns, overflow
            pre.fit(frame)
    except ValueError as exc:
        assert_raised_by_vae_core(exc)
        message = str(exc)
        named = any(repr(str(c)) in message for c in frame.columns)
        assert named or any(p in message for p in TABLE_LEVEL_PROBLEMS), message
        event(f"fit: refused ({message[:30]})")
        return
    assert pre.feature_names == [str(c) for c in frame.columns]  # nothing dropped
    u = pre.transform(frame)
    assert u.shape == (len(frame), pre.layout.input_dim)
    assert np.isfinite(u).all(), "transform of the training data is not finite"
    event("fit: ok")


SCALING = st.sampled_from(["standard", "robust"])


@props(60)
@given(frame=tables(CSV_KINDS), encoding=st.sampled_from(["utf-8", "utf-8-sig"]), scaling=SCALING)
@example(  # a blank name: pandas renamed it "Unnamed: 0"
    frame=pd.DataFrame({"": [1, 2], "b": [3, 4]}), encoding="utf-8", scaling="standard"
).via("discovered failure")
@example(  # a UTF-8 BOM hid the repeat from the header check; pandas renamed it "a.1"
    frame=pd.DataFrame([[1, 2]], columns=["a", "a"]), encoding="utf-8-sig", scaling="standard"
).via("discovered failure")
@example(  # a whitespace-only header line was skipped as blank: the first row became the header
    frame=pd.DataFrame({" ": [1, 2]}), encoding="utf-8", scaling="standard"
).via("discovered failure")
@example(  # variance overflowed (|x| > 1e154): scale silently 1, model input inf in float32
    frame=pd.DataFrame({"a": [0.0] * 10 + [1.406223e154]}), encoding="utf-8", scaling="standard"
).via("discovered failure")
@example(  # one column, a whitespace-only value: its line was skipped, the row lost
    frame=pd.DataFrame({"a": ["x", " ", "y"]}), encoding="utf-8", scaling="standard"
).via("discovered failure")
def test_csv_reads_back_every_column_and_row_or_names_the_file(tmp_path, frame, encoding, scaling):
    path = fresh_dir(tmp_path) / "table.csv"
    # RFC 4180's CRLF: pandas quotes a "\r" in a name or value only when it is part of the
    # line terminator, and an unquoted one is a line break to any reader
    frame.to_csv(path, index=False, encoding=encoding, lineterminator="\r\n")
    names = list(frame.columns)
    if encoding == "utf-8" and names[0].startswith("\ufeff"):
        names[0] = names[0][1:]  # the file now opens with a byte-order mark, read as such
    got = check_read(path, frame, names)
    if got is not None:
        check_fit(got, scaling)


@props(50)
@given(frame=tables(PARQUET_KINDS), via_pandas=st.booleans(), scaling=SCALING)
@example(  # a blank name read as "" here, as "Unnamed: 0" from a CSV file
    frame=pd.DataFrame({"": [1, 2], "b": [3, 4]}), via_pandas=True, scaling="standard"
).via("discovered failure")
@example(  # a repeated name (pyarrow's own error named neither the column nor its position)
    frame=pd.DataFrame([[1, 2]], columns=["a", "a"]), via_pandas=False, scaling="standard"
)
def test_parquet_reads_back_every_column_and_row_or_names_the_file(
    tmp_path, frame, via_pandas, scaling
):
    path = fresh_dir(tmp_path) / "table.parquet"
    names = list(frame.columns)
    if via_pandas and len(set(names)) == len(names):
        frame.to_parquet(path, index=False)
    else:  # pyarrow writes repeated names, which pandas refuses to
        arrays = [pa.array(frame.iloc[:, j], from_pandas=True) for j in range(frame.shape[1])]
        pq.write_table(pa.Table.from_arrays(arrays, names=names), path)
    got = check_read(path, frame, names)
    if got is not None:
        check_fit(got, scaling)


FIELD = st.text(alphabet="0123456789.-abé\"', ", min_size=1, max_size=3).filter(str.strip)


@props(40)
@given(
    width=st.integers(1, 4),
    rows=st.lists(st.lists(FIELD, min_size=1, max_size=6), min_size=1, max_size=6),
)
@example(width=2, rows=[["1", "2", "3"], ["4", "5", "6"]]).via(  # first column became the index
    "discovered failure"
)
def test_csv_rows_wider_or_narrower_than_the_header(tmp_path, width, rows):
    """Every data row read, under the header's names, or a ValueError naming the file; never
    a leading column silently turned into the index."""
    path = fresh_dir(tmp_path) / "ragged.csv"
    header = [f"c{j}" for j in range(width)]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([header, *rows])
    try:
        got = read_table(path)
    except ValueError as exc:
        assert_raised_by_vae_core(exc)
        assert str(path) in str(exc)
        assert any(len(r) > width for r in rows), f"rows no wider than the header: {exc}"
        return
    assert list(got.columns) == header
    assert len(got) == len(rows)
    assert isinstance(got.index, pd.RangeIndex) and got.index.start == 0
    assert all(len(r) <= width for r in rows), "a row wider than the header was read"


@props(25)
@given(
    parts=st.lists(
        st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=3, unique=True),
        min_size=1,
        max_size=3,
    )
)
@example(parts=[["a", "b"], ["a", "c"]]).via("discovered failure")  # filled with NaN silently
def test_parquet_folder_parts_must_share_their_columns(tmp_path, parts):
    folder = fresh_dir(tmp_path)
    for i, names in enumerate(parts):
        pd.DataFrame({c: [float(i), 1.0] for c in names}).to_parquet(folder / f"p{i}.parquet")
    try:
        got = read_table(folder)
    except ValueError as exc:
        assert_raised_by_vae_core(exc)
        assert "p0.parquet" in str(exc) and ".parquet" in str(exc).replace("p0.parquet", "")
        assert any(set(p) != set(parts[0]) for p in parts), str(exc)
        return
    assert all(set(p) == set(parts[0]) for p in parts), f"parts {parts} read as one table"
    assert list(got.columns) == parts[0] and len(got) == 2 * len(parts)


LABELS = st.one_of(
    st.integers(-2, 2),
    st.text(max_size=2),
    st.sampled_from([0, "0", 0.0, 1.5, None, True, " 0"]),
)


@props(40)
@given(
    labels=st.lists(LABELS, min_size=1, max_size=4),
    values=st.lists(st.floats(-100, 100), min_size=MIN_FIT_ROWS, max_size=MIN_FIT_ROWS),
)
@example(labels=[0, 1], values=[float(i) for i in range(MIN_FIT_ROWS)]).via(
    "discovered failure"  # pd.DataFrame(array): KeyError '0'
)
@example(labels=["a", "a"], values=[float(i) for i in range(MIN_FIT_ROWS)]).via(
    "discovered failure"  # repeated label: AttributeError inside pandas
)
def test_fit_on_a_frame_with_any_column_labels(labels, values):
    """In-memory frames: labels are used as their text; a repeat (0 and "0" too) or a blank
    label is refused naming it; a fitted model scores the frame under its own labels."""
    rng = np.random.default_rng(len(labels))
    data = np.column_stack([np.asarray(values) + rng.normal(size=len(values)) for _ in labels])
    frame = pd.DataFrame(data, columns=pd.Index(labels, dtype=object))
    as_text = [str(c) for c in labels]
    pre = TabularPreprocessor()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pre.fit(frame)
    except ValueError as exc:
        assert_raised_by_vae_core(exc)
        assert not readable_names(as_text), str(exc)
        blank = [str(i) for i, c in enumerate(as_text, start=1) if not c.strip()]
        if blank:
            assert f"column(s) {', '.join(blank)} have no name" in str(exc), str(exc)
        else:
            assert any(repr(c) in str(exc) for c in as_text), str(exc)
        return
    assert readable_names(as_text), f"labels {labels} fitted as {pre.feature_names}"
    assert pre.feature_names == as_text
    u = pre.transform(frame)
    np.testing.assert_array_equal(u, pre.transform(frame.set_axis(as_text, axis=1)))


# =========================================================================== calibration

UNIT = st.floats(0, 1, exclude_min=True, exclude_max=True)
POSITIVE = st.floats(min_value=0, exclude_min=True, allow_infinity=False)
ANY_FLOAT = st.floats() | st.sampled_from([0.0, 1.0, -0.5, 2.0, 1e-300, 1e300])
TAIL = st.fixed_dictionaries(
    {},
    optional={
        "tail_method": st.sampled_from(["auto", "quantile", "pot"]),
        "pot_switch_expected": st.sampled_from([0.5, 10.0, 1e9]),
        "pot_tail_quantile": st.sampled_from([0.5, 0.9]),
    },
)


def policies(rate, positive):
    """Policy mappings (as in a YAML config) with the given strategies for their parameters."""
    fallback = {"fallback_fpr": rate}
    return st.one_of(
        st.fixed_dictionaries({"name": st.just("max_f_beta"), "beta": positive}, optional=fallback),
        st.fixed_dictionaries(
            {"name": st.just("target_recall"), "recall": rate}, optional=fallback
        ),
        st.fixed_dictionaries(
            {"name": st.just("target_precision"), "precision": rate}, optional=fallback
        ),
        st.fixed_dictionaries(
            {"name": st.just("min_cost"), "cost_fp": positive, "cost_fn": positive},
            optional=fallback,
        ),
        st.builds(
            lambda d, t: d | t,
            st.fixed_dictionaries({"name": st.just("target_fpr"), "fpr": rate}),
            TAIL,
        ),
        st.builds(
            lambda d, t: d | t,
            st.fixed_dictionaries({"name": st.just("contamination"), "rate": rate}),
            TAIL,
        ),
    )


POLICIES = policies(UNIT, POSITIVE)
POSITIVE_FIELDS = {"beta", "cost_fp", "cost_fn"}
UNIT_FIELDS = {"recall", "precision", "fpr", "rate", "fallback_fpr"}


@props(150)
@given(policy=policies(UNIT | ANY_FLOAT, POSITIVE | ANY_FLOAT))
def test_policy_parameters_out_of_range_are_refused_naming_the_field(policy):
    def in_range(key, value):
        if key in POSITIVE_FIELDS:
            return math.isfinite(value) and value > 0
        return 0 < value < 1

    bad = [
        k for k, v in policy.items() if k in POSITIVE_FIELDS | UNIT_FIELDS and not in_range(k, v)
    ]
    try:
        parsed = TypeAdapter(CalibrationPolicy).validate_python(policy)
    except ValidationError as exc:
        assert bad, f"valid parameters refused: {exc}"
        assert all(k in str(exc) for k in bad), str(exc)
        return
    assert not bad, f"{bad} out of range, accepted as {parsed}"


def _seeded_scores(seed: int, n: int, decimals: int | None, scale: float) -> list[float]:
    """n scores from a heavy-tailed distribution, rounded to make ties when decimals is set."""
    s = np.random.default_rng(seed).standard_t(3, size=n) * scale
    return (s if decimals is None else np.round(s, decimals)).tolist()


SCORES = st.one_of(
    st.lists(st.floats(-1e3, 1e3), min_size=20, max_size=120),  # ordinary
    st.lists(st.floats(-1e3, 1e3), min_size=20, max_size=120),
    st.lists(st.sampled_from([-1.0, 0.0, 0.5, 2.0]), min_size=20, max_size=80),  # ties
    st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=20, max_size=80),
    st.builds(  # enough for a tail fit (POT needs 20 points above its quantile)
        _seeded_scores,
        st.integers(0, 2**32 - 1),
        st.integers(250, 600),
        st.sampled_from([None, None, 0, 1]),
        st.sampled_from([1.0, 1e-300, 1e300]),
    ),
    st.lists(st.floats(), max_size=40),  # short, NaN and infinities anywhere
)
ODD_LABELS = st.sampled_from([np.nan, None, 2, -1, 0.5, "1", pd.NA])


@st.composite
def labels_for(draw, n: int):
    """None, binary labels of length n (any mix, all 0, all 1) as list, array or nullable
    Series, or labels of the wrong length or with an odd value."""
    kind = draw(st.sampled_from(["none", *["binary"] * 4, "all0", "all1", "length", "odd"]))
    if kind == "none":
        return None
    if kind == "length":
        return draw(st.lists(st.sampled_from([0, 1]))).copy() if n else [0]
    if kind == "all0":
        y = [0] * n
    elif kind == "all1":
        y = [1] * n
    else:
        y = draw(st.lists(st.sampled_from([0, 1]), min_size=n, max_size=n))
    if kind == "odd" or (n and draw(st.integers(0, 9)) == 0):
        y = draw(st.lists(st.sampled_from([0, 1]) | ODD_LABELS, min_size=max(n, 1)))[: max(n, 1)]
        if n:
            y[draw(st.integers(0, n - 1))] = draw(ODD_LABELS)
    container = draw(st.sampled_from(["list", "array", "series"]))
    if container == "array":
        return np.asarray(y, dtype=object if any(v is None or v is pd.NA for v in y) else None)
    if container == "series":
        return pd.Series(y, dtype=object)
    return y


def _counts(scores: np.ndarray, y: np.ndarray, flagged: np.ndarray) -> tuple[int, int, int]:
    tp = int((flagged & (y == 1)).sum())
    fp = int((flagged & (y == 0)).sum())
    fn = int((~flagged & (y == 1)).sum())
    return tp, fp, fn


def _candidate_flags(scores: np.ndarray) -> list[np.ndarray]:
    """Every set a threshold can flag under the strict rule: score >= v for each score v."""
    return [scores >= v for v in np.unique(scores)]


def _check_labelled(policy, scores, y, threshold) -> None:
    """The chosen threshold is the policy's optimum among every threshold (brute force)."""
    chosen = scores > threshold
    tp, fp, fn = _counts(scores, y, chosen)
    candidates = [_counts(scores, y, f) for f in _candidate_flags(scores)]
    if policy.name == "max_f_beta":
        b2 = Fraction(policy.beta) ** 2

        def f_beta(tp, fp, fn):
            return (1 + b2) * tp / ((1 + b2) * tp + b2 * fn + fp) if tp else Fraction(0)

        best = max(f_beta(*c) for c in candidates)
        assert f_beta(tp, fp, fn) >= best - Fraction(1, 10**9), (tp, fp, fn)
    elif policy.name == "min_cost":
        cfp, cfn = Fraction(policy.cost_fp), Fraction(policy.cost_fn)
        best = min(cfp * c[1] + cfn * c[2] for c in [*candidates, (0, 0, int(y.sum()))])
        # float arithmetic cannot tell costs apart below its resolution at this scale
        resolution = max(cfp, cfn) * len(y) * Fraction(1, 10**12)
        assert cfp * fp + cfn * fn <= best + resolution, (tp, fp, fn)
    elif policy.name == "target_recall":
        assert tp / (tp + fn) >= policy.recall
        above = scores[scores > threshold]
        if above.size:  # the next threshold up flags fewer rows and misses the target
            ntp, _, nfn = _counts(scores, y, scores > above.min())
            assert ntp / (ntp + nfn) < policy.recall
    elif policy.name == "target_precision":
        assert tp + fp and tp / (tp + fp) >= policy.precision
        for ctp, cfp, _ in candidates:
            if ctp + cfp > tp + fp:  # a lower threshold: must miss the target
                assert ctp / (ctp + cfp) < policy.precision


def _check_upper_tail(cal, reference: np.ndarray, rate: float, threshold: float) -> None:
    share = float((reference > threshold).mean())
    if cal.method == "quantile":
        assert threshold in reference  # an order statistic
        assert share <= rate + 1e-12, (share, rate)
    else:
        assert cal.method == "pot_genpareto"
        assert threshold >= cal.details["pot_fit"]["u"]


def _label_problem(y, n: int) -> bool:
    if y is None:
        return False
    values = list(y)
    return len(values) != n or not all(
        v is not None and v is not pd.NA and not isinstance(v, str) and v in (0, 1) for v in values
    )


@props(250)
@given(data=st.data(), scores=SCORES, policy=POLICIES)
@example(  # beta**2 overflowed: OverflowError from Python's float power
    data=None, scores=[float(i) for i in range(40)], policy={"name": "max_f_beta", "beta": 1e200}
).via("discovered failure")
@example(  # flag-all below the lowest float: threshold -inf
    data=None,
    scores=[-1.7976931348623157e308, *map(float, range(1, 40))],
    policy={"name": "target_recall", "recall": 0.999},
).via("discovered failure")
def test_calibrate_threshold_obeys_its_policy_or_names_the_problem(data, scores, policy):
    scores = np.asarray(scores, dtype=float)
    n = scores.size
    if data is None:  # the explicit examples: 8 anomalies at the top
        y = (np.arange(n) >= n - 8).astype(int)
    else:
        y = data.draw(labels_for(n))
    parsed = TypeAdapter(CalibrationPolicy).validate_python(policy)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cal = calibrate_threshold(scores, y, policy=parsed)
    except ValueError as exc:
        assert_raised_by_vae_core(exc)
        message = str(exc)
        if n and not np.isfinite(scores).all():
            assert "non-finite" in message, message
        elif n and _label_problem(y, n):
            assert "y " in message or "y must" in message, message
        event(f"{policy['name']}: refused ({message[:25]})")
        return
    assert np.isfinite(scores).all() and not _label_problem(y, n)
    threshold = cal.threshold
    method = "pr_curve_max_f_beta" if parsed.name == "max_f_beta" else cal.method
    event(f"{parsed.name}: threshold by {method}")
    assert math.isfinite(threshold), threshold
    json.dumps(cal.to_dict(), allow_nan=False)  # JSON-safe
    flagged = scores > threshold
    assert cal.metrics["flagged_count"] == int(flagged.sum())
    y_arr = None if y is None else np.asarray(list(y), dtype=float).astype(int)
    fell_back = any(issubclass(w.category, CalibrationFallbackWarning) for w in caught)
    labelled = parsed.name in ("max_f_beta", "target_recall", "target_precision", "min_cost")
    if labelled:
        assert y_arr is not None
        assert fell_back == (y_arr.sum() == 0)
        if fell_back:
            _check_upper_tail(cal, scores, parsed.fallback_fpr, threshold)
        else:
            _check_labelled(parsed, scores, y_arr, threshold)
    elif parsed.name == "contamination":
        _check_upper_tail(cal, scores, parsed.rate, threshold)
    else:
        reference = scores if y_arr is None else scores[y_arr == 0]
        _check_upper_tail(cal, reference, parsed.fpr, threshold)


def test_min_cost_with_costs_near_the_float_limit():
    """Found here: cost_fp * FP overflowed to inf for every threshold, so the first (flag
    nothing) won and cost_per_row was inf; only the ratio of the costs matters."""
    scores, y = np.arange(40.0), np.zeros(40, dtype=int)
    y[[0, 1, *range(30, 40)]] = 1  # two anomalies no threshold catches without 28 false alarms
    cal = calibrate_threshold(scores, y, policy=MinCost(cost_fp=1e308, cost_fn=1e308))
    same = calibrate_threshold(scores, y, policy=MinCost(cost_fp=1.0, cost_fn=1.0))
    assert cal.threshold == same.threshold == 29.0
    assert cal.details["cost_per_row"] == pytest.approx(1e308 / 20)


@pytest.mark.parametrize(
    ("y", "message"),
    [
        ([0, None, 1], r"None at index 1"),  # TypeError from np.unique
        (pd.Series([0, pd.NA, 1], dtype=object), r"<NA> at index 1"),  # NA is ambiguous
        (pd.array([0, None, 1], dtype="Int64"), r"nan at index 1"),
        ([0, "a", 1], r"'a' at index 1"),
        ([0, [1, 2], 1], r"flat sequence"),  # numpy's inhomogeneous-shape error
        ([0, np.nan, 1], r"nan at index 1"),
    ],
)
def test_odd_labels_are_refused_naming_value_and_index(y, message):
    with pytest.raises(ValueError, match=message) as info:
        calibrate_threshold(np.arange(3.0), y, policy=Contamination(rate=0.1))
    assert_raised_by_vae_core(info.value)


@pytest.mark.parametrize("scores", [["a", 1.0], [1j, 2.0], [1.0, [2.0, 3.0]]])
def test_scores_that_are_not_real_numbers_are_refused(scores):
    with pytest.raises(ValueError, match="scores must be real numbers") as info:
        calibrate_threshold(scores, policy=Contamination(rate=0.1))
    assert_raised_by_vae_core(info.value)


@props(120)
@given(data=st.data(), scores=SCORES, queries=st.lists(st.floats(), max_size=30))
def test_anomaly_probability_is_bounded_monotone_and_round_trips(data, scores, queries):
    scores = np.asarray(scores, dtype=float)
    y = data.draw(labels_for(scores.size))
    try:
        prob = AnomalyProbability().fit(scores, y)
    except ValueError as exc:
        assert_raised_by_vae_core(exc)
        return
    queries = np.sort(np.asarray(queries, dtype=float))
    if not np.isfinite(queries).all():
        with pytest.raises(ValueError, match="non-finite") as info:
            prob.probability(queries)
        assert_raised_by_vae_core(info.value)
        queries = queries[np.isfinite(queries)]
    queries = np.r_[queries, scores]
    queries.sort()
    p = prob.probability(queries)
    assert p.shape == queries.shape
    assert np.isfinite(p).all() and (p >= 0).all() and (p <= 1).all()
    assert (np.diff(p) >= 0).all(), "not non-decreasing in the score"
    restored = AnomalyProbability.from_dict(json.loads(json.dumps(prob.to_dict())))
    np.testing.assert_array_equal(restored.probability(queries), p)


@props(120)
@given(
    data=st.data(),
    scores=st.lists(st.floats(), min_size=1, max_size=30),
    threshold=st.floats(),
)
@example(data=None, scores=[1.0, 2.0], threshold=math.nan).via(
    "discovered failure"  # a NaN threshold flagged nothing, silently
)
@example(data=None, scores=[math.nan, 2.0], threshold=1.0).via(
    "discovered failure"  # a NaN score was called normal, silently
)
def test_flags_and_metrics_follow_the_tie_rule(data, scores, threshold):
    scores = np.asarray(scores, dtype=float)
    y = (
        None
        if data is None
        else data.draw(
            st.none()
            | st.lists(st.sampled_from([0, 1]), min_size=len(scores), max_size=len(scores))
        )
    )
    y = None if y is None else np.asarray(y)
    if math.isnan(threshold) or np.isnan(scores).any():
        for call in (
            lambda: flag_anomalies(scores, threshold),
            lambda: metrics_at_threshold(scores, y, threshold),
        ):
            with pytest.raises(ValueError, match="NaN") as info:
                call()
            assert_raised_by_vae_core(info.value)
        return
    flags = flag_anomalies(scores, threshold)
    np.testing.assert_array_equal(flags, [s > threshold for s in scores])
    m = metrics_at_threshold(scores, y, threshold)
    assert m["flagged_count"] == int(flags.sum())
    if y is not None:
        assert m["tn"] + m["fp"] + m["fn"] + m["tp"] == len(scores)
        assert m["tp"] == int((flags & (y == 1)).sum())
        assert m["fp"] == int((flags & (y == 0)).sum())


def test_shrinking_a_small_isotonic_block_never_reverses_the_order():
    # PAV gives a one-row block at 0 (y = 0) and a 100-row block at 0.13 (13 anomalies ahead
    # of 87 normal rows): one pseudo-count at 1/2 turns them into 0.25 and 0.134, a reversal
    # (found by the property test above).
    scores = np.arange(101, dtype=float)
    y = np.r_[0, np.ones(13), np.zeros(87)].astype(int)
    prob = AnomalyProbability().fit(scores, y)
    p = prob.probability(np.linspace(-5.0, 105.0, 500))
    assert (np.diff(p) >= 0).all()
    assert (np.diff(prob.knots_p_) >= 0).all()
