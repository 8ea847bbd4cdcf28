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
    """ValueError naming every column without a name (empty or only whitespace) by its position,
    and every name that appears more than once, with its positions (1-based). A CSV reader would
    otherwise rename a blank name to ``Unnamed: 0`` and the second ``f0`` to ``f0.1``, and the
    model would silently score one ``f0`` and ignore the other."""
    names = [str(name) for name in names]
    blank = [i for i, name in enumerate(names, start=1) if not name.strip()]
    if blank:
        raise ValueError(
            f"{source}: column(s) {', '.join(map(str, blank))} have no name (empty or only "
            "whitespace); name every column (a leading unnamed column is often a DataFrame "
            "index written by to_csv: write it with index=False)"
        )
    positions: dict[str, list[int]] = {}
    for i, name in enumerate(names, start=1):
        positions.setdefault(name, []).append(i)
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
    """The names in a CSV file's first line (empty for an empty file); a UTF-8 byte-order mark
    is not part of the first name (pandas drops it too)."""
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as fh:
        return next(csv.reader(fh), [])


def check_csv_layout(path: str | Path) -> list[str]:
    """The CSV header's names, after the checks pandas would otherwise paper over silently.

    ValueError naming the file for an empty first line (pandas would skip it and take the
    first data row as the header), a blank or repeated name (``check_column_names``), and a
    first data row with more fields than the header names (pandas would take the extra
    leading fields as the index and shift every column's values one column over).
    """
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as fh:
        rows = csv.reader(fh)
        header = next(rows, None)
        if header is None:
            raise ValueError(f"{path}: the file is empty")
        if not header:
            raise ValueError(f"{path}: line 1 is empty; it must be the header naming the columns")
        check_column_names(header, path)
        # pandas decides on the index from the first row that is not blank (it skips empty and
        # whitespace-only lines); a wider row after a one-field one fails in pandas anyway.
        first = next((row for row in rows if len(row) > 1 or "".join(row).strip()), None)
        if first is not None and len(first) > len(header):
            raise ValueError(
                f"{path}: line {rows.line_num} has {len(first)} fields but the header names "
                f"{len(header)} columns; name every column in the header (pandas would turn "
                "the extra leading fields into the row index and shift the others)"
            )
    return header


def read_table(path: str | Path) -> pd.DataFrame:
    """A CSV or Parquet file (or a folder of Parquet files with the same columns) as a DataFrame,
    with every column of the file under its name and every data row.

    Raises FileNotFoundError for a missing path and ValueError for an unsupported, empty or
    unreadable file, naming the file, and for a header that could not be read back as written
    (``check_csv_layout``, ``check_column_names``). In a one-column CSV file an empty line is
    a missing value (a row), as one-column writers write it.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"input {path} does not exist")
    if path.is_dir():
        parts = sorted(path.glob("*.parquet"))
        if not parts:
            raise ValueError(f"folder {path} holds no .parquet files")
        frames = [read_table(p) for p in parts]
        for part, frame in zip(parts[1:], frames[1:], strict=True):
            _check_same_columns(frames[0].columns, parts[0], frame.columns, part)
        return pd.concat(frames, ignore_index=True)
    kind = TABLE_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise ValueError(
            f"{path}: unsupported file type {path.suffix!r} (expected .csv or .parquet)"
        )
    header = check_csv_layout(path) if kind == "csv" else _parquet_names(path)
    try:
        if kind == "csv":
            frame = pd.read_csv(path, skip_blank_lines=len(header) > 1)
        else:
            frame = pd.read_parquet(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot be read as {kind} ({exc})") from exc
    check_column_names(frame.columns, path)
    if kind == "csv" and [str(c) for c in frame.columns] != header:
        raise ValueError(
            f"{path}: the header reads as {header} but pandas read the columns "
            f"{list(frame.columns)}; check the quoting of the header line"
        )
    if frame.empty:
        raise ValueError(f"{path}: the file has no data rows")
    return frame


def _parquet_names(path: Path) -> list[str]:
    """The column names in a Parquet file's schema, checked before pandas reads the file
    (pyarrow's own error for a repeated name names neither the column nor its position)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(path).names
    except (pa.ArrowException, OSError) as exc:
        raise ValueError(f"{path}: cannot be read as parquet ({exc})") from exc
    check_column_names(names, path)
    return names


def _check_same_columns(first: pd.Index, first_path: Path, other: pd.Index, path: Path) -> None:
    """ValueError naming both files when two parts of a folder differ in their columns
    (concatenating them would fill the missing columns with NaN)."""
    missing = [str(c) for c in first if c not in other]
    extra = [str(c) for c in other if c not in first]
    if missing or extra:
        raise ValueError(
            f"{path}: its columns differ from {first_path.name}'s in the same folder "
            f"(missing {missing}, extra {extra}); every part must have the same columns"
        )


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
