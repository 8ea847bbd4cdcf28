"""The one batch engine: batch scoring with bounded memory, validated input and atomic,
idempotent output, for every kind of data.

A batch is one input split into partitions by the model's kind (``DataKind.partitions``: a
table's files or row groups of one large Parquet file; a folder or .npz of images). Each
partition is read in chunks as the kind reads it (``DataKind.chunks``: a table's rows
validated against the model's schema; images at the model's size, unreadable files skipped or
refused as ``images.on_error`` says), scored into the kind's scores frame
(``DataKind.score_frame``), and written to a staging folder next to the destination. What the
kind writes beside the scores (an image batch's anomaly maps and skipped list,
``DataKind.finish_batch``) is written under the batch's lock before the commit. Only when
every partition has succeeded are the staged parts streamed into the final file under a
temporary name and renamed over the destination (``commit_scores``). So:

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

The engine names no kind: it calls the ``DataKind`` of the model (``kinds.choice``). What a
batch reports (counts, drift, top rows) is ``vae_core.steps.batch_report``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import uuid
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from vae_core.foundations.atomic import exclusive
from vae_core.foundations.config import PipelineConfig
from vae_core.kinds.choice import kind_of_model
from vae_core.kinds.protocol import Partition
from vae_core.network import devices
from vae_core.steps.batch_report import BatchSummary, StagedPart, summarise_batch


# ---- scoring into a staging folder, then commit ------------------------------------------------
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
    det, part: Partition, staging: Path, index: int, cfg: PipelineConfig
) -> StagedPart:
    """Read, score and stage one partition, chunk by chunk (memory ~ one chunk), as the
    model's kind reads and scores it (``DataKind.chunks``, ``DataKind.score_frame``): its
    counts, calibration-decile counts, a sample of its scores and its top rows come back
    with the staged file."""
    kind = kind_of_model(det)
    staging.mkdir(parents=True, exist_ok=True)
    out = StagedPart(str(staging / f"part-{index:05d}.parquet"))
    edges = _reference_edges(det)
    rng = np.random.default_rng(index)
    top_rows = kind.top_rows(cfg)

    def scored_tables() -> Generator[pa.Table, None, None]:
        for chunk in kind.chunks(det, part, cfg):
            out.skipped += chunk.skipped
            if not len(chunk):  # every image of the chunk skipped
                continue
            scored = kind.score_frame(det, chunk.inputs, cfg)
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


def commit_scores(
    parts: list[StagedPart],
    dest: Path,
    staging: Path,
    add_columns: Callable[[pd.DataFrame], pd.DataFrame] | None = None,
) -> Path:
    """Stream the staged parts, in order, into ``dest`` (.parquet, or .csv) atomically;
    remove the staging folder. ``add_columns`` (the kind's ``BatchOutputs``: an image's
    ``map_path``) completes each staged frame on the way.

    staging : the batch's ``staging_dir(dest, ...)``, in ``dest``'s folder (one file system,
    so the rename is atomic). The temporary file is written inside it, so a run killed while
    committing leaves nothing beside the outputs that ``discard_staging`` would not remove.
    A full disk raises OSError (ENOSPC) naming ``dest``, which keeps its old bytes.
    """
    dest, staging = Path(dest), Path(staging)
    write = _write_csv if dest.suffix.lower() == ".csv" else _write_parquet
    tables = _staged_tables(parts, add_columns)
    _write_atomically(tables, dest, staging, write, "the scores to", durable=True)
    shutil.rmtree(staging, ignore_errors=True)
    return dest


def _write_atomically(
    tables: Generator[pa.Table, None, None],
    dest: Path,
    staging: Path,
    write: Callable[[Iterator[pa.Table], Path], int],
    what: str,
    *,
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


def _staged_tables(parts: list[StagedPart], add_columns=None) -> Generator[pa.Table, None, None]:
    for part in parts:
        # stream: memory ~ one row group; `with`: closed when the generator is
        with pq.ParquetFile(part.path, pre_buffer=False) as pf:
            for g in range(pf.num_row_groups):
                table = pf.read_row_group(g)
                if add_columns is not None:
                    frame = add_columns(table.to_pandas())
                    table = pa.Table.from_pandas(frame, preserve_index=False)
                yield table


def discard_staging(staging: Path) -> None:
    """Remove a staging folder left by a failed or killed run."""
    shutil.rmtree(staging, ignore_errors=True)


# ---- the batch's id ----------------------------------------------------------------------------
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


def batch_identity(det, source: str | Path, batch_id: str | None = None) -> str:
    """The batch's id: the given one, or a hash of the names and bytes of the files the
    model's kind reads of ``source`` (``DataKind.files``)."""
    if batch_id:
        return checked_batch_id(batch_id)
    return files_identity(kind_of_model(det).files(source))


# ---- the one engine ----------------------------------------------------------------------------
ScoreParts = Callable[[list[Partition], Path], list[StagedPart]]


