"""The input side of a table batch: its partitions (files, or row groups of one large Parquet
file), their rows read in chunks with CSV or Parquet told apart by the file's suffix, and each
chunk validated against the model's schema (pandera, built from the schema recorded at fit),
for the table kind (``vae_core.kinds.table``); the batch engine (``vae_core.steps.batch``)
scores what this reads.

Rows in error messages are named as in the file (``ingest.file_rows``): a CSV's "line N"
with the header as line 1, a Parquet file's "row N" counting from 1 (a row group's rows by
their place in the whole file). A renamed column is reported as missing with the unexpected
columns beside it, and a mistyped id column as an id column not found.
"""

from __future__ import annotations

import glob as globlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from vae_core.data.ingest import (
    TABLE_SUFFIXES,
    check_column_names,
    check_csv_layout,
    check_id_columns,
    csv_header,
    file_rows,
    quoted,
)
from vae_core.kinds.protocol import Partition

_ID = "id column"  # the title that marks an id column in the input schema


def list_partitions(source: str | Path) -> list[Partition]:
    """The partitions of a batch, in a stable order.

    source : a CSV/Parquet file, a glob pattern, or a folder (Parquet and CSV files below it).
    A Parquet file with several row groups gives one partition per row group.
    """
    text = str(source)
    if any(ch in text for ch in "*?["):
        files = sorted(Path(p) for p in globlib.glob(text, recursive=True))
    elif Path(text).is_dir():
        files = sorted(p for p in Path(text).rglob("*") if p.suffix.lower() in TABLE_SUFFIXES)
    elif Path(text).exists():
        files = [Path(text)]
    else:
        raise FileNotFoundError(f"input {text} does not exist")
    files = [f for f in files if f.is_file() and not f.name.startswith((".", "_"))]
    if not files:
        raise FileNotFoundError(f"input {text} matches no .csv or .parquet file")
    parts: list[Partition] = []
    for f in files:
        if TABLE_SUFFIXES.get(f.suffix.lower()) is None:
            raise ValueError(f"{f}: unsupported file type {f.suffix!r} (expected .csv or .parquet)")
        parts.extend(_file_partitions(f))
    return parts


def _file_partitions(path: Path) -> list[Partition]:
    if TABLE_SUFFIXES[path.suffix.lower()] == "csv":
        check_csv_layout(path)  # as read_table: nothing pandas would paper over silently
        return [Partition(str(path))]
    try:
        pf = pq.ParquetFile(path)
        n_groups = pf.num_row_groups
    except (pa.ArrowInvalid, OSError) as exc:
        raise ValueError(f"{path}: cannot be read as parquet ({exc})") from exc
    check_column_names(pf.schema_arrow.names, path)
    if n_groups <= 1:
        return [Partition(str(path))]
    return [Partition(str(path), g) for g in range(n_groups)]


def source_columns(source: str | Path) -> list[str]:
    """The column names of a batch's first partition (every partition has the same)."""
    path = Path(list_partitions(source)[0].path)
    if TABLE_SUFFIXES[path.suffix.lower()] == "csv":
        return csv_header(path)
    return list(pq.ParquetFile(path).schema_arrow.names)


