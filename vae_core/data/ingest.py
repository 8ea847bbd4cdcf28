"""Reading user tables and separating features from labels and ids.

Errors name the file, the column and example rows; nothing is written here. Rows are named as
the user finds them in the file (``file_rows``): a CSV's "line N", counting the header as
line 1 (one record a line), and a Parquet file's "row N", counting from 1.
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pandas.api import types as ptypes

TABLE_SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


def is_table_file(out: str | Path) -> bool:
    """Whether ``out`` names a table file (.csv, .parquet, .pq), not a folder."""
    return TABLE_SUFFIXES.get(Path(out).suffix.lower()) is not None


def table_output(out: str | Path) -> None:
    """ValueError unless ``out`` names a table file (.csv or .parquet)."""
    if not is_table_file(out):
        raise ValueError(f"--out {out}: use a .csv or .parquet file name")


_EXAMPLES = 5  # rows or columns quoted in a message


def file_rows(source, positions) -> str:
    """Data rows at 0-based ``positions`` named as in the file ``source``: "line(s) 2, 5" of a
    CSV (the header is line 1) or "row(s) 1, 4" of anything else (Parquet, 1-based); the first
    five, then "and N more"."""
    positions = [int(p) for p in positions]
    csv_file = str(source).lower().endswith(".csv")
    word, first = ("line", 2) if csv_file else ("row", 1)
    shown = ", ".join(str(p + first) for p in positions[:_EXAMPLES])
    more = f" and {len(positions) - _EXAMPLES} more" if len(positions) > _EXAMPLES else ""
    return f"{word}(s) {shown}{more}"


def quoted(names, limit: int = 12) -> str:
    """``'a', 'b'``: names quoted as a message shows them, the first ``limit``, then how many
    more."""
    names = [str(n) for n in names]
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(repr(n) for n in names[:limit]) + more


def check_id_columns(columns, id_columns, source) -> None:
    """ValueError naming the id columns asked for (--id-column, or data.id_columns for the
    config's own data) that ``source`` lacks, with the file's columns, so a mistyped id is
    reported as an id column, not as a mismatch with the model's schema."""
    missing = [c for c in id_columns if c not in columns]
    if missing:
        raise ValueError(
            f"{source}: id column(s) {quoted(missing)} not found (named by --id-column, or "
            f"data.id_columns when this is the config's own data); its columns: "
            f"{quoted(columns)}"
        )


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
    if kind == "csv":
        _check_header_read(path, header, frame.columns)
    if frame.empty:
        raise ValueError(f"{path}: the file has no data rows")
    return frame


def _check_header_read(path: Path, header: list[str], columns) -> None:
    """ValueError when pandas read other columns than the CSV's header line names."""
    if [str(c) for c in columns] != header:
        raise ValueError(
            f"{path}: the header reads as {header} but pandas read the columns "
            f"{list(columns)}; check the quoting of the header line"
        )


def _parquet_names(path: Path) -> list[str]:
    """The column names in a Parquet file's schema, checked before pandas reads the file
    (pyarrow's own error for a repeated name names neither the column nor its position)."""
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


class TableColumns(NamedTuple):
    """A table's features (n, d), optional labels (n,) with 1 = anomaly, pass-through id
    columns, and the column the labels came from, if any: what the table kind's dataset
    (``vae_core.kinds.table``) is made of."""

    features: pd.DataFrame
    labels: np.ndarray | None
    ids: pd.DataFrame
    label_column: str | None = None


def table_fingerprint(table: TableColumns) -> dict[str, str | int]:
    """SHA-256 of a table's feature names, values and labels, with its shape."""
    h = hashlib.sha256(json.dumps([str(c) for c in table.features.columns]).encode())
    h.update(pd.util.hash_pandas_object(table.features, index=False).to_numpy().tobytes())
    if table.labels is not None:
        h.update(np.asarray(table.labels, dtype=np.int64).tobytes())
    rows, columns = table.features.shape
    return {"sha256": h.hexdigest(), "rows": int(rows), "columns": int(columns)}


def split_columns(
    frame: pd.DataFrame,
    label_column: str | None = None,
    id_columns: list[str] | tuple[str, ...] = (),
    *,
    drop_columns: list[str] | tuple[str, ...] = (),
    source: str = "input",
    require_label: bool = False,
) -> TableColumns:
    """Separate features from the label and id columns.

    A label column that is absent is allowed unless ``require_label``; one that is present
    must hold only 0 and 1 (ValueError naming rows otherwise).
    """
    check_id_columns(frame.columns, id_columns, source)
    labels = None
    if label_column is not None and label_column in frame.columns:
        labels = _binary_labels(frame[label_column], label_column, source)
    elif require_label and label_column is not None:
        raise ValueError(
            f"{source}: label column {label_column!r} not found; its columns: "
            f"{quoted(frame.columns)}"
        )
    excluded = {*id_columns, *drop_columns, *([label_column] if label_column else [])}
    features = frame[[c for c in frame.columns if c not in excluded]]
    return TableColumns(features, labels, frame[list(id_columns)], label_column)


NUMERIC_TEXT_SHARE = 0.95  # a text column this much numbers is a numeric column with typos


def text_among_numbers(s: pd.Series) -> np.ndarray | None:
    """The values of a text column that are not numbers, as a mask, when at least
    ``NUMERIC_TEXT_SHARE`` of its non-missing values are numbers and some are not: a numeric
    column with a few bad cells ("abc", "n/a", "1,5"), which would otherwise be read as a
    category with a level per number. None for a numeric or category column."""
    if not (ptypes.is_string_dtype(s) or ptypes.is_object_dtype(s)):
        return None
    present = s.notna().to_numpy()
    if not present.any():
        return None
    numbers = pd.to_numeric(s, errors="coerce").notna().to_numpy()
    share = numbers[present].mean()
    if share == 1.0 or share < NUMERIC_TEXT_SHARE:
        return None
    return present & ~numbers


def numeric_text_message(name: str, bad: pd.Series, where: str) -> str:
    examples = ", ".join(repr(v) for v in bad.head(3).tolist())
    return (
        f"column {name!r} holds numbers but also text: {examples} at {where}; correct "
        "the value(s), leave them empty (a missing value), or leave the column out "
        "(data.drop_columns)"
    )


def check_feature_cells(features: pd.DataFrame, source: str) -> None:
    """ValueError naming the column, the values and the lines (rows) of the file ``source``
    for an infinite number, or text among the numbers of a numeric column (which would
    otherwise be read as a category with a level per number). ``features``' index holds
    the rows' 0-based places in the file. The preprocessor checks the same for a DataFrame
    handed to the detector, naming index labels; here they are named as in the file."""
    for name in features.columns:
        s = features[name]
        typos = text_among_numbers(s)
        if typos is not None:
            where = file_rows(source, s.index[typos])
            raise ValueError(f"{source}: {numeric_text_message(str(name), s[typos], where)}")
        if ptypes.is_float_dtype(s):
            inf = np.isinf(s.to_numpy(dtype="float64", na_value=np.nan))
            if inf.any():
                raise ValueError(
                    f"{source}: column {name!r} has infinite values at "
                    f"{file_rows(source, s.index[inf])}"
                )


def _binary_labels(s: pd.Series, name: str, source: str) -> np.ndarray:
    values = pd.to_numeric(s, errors="coerce")
    bad = ~values.isin([0, 1]).to_numpy()
    if bad.any():
        raise ValueError(
            f"{source}: label column {name!r} must hold 0 (normal) or 1 (anomaly); "
            f"other values at {file_rows(source, s.index[bad])}"  # index: places in the file
        )
    return values.to_numpy(dtype="int64")


def load_table(path: str | Path, data, *, require_label: bool = False) -> TableColumns:
    """Read a table and separate features, labels and ids as the ``data`` config says.

    A table of more than ``data.max_train_rows`` rows (when set) is read as a uniform sample
    of that many rows (``read_table_sample``), so that memory is bounded by the sample, not
    the file; the same file always gives the same sample, so training and a later
    ``promote`` see the same rows and the same splits. An infinite number, or text among the
    numbers of a numeric column, is an error naming the column, values and lines
    (``check_feature_cells``).
    """
    max_rows = getattr(data, "max_train_rows", None)
    frame = read_table(path) if max_rows is None else read_table_sample(path, max_rows)
    table = split_columns(
        frame,
        data.label_column,
        data.id_columns,
        drop_columns=data.drop_columns,
        source=str(path),
        require_label=require_label,
    )
    check_feature_cells(table.features, str(path))
    return table


SAMPLE_SEED = 20_140_612  # fixed: the same file gives the same training sample on every run
SAMPLE_CHUNK_ROWS = 65_536


def table_rows(path: str | Path) -> int:
    """The number of data rows of a CSV or Parquet file (or folder of Parquet files), without
    reading it into memory: Parquet from its footer, CSV by counting lines (an upper bound
    when a quoted value holds a line break)."""
    path = Path(path)
    if path.is_dir():
        return sum(table_rows(p) for p in sorted(path.glob("*.parquet")))
    if TABLE_SUFFIXES.get(path.suffix.lower()) == "parquet":
        return pq.ParquetFile(path).metadata.num_rows
    lines, last = 0, b"\n"
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            lines += block.count(b"\n")
            last = block[-1:]
    return max(0, lines + (last != b"\n") - 1)


def read_table_sample(path: str | Path, max_rows: int) -> pd.DataFrame:
    """``read_table``, or a uniform random sample of ``max_rows`` of its rows when it has
    more, read a chunk at a time: memory ~ twice the sample plus one chunk of
    ``SAMPLE_CHUNK_ROWS``, whatever the size of the file.

    The rows are chosen before any is read (``sample_positions``: bottom-k over keys from a
    generator seeded with ``SAMPLE_SEED``; every subset of that size is equally likely), then
    one pass over the file keeps them, in file order. The index is the rows' 0-based
    positions in the file, so an error about a sampled row still names its place there.
    """
    path = Path(path)
    if int(max_rows) < 1:
        raise ValueError(f"max_train_rows must be a positive integer, got {max_rows}")
    if not path.exists():
        raise FileNotFoundError(f"input {path} does not exist")
    if path.is_file() and TABLE_SUFFIXES.get(path.suffix.lower()) is None:
        return read_table(path)  # the unsupported type's message
    rows = table_rows(path)
    if rows <= max_rows:
        return read_table(path)
    wanted = sample_positions(rows, int(max_rows))
    pieces, first = [], 0
    for chunk in _table_chunks(path):
        lo, hi = np.searchsorted(wanted, [first, first + len(chunk)])
        if hi > lo:
            piece = chunk.iloc[wanted[lo:hi] - first]
            piece.index = pd.Index(wanted[lo:hi])
            pieces.append(piece)
        first += len(chunk)
    if not pieces:
        raise ValueError(f"{path}: the file has no data rows")
    kept = pd.concat(pieces)
    check_column_names(kept.columns, path)
    return kept


def sample_positions(rows: int, k: int, block: int = 1 << 20) -> np.ndarray:
    """k of the positions 0..rows-1, a uniform sample without replacement, sorted; the same
    for the same (rows, k). Bottom-k: each position gets a uniform key (a generator seeded
    with ``SAMPLE_SEED``, drawn in blocks) and the k smallest keys win. Memory O(k + block),
    whatever ``rows`` (a CSV's line count may exceed its rows when a quoted value holds a line
    break: positions past the last row are then simply not found)."""
    rng = np.random.default_rng(SAMPLE_SEED)
    keys, positions = np.empty(0), np.empty(0, dtype=np.int64)
    for start in range(0, rows, block):
        n = min(block, rows - start)
        keys = np.concatenate([keys, rng.random(n)])
        positions = np.concatenate([positions, np.arange(start, start + n, dtype=np.int64)])
        if len(keys) > k:
            keep = np.argpartition(keys, k - 1)[:k]
            keys, positions = keys[keep], positions[keep]
    return np.sort(positions)


def _table_chunks(path: Path):
    """Chunks of a CSV or Parquet file (or folder of Parquet files), checked as ``read_table``
    checks them (header layout, one set of columns per folder)."""
    if path.is_dir():
        parts = sorted(path.glob("*.parquet"))
        if not parts:
            raise ValueError(f"folder {path} holds no .parquet files")
        first_columns = None
        for part in parts:
            for chunk in _table_chunks(part):
                if first_columns is None:
                    first_columns = chunk.columns
                _check_same_columns(first_columns, parts[0], chunk.columns, part)
                yield chunk
        return
    kind = TABLE_SUFFIXES[path.suffix.lower()]
    try:
        if kind == "csv":
            header = check_csv_layout(path)
            reader = pd.read_csv(
                path, chunksize=SAMPLE_CHUNK_ROWS, skip_blank_lines=len(header) > 1
            )
            with reader:
                for chunk in reader:
                    _check_header_read(path, header, chunk.columns)
                    yield chunk
        else:
            _parquet_names(path)
            pf = pq.ParquetFile(path, pre_buffer=False)  # stream: memory ~ one batch
            for batch in pf.iter_batches(batch_size=SAMPLE_CHUNK_ROWS):
                yield batch.to_pandas()
    except (pd.errors.ParserError, pd.errors.EmptyDataError, pa.ArrowInvalid, OSError) as exc:
        raise ValueError(f"{path}: cannot be read as {kind} ({exc})") from exc
