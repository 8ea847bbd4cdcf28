"""Score samples: what fewer Monte Carlo draws of z cost in detection quality and accuracy.

``VAEDetector.anomaly_score`` estimates each row's negative ELBO (nats) with L quasi-Monte Carlo
draws of z (scrambled Sobol, shared by every row; ``n_score_samples=32`` by default), and the
scoring cost grows with L. This script measures, for each L of ``--samples``, what the score
gives up and what it gains.

Protocol. The ADBench protocol of ``quality.py`` (see ``protocol.py``), with the same data sets:
every ``.npz`` of DATA_DIR holding a 2-D ``X`` and a binary ``y`` (1 = anomaly), ``image_*``
files skipped. Per data set and seed: at most 10,000 rows (uniform subsample), a stratified
70/30 split, min-max scaling fitted on the 70%, and ``VAEDetector(random_state=seed)`` (the
defaults) fitted ONCE on the contaminated 70%. On the 30% test rows, for each L:

- ROC-AUC and average precision of ``anomaly_score(X_test, n_samples=L)``;
- the error of that score against a reference estimate with ``--reference-samples`` draws
  (1,024): the mean absolute difference per row in nats, that error divided by the standard
  deviation of the reference scores across the test rows (1.0 = as large as the spread the
  ranking works on), and the Spearman rank correlation with the reference;
- throughput: rows per second of ``anomaly_score(X, n_samples=L)`` on the test rows repeated to
  ``--throughput-rows`` rows (200,000), torch on one thread, after a short warm-up call; the
  best of ``--repeats`` (2) rounds over all L. It depends on the model's shape (the data
  set's columns), not on the seed, so it is measured on the first seed's model only
  (``--throughput-seeds`` to change that; 0 skips it).

The draws for L are the first L points of the detector's Sobol sequence, so the estimates are
nested: the reference contains the draws of every smaller L. The reference is itself an
estimate of the expected negative ELBO (not of -log p(x)).

Prints a summary table over all (data set, seed) splits and a per-data-set ROC-AUC table, and
with ``--json`` writes every result.

Example::

    nice -n 10 python benchmarks/score_samples.py ../shared/datasets --seeds 3 \\
        --json benchmarks/results/score_samples.json > benchmarks/results/score_samples.md
"""

from __future__ import annotations

import os

os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import argparse
import sys
import time
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import protocol  # the sibling modules, importable once the path is set
import quality

SAMPLES = (1, 2, 4, 8, 16, 32, 64)
BASELINE_L = 32  # the current default n_score_samples, the base of the differences
PER_DATASET_L = (1, 4, 8, 32)  # columns of the per-data-set ROC-AUC table


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "data_dir",
        type=Path,
        nargs="?",
        default=protocol.SHARED_DATASETS,
        help="folder of .npz files with X and y (default ../shared/datasets)",
    )
    p.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1 (default 3)")
    p.add_argument(
        "--samples",
        type=int,
        nargs="+",
        default=list(SAMPLES),
        metavar="L",
        help=f"draws of z to compare (default {' '.join(map(str, SAMPLES))})",
    )
    p.add_argument(
        "--reference-samples",
        type=int,
        default=1024,
        metavar="L",
        help="draws of z of the reference score (default 1024)",
    )
    p.add_argument(
        "--throughput-rows",
        type=int,
        default=200_000,
        help="rows scored per throughput measurement (default 200000)",
    )
    p.add_argument(
        "--throughput-seeds",
        type=int,
        default=1,
        help="measure throughput on the models of the first N seeds (default 1; 0: skip)",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=2,
        help="throughput: best of this many rounds over all L (default 2)",
    )
    p.add_argument(
        "--datasets", nargs="+", metavar="NAME", help="only data sets whose name contains one"
    )
    p.add_argument("--json", type=Path, help="write all results to this JSON file")
    args = p.parse_args(argv)
    args.samples = sorted(set(args.samples))
    if min(args.samples) < 1 or args.reference_samples <= max(args.samples):
        p.error("--samples must be >= 1 and below --reference-samples")
    if BASELINE_L not in args.samples:
        p.error(f"--samples must include {BASELINE_L}, the base of the ROC-AUC differences")
    return args


def tabular_files(data_dir: Path, filters: list[str] | None) -> list[Path]:
    """The data sets of ``quality.py`` (its file list), without the ``image_*`` files."""
    return [f for f in quality.dataset_files(data_dir, filters) if not f.stem.startswith("image_")]


