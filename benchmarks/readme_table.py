"""The README's results table, regenerated from the recorded benchmark runs.

    python benchmarks/readme_table.py            # rewrite the block in README.md
    python benchmarks/readme_table.py --check    # exit 1 if README.md's block is stale

Reads benchmarks/results/quality_peers.json (benchmarks/quality.py --json, every tabular and
embedding set with the peers) and images.json (benchmarks/images.py --json) and writes the
table between the markers ``<!-- results:begin -->`` and ``<!-- results:end -->`` of
README.md: mean ROC-AUC and average precision over the tabular sets (each set's mean over its
seeds first; a method that failed on a set is averaged over the others, with their count),
the best peer per set, the one-class MNIST mean over digits, how many sets the VAE leads
IsolationForest on, and the commit, date and machine the runs were made on. Nothing else in
the README holds a benchmark number, so rerunning the benchmarks and then this script keeps
the README true.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
QUALITY = "quality_peers.json"
METHODS = ("vae_core", "pyod_vae", "iforest", "mcd", "knn", "ecod")
HEADERS = ("vae_core", "PyOD VAE", "IsolationForest", "PyOD MCD", "PyOD KNN", "PyOD ECOD")
PEERS = ("iforest", "mcd", "knn")  # the best peer per set: a user's pick among these


def per_group_means(results: list[dict], method: str, key: str, by: str) -> dict:
    """{group: mean of ``key`` over its runs} for one method (groups: datasets or digits)."""
    groups: dict = {}
    for r in results:
        if r["method"] == method and r.get(key) is not None:
            groups.setdefault(r[by], []).append(float(r[key]))
    return {g: sum(v) / len(v) for g, v in groups.items()}


def mean_of(results: list[dict], method: str, key: str, by: str) -> float | None:
    """The mean over groups of each group's mean (None when the method has no runs)."""
    means = per_group_means(results, method, key, by)
    return sum(means.values()) / len(means) if means else None


def _row(label: str, values: list, counts: list[int] | None = None, n: int = 0) -> str:
    best = max((v for v in values if v is not None), default=None)
    cells = []
    for i, v in enumerate(values):
        text = "" if v is None else (f"**{v:.3f}**" if v == best else f"{v:.3f}")
        if v is not None and counts is not None and counts[i] < n:
            text += f" ({counts[i]} sets)"
        cells.append(text)
    return f"| {label} | " + " | ".join(cells) + " |"


def _set_means(q: list[dict], key: str) -> tuple[list, list[int]]:
    means = [per_group_means(q, m, key, "dataset") for m in METHODS]
    return [sum(m.values()) / len(m) if m else None for m in means], [len(m) for m in means]


def _latest(meta: dict) -> dict:
    """A run's meta; of a merged run (quality.py --merge), its latest dated part: where
    vae_core's results come from when an earlier run's peers were merged in first."""
    parts = [p for p in meta.get("merged_from", [meta]) if "date" in p]
    return max(parts, key=lambda part: part["date"])


def _machine(meta: dict) -> str:
    meta = _latest(meta)
    return (
        f"{meta['cpu']}, {meta['nproc']} cores, at commit {meta['git_commit']}, {meta['date'][:10]}"
    )


def table(quality: dict, images: dict) -> str:
    """The Markdown block (without the markers)."""
    q, im = quality["results"], images["results"]
    n_sets = len({r["dataset"] for r in q})
    seeds = _latest(quality["meta"])["seeds"]
    auc, auc_n = _set_means(q, "roc_auc")
    ap, ap_n = _set_means(q, "average_precision")
    lines = [
        f"| {n_sets} ADBench / ODDS sets, {seeds} seeds | " + " | ".join(HEADERS) + " |",
        "|---|" + "---|" * len(METHODS),
        _row("mean ROC-AUC", auc, auc_n, n_sets),
        _row("mean average precision", ap, ap_n, n_sets),
        _row(
            "one-class MNIST, mean ROC-AUC over 10 digits",
            [mean_of(im, m, "roc_auc", "digit") for m in METHODS],
        ),
    ]
    vae = per_group_means(q, "vae_core", "roc_auc", "dataset")
    forest = per_group_means(q, "iforest", "roc_auc", "dataset")
    peers = [per_group_means(q, m, "roc_auc", "dataset") for m in PEERS]
    best_peer = {d: max(p[d] for p in peers if d in p) for d in vae}
    far_behind = [d for d in vae if d in forest and vae[d] < forest[d] - 0.08]
    shared = [d for d in vae if d in forest]
    ahead = sum(vae[d] > forest[d] for d in shared)
    worst = min(shared, key=lambda d: vae[d] - forest[d])
    behind = (
        f" Its largest gap behind it: {worst.removeprefix('adbench_')} ({vae[worst]:.3f} "
        f"against {forest[worst]:.3f})."
        if vae[worst] < forest[worst]
        else ""
    )
    lines += [
        "",
        f"vae_core's ROC-AUC is above IsolationForest's on {ahead} of {len(shared)} sets."
        + behind
        + f" The best of IsolationForest, MCD and KNN on each set (a user who picks the right one "
        f"per table): {sum(best_peer.values()) / len(best_peer):.3f}, against vae_core's "
        f"{sum(vae.values()) / len(vae):.3f}; sets more than 0.08 behind IsolationForest: "
        f"{', '.join(d.removeprefix('adbench_') for d in sorted(far_behind)) or 'none'}.",
        f"Tables: {_machine(quality['meta'])} (`benchmarks/results/{QUALITY}`);",
        f"MNIST: {_machine(images['meta'])} (`images.json`).",
    ]
    return "\n".join(lines)


def render(readme: str, block: str) -> str:
    """``readme`` with the text between the markers replaced by ``block``."""
    if BEGIN not in readme or END not in readme:
        raise SystemExit(f"README.md has no {BEGIN} ... {END} block")
    head, rest = readme.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{block}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if README.md is stale")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    args = parser.parse_args(argv)
    quality = json.loads((RESULTS / QUALITY).read_text())
    images = json.loads((RESULTS / "images.json").read_text())
    readme = args.readme.read_text()
    updated = render(readme, table(quality, images))
    if args.check:
        if updated != readme:
            print(f"{args.readme}: the results table is stale; run {Path(__file__).name}")
            return 1
        return 0
    if updated != readme:
        args.readme.write_text(updated)
        print(f"{args.readme}: results table rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())
