"""Training memory on tables larger than memory: peak RSS of a whole training run
(``load_dataset`` -> ``training.train_and_evaluate``: split, fit, calibrate, evaluate, review)
on synthetic Parquet files of each ``--rows`` size, each in a fresh process.

With ``data.max_train_rows`` (default 500,000) the table is read as a fixed uniform sample
streamed a chunk at a time (``ingest.read_table_sample``), so the peak should be flat in the
file's size. Target (issue "Production scale"): at most 1.5 GiB on 10M rows, flat against 1M.
The default bound is the one that meets it: with 1,000,000 rows read, the peak was 2.1 GiB
(the preprocessor's fit copies the training rows several times; see docs/benchmarks.md).

Example::

    nice -n 10 python benchmarks/train_memory.py --rows 1000000 10000000 \
        --workdir /tmp/vae_speed --json benchmarks/results/train_memory.json
"""

from __future__ import annotations

import os

os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import protocol  # the sibling module, importable once the path is set
import speed  # the synthetic table generator (the one the scoring benchmark uses)

GIB = 1024.0  # MiB per GiB
TARGET_GIB = 1.5


def peak_rss_mib() -> float:
    """VmHWM of this process, MiB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmHWM in /proc/self/status")


def child(path: Path, epochs: int, threads: int, max_rows: int | None) -> dict:
    """One training run in this process; its phases' times and peak RSS."""
    protocol.set_torch_threads(threads)
    from vae_core.data.ingest import table_rows
    from vae_core.foundations.config import PipelineConfig
    from vae_core.kinds.choice import load_dataset
    from vae_core.steps.training import train_and_evaluate

    cfg = PipelineConfig.model_validate(
        {
            "data": {"id_columns": ["id"], "label_column": None, "max_train_rows": max_rows},
            "training": {"epochs": epochs},
        }
    )
    out: dict = {"file_rows": table_rows(path), "after_imports_mib": peak_rss_mib()}
    t0 = time.perf_counter()
    table = load_dataset(path, cfg)
    out |= {"rows_read": len(table.features), "load_s": time.perf_counter() - t0}
    out["after_load_mib"] = peak_rss_mib()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        outcome = train_and_evaluate(table, cfg, Path(tmp))
    out |= {"train_s": time.perf_counter() - t0, "peak_mib": peak_rss_mib()}
    out["split_rows"] = outcome.splits.sizes()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    p.add_argument("--features", type=int, default=30)
    p.add_argument("--epochs", type=int, default=1, help="training epochs (memory is per epoch)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-train-rows", type=int, default=500_000, help="the default")
    p.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "vae_speed")
    p.add_argument("--json", type=Path)
    p.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.epochs, args.threads, args.max_train_rows)))
        return 0
    args.workdir.mkdir(parents=True, exist_ok=True)
    results = []
    for rows in args.rows:
        path = speed.write_synthetic_parquet(
            args.workdir / f"synthetic_{rows}x{args.features}.parquet", rows, args.features, 0
        )
        cmd = [sys.executable, __file__, "--child", str(path), "--epochs", str(args.epochs),
               "--threads", str(args.threads),
               "--max-train-rows", str(args.max_train_rows)]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"training on {path} failed:\n{done.stderr[-3000:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        result |= {"file": path.name, "file_mib": path.stat().st_size / 2**20}
        results.append(result)
    first = results[0]["peak_mib"]
    print(f"max_train_rows {args.max_train_rows:,}, {args.epochs} epoch(s), "
          f"{args.threads} torch thread(s), {protocol.cpu_model()}\n")  # fmt: skip
    print("| file rows | file | rows read | load | train, calibrate, evaluate | peak RSS "
          "| vs first | target |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in results:
        ok = r["peak_mib"] <= TARGET_GIB * GIB and r["peak_mib"] <= 1.10 * first
        met = "yes" if ok else "NO"
        print(f"| {r['file_rows']:,} | {r['file_mib']:,.0f} MiB | {r['rows_read']:,} "
              f"| {r['load_s']:.1f} s | {r['train_s']:.1f} s | {r['peak_mib']:,.0f} MiB "
              f"| {r['peak_mib'] / first:.2f} | <= 1.5 GiB, flat: {met} |")  # fmt: skip
    if args.json:
        settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        payload = {"provenance": protocol.provenance(), "args": settings, "results": results}
        protocol.write_json(payload, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
