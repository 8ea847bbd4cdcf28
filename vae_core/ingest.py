"""Reading user tables and separating features from labels and ids.

Errors name the file, the column and example rows; nothing is written here.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

TABLE_SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


def check_column_names(names, source) -> None:
    """ValueError naming every column name that appears more than once, with its positions
    (1-based). A CSV reader would otherwise rename the second ``f0`` to ``f0.1`` and the model
    would silently score one ``f0`` and ignore the other."""
    positions: dict[str, list[int]] = {}
    for i, name in enumerate(names, start=1):
        positions.setdefault(str(name), []).append(i)
    repeated = {name: at for name, at in positions.items() if len(at) > 1}
    if repeated:
        shown = "; ".join(
            f"{name!r} at columns {', '.join(map(str, at))}" for name, at in repeated.items()
        )
        raise ValueError(
            f"{source}: the header names a column more than once ({shown}); "
            "give each column its own name"
        )


def csv_header(path: str | Path) -> list[str]:
    """The names in a CSV file's first line (empty for an empty file)."""
    with open(path, newline="", encoding="utf-8", errors="replace") as fh:
        return next(csv.reader(fh), [])


def read_table(path: str | Path) -> pd.DataFrame:
    """A CSV or Parquet file (or a folder of Parquet files) as a DataFrame.

    Raises FileNotFoundError for a missing path and ValueError for an unsupported, empty or
    unreadable file, naming the file.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"input {path} does not exist")
    if path.is_dir():
        parts = sorted(path.glob("*.parquet"))
        if not parts:
            raise ValueError(f"folder {path} holds no .parquet files")
        return pd.concat([read_table(p) for p in parts], ignore_index=True)
    kind = TABLE_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise ValueError(
            f"{path}: unsupported file type {path.suffix!r} (expected .csv or .parquet)"
        )
    if kind == "csv":
        check_column_names(csv_header(path), path)
    try:
        frame = pd.read_csv(path) if kind == "csv" else pd.read_parquet(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot be read as {kind} ({exc})") from exc
    check_column_names(frame.columns, path)
    if frame.empty:
        raise ValueError(f"{path}: the file has no data rows")
    return frame


@dataclass
class LabelledTable:
    """Features (n, d), optional labels (n,) with 1 = anomaly, and pass-through id columns."""

    features: pd.DataFrame
    labels: np.ndarray | None
    ids: pd.DataFrame

    def features_at(self, rows) -> pd.DataFrame:
        """The feature rows at positions ``rows``."""
        return self.features.iloc[rows]

    def labels_at(self, rows) -> np.ndarray | None:
        """The labels at positions ``rows``, or None without labels."""
        return None if self.labels is None else self.labels[rows]


def split_columns(
    frame: pd.DataFrame,
    label_column: str | None = None,
    id_columns: list[str] | tuple[str, ...] = (),
    drop_columns: list[str] | tuple[str, ...] = (),
    source: str = "input",
    require_label: bool = False,
) -> LabelledTable:
    """Separate features from the label and id columns.

    A label column that is absent is allowed unless ``require_label``; one that is present
    must hold only 0 and 1 (ValueError naming rows otherwise).
    """
    missing_ids = [c for c in id_columns if c not in frame.columns]
    if missing_ids:
        raise ValueError(f"{source}: id column(s) {missing_ids} not found")
    labels = None
    if label_column is not None and label_column in frame.columns:
        labels = _binary_labels(frame[label_column], label_column, source)
    elif require_label and label_column is not None:
        raise ValueError(f"{source}: label column {label_column!r} not found")
    excluded = {*id_columns, *drop_columns, *([label_column] if label_column else [])}
    features = frame[[c for c in frame.columns if c not in excluded]]
    return LabelledTable(features, labels, frame[list(id_columns)])


def _binary_labels(s: pd.Series, name: str, source: str) -> np.ndarray:
    values = pd.to_numeric(s, errors="coerce")
    bad = ~values.isin([0, 1]).to_numpy()
    if bad.any():
        rows = ", ".join(str(r) for r in s.index[bad][:5])
        raise ValueError(
            f"{source}: label column {name!r} must hold 0 (normal) or 1 (anomaly); "
            f"other values at row(s) {rows}"
        )
    return values.to_numpy(dtype="int64")


def load_table(path: str | Path, data, require_label: bool = False) -> LabelledTable:
    """Read a table and separate features, labels and ids as the ``data`` config says."""
    return split_columns(
        read_table(path),
        data.label_column,
        data.id_columns,
        data.drop_columns,
        source=str(path),
        require_label=require_label,
    )
