"""Scale-out of batch scoring on a Dask cluster, and what it projects for a billion rows a night.

A Parquet file of ``--rows`` synthetic rows x ``--features`` columns (the generator of
``speed.py``, one row group per 262,144 rows, so one partition each) is scored through the
product's batch path (``vae_core.steps.batch.score_partition`` on every partition, in the Dask
workers, then ``commit_scores`` in the client: what the score flow's Dask task runner does)
on a local Dask cluster of worker *processes*, 1 thread each and 1 torch thread each, for each
``--workers`` count. Rows/s covers scoring and commit (the cluster's start and the model's
first load in each worker excluded: a warm-up partition is scored first), the best of
``--repeats`` runs: on a shared 2-core machine single runs of 2 workers ranged from 1.2x to
2.1x one worker.

Then a projection: the hours one billion rows take at the measured rate per worker, for more
workers, assuming the measured scaling efficiency holds (it cannot be measured here beyond
the machine's cores).

Target (issue "Production scale"): 2 workers at least 1.7x one worker.

Example::

    python benchmarks/scale_out.py --workers 1 2 --json benchmarks/results/scale_out.json
"""

from __future__ import annotations

import os

os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import argparse
import functools
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import protocol  # the sibling module, importable once the path is set
import speed  # the synthetic table generator

BILLION = 1_000_000_000


@functools.lru_cache(maxsize=1)
def _worker_detector(model_dir: str):
    import torch

    from vae_core import VAEDetector

    torch.set_num_threads(1)  # one core per worker process
    return VAEDetector.load(model_dir)


def score_in_worker(model_dir: str, part, staging: str, index: int, top_features: int):
    """What the flow's ``score_partition`` task runs in a Dask worker."""
    from vae_core.foundations.config import PipelineConfig
    from vae_core.steps import batch

    det = _worker_detector(model_dir)
    cfg = PipelineConfig.model_validate(
        {
            "data": {"id_columns": ["id"]},
            "scoring": {"chunk_rows": 65_536, "top_features": top_features},
        }
    )
    return batch.score_partition(det, part, Path(staging), index, cfg)


def fit_model(model_dir: Path, features: int) -> None:
    """A detector at the defaults, fitted on 20,000 rows of the generator (another seed than
    the scored rows), calibrated on 5,000 more."""
    from vae_core import VAEDetector
    from vae_core.foundations.calibrate import TargetFPR

    frame = speed.synthetic_frame(25_000, features, 1).drop(columns="id")
    det = VAEDetector(epochs=30, random_state=0).fit(frame.iloc[:20_000])
    det.calibrate(frame.iloc[20_000:], policy=TargetFPR(fpr=0.01))
    det.save(model_dir)


def measure(
    workers: int, model_dir: Path, src: Path, out_dir: Path, top_features: int, repeats: int
) -> dict:
    from dask.distributed import Client, LocalCluster

    from vae_core.kinds.table_input import list_partitions
    from vae_core.steps import batch

    parts = list_partitions(src)
    with (
        LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address="127.0.0.1:0",
            worker_dashboard_address="127.0.0.1:0",
            host="127.0.0.1",
            silence_logs=logging.ERROR,
        ) as cluster,
        Client(cluster) as client,
    ):
        warm = out_dir / ".warm"
        # every worker loads the model and scores a partition once before the clock starts
        client.gather([client.submit(score_in_worker, str(model_dir), parts[0], str(warm), i,
                                     top_features, pure=False, workers=[w])
                       for i, w in enumerate(client.scheduler_info()["workers"])])  # fmt: skip
        shutil.rmtree(warm, ignore_errors=True)
        dest = out_dir / f"scores_{workers}.parquet"
        times = []
        for _ in range(repeats):  # the best of a few: this machine's other jobs add noise
            t0 = time.perf_counter()
            with batch.staging_for(dest, f"scores_{workers}") as staging:
                futures = [client.submit(score_in_worker, str(model_dir), part, str(staging),
                                         i, top_features, pure=False)
                           for i, part in enumerate(parts)]  # fmt: skip
                staged = client.gather(futures)
                batch.commit_scores(staged, dest, staging)
            times.append(time.perf_counter() - t0)
    rows = sum(s.rows for s in staged)
    dest.unlink()
    seconds = min(times)
    return {"workers": workers, "rows": rows, "partitions": len(parts), "seconds": seconds,
            "all_seconds": times, "rows_per_s": rows / seconds}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--features", type=int, default=30)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--top-features", type=int, default=3, help="the scoring default")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per worker count (best)")
    p.add_argument("--project", type=int, nargs="+", default=[1, 2, 8, 32, 64])
    p.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "vae_speed")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    src = speed.write_synthetic_parquet(
        args.workdir / f"synthetic_{args.rows}x{args.features}.parquet",
        args.rows,
        args.features,
        0,
    )
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        model_dir = Path(tmp) / "model"
        fit_model(model_dir, args.features)
        results = [
            measure(w, model_dir, src, Path(tmp), args.top_features, args.repeats)
            for w in args.workers
        ]
    base = results[0]
    print(f"{args.rows:,} rows x {args.features} columns, {base['partitions']} partitions, "
          f"top_features {args.top_features}, defaults otherwise; {protocol.cpu_model()}, "
          f"{os.cpu_count()} cores\n")  # fmt: skip
    print("| Dask workers (processes, 1 thread) | seconds | rows/s | speed-up | target |")
    print("|---:|---:|---:|---:|---|")
    for r in results:
        up = r["rows_per_s"] / base["rows_per_s"]
        target = "" if r["workers"] != 2 else f">= 1.7x: {'yes' if up >= 1.7 else 'NO'}"
        print(f"| {r['workers']} | {r['seconds']:.1f} | {r['rows_per_s']:,.0f} | {up:.2f}x "
              f"| {target} |")  # fmt: skip
    per_worker = base["rows_per_s"] / base["workers"]
    last = results[-1]
    # above 1 only by noise (a busier first run): never project more than linear scaling
    efficiency = min(1.0, last["rows_per_s"] / (per_worker * last["workers"]))
    print(f"\nOne billion rows a night, projected: {per_worker:,.0f} rows/s per worker (measured "
          f"with {base['workers']}), scaling efficiency {efficiency:.2f} (measured at "
          f"{last['workers']} workers), assumed to hold\n")  # fmt: skip
    print("| workers | rows/s | hours for 10^9 rows |")
    print("|---:|---:|---:|")
    projection = []
    for w in args.project:
        rate = per_worker * w * (1.0 if w == 1 else efficiency)
        projection.append({"workers": w, "rows_per_s": rate, "hours": BILLION / rate / 3600})
        print(f"| {w} | {rate:,.0f} | {BILLION / rate / 3600:.1f} |")
    if args.json:
        settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        payload = {"provenance": protocol.provenance(), "args": settings, "results": results,
                   "projection": projection}  # fmt: skip
        protocol.write_json(payload, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
