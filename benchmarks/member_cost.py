"""What the snapshot member costs at scoring: one fitted model, scored with one member, then both.

Fits ``VAEDetector`` at its defaults (the snapshot member on; ``--epochs`` caps training, which
the scoring cost does not depend on) on ``speed.py``'s synthetic table and times
``score_with_contributions`` (what batch scoring runs) on ``--rows`` rows, best of
``--repeats``, from a DataFrame and from a NumPy array, first with ``members_`` cut to the final
network, then with both. Prints rows per second and the ratio of the times.

Example::

    python benchmarks/member_cost.py --rows 200000
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import protocol


def best_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--features", type=int, default=30)
    p.add_argument("--train-rows", type=int, default=20_000)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    protocol.quiet_environment()
    protocol.set_torch_threads(args.threads)
    import speed

    from vae_core import VAEDetector

    train = speed.synthetic_frame(args.train_rows, args.features, seed=1).drop(columns="id")
    frame = speed.synthetic_frame(args.rows, args.features, seed=2).drop(columns="id")
    det = VAEDetector(random_state=0, epochs=args.epochs).fit(train)
    members = det.members_
    snapshot, best = det.snapshot_epoch_, det.best_epoch_
    print(f"{len(members)} members (snapshot of epoch {snapshot}, best {best})")
    print("| input | one network, rows/s | both members, rows/s | time ratio |")
    print("|---|---|---|---|")
    for name, X in (("DataFrame", frame), ("NumPy", frame.to_numpy())):
        seconds = {}
        for label, used in (("one", members[:1]), ("both", members)):
            det.members_ = used
            seconds[label] = best_seconds(lambda X=X: det.score_with_contributions(X), args.repeats)
        det.members_ = members
        one, both = (args.rows / seconds[k] for k in ("one", "both"))
        print(f"| {name} | {one:,.0f} | {both:,.0f} | {seconds['both'] / seconds['one']:.2f} |")
    meta = protocol.provenance()
    print(f"\n{meta['cpu']}, {args.threads} torch thread(s), {args.rows:,} rows, ", end="")
    print(f"git {meta['git_commit']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
