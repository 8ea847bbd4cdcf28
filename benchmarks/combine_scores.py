"""Settings of one sweep combined after the fact: each row's negative ELBOs averaged in nats.

``sweep.py --scores FILE.npz`` keeps every fit's test scores. A fit capped at E epochs
(``epochs=E,patience=1000``) is the same run as the uncapped fit up to epoch E (training is
deterministic for a seed), so averaging the scores of ``base`` and ``e16`` measures what a
two-member model (the final network and the same run's network at epoch 16) would score,
without training it. Printed per combination: mean ROC-AUC over each half of
``protocol.HALVES`` and over all sets, the change against the first setting named, and the
set furthest behind IsolationForest.

Example::

    python benchmarks/combine_scores.py sweep_19_scores.npz base e16 base+e16 base+e8
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent))
import protocol


def combined_auc(z, combo: tuple[str, ...], dataset: str, seeds: list[int]) -> float | None:
    """Mean ROC-AUC over seeds of the members' averaged scores; None where one is missing."""
    aucs = []
    for seed in seeds:
        keys = [f"{s}|{dataset}|{seed}|0|{'iforest' if s == 'iforest' else 'nelbo'}" for s in combo]
        if any(k not in z for k in keys):
            return None
        scores = np.mean([z[k] for k in keys], axis=0)
        if not np.isfinite(scores).all():
            return None
        aucs.append(roc_auc_score(z[f"y|{dataset}|{seed}"], scores))
    return float(np.mean(aucs))


def table(z, combos: list[tuple[str, ...]]) -> str:
    sets = sorted({k.split("|")[1] for k in z if k.startswith("y|")})
    seeds = sorted({int(k.split("|")[2]) for k in z if k.startswith("y|")})
    res = {c: {d: combined_auc(z, c, d, seeds) for d in sets} for c in [*combos, ("iforest",)]}
    sets = [d for d in sets if all(r[d] is not None for r in res.values())]
    halves = {h: [d for d in protocol.HALVES[h] if d in sets] for h in ("choose", "confirm")}
    first = res[combos[0]]
    lines = [
        f"{len(sets)} sets, seeds {seeds}",
        "| members | choose | confirm | all | choose vs first | confirm vs first | worst vs IF |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in combos:
        r = res[c]
        means = {h: np.mean([r[d] for d in names]) for h, names in halves.items()}
        deltas = {h: means[h] - np.mean([first[d] for d in names]) for h, names in halves.items()}
        gaps = {d: r[d] - res[("iforest",)][d] for d in sets}
        worst = min(gaps, key=gaps.get)
        lines.append(
            f"| {'+'.join(c)} | {means['choose']:.4f} | {means['confirm']:.4f} | "
            f"{np.mean([r[d] for d in sets]):.4f} | {deltas['choose']:+.4f} | "
            f"{deltas['confirm']:+.4f} | {worst} {gaps[worst]:+.3f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("scores", type=Path, help="the npz of sweep.py --scores")
    p.add_argument("combos", nargs="+", help="settings joined by +, e.g. base+e16")
    args = p.parse_args(argv)
    with np.load(args.scores) as z:
        print(table(dict(z), [tuple(c.split("+")) for c in args.combos]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
