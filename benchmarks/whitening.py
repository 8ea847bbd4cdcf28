"""Robust affine whitening before vae_core, measured on the benchmark protocol (issue 23).

An affine map x' = (x - m) W has a constant log-Jacobian, so the negative ELBO of x' plus that
constant is the negative ELBO in nats of x: the ranking, hence ROC-AUC, of a VAE fitted and
scored on whitened rows is that of the "whitening + VAE" density of the data. Two whitenings,
fitted on each split's training rows only:

- ``mcd``: scikit-learn's MinCovDet (the robust covariance PyOD's MCD wraps), where the
  training rows outnumber twice the columns; otherwise the set is reported as not run;
- ``lw``: Ledoit-Wolf shrinkage covariance of the half of the training rows nearest the
  median (per-column MAD units), which exists for any shape (the 512-column embeddings).

``base`` is the VAE on the unwhitened rows, fitted in the same run. Every fit is
``VAEDetector(random_state=seed)`` at the defaults; splits are ``protocol.adbench_split``.

Example::

    python benchmarks/whitening.py ../shared/datasets --modes base mcd lw --half choose \\
        --json whitening.json
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import json
import multiprocessing as mp
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import protocol

MODES = ("base", "mcd", "lw")


def whitener(X: np.ndarray, seed: int, mode: str):
    """(kept columns, location, W) with x' = (x[kept] - location) @ W, or None where MinCovDet
    cannot run (too few rows for the columns, or it raises)."""
    from sklearn.covariance import LedoitWolf, MinCovDet

    keep = X.std(0) > 0
    Xk = X[:, keep]
    if mode == "mcd":
        if len(Xk) <= 2 * Xk.shape[1] + 10:
            return None
        try:
            mcd = MinCovDet(random_state=seed).fit(Xk)
        except Exception:  # reported as not run
            return None
        location, cov = mcd.location_, mcd.covariance_
    else:
        median = np.median(Xk, 0)
        mad = np.median(np.abs(Xk - median), 0) * 1.4826
        mad[mad == 0] = Xk.std(0)[mad == 0]
        distance = np.sqrt((((Xk - median) / mad) ** 2).sum(1))
        central = distance <= np.quantile(distance, 0.5)
        location, cov = Xk[central].mean(0), LedoitWolf().fit(Xk[central]).covariance_
    eigenvalues, vectors = np.linalg.eigh(cov)
    eigenvalues = np.maximum(eigenvalues, eigenvalues.max() * 1e-6)
    return keep, location, vectors / np.sqrt(eigenvalues)


def fit_one(task: tuple) -> dict:
    path, seed, mode = task
    import torch

    torch.set_num_threads(1)
    X, y = protocol.load_tabular(Path(path))
    split = protocol.adbench_split(X, y, seed)
    X_train, X_test = split.X_train, split.X_test
    row = {"dataset": Path(path).stem, "seed": seed, "mode": mode, "roc_auc": None}
    if mode != "base":
        found = whitener(X_train.astype("float64"), seed, mode)
        if found is None:
            return row
        keep, location, W = found
        X_train = ((X_train[:, keep] - location) @ W).astype("float32")
        X_test = ((X_test[:, keep] - location) @ W).astype("float32")
    started = time.perf_counter()
    det = protocol.fit_vae_core(X_train, seed)
    scores = det.anomaly_score(X_test)
    row["roc_auc"] = protocol.detection_metrics(split.y_test, scores)["roc_auc"]
    row["seconds"] = time.perf_counter() - started
    return row


def table(rows: list[dict], modes: list[str]) -> str:
    """Mean ROC-AUC per set and mode; the mean over the sets every mode finished."""
    by = defaultdict(list)
    for r in rows:
        if r["roc_auc"] is not None:
            by[r["dataset"], r["mode"]].append(r["roc_auc"])
    sets = sorted({r["dataset"] for r in rows})
    lines = ["| dataset | " + " | ".join(modes) + " |", "|---|" + "---|" * len(modes)]
    complete = []
    for s in sets:
        cells = [f"{np.mean(by[s, m]):.3f}" if by[s, m] else "not run" for m in modes]
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
        if all(by[s, m] for m in modes):
            complete.append(s)
    means = [f"**{np.mean([np.mean(by[s, m]) for s in complete]):.3f}**" for m in modes]
    lines.append(f"| **mean ({len(complete)} sets)** | " + " | ".join(means) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data_dir", type=Path)
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--half", choices=sorted(protocol.HALVES), help="only this half's sets")
    p.add_argument("--datasets", nargs="+", metavar="NAME")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    protocol.quiet_environment()
    halves = [args.half] if args.half else sorted(protocol.HALVES)
    names = args.datasets or [n for h in halves for n in protocol.HALVES[h]]
    tasks = [
        (str(args.data_dir / f"{n}.npz"), s, m)
        for n in names
        for s in range(args.seeds)
        for m in args.modes
    ]
    rows: list[dict] = []
    meta = {**protocol.provenance(), "modes": args.modes}
    with mp.get_context("spawn").Pool(args.workers, maxtasksperchild=10) as pool:
        for row in pool.imap_unordered(fit_one, tasks):
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
            if args.json:
                protocol.write_json({"meta": meta, "results": rows}, args.json)
    print(table(rows, args.modes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