# ---- measurements --------------------------------------------------------------------------
def score_error(scores: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Mean |score - reference| per row (nats), that over the reference's std, Spearman."""
    from scipy.stats import spearmanr

    mae = float(np.mean(np.abs(scores - reference)))
    return {
        "mae_nats": mae,
        "mae_over_std": mae / float(np.std(reference)),
        "spearman": float(spearmanr(scores, reference).statistic),
    }


def throughput(det, X: np.ndarray, samples: list[int], rows: int, repeats: int) -> dict:
    """{L: rows per second of ``det.anomaly_score(., n_samples=L)``} on X repeated to ``rows``
    rows: the best of ``repeats`` rounds over all L (a round visits every L once, so a burst of
    load from another process does not spoil every measurement of one L)."""
    X_big = np.resize(X, (rows, X.shape[1]))  # the rows of X over and over
    best = dict.fromkeys(samples, 0.0)
    for _ in range(repeats):
        for L in samples:
            det.anomaly_score(X_big[:1024], n_samples=L)  # warm-up (allocator, first call)
            started = time.perf_counter()
            det.anomaly_score(X_big, n_samples=L)
            best[L] = max(best[L], rows / (time.perf_counter() - started))
    return best


def run_split(name: str, split: protocol.Split, seed: int, args) -> list[dict]:
    """Fit once on the training part; one result per L (and one for the reference)."""
    started = time.perf_counter()
    det = protocol.fit_vae_core(split.X_train, seed)
    fit_seconds = time.perf_counter() - started
    reference = det.anomaly_score(split.X_test, n_samples=args.reference_samples)
    base = {"dataset": name, "seed": seed, "test_rows": len(split.X_test)}
    rows = [
        {
            **base,
            "n_samples": args.reference_samples,
            "reference": True,
            **protocol.detection_metrics(split.y_test, reference),
            "reference_std_nats": float(np.std(reference)),
            "fit_seconds": fit_seconds,
            "epochs_run": len(det.history_),
        }
    ]
    for L in args.samples:
        scores = det.anomaly_score(split.X_test, n_samples=L)
        rows.append(
            {
                **base,
                "n_samples": L,
                "reference": False,
                **protocol.detection_metrics(split.y_test, scores),
                **score_error(scores, reference),
            }
        )
    if seed < args.throughput_seeds and args.throughput_rows > 0:
        speed = throughput(det, split.X_test, args.samples, args.throughput_rows, args.repeats)
        for r in rows[1:]:
            r["rows_per_second"] = speed[r["n_samples"]]
    by_L = {r["n_samples"]: r for r in rows}
    for r in rows:
        r["roc_auc_minus_baseline"] = r["roc_auc"] - by_L[BASELINE_L]["roc_auc"]
    print(f"  {name} seed={seed}: fit {fit_seconds:.1f}s, " + _brief(rows), file=sys.stderr)
    return rows


def _brief(rows: list[dict]) -> str:
    return " ".join(
        f"L={r['n_samples']}:{r['roc_auc']:.3f}"
        + (f"/{r['rows_per_second'] / 1e3:.0f}k" if "rows_per_second" in r else "")
        for r in rows
    )


def run_dataset(path: Path, args) -> tuple[list[dict], dict]:
    """All seeds of one data set: (result rows, the data set's description)."""
    loaded = protocol.load_dataset(path)
    if loaded is None:
        return [], {}
    X, y, info = loaded
    results = []
    for seed in range(args.seeds):
        results += run_split(path.stem, protocol.adbench_split(X, y, seed), seed, args)
    return results, info


# ---- tables --------------------------------------------------------------------------------
def _mean(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return float(np.mean(values)) if values else None


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def summary_table(results: list[dict], args) -> str:
    """Per L, over all (data set, seed) splits: quality, error against the reference, speed."""
    by_L = defaultdict(list)
    for r in results:
        by_L[r["n_samples"]].append(r)
    n_splits = len(by_L[BASELINE_L])
    n_sets = len({r["dataset"] for r in results})
    base_speed = {
        r["dataset"]: r["rows_per_second"]
        for r in by_L[BASELINE_L]
        if r.get("rows_per_second") is not None
    }
    head = [
        "L",
        "ROC-AUC",
        "AP",
        f"ΔROC-AUC vs L={BASELINE_L} mean",
        "worst",
        "worst split",
        "mean abs err (nats)",
        "mean abs err / std",
        "Spearman mean",
        "Spearman min",
        "rows/s mean",
        f"speed-up vs L={BASELINE_L}",
    ]
    lines = [
        f"{n_sets} data sets x {args.seeds} seeds = {n_splits} splits; means over splits. Error "
        f"columns: against the L={args.reference_samples} score of the same model. rows/s: "
        f"`anomaly_score` on {args.throughput_rows:,} rows, 1 thread, mean over data sets "
        f"(models of the first {args.throughput_seeds} seed(s)); speed-up: mean over data sets "
        f"of the per-set ratio to L={BASELINE_L}.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for L in [*args.samples, args.reference_samples]:
        rows = by_L[L]
        reference = L == args.reference_samples
        worst = min(rows, key=lambda r: r["roc_auc_minus_baseline"])
        speeds = [r for r in rows if r.get("rows_per_second") is not None]
        ratios = [r["rows_per_second"] / base_speed[r["dataset"]] for r in speeds]
        cells = [
            f"{L} (reference)" if reference else f"**{L}**" if L == BASELINE_L else str(L),
            _fmt(_mean(rows, "roc_auc"), ".4f"),
            _fmt(_mean(rows, "average_precision"), ".4f"),
            _fmt(_mean(rows, "roc_auc_minus_baseline"), "+.4f"),
            f"{worst['roc_auc_minus_baseline']:+.4f}",
            f"{worst['dataset']} s{worst['seed']}" if worst["roc_auc_minus_baseline"] else "",
            "" if reference else _fmt(_mean(rows, "mae_nats"), ".3g"),
            "" if reference else _fmt(_mean(rows, "mae_over_std"), ".3g"),
            "" if reference else _fmt(_mean(rows, "spearman"), ".5f"),
            "" if reference else f"{min(r['spearman'] for r in rows):.5f}",
            _fmt(_mean(speeds, "rows_per_second"), ",.0f") if speeds else "",
            f"{np.mean(ratios):.1f}x" if speeds else "",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def per_dataset_table(results: list[dict], infos: dict, args) -> str:
    """ROC-AUC per data set (mean over seeds) for a few L; rows/s at the smallest and at 32."""
    shown = [L for L in PER_DATASET_L if L in args.samples]
    speed_L = sorted({min(args.samples), BASELINE_L})
    cells = defaultdict(list)
    for r in results:
        cells[(r["dataset"], r["n_samples"])].append(r)
    head = ["dataset", "dims", "test rows"]
    head += [f"ROC-AUC L={L}" for L in shown] + [f"ROC-AUC L={args.reference_samples}"]
    head += [f"rows/s L={L}" for L in speed_L]
    lines = [
        f"ROC-AUC: mean over {args.seeds} seeds. rows/s: as in the summary.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for name in sorted(infos):
        rows = cells[(name, BASELINE_L)]
        line = [name, str(infos[name]["features"]), str(rows[0]["test_rows"])]
        for L in [*shown, args.reference_samples]:
            line.append(_fmt(_mean(cells[(name, L)], "roc_auc"), ".3f"))
        for L in speed_L:
            line.append(_fmt(_mean(cells[(name, L)], "rows_per_second"), ",.0f"))
        lines.append("| " + " | ".join(line) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    protocol.quiet_environment()
    protocol.set_torch_threads(1)
    # vae_core warns once per constant training column (hundreds on the ResNet embeddings).
    warnings.filterwarnings("ignore", message=r"column .* is constant")
    meta = {
        **protocol.provenance(),
        "seeds": args.seeds,
        "samples": args.samples,
        "reference_samples": args.reference_samples,
        "baseline_samples": BASELINE_L,
        "throughput_rows": args.throughput_rows,
        "throughput_seeds": args.throughput_seeds,
        "vae_params": {},
        "protocol": "ADBench: <=10k rows, stratified 70/30, min-max scaling fitted on the 70%, "
        "contaminated fit; one VAEDetector (defaults) per split, scored on the 30% with each L",
    }
    started = time.perf_counter()
    results, infos = [], {}
    for path in tabular_files(args.data_dir, args.datasets):
        rows, info = run_dataset(path, args)
        if rows:
            results += rows
            infos[path.stem] = info
            if args.json:  # after every data set, so a long run can be read while it goes
                meta["wall_seconds"] = time.perf_counter() - started
                protocol.write_json(
                    {"meta": meta, "datasets": infos, "results": results}, args.json
                )
    if not results:
        print("no tabular data sets found", file=sys.stderr)
        return 1
    wall = time.perf_counter() - started
    print(f"wall time {wall:.0f} s", file=sys.stderr)
    if args.json:
        meta["wall_seconds"] = wall
        protocol.write_json({"meta": meta, "datasets": infos, "results": results}, args.json)
    print(summary_table(results, args))
    print()
    print(per_dataset_table(results, infos, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
