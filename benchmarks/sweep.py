"""Candidate defaults side by side: many VAEDetector settings, seed ensembles, both halves.

Every (setting, data set, seed, ensemble member) is one fit on one torch thread, run by a pool
of worker processes until ``--deadline`` seconds have passed (members are scheduled last, so a
run cut short still has every setting on every set). The ADBench protocol of ``protocol.py``
applies; member m of seed s is ``VAEDetector(random_state=s + 1000 * m, **setting)``, member 0
being the plain single model. For each setting and ensemble size K the test scores of the first
K members are averaged in nats (negative ELBO, and the IWAE bound), and the table reports the
mean ROC-AUC over the choosing half, the confirming half (``protocol.HALVES``) and all sets,
beside IsolationForest on the same splits.

Example (one setting per ``--setting``; ``NAME:key=value,key=value``)::

    python benchmarks/sweep.py ../shared/datasets --setting base: \\
        --setting cap1:max_variance=1.0 --members 3 --workers 2 --json sweep.json
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import multiprocessing as mp
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import protocol


def parse_setting(text: str) -> tuple[str, dict]:
    """``"cap1:max_variance=1.0,scaling=robust"`` -> ("cap1", {...})."""
    name, _, rest = text.partition(":")
    pairs = [p for p in rest.split(";" if ";" in rest else ",") if p.strip()]
    return name.strip(), protocol.parse_params(pairs)


def _split(path: str, seed: int) -> protocol.Split:
    loaded = protocol.load_tabular(Path(path))
    return protocol.adbench_split(*loaded, seed)


def _fit_and_score(task: tuple) -> dict:
    """One fit: (kind, setting name, params, data path, seed, member) -> test scores."""
    kind, name, params, path, seed, member = task
    import torch

    torch.set_num_threads(1)
    split = _split(path, seed)
    started = time.perf_counter()
    try:
        if kind == "iforest":
            model = protocol.fit_iforest(split.X_train, seed)
            fit_s = time.perf_counter() - started
            scores = {"iforest": protocol.score_iforest(model, split.X_test)}
        else:
            det = protocol.fit_vae_core(split.X_train, seed + 1000 * member, params)
            fit_s = time.perf_counter() - started
            scores = {
                "nelbo": det.anomaly_score(split.X_test),
                "iwae": -det.log_likelihood(split.X_test, k=64),
            }
        error = None
    except Exception as exc:  # recorded; one failure never ends the run
        scores, fit_s, error = {}, time.perf_counter() - started, repr(exc)[:300]
    return {
        "kind": kind,
        "setting": name,
        "dataset": Path(path).stem,
        "seed": seed,
        "member": member,
        "fit_seconds": fit_s,
        "error": error,
        "scores": {k: np.asarray(v, dtype="float64").tolist() for k, v in scores.items()},
    }


def tasks(files: list[Path], settings: dict, seeds: int, members: int) -> list[tuple]:
    """IsolationForest first, then every setting's member 0, then member 1, ..."""
    out = [("iforest", "iforest", {}, str(f), s, 0) for f in files for s in range(seeds)]
    for m in range(members):
        for f in files:
            for s in range(seeds):
                out += [("vae", n, p, str(f), s, m) for n, p in settings.items()]
    return out


def run(task_list: list[tuple], workers: int, deadline: float) -> list[dict]:
    """Results of the tasks finished before ``deadline`` seconds (the rest are dropped)."""
    started, results = time.monotonic(), []
    ctx = mp.get_context("spawn")
    with ctx.Pool(workers, maxtasksperchild=20) as pool:
        pending = pool.imap_unordered(_fit_and_score, task_list)
        while True:
            left = deadline - (time.monotonic() - started)
            if left <= 0:
                print(f"deadline: {len(results)} of {len(task_list)} fits done", file=sys.stderr)
                pool.terminate()
                break
            try:
                results.append(pending.next(timeout=left))
            except StopIteration:
                break
            except mp.TimeoutError:
                continue
    return results


def _auc(y: np.ndarray, scores: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, scores)) if np.isfinite(scores).all() else None


