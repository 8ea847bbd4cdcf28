"""Training speed, scoring throughput and scoring memory of vae_core, beside PyOD's VAE.

Three measurements, one Markdown table with the ratios and their targets:

1. Training race (``--race-dataset``, ADBench split per seed): PyOD's VAE is fitted with its
   defaults and its test ROC-AUC becomes the target; vae_core (defaults) is fitted with a
   per-epoch callback that computes the test ROC-AUC of the model being trained and raises
   ``StopTraining`` once the target is reached. Time to target (the callback's own time left
   out) against PyOD's full fit time; target: at most a third.
2. Scoring throughput on a synthetic table of ``--rows`` rows x ``--features`` float64 columns
   (fixed seed, written once to Parquet in ``--workdir``): (a) ``det.anomaly_score`` on the
   in-memory array, (b) Parquet in -> Parquet out with ``score_parquet.py`` (the product's
   ``batch.score_batch_into``) in a subprocess, (c) PyOD's ``decision_function`` on the first
   ``--pyod-rows`` rows; each the best of ``--repeats`` runs, taken in turns. At the scoring
   defaults (8 draws of z, 3 top features; ``--top-features 0`` for scores only). Targets
   (issue "Production scale"): (b) >= 50% of (a) and >= 3x (c) (an earlier target said 20x).
3. Memory: peak RSS of (b) on files of each ``--memory-rows`` size, each in a fresh subprocess.
   Target: flat in the file size and <= 1.5 GB.

All torch work uses ``--threads`` intra-op threads (default 1, see ``protocol.set_torch_threads``);
(b) uses ``--threads`` cores as the score flow's thread runner does: that many partitions at
once, each on ``devices.scoring_threads`` torch threads (one each on 2 cores).

Example::

    nice -n 10 python benchmarks/speed.py --json benchmarks/results/speed.json
"""

from __future__ import annotations

import os

os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import protocol  # the sibling module, importable once the path is set

