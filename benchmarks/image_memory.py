"""Peak memory of image training: images held in memory against images read from their files.

The image path reads a training folder into one uint8 array when its decoded pixels fit in
``images.in_memory_mb``, and otherwise keeps the files and decodes them minibatch by minibatch
(``vae_core.data.images.ImageFiles``). This script measures what that buys: for each image count and
mode, a fresh Python process lists and reads a folder of PNG files with
``kinds.choice.load_dataset`` and trains the conv VAE for ``--epochs`` epochs on it through
``pipeline.fit_detector`` (the flow's calls), then reports its peak resident memory
(``ru_maxrss``) and the seconds per epoch.

The images are real: MNIST training digits from ``image_mnist_train5k.npz`` (../shared/datasets),
upscaled to ``--size`` pixels (bilinear) so that the pixels, not the interpreter, dominate
memory; the 5,000 digits are repeated to reach the larger counts (files are distinct; pixels
repeat, which changes nothing for memory or time).

Example::

    nice -n 10 python benchmarks/image_memory.py --counts 4000 32000 --size 64
"""

from __future__ import annotations

import os

os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MODES = ("in_memory", "streamed")


def write_pngs(folder: Path, count: int, size: int, source: Path) -> None:
    """``count`` PNG files of ``size`` x ``size`` grey digits in ``folder``."""
    from PIL import Image

    digits = np.load(source)["X_train"]
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        img = Image.fromarray(digits[i % len(digits)]).resize((size, size), Image.BILINEAR)
        img.save(folder / f"{i:06d}.png")


def child(args) -> None:
    """Load and train in this (fresh) process; print one JSON line."""
    import torch

    from vae_core.foundations.config import load_config
    from vae_core.kinds.choice import load_dataset
    from vae_core.steps import pipeline

    torch.set_num_threads(args.threads)
    in_memory_mb = 1e9 if args.mode == "in_memory" else 0
    cfg = load_config(
        None,
        {
            "data": {"kind": "images", "train_path": args.folder},
            "images": {"size": [args.size, args.size], "in_memory_mb": in_memory_mb},
            "model": {
                "architecture": "conv",
                "hidden_dims": [16, 32],
                "latent_dim": 8,
                "n_score_samples": 4,  # the fit ends by scoring every image: keep it short
            },
            "training": {"epochs": args.epochs, "batch_size": 64, "patience": args.epochs},
        },
    )
    started = time.perf_counter()
    data = load_dataset(args.folder, cfg)
    loaded = time.perf_counter() - started
    rows = np.arange(len(data.images))
    det = pipeline.fit_detector(data.features_at(rows), cfg)
    seconds = [h["seconds"] for h in det.history_]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB (Linux)
    print(
        json.dumps(
            {
                "mode": args.mode,
                "images": len(data.images),
                "streamed": data.streamed,
                "pixels_mib": data.images.images.nbytes / 2**20,
                "load_seconds": loaded,
                "epoch_seconds": float(np.mean(seconds)),
                "peak_rss_mib": peak,
            }
        )
    )


def run(args) -> list[dict]:
    results = []
    with tempfile.TemporaryDirectory(prefix="image-memory-") as tmp:
        for count in args.counts:
            folder = Path(tmp) / f"n{count}"
            write_pngs(folder, count, args.size, args.source)
            for mode in MODES:
                cmd = [sys.executable, __file__, "--child", "--mode", mode]
                cmd += ["--folder", str(folder), "--size", str(args.size)]
                cmd += ["--epochs", str(args.epochs), "--threads", str(args.threads)]
                done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
                if done.returncode:
                    raise RuntimeError(f"{mode} on {count} images failed:\n{done.stderr[-3000:]}")
                results.append(json.loads(done.stdout.strip().splitlines()[-1]))
                print(results[-1], file=sys.stderr)
    return results


def table(results: list[dict], args) -> str:
    lines = [
        f"Conv VAE (16, 32), latent 8, batch 64, 4 score samples, {args.epochs} epoch(s), "
        f"{args.size}x{args.size} grey PNGs, {args.threads} torch thread(s)",
        "",
        "| images | decoded pixels | mode | peak RSS | load (list + check) | seconds / epoch |",
        "|---:|---:|---|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['images']:,} | {r['pixels_mib']:,.0f} MiB | {r['mode']} | "
            f"{r['peak_rss_mib']:,.0f} MiB | {r['load_seconds']:.1f} s | "
            f"{r['epoch_seconds']:.1f} s |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--counts", type=int, nargs="+", default=[4000, 32000])
    p.add_argument("--size", type=int, default=64, help="image height and width in pixels")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--source",
        type=Path,
        default=ROOT.parent / "shared" / "datasets" / "image_mnist_train5k.npz",
    )
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    p.add_argument("--folder", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return
    results = run(args)
    if args.json:
        args.json.write_text(json.dumps({"results": results}, indent=2) + "\n")
    print(table(results, args))


if __name__ == "__main__":
    main()