def summarise(results: list[dict], labels: dict, members: int) -> list[dict]:
    """ROC-AUC per (setting, score, K, data set), mean over seeds; sets missing a seed or a
    member are left out of that row rather than averaged on fewer seeds."""
    by = defaultdict(dict)  # (setting, dataset, seed) -> {member: scores}
    for r in results:
        if r["error"] is None:
            by[(r["setting"], r["dataset"], r["seed"])][r["member"]] = r["scores"]
    rows = []
    settings = sorted({k[0] for k in by})
    for setting in settings:
        score_names = ["iforest"] if setting == "iforest" else ["nelbo", "iwae"]
        for score in score_names:
            for k in range(1, (1 if setting == "iforest" else members) + 1):
                per_set = defaultdict(list)
                for (s, dataset, seed), mem in by.items():
                    if s != setting or any(m not in mem for m in range(k)):
                        continue
                    avg = np.mean([np.asarray(mem[m][score]) for m in range(k)], axis=0)
                    per_set[dataset].append(_auc(labels[(dataset, seed)], avg))
                n_seeds = len({seed for (_, seed) in labels})
                aucs = {
                    d: float(np.mean(v))
                    for d, v in per_set.items()
                    if None not in v and len(v) == n_seeds
                }
                rows.append({"setting": setting, "score": score, "members": k, "auc": aucs})
    return rows


def table(rows: list[dict], halves: dict[str, list[str]]) -> str:
    """Markdown: one line per (setting, score, K) with mean ROC-AUC per half and overall,
    the worst gap to IsolationForest, and the sets ahead of it."""
    iforest = next((r["auc"] for r in rows if r["setting"] == "iforest"), {})
    head = (
        "| setting | score | K | " + " | ".join(halves) + " | all | n sets | worst vs IF | wins |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        cells = [r["setting"], r["score"], str(r["members"])]
        for names in halves.values():
            vals = [r["auc"][n] for n in names if n in r["auc"]]
            cells.append(f"{np.mean(vals):.4f} ({len(vals)})" if vals else "n/a")
        allv = list(r["auc"].values())
        cells.append(f"{np.mean(allv):.4f}" if allv else "n/a")
        cells.append(str(len(allv)))
        gaps = {n: r["auc"][n] - iforest[n] for n in r["auc"] if n in iforest}
        worst = min(gaps, key=gaps.get) if gaps else None
        cells.append(f"{gaps[worst]:+.3f} {worst}" if worst else "n/a")
        cells.append(f"{sum(g > 0 for g in gaps.values())}/{len(gaps)}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data_dir", type=Path)
    p.add_argument("--setting", action="append", required=True, metavar="NAME:K=V,...")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--members", type=int, default=1, help="ensemble members per seed")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--deadline", type=float, default=3600.0, help="seconds; then stop")
    p.add_argument("--datasets", nargs="+", metavar="NAME")
    p.add_argument("--json", type=Path, help="write the per-set summary here")
    p.add_argument("--scores", type=Path, help="write every fit's test scores (npz) here")
    args = p.parse_args(argv)
    protocol.quiet_environment()
    settings = dict(parse_setting(s) for s in args.setting)
    files = [
        f
        for f in sorted(args.data_dir.glob("*.npz"))
        if not isinstance(protocol.load_tabular(f), str)
        and (not args.datasets or any(s in f.stem for s in args.datasets))
    ]
    labels = {}
    for f in list(files):
        try:
            for s in range(args.seeds):
                labels[(f.stem, s)] = _split(str(f), s).y_test
        except protocol.SkipDataset as exc:
            print(f"skipped {f.stem}: {exc}", file=sys.stderr)
            files.remove(f)
    results = run(tasks(files, settings, args.seeds, args.members), args.workers, args.deadline)
    rows = summarise(results, labels, args.members)
    halves = {h: [f.stem for f in files if f.stem in names] for h, names in protocol.HALVES.items()}
    print(table(rows, halves))
    if args.json:
        fits = [{k: v for k, v in r.items() if k != "scores"} for r in results]
        payload = {"meta": protocol.provenance(), "settings": settings, "rows": rows, "fits": fits}
        protocol.write_json(payload, args.json)
    if args.scores:
        save_scores(results, labels, args.scores)
    return 0


def save_scores(results: list[dict], labels: dict, path: Path) -> None:
    """float32 test scores, keyed ``setting|dataset|seed|member|score``, and the labels."""
    arrays = {f"y|{d}|{s}": y for (d, s), y in labels.items()}
    for r in results:
        for score, values in r["scores"].items():
            key = f"{r['setting']}|{r['dataset']}|{r['seed']}|{r['member']}|{score}"
            arrays[key] = np.asarray(values, dtype="float32")
    np.savez_compressed(path, **arrays)


if __name__ == "__main__":
    sys.exit(main())