def local_parts(det, cfg: PipelineConfig, on_part: Callable[[], None] | None = None) -> ScoreParts:
    """``score_parts`` that scores the partitions in this process with ``score_partition``,
    ``scoring.max_workers`` at a time on threads that share the cores out
    (``devices.shared_cores``), as the score flow's thread runner does; ``on_part()`` is
    called after each (a progress bar). With one worker, or one partition, torch keeps its
    own thread count. The staged parts come in partition order."""

    def score_parts(parts: list[Partition], staging: Path) -> list[StagedPart]:
        def one(i: int) -> StagedPart:
            staged = score_partition(det, parts[i], staging, i, cfg)
            if on_part is not None:
                on_part()
            return staged

        workers = max(1, min(int(cfg.scoring.max_workers), len(parts)))
        if workers == 1:
            return [one(i) for i in range(len(parts))]
        with (
            devices.shared_cores(workers),
            ThreadPoolExecutor(workers, thread_name_prefix="vae-score") as pool,
        ):
            futures = [pool.submit(one, i) for i in range(len(parts))]
            try:  # until all are done or any one fails, whichever partition it is
                wait(futures, return_when=FIRST_EXCEPTION)
            finally:  # a failure (bad input) or Ctrl-C: no further partition starts
                for future in futures:
                    future.cancel()
            # in partition order: the first failure is raised (those before it had started)
            return [future.result() for future in futures]

    return score_parts


def score_batch(
    det,
    source: str | Path,
    cfg: PipelineConfig,
    out: str | Path,
    batch_id: str | None = None,
    *,
    score_parts: ScoreParts | None = None,
    on_wait: Callable[[str], None] | None = None,
) -> BatchSummary:
    """Score one batch with ``det`` as the config says: the one batch scoring of
    ``vae-anomaly score`` and the score flow, for a table or images alike, so both doors
    write the same file.

    A table model scores a table (a file, a glob or a folder of partitions; ``data.id_columns``
    pass through, ``scoring.chunk_rows`` / ``top_features`` apply) into ``out``: a .csv or
    .parquet file, or a folder that gets ``<batch id>.parquet``. An image model scores a
    folder of images or an .npz (``images`` section: ``chunk_images``, ``on_error``,
    ``top_maps``) into the folder ``out``: ``<batch id>.parquet``, ``<batch id>.maps/`` and,
    when files were skipped, ``<batch id>.skipped.csv``. Either way the drift of the scores
    (PSI against the calibration deciles) is measured and warned of above
    ``scoring.drift_psi_warning``, and rerunning a batch replaces its output.

    batch_id : the batch's name in an output folder (default: a hash of the input's files).
    score_parts : (partitions, staging folder) -> their ``StagedPart``s, in order: how the
        partitions are scored (the score flow: Prefect tasks on its task runner); default
        ``local_parts``, ``scoring.max_workers`` at a time on threads of this process.
    on_wait : called with the batch id if another run of it holds the batch's lock.
    """
    kind, out = kind_of_model(det), Path(out)
    dest = kind.destination(out, batch_id)
    if dest is None:
        ident = batch_identity(det, source, batch_id)
        dest = out / f"{ident}.parquet"
    else:
        ident = dest.stem
    waiting = None if on_wait is None else (lambda: on_wait(ident))
    return score_batch_into(det, source, dest, ident, cfg, score_parts=score_parts, on_wait=waiting)


@contextlib.contextmanager
def _output_folder(folder: Path) -> Iterator[None]:
    """``folder`` made for the block; removed again if the block fails and leaves it empty
    (a failed first batch leaves no trace)."""
    made = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except BaseException:
        if made:
            with contextlib.suppress(OSError):  # not empty, or gone: leave it
                folder.rmdir()
        raise


def score_batch_into(
    det,
    source: str | Path,
    dest: Path,
    batch_id: str,
    cfg: PipelineConfig,
    *,
    score_parts: ScoreParts | None = None,
    on_wait: Callable[[], None] | None = None,
) -> BatchSummary:
    """``score_batch`` into the file ``dest`` as batch ``batch_id``: partitions listed, each
    read, scored and staged, the kind's outputs written beside ``dest`` (an image batch's
    anomaly maps), then all committed at once (see the module doc); the summary, with
    ``output`` set. on_wait : called once if another run of the batch holds its lock."""
    kind = kind_of_model(det)
    parts = kind.partitions(source)
    score_parts = score_parts or local_parts(det, cfg)
    dest = Path(dest)
    with _output_folder(dest.parent), staging_for(dest, batch_id, on_wait=on_wait) as staging:
        staged = score_parts(parts, staging)
        summary = summarise_batch(
            batch_id,
            staged,
            threshold=det.threshold_,
            psi_warning=cfg.scoring.drift_psi_warning,
            top_rows=kind.top_rows(cfg),
            unit=kind.unit,
        )
        extra = kind.finish_batch(det, summary.top, summary.skipped_files, dest, cfg)
        summary.output = commit_scores(staged, dest, staging, extra.add_columns)
    if extra.add_columns is not None and len(summary.top):
        summary.top = extra.add_columns(summary.top)
    summary.artifacts = extra.artifacts
    return summary
