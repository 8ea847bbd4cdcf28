"""Detection quality on tabular anomaly data sets: vae_core beside PyOD's VAE and IsolationForest.

Runs the ADBench protocol (see ``protocol.py``) on every ``.npz`` in DATA_DIR that holds a
2-D ``X`` and a binary ``y`` (1 = anomaly); other npz files (images, ...) are skipped with a
note. All methods see the same split of each seed. vae_core runs with its defaults,
``VAEDetector(random_state=seed)``, unless ``--vae-param`` says otherwise (the table then says
so). Prints a Markdown table and, with ``--json``, writes every (dataset, seed, method) result.

Example::

    nice -n 10 python benchmarks/quality.py ../shared/datasets --seeds 3 --json quality.json
"""

from __future__ import annotations

import os

os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import argparse
import json
import sys
import time
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import protocol  # the sibling module, importable once the path is set


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data_dir", type=Path, nargs="?", help="folder of .npz files with X and y")
    p.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        metavar="JSON",
        help="fit nothing: print the tables of these earlier --json runs together (e.g. the "
        "two halves run as two processes; a later run's result for the same data set, seed "
        "and method wins) and, with --json, write them as one file",
    )
    p.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1 (default 3)")
    p.add_argument("--json", type=Path, help="write all results to this JSON file")
    p.add_argument("--methods", nargs="+", choices=protocol.METHODS, default=list(protocol.METHODS))
    p.add_argument(
        "--datasets", nargs="+", metavar="NAME", help="only data sets whose name contains one"
    )
    p.add_argument(
        "--vae-param",
        action="append",
        metavar="KEY=VALUE",
        help="non-default VAEDetector argument, e.g. epochs=50 (repeatable)",
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads for both VAEs (default 1)")
    p.add_argument(
        "--half",
        choices=sorted(protocol.HALVES),
        help="only the data sets of this half of protocol.HALVES",
    )
    p.add_argument(
        "--reuse",
        type=Path,
        action="append",
        metavar="JSON",
        help="take the results of methods other than vae_core from this earlier --json run "
        "(same data sets and seeds: the splits are the same) instead of fitting them again "
        "(repeatable)",
    )
    return p.parse_args(argv)


def dataset_files(data_dir: Path, filters: list[str] | None) -> list[Path]:
    """The npz files of data_dir, sorted, keeping names that contain one of ``filters``."""
    if not data_dir.is_dir():
        raise SystemExit(f"error: {data_dir} is not a directory")
    files = sorted(data_dir.glob("*.npz"))
    if filters:
        files = [f for f in files if any(s in f.stem for s in filters)]
    return files


def run_method(method: str, split: protocol.Split, seed: int, vae_params: dict) -> dict:
    """Fit one method on the training part and score the test part; never raises on a failed
    fit (the error is recorded and the metrics are None) so one failure does not end a run."""
    fit, score = protocol.detector_functions(method, vae_params)
    started = time.perf_counter()
    try:
        model = fit(split.X_train, seed)
        fit_seconds = time.perf_counter() - started
        started = time.perf_counter()
        scores = score(model, split.X_test)
        metrics = protocol.detection_metrics(split.y_test, scores)
        return {
            **metrics,
            "fit_seconds": fit_seconds,
            "score_seconds": time.perf_counter() - started,
        }
    except Exception as exc:  # recorded and shown in the table; the run goes on
        return {
            "roc_auc": None,
            "average_precision": None,
            "fit_seconds": time.perf_counter() - started,
            "error": repr(exc)[:300],
        }


def run_dataset(path: Path, args: argparse.Namespace, vae_params: dict) -> tuple[list, dict]:
    """All seeds and methods on one data set: (result rows, the data set's description)."""
    loaded = protocol.load_dataset(path)
    if loaded is None:
        return [], {}
    X, y, info = loaded
    rows = []
    for seed in range(args.seeds):
        try:
            split = protocol.adbench_split(X, y, seed)
        except protocol.SkipDataset as exc:
            print(f"skipped {path.stem}: {exc}", file=sys.stderr)
            return [], {**info, "skipped": str(exc)}
        for method in args.methods:
            reused = args.reused.get((path.stem, seed, method)) if method != "vae_core" else None
            result = reused or run_method(method, split, seed, vae_params)
            rows.append({"dataset": path.stem, "seed": seed, "method": method, **result})
            print(f"  {path.stem} seed={seed} {method}: " + _brief(result), file=sys.stderr)
    return rows, info


def _brief(r: dict) -> str:
    if r["roc_auc"] is None:
        return f"FAILED {r['error']}"
    return f"roc_auc={r['roc_auc']:.3f} ap={r['average_precision']:.3f} fit={r['fit_seconds']:.1f}s"


def summarise(results: list[dict]) -> dict:
    """{(dataset, method): {metric: mean over seeds}}; None where any seed failed."""
    groups = defaultdict(list)
    for r in results:
        groups[(r["dataset"], r["method"])].append(r)
    out = {}
    for key, rows in groups.items():
        out[key] = {
            m: (None if any(r[m] is None for r in rows) else float(np.mean([r[m] for r in rows])))
            for m in ("roc_auc", "average_precision", "fit_seconds")
        }
    return out


def _cell(value: float | None, digits: int = 3) -> str:
    return "failed" if value is None else f"{value:.{digits}f}"


def markdown_table(results: list[dict], infos: dict, methods: list[str], vae_params: dict) -> str:
    """Per data set and the mean over data sets: ROC-AUC, AP and fit seconds per method."""
    summary = summarise(results)
    names = sorted(infos)
    head = ["dataset", "rows", "dims", "anom %"]
    for metric in ("ROC-AUC", "AP", "fit s"):
        head += [f"{metric} {m}" for m in methods]
    lines = [
        _settings_line(vae_params),
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for name in names:
        i = infos[name]
        cells = [name, str(i["rows"]), str(i["features"]), f"{i['anomaly_pct']:.2f}"]
        for metric, digits in (("roc_auc", 3), ("average_precision", 3), ("fit_seconds", 1)):
            cells += [_cell(summary.get((name, m), {}).get(metric), digits) for m in methods]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(_mean_row(summary, names, methods))
    return "\n".join(lines)


def _mean_row(summary: dict, names: list[str], methods: list[str]) -> str:
    cells = [f"**mean ({len(names)} sets)**", "", "", ""]
    for metric, digits in (("roc_auc", 3), ("average_precision", 3), ("fit_seconds", 1)):
        for m in methods:
            values = [summary.get((n, m), {}).get(metric) for n in names]
            ok = all(v is not None for v in values) and values
            cells.append(f"**{np.mean(values):.{digits}f}**" if ok else "n/a")
    return "| " + " | ".join(cells) + " |"


def verdict_table(results: list[dict], methods: list[str]) -> str:
    """The issue-23 comparison: mean ROC-AUC per method over each half of ``protocol.HALVES``
    and over all sets, the best peer per set (the highest of MCD, KNN and IsolationForest on
    that set) and the sets where vae_core trails IsolationForest by more than 0.08."""
    summary = summarise(results)
    names = sorted({r["dataset"] for r in results})
    peers = [m for m in protocol.PEERS if m in methods]
    halves = {h: [n for n in names if n in protocol.HALVES[h]] for h in ("choose", "confirm")}
    halves["all"] = names
    roc = lambda n, m: summary.get((n, m), {}).get("roc_auc")  # noqa: E731
    # "best peer per set": the highest of the peers that ran on that set
    lines = [
        "| method | " + " | ".join(f"{h} ({len(v)})" for h, v in halves.items()) + " |",
        "|---|" + "---|" * len(halves),
    ]
    for m in [*methods, "best peer per set"] if peers else methods:
        cells = []
        for sets in halves.values():
            if m == "best peer per set":
                vals = [max(roc(n, p) or 0.0 for p in peers) for n in sets]
            else:
                vals = [roc(n, m) for n in sets]
            got = [v for v in vals if v is not None]
            # a method that failed or did not run on a set: its mean over the others, counted
            cells.append(
                "n/a"
                if not got
                else f"{np.mean(got):.3f}" + ("" if len(got) == len(vals) else f" ({len(got)})")
            )
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    if "vae_core" in methods and "iforest" in methods:
        behind = [
            f"{n} ({roc(n, 'vae_core'):.3f} vs {roc(n, 'iforest'):.3f})"
            for n in names
            if roc(n, "vae_core") is not None
            and roc(n, "iforest") is not None
            and roc(n, "iforest") - roc(n, "vae_core") > 0.08
        ]
        lines += [
            "",
            "Sets where vae_core trails IsolationForest by more than 0.08: "
            + (", ".join(behind) if behind else "none")
            + ".",
        ]
    return "\n".join(lines)


def _settings_line(vae_params: dict) -> str:
    if not vae_params:
        return "vae_core: `VAEDetector(random_state=seed)` (defaults)."
    shown = ", ".join(f"{k}={v!r}" for k, v in vae_params.items())
    return f"vae_core: **NON-DEFAULT settings** `VAEDetector(random_state=seed, {shown})`."


def merged(files: list[Path]) -> tuple[dict, dict, list[dict]]:
    """(meta, data set descriptions, results) of several --json runs, in the order given."""
    metas, infos, by_key = [], {}, {}
    for f in files:
        run = json.loads(Path(f).read_text())
        metas.append({"file": str(f), **run["meta"]})
        infos.update(run["datasets"])
        for r in run["results"]:
            by_key[(r["dataset"], r["seed"], r["method"])] = r
    methods = list(dict.fromkeys(r["method"] for r in by_key.values()))
    order = {m: i for i, m in enumerate(protocol.METHODS)}
    methods.sort(key=lambda m: order.get(m, len(order)))
    params = [m.get("vae_params", {}) for m in metas]
    meta = {"merged_from": metas, "methods": methods, "vae_params": params[0] if params else {}}
    return meta, infos, list(by_key.values())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.merge:
        meta, infos, results = merged(args.merge)
        if args.json:
            protocol.write_json({"meta": meta, "datasets": infos, "results": results}, args.json)
        print(markdown_table(results, infos, meta["methods"], meta["vae_params"]))
        print()
        print(verdict_table(results, meta["methods"]))
        return 0
    if args.data_dir is None:
        raise SystemExit("error: give DATA_DIR (or --merge JSON ...)")
    protocol.quiet_environment()
    protocol.set_torch_threads(args.threads)
    # vae_core warns once per constant training column (hundreds on the ResNet embeddings).
    warnings.filterwarnings("ignore", message=r"column .* is constant")
    vae_params = protocol.parse_params(args.vae_param)
    if set(args.methods) & {"pyod_vae", "mcd", "knn", "ecod"}:
        protocol.require_pyod()
    meta = {
        **protocol.provenance(),
        "seeds": args.seeds,
        "methods": args.methods,
        "vae_params": vae_params,
        "protocol": "ADBench: <=10k rows, stratified 70/30, "
        "min-max scaling fitted on the 70%, contaminated fit",
    }
    args.reused = {}
    if args.reuse:
        earlier = [r for f in args.reuse for r in json.loads(f.read_text())["results"]]
        args.reused = {
            (r["dataset"], r["seed"], r["method"]): {
                k: v for k, v in r.items() if k not in ("dataset", "seed", "method")
            }
            for r in earlier
        }
        meta["reused_from"] = [str(f) for f in args.reuse]
    results, infos, skipped = [], {}, {}
    files = dataset_files(args.data_dir, args.datasets)
    if args.half:
        files = [f for f in files if f.stem in protocol.HALVES[args.half]]
    for path in files:
        rows, info = run_dataset(path, args, vae_params)
        if "skipped" in info:
            skipped[path.stem] = info["skipped"]
        if rows:
            results += rows
            infos[path.stem] = info
            if args.json:  # after every data set, so a long run can be read while it goes
                protocol.write_json(
                    {"meta": meta, "datasets": infos, "results": results}, args.json
                )
    if not results:
        print("no tabular data sets could be run", file=sys.stderr)
        return 1
    print(markdown_table(results, infos, args.methods, vae_params))
    print()
    print(verdict_table(results, args.methods))
    for name, reason in skipped.items():
        print(f"\nSkipped {name}: {reason}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
