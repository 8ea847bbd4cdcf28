"""Batch scoring with bounded memory, validated input and atomic, idempotent output.

A batch is one input (a CSV or Parquet file, a glob, or a folder of Parquet partitions) split
into partitions (files, or row groups of one large Parquet file). Each partition is read in
chunks, validated against the model's schema (pandera, built from the schema recorded at fit),
scored, and written to a staging folder next to the destination. Only when every partition has
succeeded are the staged parts streamed into the final file under a temporary name and renamed
over the destination (``commit_scores``). So:

* a bad row anywhere fails the batch before any output is written, and earlier outputs are
  untouched;
* a crash (even SIGKILL) leaves at most a stale staging folder, never a partial output file:
  every temporary file of a run, the final file's included, is written inside the staging
  folder, which the next run of the batch removes first (``discard_staging``);
* rerunning a batch (same batch id) replaces its output: every row appears exactly once;
* two runs of the same batch id at once (two `prefect deployment run`, a retry beside a
  late run) take turns: ``batch_lock`` holds the second until the first has committed, so
  neither removes the other's staging folder and the output is one run's whole file;
* a full disk fails the batch with one ``OSError`` (errno ENOSPC) naming the file it could not
  write; the failing step removes its temporary file and closes every file it opened, so the
  space is free again (for a retry), and earlier outputs keep their bytes.

Rows in error messages are named as in the file (``ingest.file_rows``): a CSV's "line N"
with the header as line 1, a Parquet file's "row N" counting from 1 (a row group's rows by
their place in the whole file). A renamed column is reported as missing with the unexpected
columns beside it, and a mistyped id column as an id column not found.
"""

from __future__ import annotations

import contextlib
import errno
import glob as globlib
import hashlib
import os
import shutil
import uuid
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from vae_core.atomic import exclusive
from vae_core.ingest import (
    TABLE_SUFFIXES,
    check_column_names,
    check_csv_layout,
    check_id_columns,
    csv_header,
    file_rows,
    quoted,
)
from vae_core.scoring import score_table

_ID = "id column"  # the title that marks an id column in the input schema


@dataclass(frozen=True)
class Partition:
    """One unit of scoring work: a file, or one row group of a Parquet file."""

    path: str
    row_group: int | None = None

    @property
    def name(self) -> str:
        return self.path if self.row_group is None else f"{self.path} (row group {self.row_group})"


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


def batch_identity(source: str | Path, batch_id: str | None = None) -> str:
    """The batch's id: the given one, or a hash of its files' names and bytes."""
    if batch_id:
        return checked_batch_id(batch_id)
    return files_identity(sorted({p.path for p in list_partitions(source)}))


def checked_batch_id(batch_id: str) -> str:
    """``batch_id`` if it is safe as a file name inside the output folder, else ValueError:
    letters, digits, '-', '_' and '.', not empty, not starting with '.' (no hidden files, no
    '..'), at most 200 characters; so no path separator, NUL byte or absolute path."""
    ok = (
        0 < len(batch_id) <= 200
        and not batch_id.startswith(".")
        and all((ch.isascii() and ch.isalnum()) or ch in "-_." for ch in batch_id)
    )
    if not ok:
        raise ValueError(
            f"batch id {batch_id!r} may hold only letters, digits, '-', '_' and '.', must not "
            "start with '.', and has 1 to 200 characters"
        )
    return batch_id