def read_partition(part: Partition, chunk_rows: int) -> Iterator[pd.DataFrame]:
    """Chunks of at most ``chunk_rows`` rows; each chunk's index is its rows' 0-based
    positions in the whole file (a row group's rows too), which error messages name."""
    rows = 0
    try:
        for chunk in _raw_chunks(part, chunk_rows):
            rows += len(chunk)
            yield chunk
    except (pa.ArrowInvalid, OSError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise ValueError(f"{part.name}: cannot be read ({exc})") from exc
    if rows == 0:
        raise ValueError(f"{part.name}: the input has no data rows")


def _raw_chunks(part: Partition, chunk_rows: int) -> Iterator[pd.DataFrame]:
    if TABLE_SUFFIXES[Path(part.path).suffix.lower()] == "csv":
        # as read_table: in a one-column file an empty line is a missing value (a row)
        one_column = len(csv_header(part.path)) == 1
        first = 0
        try:
            for chunk in pd.read_csv(
                part.path, chunksize=chunk_rows, skip_blank_lines=not one_column
            ):
                chunk.index = pd.RangeIndex(first, first + len(chunk))
                first += len(chunk)
                yield chunk
        except pd.errors.EmptyDataError:
            return
        return
    pf = pq.ParquetFile(part.path, pre_buffer=False)  # stream: memory ~ one batch
    groups = None if part.row_group is None else [part.row_group]
    offset = (
        0
        if part.row_group is None
        else sum(pf.metadata.row_group(g).num_rows for g in range(part.row_group))
    )
    for record_batch in pf.iter_batches(batch_size=chunk_rows, row_groups=groups):
        frame = record_batch.to_pandas()
        frame.index = pd.RangeIndex(offset, offset + len(frame))
        offset += len(frame)
        yield frame


def validated_chunks(det, part: Partition, id_columns, chunk_rows: int) -> Iterator[pd.DataFrame]:
    """The rows of ``part``, ``chunk_rows`` at a time, each chunk validated against ``det``'s
    schema (``validate_chunk``) with ``id_columns`` required: what batch scoring and the
    latent space read of a table."""
    schema = input_schema(det, list(id_columns))
    for chunk in read_partition(part, chunk_rows):
        yield validate_chunk(chunk, schema, part.name)


# ---- validation ----------------------------------------------------------------------------
def input_schema(det, id_columns: list[str] | tuple[str, ...] = ()):
    """A pandera schema for raw input rows, built from the schema recorded at fit.

    Numeric columns must parse as numbers, be finite, and may be missing only where training
    had missing values or the detector marginalises missing values (``missing``); categorical
    columns may hold anything (unseen values are scored as
    improbable); id columns must be present. Extra columns are allowed and ignored.
    """
    import pandera.pandas as pda

    finite = pda.Check(lambda s: ~np.isinf(s), name="finite", error="infinite value")
    marginalise = det.missing == "marginalise" and det.preprocessor_.likelihood == "gaussian"
    columns = {}
    for spec in det.preprocessor_.columns:
        if spec.kind == "categorical":
            columns[spec.name] = pda.Column(nullable=True)
        else:
            columns[spec.name] = pda.Column(
                float,
                coerce=True,
                checks=[finite],
                nullable=spec.kind == "constant" or spec.missing_indicator or marginalise,
            )
    for name in id_columns:
        columns[name] = pda.Column(nullable=True, title=_ID)
    return pda.DataFrameSchema(columns, strict=False)


_CHECK_WORDS = {
    "not_nullable": "missing value (NaN) where the training data had none",
    "finite": "infinite value",
}


def validate_chunk(frame: pd.DataFrame, schema, source: str) -> pd.DataFrame:
    """The chunk with numeric columns coerced; ValueError naming file, columns, rows, values.

    An id column the chunk lacks is reported first, as an id column (``check_id_columns``)."""
    import pandera.errors as pde

    ids = [name for name, column in schema.columns.items() if column.title == _ID]
    check_id_columns(frame.columns, ids, source)
    if _passes_as_it_is(frame, schema):
        return frame
    try:
        return schema.validate(frame, lazy=True)
    except pde.SchemaErrors as err:
        unexpected = [c for c in frame.columns if c not in schema.columns]
        raise ValueError(_describe_failures(err.failure_cases, source, unexpected)) from None


def _passes_as_it_is(frame: pd.DataFrame, schema) -> bool:
    """Whether ``schema.validate`` would pass ``frame`` and change nothing in it: every column
    present once, each numeric one (the coerced ones) already float64, finite, and without
    NaN where the schema refuses it. Vectorised, so a clean chunk skips pandera's per-column
    work (about a tenth of end-to-end scoring); anything else goes to pandera, whose report
    names the columns and rows."""
    if frame.columns.duplicated().any():
        return False
    for name, column in schema.columns.items():
        if name not in frame.columns:
            return False
        if not column.coerce:
            continue  # categorical and id columns: any value, missing allowed
        values = frame[name]
        if values.dtype != np.float64:
            return False
        v = values.to_numpy()
        if np.isinf(v).any() or (not column.nullable and np.isnan(v).any()):
            return False
    return True


def _columns(names) -> str:
    return ("column " if len(names) == 1 else "columns ") + quoted(names)


def _describe_failures(cases: pd.DataFrame, source: str, unexpected=()) -> str:
    lines = [f"{source}: the input does not match the model's schema"]
    is_missing = cases["check"].astype(str) == "column_in_dataframe"
    if is_missing.any():  # a renamed column shows as one missing and one unexpected
        missing = cases.loc[is_missing, "failure_case"].tolist()
        line = f"  missing {_columns(missing)}"
        if unexpected:
            line += f"; unexpected {_columns(unexpected)}"
        lines.append(line)
        cases = cases[~is_missing]
    checks = cases["check"].astype(str)
    unparsed = set(cases.loc[checks.str.startswith("coerce_dtype"), "column"])
    # A column that does not parse fails its dtype and value checks too: report it once.
    cases = cases[~cases["column"].isin(unparsed) | checks.str.startswith("coerce_dtype")]
    for (column, check), group in cases.groupby(["column", "check"], sort=False, dropna=False):
        what = _CHECK_WORDS.get(str(check).split("(")[0], None)
        if what is None and str(check).startswith("coerce_dtype"):
            what = "not a number"
        what = what or str(check)
        rows = file_rows(source, group["index"].dropna().astype(int).tolist())
        values = ", ".join(repr(v) for v in group["failure_case"].head(3).tolist())
        lines.append(f"  column {column!r}: {what} at {rows} (values: {values})")
    return "\n".join(lines)