HERE = Path(__file__).resolve().parent
GENERATOR_CHUNK = 262_144  # rows per generated chunk and Parquet row group
LATENT_FACTORS = 4  # the synthetic table is low-rank plus noise, something a VAE can learn
GB = 1024.0  # MiB per GiB


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", type=Path, help="write all measurements to this JSON file")
    p.add_argument(
        "--parts",
        nargs="+",
        choices=("race", "scoring", "memory"),
        default=["race", "scoring", "memory"],
        help="what to measure",
    )
    p.add_argument(
        "--race-dataset", type=Path, default=protocol.SHARED_DATASETS / "adbench_shuttle.npz"
    )
    p.add_argument("--race-seeds", type=int, default=3, help="seeds 0 .. N-1 of the race")
    p.add_argument("--rows", type=int, default=1_000_000, help="rows scored in (a) and (b)")
    p.add_argument("--features", type=int, default=30)
    p.add_argument(
        "--train-rows", type=int, default=20_000, help="synthetic rows both scorers are fitted on"
    )
    p.add_argument(
        "--train-epochs",
        type=int,
        default=30,
        help="vae_core epochs for the scoring model (scoring cost does not depend "
        "on it; PyOD keeps its default 30)",
    )
    p.add_argument(
        "--pyod-rows",
        type=int,
        default=100_000,
        help="rows PyOD scores in (c); its rows/s is extrapolated to --rows",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="timed runs of (a), (b) and (c), taken in turns; each row is its fastest",
    )
    p.add_argument("--memory-rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    p.add_argument("--batch-rows", type=int, default=65_536, help="Parquet batch in (b)")
    p.add_argument(
        "--top-features",
        type=int,
        default=3,
        help="top contributing columns written in (b), the scoring default; with any, (a) "
        "is score_with_contributions (the same settings), else anomaly_score",
    )
    p.add_argument(
        "--score-samples",
        type=int,
        help="n_score_samples of the scoring model (default: vae_core's default); the table "
        "then says so. benchmarks/score_samples.py measures what fewer samples cost",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads of (a) and (c); cores of (b): as many partitions at once (default 1)",
    )
    p.add_argument(
        "--workdir",
        type=Path,
        help="where the Parquet files and the model go (default: a temp dir, "
        "removed at the end); reused files are not regenerated",
    )
    return p.parse_args(argv)


# ---- 1. the training race ---------------------------------------------------------------------
class TestRocAucProbe:
    """Epoch callback: ROC-AUC on the test rows of the model being trained; StopTraining at
    ``target``. Its own time is summed in ``seconds`` so the race can leave it out.

    ``fit`` creates the model internally, so ``capture`` wraps
    ``vae_core.estimator.detector.train_vae`` for the duration of the fit to get a reference to
    it. The test rows go through a
    ``TabularPreprocessor`` fitted on the same training rows as the detector's (the fit is
    deterministic, so it is the same mapping).
    """

    def __init__(self, X_train, X_test, y_test, target: float, n_samples: int = 32):
        import torch

        from vae_core.data.preprocess import TabularPreprocessor

        self.u_test = torch.from_numpy(TabularPreprocessor().fit(X_train).transform(X_test))
        self.y_test, self.target, self.n_samples = y_test, target, n_samples
        self.model, self.seconds, self.history = None, 0.0, []

    def capture(self):
        """A context manager under which VAEDetector.fit hands its model to this probe."""
        from unittest import mock

        import vae_core.estimator.detector as detector

        original = detector.train_vae

        def train_and_capture(model, *args, **kwargs):
            self.model = model
            return original(model, *args, **kwargs)

        return mock.patch.object(detector, "train_vae", train_and_capture)

    def __call__(self, log) -> None:
        import torch

        from vae_core.network.likelihood import negative_elbo
        from vae_core.network.train import StopTraining

        started = time.perf_counter()
        gen = torch.Generator().manual_seed(log.epoch)
        eps = torch.randn(self.n_samples, 1, self.model.cfg.latent_dim, generator=gen)
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad():
            scores = negative_elbo(self.model, self.u_test, eps).numpy()
        self.model.train(was_training)
        auc = protocol.detection_metrics(self.y_test, scores)["roc_auc"]
        self.history.append({"epoch": log.epoch + 1, "roc_auc": auc, "train_seconds": log.seconds})
        self.seconds += time.perf_counter() - started
        if auc >= self.target:
            raise StopTraining


def race_one_seed(X: np.ndarray, y: np.ndarray, seed: int) -> dict:
    """PyOD's full fit and its test ROC-AUC; vae_core's time to reach that ROC-AUC."""
    split = protocol.adbench_split(X, y, seed)
    started = time.perf_counter()
    pyod = protocol.fit_pyod_vae(split.X_train, seed)
    pyod_seconds = time.perf_counter() - started
    target = protocol.detection_metrics(split.y_test, pyod.decision_function(split.X_test))
    probe = TestRocAucProbe(split.X_train, split.X_test, split.y_test, target["roc_auc"])
    started = time.perf_counter()
    with probe.capture():
        det = protocol.fit_vae_core(split.X_train, seed, callbacks=[probe])
    wall = time.perf_counter() - started
    final = protocol.detection_metrics(split.y_test, det.anomaly_score(split.X_test))
    reached = bool(probe.history) and probe.history[-1]["roc_auc"] >= target["roc_auc"]
    return {
        "seed": seed,
        "pyod_fit_seconds": pyod_seconds,
        "target_roc_auc": target["roc_auc"],
        "reached": reached,
        "epochs": len(probe.history),
        "vae_core_seconds": wall - probe.seconds,
        "probe_seconds": probe.seconds,
        "best_probe_roc_auc": max((h["roc_auc"] for h in probe.history), default=None),
        "final_roc_auc": final["roc_auc"],
        "history": probe.history,
    }


def training_race(path: Path, seeds: int) -> list[dict]:
    loaded = protocol.load_tabular(path)
    if isinstance(loaded, str):
        raise SystemExit(f"error: {path}: {loaded}")
    results = []
    for seed in range(seeds):
        results.append(race_one_seed(*loaded, seed))
        r = results[-1]
        print(
            f"race seed={seed}: PyOD {r['pyod_fit_seconds']:.1f}s -> "
            f"{r['target_roc_auc']:.4f}; vae_core {r['vae_core_seconds']:.1f}s "
            f"({r['epochs']} epochs, reached={r['reached']})",
            file=sys.stderr,
        )
    return results


# ---- 2. synthetic data ----------------------------------------------------------------------
def synthetic_chunk(index: int, n: int, d: int, seed: int):
    """Rows [index * GENERATOR_CHUNK, + n) of the synthetic table: ``id`` and float64 columns
    ``f00 ..``, low-rank (LATENT_FACTORS) plus noise; the same rows whatever the file size."""
    import pandas as pd

    weights = np.random.default_rng(seed).normal(size=(LATENT_FACTORS, d))
    rng = np.random.default_rng([seed, index])
    values = rng.normal(size=(n, LATENT_FACTORS)) @ weights + 0.3 * rng.normal(size=(n, d))
    frame = pd.DataFrame(values, columns=[f"f{j:02d}" for j in range(d)])
    frame.insert(0, "id", np.arange(index * GENERATOR_CHUNK, index * GENERATOR_CHUNK + n))
    return frame


def synthetic_frame(rows: int, d: int, seed: int):
    """The first ``rows`` rows of the synthetic table as one DataFrame."""
    import pandas as pd

    chunks = range(-(-rows // GENERATOR_CHUNK))
    parts = [
        synthetic_chunk(i, min(GENERATOR_CHUNK, rows - i * GENERATOR_CHUNK), d, seed)
        for i in chunks
    ]
    return pd.concat(parts, ignore_index=True)


def write_synthetic_parquet(path: Path, rows: int, d: int, seed: int) -> Path:
    """Write the first ``rows`` synthetic rows to ``path`` (one row group per chunk), unless
    a file with that many rows is already there."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if path.exists() and pq.ParquetFile(path).metadata.num_rows == rows:
        return path
    tmp, writer = path.with_name(f".{path.name}.tmp"), None
    for i in range(-(-rows // GENERATOR_CHUNK)):
        chunk = synthetic_chunk(i, min(GENERATOR_CHUNK, rows - i * GENERATOR_CHUNK), d, seed)
        table = pa.Table.from_pandas(chunk, preserve_index=False)
        writer = writer or pq.ParquetWriter(tmp, table.schema)
        writer.write_table(table)
    writer.close()
    os.replace(tmp, path)
    return path


# ---- 2. scoring throughput ---------------------------------------------------------------------
def fit_scorers(args: argparse.Namespace, model_dir: Path):
    """vae_core (saved to model_dir) and PyOD's VAE, both fitted on the same synthetic rows,
    drawn with another seed than the scored rows."""
    from vae_core import VAEDetector

    train = synthetic_frame(args.train_rows, args.features, seed=1).drop(columns="id")
    samples = {} if args.score_samples is None else {"n_score_samples": args.score_samples}
    det = VAEDetector(random_state=0, epochs=args.train_epochs, **samples).fit(train)
    det.save(model_dir)
    pyod = protocol.fit_pyod_vae(train.to_numpy(), 0)
    return det, pyod


def rows_per_second(fn, X) -> tuple[float, float]:
    """(rows per second, seconds) of fn(X)."""
    started = time.perf_counter()
    fn(X)
    seconds = time.perf_counter() - started
    return len(X) / seconds, seconds


def run_score_parquet(model_dir: Path, src: Path, dst: Path, args) -> dict:
    """End-to-end scoring of src in a fresh interpreter; its own measurements as a dict."""
    cmd = [
        sys.executable,
        str(HERE / "score_parquet.py"),
        str(model_dir),
        str(src),
        str(dst),
        "--id-column",
        "id",
        "--batch-rows",
        str(args.batch_rows),
        "--top-features",
        str(args.top_features),
        "--threads",
        str(args.threads),
    ]
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"score_parquet.py failed:\n{done.stderr[-3000:]}")
    stats = json.loads(done.stdout.strip().splitlines()[-1])
    stats["process_seconds"] = time.perf_counter() - started
    stats["file_mb"] = src.stat().st_size / 2**20
    return stats


def scoring(args, workdir: Path) -> dict:
    """(a) in-memory, (b) Parquet end to end, (c) PyOD: rows per second, each the best of
    ``--repeats`` runs taken in turns (a, c, b, a, c, b, ...): this machine's speed drifts by
    a fifth over minutes, and turns expose the three to the same drift."""
    model_dir = workdir / "model"
    det, pyod = fit_scorers(args, model_dir)
    src = write_synthetic_parquet(
        workdir / f"table_{args.rows}.parquet", args.rows, args.features, seed=0
    )
    frame = synthetic_frame(args.rows, args.features, seed=0).drop(columns="id")
    out = {"train_epochs_run": len(det.history_), "repeats": args.repeats}
    model_only = det.score_with_contributions if args.top_features else det.anomaly_score
    out["a_with_contributions"] = bool(args.top_features)
    out["n_score_samples"] = det.n_score_samples
    X_pyod = frame.iloc[: args.pyod_rows].to_numpy()
    out["c_rows"] = len(X_pyod)
    a_runs, b_runs, c_runs = [], [], []
    for turn in range(args.repeats):
        a_runs.append(rows_per_second(model_only, frame))
        c_runs.append(rows_per_second(pyod.decision_function, X_pyod))
        b_runs.append(run_score_parquet(model_dir, src, workdir / "scores.parquet", args))
        print(f"turn {turn}: (a) {a_runs[-1][0]:,.0f}, (c) {c_runs[-1][0]:,.0f}, "
              f"(b) {b_runs[-1]['rows_per_second']:,.0f} rows/s", file=sys.stderr)  # fmt: skip
    out["a_all_rows_per_second"] = [r for r, _ in a_runs]
    out["a_rows_per_second"], out["a_seconds"] = max(a_runs)
    out["c_all_rows_per_second"] = [r for r, _ in c_runs]
    out["c_rows_per_second"], out["c_seconds"] = max(c_runs)
    out["b_all_rows_per_second"] = [b["rows_per_second"] for b in b_runs]
    out["b"] = max(b_runs, key=lambda b: b["rows_per_second"])
    out["b_rows_per_second"] = out["b"]["rows_per_second"]
    # Information: the cost of the n_score_samples Monte Carlo draws per row.
    one_sample = lambda X: det.anomaly_score(X, n_samples=1)  # noqa: E731
    out["a1_rows_per_second"], _ = rows_per_second(one_sample, frame.iloc[: args.pyod_rows])
    return out


# ---- 3. memory --------------------------------------------------------------------------------
def free_disk_gb(path: Path) -> float:
    return shutil.disk_usage(path).free / 2**30


def memory(args, workdir: Path, model_dir: Path, done: dict | None = None) -> list[dict]:
    """Peak RSS of end-to-end scoring for each file size, each in a fresh subprocess;
    ``done`` is the (b) run of ``--rows`` rows, reused rather than repeated."""
    results = []
    for rows in args.memory_rows:
        if done is not None and rows == done["rows"]:
            results.append(done)
            continue
        need_gb = rows * (args.features + 1) * 8 * 1.1 / 2**30
        if free_disk_gb(workdir) < 2 * need_gb + 1:
            print(
                f"skipped {rows:,} rows: {free_disk_gb(workdir):.1f} GB free, need "
                f"~{2 * need_gb + 1:.1f}",
                file=sys.stderr,
            )
            continue
        src = write_synthetic_parquet(
            workdir / f"table_{rows}.parquet", rows, args.features, seed=0
        )
        stats = run_score_parquet(model_dir, src, workdir / "scores.parquet", args)
        results.append(stats)
        print(
            f"memory {rows:,} rows: peak {stats['peak_rss_mb']:.0f} MiB, "
            f"{stats['rows_per_second']:,.0f} rows/s",
            file=sys.stderr,
        )
    return results


# ---- the table ----------------------------------------------------------------------------------
def _met(ok: bool | None) -> str:
    return "n/a" if ok is None else ("**yes**" if ok else "**NO**")


def race_rows(race: list[dict]) -> list[list[str]]:
    pyod_s = float(np.median([r["pyod_fit_seconds"] for r in race]))
    met = [r["reached"] and r["vae_core_seconds"] <= r["pyod_fit_seconds"] / 3 for r in race]
    ratios = [r["vae_core_seconds"] / r["pyod_fit_seconds"] for r in race if r["reached"]]
    ratio = f"median {np.median(ratios):.2f} of PyOD's time where reached" if ratios else ""
    detail = "; ".join(
        f"seed {r['seed']}: {r['vae_core_seconds']:.1f} s, {r['epochs']} ep"
        + ("" if r["reached"] else f", not reached (best {r['best_probe_roc_auc']:.4f})")
        for r in race
    )
    targets = ", ".join(f"{r['target_roc_auc']:.4f}" for r in race)
    verdict = _met(all(met)) + ("" if all(met) else f" ({sum(met)} of {len(met)} seeds)")
    return [
        ["training: PyOD VAE full fit (defaults), median of seeds",
         f"{pyod_s:.1f} s (test ROC-AUC {targets})", "", "", ""],
        ["training: vae_core time to PyOD's test ROC-AUC", detail, ratio, "<= 0.33", verdict],
    ]  # fmt: skip


def scoring_rows(s: dict, rows: int) -> list[list[str]]:
    a, b, c = s["a_rows_per_second"], s["b_rows_per_second"], s["c_rows_per_second"]
    extrapolated = "" if s["c_rows"] >= rows else f" (on {s['c_rows']:,} rows, extrapolated)"
    a_name = "score_with_contributions" if s.get("a_with_contributions") else "anomaly_score"
    runs = s.get("repeats", 1)
    return [
        [
            f"scoring (a): vae_core {a_name} ({s['n_score_samples']} samples of z), "
            f"in memory, {rows:,} rows, best of {runs}",
            f"{a:,.0f} rows/s",
            "",
            "",
            "",
        ],
        [
            f"scoring (a1): same with n_samples=1 instead of {s['n_score_samples']} "
            f"(information, {min(rows, s['c_rows']):,} rows)",
            f"{s['a1_rows_per_second']:,.0f} rows/s",
            "",
            "",
            "",
        ],
        [
            f"scoring (b): Parquet -> Parquet end to end, {rows:,} rows, best of {runs}"
            + _workers(s.get("b", {})),
            f"{b:,.0f} rows/s",
            f"(b)/(a) = {b / a:.2f}",
            ">= 0.50",
            _met(b / a >= 0.5),
        ],
        [
            f"scoring (c): PyOD VAE decision_function, best of {runs}" + extrapolated,
            f"{c:,.0f} rows/s",
            f"(b)/(c) = {b / c:.1f}x",
            ">= 3x",
            _met(b / c >= 3),
        ],
    ]


def _workers(b: dict) -> str:
    """How (b) ran: its partitions on how many threads, with how many torch threads each."""
    if "workers" not in b:
        return ""
    return (
        f", {b['workers']} partition thread(s) x {b['torch_threads_per_worker']} torch "
        "thread(s) (the score flow's thread runner)"
    )


def memory_rows(mem: list[dict]) -> list[list[str]]:
    out = [
        [
            f"memory: peak RSS, scoring {m['rows']:,} rows ({m['file_mb']:,.0f} MiB file)",
            f"{m['peak_rss_mb']:,.0f} MiB (after model load {m['rss_after_load_mb']:,.0f})",
            "",
            "<= 1.5 GiB",
            _met(m["peak_rss_mb"] <= 1.5 * GB),
        ]
        for m in mem
    ]
    if len(mem) >= 2:
        growth = mem[-1]["peak_rss_mb"] / mem[0]["peak_rss_mb"]
        out.append(
            [
                f"memory: {mem[-1]['rows']:,} vs {mem[0]['rows']:,} rows",
                "",
                f"peak ratio {growth:.2f}",
                "flat (<= 1.10)",
                _met(growth <= 1.10),
            ]
        )
    return out


def markdown_table(results: dict, args) -> str:
    rows = []
    if "race" in results:
        rows += race_rows(results["race"])
    if "scoring" in results:
        rows += scoring_rows(results["scoring"], args.rows)
    if results.get("memory"):
        rows += memory_rows(results["memory"])
    head = ["measure", "value", "ratio", "target", "met"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    protocol.quiet_environment()
    protocol.set_torch_threads(args.threads)
    protocol.require_pyod()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="vae_speed_"))
    workdir.mkdir(parents=True, exist_ok=True)
    results = {"meta": {**protocol.provenance(), "args": vars(args)}}
    try:
        if "race" in args.parts:
            results["race"] = training_race(args.race_dataset, args.race_seeds)
        if "scoring" in args.parts or "memory" in args.parts:
            results["scoring"] = scoring(args, workdir)
        if "memory" in args.parts:
            results["memory"] = memory(args, workdir, workdir / "model", results["scoring"]["b"])
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    results["meta"]["load_average_end"] = os.getloadavg()
    if args.json:
        protocol.write_json(results, args.json)
    print(markdown_table(results, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