def files_identity(paths) -> str:
    """``b-`` and a hash of the files' names and bytes, in the given order."""
    h = hashlib.sha256()
    for path in paths:
        h.update(Path(path).name.encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return "b-" + h.hexdigest()[:16]


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
    try:
        return schema.validate(frame, lazy=True)
    except pde.SchemaErrors as err:
        unexpected = [c for c in frame.columns if c not in schema.columns]
        raise ValueError(_describe_failures(err.failure_cases, source, unexpected)) from None


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


# ---- scoring into a staging folder, then commit ------------------------------------------------
@dataclass
class StagedPart:
    """What scoring one partition produced: a staged file and its summary."""

    path: str
    rows: int = 0
    flagged: int = 0
    decile_counts: list[int] = field(default_factory=list)  # against the calibration deciles
    score_sample: list[float] = field(default_factory=list)  # up to 2,000 scores, for plots
    top: list[dict] = field(default_factory=list)  # the part's highest-scoring rows


def staging_dir(dest: Path, batch_id: str) -> Path:
    return Path(dest).parent / f".{batch_id}.staging"


def batch_lock(dest: Path, batch_id: str, on_wait: Callable[[], None] | None = None):
    """The lock one run of batch ``batch_id`` holds while it writes, in ``dest``'s folder
    (``.<batch id>.lock``, removed on release). A second run of the same id waits for it
    (``on_wait()`` is called once if so); other ids do not."""
    return exclusive(Path(dest).parent / f".{batch_id}.lock", on_wait)


@contextlib.contextmanager
def staging_for(
    dest: Path, batch_id: str, on_wait: Callable[[], None] | None = None
) -> Iterator[Path]:
    """The staging folder of one run of a batch, under its ``batch_lock``: a folder left by a
    killed run is removed first, and this run's on the way out (after ``commit_scores``, or
    on failure)."""
    staging = staging_dir(dest, batch_id)
    with batch_lock(dest, batch_id, on_wait):
        discard_staging(staging)  # left over by a killed run of the same batch
        try:
            yield staging
        finally:
            discard_staging(staging)


def score_partition(
    det,
    part: Partition,
    staging: Path,
    index: int,
    id_columns: list[str],
    chunk_rows: int = 100_000,
    top_features: int = 3,
    top_rows: int = 10,
) -> StagedPart:
    """Validate, score and stage one partition, chunk by chunk (memory ~ one chunk)."""

    schema = input_schema(det, id_columns)
    staging.mkdir(parents=True, exist_ok=True)
    out = StagedPart(str(staging / f"part-{index:05d}.parquet"))
    edges = _reference_edges(det)
    rng = np.random.default_rng(index)

    def scored_tables() -> Generator[pa.Table, None, None]:
        for chunk in read_partition(part, chunk_rows):
            clean = validate_chunk(chunk, schema, part.name)
            scored = score_table(det, clean, clean[list(id_columns)], top_features)
            _summarise(out, scored, edges, rng, top_rows)
            yield pa.Table.from_pandas(scored, preserve_index=False)

    what = f"the scores of {part.name} to the output folder {staging.parent}"
    _write_atomically(scored_tables(), Path(out.path), staging, _write_parquet, what)
    return out


def _reference_edges(det) -> np.ndarray | None:
    deciles = (det.calibration_ or {}).get("details", {}).get("score_deciles")
    return None if deciles is None else np.asarray(deciles, dtype=float)


def _summarise(out: StagedPart, scored: pd.DataFrame, edges, rng, top_rows: int) -> None:
    scores = scored["anomaly_score"].to_numpy()
    out.rows += len(scores)
    out.flagged += int(scored["is_anomaly"].sum())
    if edges is not None:
        counts = np.bincount(np.searchsorted(edges, scores, side="right"), minlength=len(edges) + 1)
        out.decile_counts = (np.asarray(out.decile_counts or 0) + counts).tolist()
    keep = min(len(scores), max(0, 2000 - len(out.score_sample)))
    out.score_sample += rng.choice(scores, keep, replace=False).tolist() if keep else []
    best = scored.nlargest(top_rows, "anomaly_score")
    merged = out.top + best.to_dict("records")
    out.top = sorted(merged, key=lambda r: -r["anomaly_score"])[:top_rows]


def commit_scores(parts: list[StagedPart], dest: Path, staging: Path) -> Path:
    """Stream the staged parts, in order, into ``dest`` (.parquet, or .csv) atomically;
    remove the staging folder.

    staging : the batch's ``staging_dir(dest, ...)``, in ``dest``'s folder (one file system,
    so the rename is atomic). The temporary file is written inside it, so a run killed while
    committing leaves nothing beside the outputs that ``discard_staging`` would not remove.
    A full disk raises OSError (ENOSPC) naming ``dest``, which keeps its old bytes.
    """
    dest, staging = Path(dest), Path(staging)
    write = _write_csv if dest.suffix.lower() == ".csv" else _write_parquet
    _write_atomically(_staged_tables(parts), dest, staging, write, "the scores to", durable=True)
    shutil.rmtree(staging, ignore_errors=True)
    return dest


def _write_atomically(
    tables: Generator[pa.Table, None, None],
    dest: Path,
    staging: Path,
    write: Callable[[Iterator[pa.Table], Path], int],
    what: str,
    durable: bool = False,
) -> int:
    """``write`` the tables to a temporary file in ``staging``, then rename it over ``dest``;
    the row count. On any failure the temporary file is removed and every file the tables'
    generator holds open is closed: a failed step holds no disk space. ``durable`` fsyncs
    before the rename, so a delayed write error (NFS, quota) fails here and a power cut
    cannot leave a renamed but empty file."""
    staging.mkdir(parents=True, exist_ok=True)
    tmp = staging / f"{dest.name}.{uuid.uuid4().hex}.tmp"
    try:
        with _reporting_full_disk(dest, what):
            rows = write(tables, tmp)
            if rows == 0:
                raise ValueError("no scored rows to write")
            if durable:
                _fsync(tmp)
            os.replace(tmp, dest)
    finally:
        tables.close()
        tmp.unlink(missing_ok=True)
    return rows


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


@contextlib.contextmanager
def _reporting_full_disk(path: Path, what: str) -> Iterator[None]:
    """Re-raise a full disk (or quota) as one OSError(ENOSPC) naming ``path``: pyarrow's
    error names no file, and a nightly run's log should say which folder is full."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in _DISK_FULL:
            raise
        # str(): "[Errno 28] No space left on device writing <what>: '<path>'"
        raise OSError(errno.ENOSPC, f"No space left on device writing {what}", str(path)) from exc


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_parquet(tables: Iterator[pa.Table], path: Path) -> int:
    rows = 0
    # Our own handle: ParquetWriter.close() skips closing a file it opened when flushing
    # fails (a full disk), which would keep the unlinked file's space until garbage collection.
    with pa.OSFile(str(path), "wb") as sink:
        writer = None
        try:
            for table in tables:
                writer = writer or pq.ParquetWriter(sink, table.schema)
                writer.write_table(table)
                rows += table.num_rows
        finally:
            if writer is not None:
                writer.close()
    return rows


def _write_csv(tables: Iterator[pa.Table], path: Path) -> int:
    rows = 0
    with open(path, "w", newline="") as sink:
        for table in tables:
            table.to_pandas().to_csv(sink, header=rows == 0, index=False)
            rows += table.num_rows
    return rows


def _staged_tables(parts: list[StagedPart]) -> Generator[pa.Table, None, None]:
    for part in parts:
        # stream: memory ~ one row group; `with`: closed when the generator is
        with pq.ParquetFile(part.path, pre_buffer=False) as pf:
            for g in range(pf.num_row_groups):
                yield pf.read_row_group(g)


def discard_staging(staging: Path) -> None:
    """Remove a staging folder left by a failed or killed run."""
    shutil.rmtree(staging, ignore_errors=True)


# ---- drift -------------------------------------------------------------------------------------
def population_stability_index(counts: list[int] | np.ndarray, n_bins: int = 10) -> float:
    """PSI of scored rows across the calibration score deciles (10 equal reference shares).

    PSI = sum_i (a_i - e_i) ln(a_i / e_i), with e_i = 1/10 and a_i the share of new scores in
    decile bin i (empty bins get half a count so the sum stays finite). Common reading: < 0.1
    stable, 0.1-0.25 moderate shift, > 0.25 large shift.
    """
    counts = np.asarray(counts, dtype=float)
    if counts.size != n_bins or counts.sum() == 0:
        raise ValueError(f"need {n_bins} bin counts with at least one row, got {counts.tolist()}")
    actual = np.maximum(counts, 0.5) / counts.sum()
    expected = np.full(n_bins, 1.0 / n_bins)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


# ---- the batch's summary -------------------------------------------------------------------
@dataclass
class BatchSummary:
    """What a scoring run reports: counts, drift and the top anomalies of the whole batch."""

    batch_id: str
    rows: int
    flagged: int
    threshold: float
    psi: float | None
    drift_warning: bool
    score_sample: np.ndarray
    top: pd.DataFrame

    @property
    def flagged_rate(self) -> float:
        return self.flagged / self.rows if self.rows else 0.0


def summarise_batch(
    batch_id: str, parts: list[StagedPart], threshold: float, psi_warning: float, top_rows: int = 10
) -> BatchSummary:
    """Combine the per-partition summaries; PSI against the calibration deciles if recorded."""
    counts = [p.decile_counts for p in parts if p.decile_counts]
    psi = population_stability_index(np.sum(counts, axis=0)) if counts else None
    top = pd.DataFrame([row for p in parts for row in p.top])
    if len(top):
        top = top.nlargest(top_rows, "anomaly_score").reset_index(drop=True)
    return BatchSummary(
        batch_id=batch_id,
        rows=sum(p.rows for p in parts),
        flagged=sum(p.flagged for p in parts),
        threshold=float(threshold),
        psi=psi,
        drift_warning=psi is not None and psi > psi_warning,
        score_sample=np.asarray([s for p in parts for s in p.score_sample]),
        top=top,
    )


def summary_markdown(summary: BatchSummary, model: str, source: str, dest: str) -> str:
    """A short Markdown summary of a scoring run, for the Prefect artifact and the logs."""
    lines = [
        f"# Scores for batch `{summary.batch_id}`",
        "",
        f"- Model: `{model}`; input: `{source}`; output: `{dest}`",
        f"- Rows: {summary.rows:,}; flagged: {summary.flagged:,} ({summary.flagged_rate:.2%}) "
        f"at threshold {summary.threshold:.4g} (a row is flagged iff its score is greater)",
    ]
    if summary.psi is not None:
        verdict = (
            "**drift warning**: the scores no longer look like the calibration data"
            if (summary.drift_warning)
            else "no drift warning"
        )
        lines.append(f"- Score drift (PSI vs calibration deciles): {summary.psi:.3f} ({verdict})")
    return "\n".join(lines) + "\n"
