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

The input side (partitions, reading in chunks, the batch's id, schema validation, and how
rows are named in error messages) is ``vae_core.steps.batch_input``; its public names are
re-exported here. This module scores, stages, commits and summarises.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import uuid
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from vae_core.foundations.atomic import exclusive
from vae_core.network import devices
from vae_core.steps.batch_input import Partition, input_schema, read_partition, validate_chunk
from vae_core.steps.batch_input import batch_identity as batch_identity  # re-exported
from vae_core.steps.batch_input import checked_batch_id as checked_batch_id  # re-exported
from vae_core.steps.batch_input import files_identity as files_identity  # re-exported
from vae_core.steps.batch_input import list_partitions as list_partitions  # re-exported
from vae_core.steps.scoring import score_table


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
    """What a scoring run reports, for a table or a folder of images: counts, drift and the
    top anomalies of the whole batch, and the files it wrote.

    score_sample : scores to describe the distribution by (at most 2,000 per partition of a
        table; every image's score).
    output : the scores file; artifacts : more files a scoring run logs, {artifact folder:
        path} (images: ``anomaly_maps``, the maps folder; ``skipped``, the list of files
        left out, each only when written); skipped_files : (path, reason) of those files.
    unit : what a row is, "rows" or "images".
    """

    batch_id: str
    rows: int
    flagged: int
    threshold: float
    psi: float | None
    drift_warning: bool
    score_sample: np.ndarray
    top: pd.DataFrame
    output: Path | None = None
    artifacts: dict[str, Path] = field(default_factory=dict)
    skipped_files: list[tuple[str, str]] = field(default_factory=list)
    unit: str = "rows"

    @property
    def flagged_rate(self) -> float:
        return self.flagged / self.rows if self.rows else 0.0


ScoreParts = Callable[[list[Partition], Path], list["StagedPart"]]


def local_parts(
    det, id_columns: list[str], scoring, on_part: Callable[[], None] | None = None
) -> ScoreParts:
    """``score_parts`` that scores the partitions in this process with ``score_partition``
    (``scoring``: chunk_rows, top_features), ``scoring.max_workers`` at a time on threads that
    share the cores out (``devices.shared_cores``), as the score flow's thread runner does;
    ``on_part()`` is called after each (a progress bar). With one worker, or one partition,
    torch keeps its own thread count. The staged parts come in partition order."""
    ids, chunk, top = list(id_columns), scoring.chunk_rows, scoring.top_features

    def score_parts(parts: list[Partition], staging: Path) -> list[StagedPart]:
        def one(i: int) -> StagedPart:
            staged = score_partition(det, parts[i], staging, i, ids, chunk, top)
            if on_part is not None:
                on_part()
            return staged

        workers = max(1, min(int(scoring.max_workers), len(parts)))
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


def score_table_batch(
    det,
    source: str | Path,
    dest: Path,
    batch_id: str,
    scoring,
    id_columns: list[str],
    *,
    score_parts: ScoreParts | None = None,
    on_wait: Callable[[], None] | None = None,
) -> BatchSummary:
    """Score the table ``source`` (a file, a glob or a folder of partitions) into ``dest``
    (.parquet or .csv) as one batch: partitions listed, each validated, scored and staged,
    then committed at once (see the module doc); the summary, with ``output`` set.

    scoring : the ``ScoringConfig`` (chunk_rows, top_features, drift_psi_warning).
    score_parts : (partitions, staging folder) -> their ``StagedPart``s, in order: how the
        partitions are scored (the score flow: Prefect tasks on its task runner); default
        ``local_parts``, ``scoring.max_workers`` at a time on threads of this process.
    on_wait : called once if another run of the same batch holds its lock.
    """
    parts = list_partitions(source)
    score_parts = score_parts or local_parts(det, id_columns, scoring)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with staging_for(dest, batch_id, on_wait=on_wait) as staging:
        staged = score_parts(parts, staging)
        written = commit_scores(staged, dest, staging)
    summary = summarise_batch(batch_id, staged, det.threshold_, scoring.drift_psi_warning)
    summary.output = Path(written)
    return summary


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


def summary_markdown(summary: BatchSummary, model: str, source: str) -> str:
    """A short Markdown summary of a scoring run, for the Prefect artifact and the logs."""
    unit = summary.unit
    lines = [
        f"# Scores for batch `{summary.batch_id}`",
        "",
        f"- Model: `{model}`; input: `{source}`; output: `{summary.output}`",
        f"- {unit.capitalize()}: {summary.rows:,}; flagged: {summary.flagged:,} "
        f"({summary.flagged_rate:.2%}) at threshold {summary.threshold:.4g} (one is flagged "
        "iff its score is greater)",
    ]
    if summary.psi is not None:
        verdict = (
            "**drift warning**: the scores no longer look like the calibration data"
            if (summary.drift_warning)
            else "no drift warning"
        )
        lines.append(f"- Score drift (PSI vs calibration deciles): {summary.psi:.3f} ({verdict})")
    if "anomaly_maps" in summary.artifacts:
        lines.append(f"- Anomaly maps: `{summary.artifacts['anomaly_maps']}`")
    return "\n".join(lines) + "\n" + skipped_markdown(summary.skipped_files)


def skipped_markdown(skipped: list[tuple[str, str]]) -> str:
    """A Markdown section listing the skipped files (path, reason); "" when none was."""
    if not skipped:
        return ""
    lines = [f"- `{path}`: {reason}" for path, reason in skipped]
    return f"\n## Skipped files ({len(skipped)})\n\n" + "\n".join(lines) + "\n"
