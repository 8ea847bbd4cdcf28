"""The columns of a table as the preprocessors read them: a DataFrame view of the input, each
column as float64 numbers or as category strings, the schema record of one column
(``ColumnSpec``), and the example rows an error message quotes.

Every check raises ``ValueError`` with a message that names the column and example rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from pandas.api import types as ptypes

MISSING_CATEGORY = "<missing>"
MIN_FIT_ROWS = 10
_EXAMPLES = 5  # rows quoted in an error message


def rows_named(index: pd.Index, mask: np.ndarray) -> str:
    bad = index[np.asarray(mask)]
    shown = ", ".join(str(r) for r in bad[:_EXAMPLES])
    more = f" and {len(bad) - _EXAMPLES} more" if len(bad) > _EXAMPLES else ""
    return f"row(s) {shown}{more}"


def as_frame(X, columns: list[str] | None = None) -> pd.DataFrame:
    """A DataFrame view of X; arrays get the fitted names, or ``x0 .. x{d-1}`` at fit. Column
    labels are used as their text (``pd.DataFrame(array)`` labels its columns 0, 1, ...), as
    the fitted schema records them."""
    if isinstance(X, pd.DataFrame):
        if all(isinstance(c, str) for c in X.columns):
            return X
        return X.set_axis([str(c) for c in X.columns], axis=1)
    arr = np.asarray(X)
    if arr.ndim != 2:
        raise ValueError(
            f"expected a 2-D table (rows x columns), got an array of shape {arr.shape}"
        )
    if columns is not None and arr.shape[1] != len(columns):
        raise ValueError(
            f"expected {len(columns)} columns as at fit ({', '.join(columns[:8])}"
            f"{', ...' if len(columns) > 8 else ''}), got {arr.shape[1]}"
        )
    return pd.DataFrame(arr, columns=columns or [f"x{i}" for i in range(arr.shape[1])])


def is_numeric(s: pd.Series) -> bool:
    return ptypes.is_numeric_dtype(s) and not ptypes.is_bool_dtype(s)


def to_numeric(s: pd.Series, name: str) -> np.ndarray:
    """Column as float64; unparseable values and infinities raise, naming rows."""
    if is_numeric(s):
        values = s.to_numpy(dtype="float64", na_value=np.nan)
    else:
        parsed = pd.to_numeric(s, errors="coerce")
        bad = parsed.isna().to_numpy() & s.notna().to_numpy()
        if bad.any():
            examples = ", ".join(repr(v) for v in s[bad].head(3).tolist())
            raise ValueError(
                f"column {name!r} must be numeric: unparseable value(s) {examples} at "
                f"{rows_named(s.index, bad)}"
            )
        values = parsed.to_numpy(dtype="float64", na_value=np.nan)
    inf = np.isinf(values)
    if inf.any():
        raise ValueError(f"column {name!r} has infinite values at {rows_named(s.index, inf)}")
    return values


def to_category(s: pd.Series) -> np.ndarray:
    """Column as strings, missing values as their own category."""
    return np.where(s.isna().to_numpy(), MISSING_CATEGORY, s.astype(str).to_numpy(dtype=object))


@dataclass
class ColumnSpec:
    """One column of the feature schema, recorded at fit and checked at scoring."""

    name: str
    kind: str  # "numeric" | "categorical" | "constant"
    dtype: str
    median: float | None = None
    mean: float | None = None
    scale: float | None = None
    missing_indicator: bool = False
    categories: list[str] = field(default_factory=list)
    constant_value: float | str | None = None
    point_mass: float | None = None  # a value held by many rows, modelled as its own outcome


def numeric_strings(s: pd.Series) -> bool:
    """True for a text column whose every non-missing value parses as a number."""
    if not (ptypes.is_string_dtype(s) or ptypes.is_object_dtype(s)):
        return False
    present = s.dropna()
    return bool(len(present)) and pd.to_numeric(present, errors="coerce").notna().all()


_FLOAT32_MAX = float(np.finfo(np.float32).max)


def check_scaled(spec: ColumnSpec, values: np.ndarray, index: pd.Index) -> None:
    """ValueError naming the column and rows when its training values, scaled by the fitted
    statistics, overflow the model's float32 input (or the statistics themselves overflowed:
    scikit-learn's variance is inf beyond |x| ~ 1e154 and its scale silently falls back to 1)."""
    with np.errstate(over="ignore", invalid="ignore"):
        u = (np.where(np.isnan(values), spec.median, values) - spec.mean) / spec.scale
    bad = ~(np.abs(u) < _FLOAT32_MAX)
    if bad.any() or not (math.isfinite(spec.mean) and math.isfinite(spec.scale)):
        raise ValueError(
            f"column {spec.name!r} cannot be scaled for the model: (value - {spec.mean:.3g}) / "
            f"{spec.scale:.3g} overflows the float32 model input at {rows_named(index, bad)}; "
            "rescale the column (other units) before training"
        )


def point_mass(values: pd.Series, share: float) -> float | None:
    """The most frequent value of a numeric column when at least ``share`` of the rows hold
    it and other values exist beside it; else None. NaN never counts."""
    counts = values.dropna().value_counts()
    if len(counts) < 2 or counts.iloc[0] < share * len(values):
        return None
    return float(counts.index[0])
