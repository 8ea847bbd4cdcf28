"""Stream-score a Parquet file with a saved VAEDetector: Parquet in, Parquet out, in row batches.

It runs the product's own path, ``vae_core.steps.batch`` (what the score flow and ``vae-anomaly
score`` use): pyarrow reads one batch of rows at a time, pandera validates it, the detector
scores it, the result is staged, and the staged parts are streamed into the output under a
temporary name and renamed. Memory stays flat in the file size.

``speed.py`` runs this in a subprocess to measure end-to-end throughput and peak RSS; it prints
one JSON line with its measurements.

Example::

    python benchmarks/score_parquet.py runs/demo/model in.parquet out.parquet --id-column id
"""

from __future__ import annotations

import os

os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import argparse
import json
import resource
import sys
import time
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", type=Path, help="folder written by VAEDetector.save")
    p.add_argument("src", type=Path, help="input Parquet file")
    p.add_argument("dst", type=Path, help="output Parquet file")
    p.add_argument("--id-column", action="append", default=[], help="pass-through id column")
    p.add_argument("--batch-rows", type=int, default=65_536, help="rows read per batch")
    p.add_argument("--top-features", type=int, default=0, help="top contributing columns")
    p.add_argument("--threads", type=int, default=1, help="cores the run may use (default 1)")
    p.add_argument(
        "--workers",
        type=int,
        help="partitions scored at once (scoring.max_workers), each on threads / workers torch "
        "threads, as the score flow's thread runner does; default: --threads",
    )
    return p.parse_args(argv)


def rss_mb() -> float:
    """Current resident set size of this process, in MiB (Linux /proc)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB.

    ``VmHWM`` of /proc/self/status, the high-water mark of this program's memory map. Not
    ``ru_maxrss``: Linux carries that over from the parent across fork + exec, so a child of
    a big parent reports the parent's size (measured: 784 MiB instead of 454 MiB).
    """
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def score_parquet(
    det,
    src: Path,
    dst: Path,
    ids: list[str],
    batch_rows: int,
    top_features: int = 0,
    workers: int = 1,
) -> int:
    """Score every row of ``src`` into ``dst`` through the product's batch path
    (``batch.score_batch_into``: schema validation, chunked scoring, staged atomic commit, as
    the score flow and ``vae-anomaly score`` run it), ``workers`` partitions at a time on
    threads (``batch.local_parts``, ``scoring.max_workers``); returns the number of rows."""
    from vae_core.foundations.config import PipelineConfig
    from vae_core.steps import batch

    scoring = {"chunk_rows": batch_rows, "top_features": top_features, "max_workers": workers}
    cfg = PipelineConfig.model_validate({"data": {"id_columns": list(ids)}, "scoring": scoring})
    return batch.score_batch_into(det, src, dst, "speed", cfg).rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import protocol

    from vae_core import VAEDetector
    from vae_core.network.devices import scoring_threads

    workers = args.workers or args.threads
    protocol.set_torch_threads(args.threads)  # local_parts shares them out among the workers

    det = VAEDetector.load(args.model)
    loaded_mb = rss_mb()
    started = time.perf_counter()
    rows = score_parquet(
        det, args.src, args.dst, args.id_column, args.batch_rows, args.top_features, workers
    )
    seconds = time.perf_counter() - started
    print(
        json.dumps(
            {
                "rows": rows,
                "seconds": seconds,
                "rows_per_second": rows / seconds,
                "workers": workers,
                "torch_threads_per_worker": scoring_threads(workers),
                "rss_after_load_mb": loaded_mb,
                "peak_rss_mb": peak_rss_mb(),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
