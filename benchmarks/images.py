"""One-class MNIST: vae_core's convolutional VAE beside IsolationForest on raw pixels.

Protocol (one class normal, as in Ruff et al., "Deep One-Class Classification", ICML 2018):
for each digit, fit on that digit's images of ``image_mnist_train5k`` (500 per digit,
unlabelled, no anomalies), then score MNIST test images: that digit is normal, the nine others
are anomalies. ``--test-sample N`` scores a class-stratified random sample of N test images
(fixed seed, the same for every digit and method) instead of all 10,000, to fit a CPU budget;
about 10% of the sample is then normal for each digit.

vae_core runs with fixed settings for every digit (no per-digit tuning),
``VAEDetector(architecture="conv", hidden_dims=(32, 64), latent_dim=16, epochs=--epochs,
random_state=seed)`` on the uint8 (n, 28, 28) arrays; ``--vae-param`` changes them (the table
then says so). IsolationForest: scikit-learn defaults, ``random_state=seed``, on pixels / 255.

Example::

    nice -n 10 python benchmarks/images.py --digits 0 1 2 --epochs 30 --test-sample 2000
"""

from __future__ import annotations

import os

os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import protocol  # the sibling module, importable once the path is set

CONV_SETTINGS = {"architecture": "conv", "hidden_dims": (32, 64), "latent_dim": 16}
METHODS = ("vae_core", "iforest")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, default=protocol.SHARED_DATASETS)
    p.add_argument("--digits", type=int, nargs="+", default=list(range(10)))
    p.add_argument("--epochs", type=int, default=50, help="vae_core maximum epochs")
    p.add_argument("--seeds", type=int, default=1, help="seeds 0 .. N-1 (default 1)")
    p.add_argument(
        "--test-sample", type=int, default=0, help="score N stratified test images (0 = all)"
    )
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--vae-param", action="append", metavar="KEY=VALUE")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--json", type=Path, help="write all results to this JSON file")
    return p.parse_args(argv)


def load_mnist(data_dir: Path, test_sample: int):
    """(train images, train labels, test images, test labels); uint8 (n, 28, 28)."""
    train = np.load(data_dir / "image_mnist_train5k.npz")
    test = np.load(data_dir / "image_mnist_test.npz")
    X_te, y_te = test["X_test"], test["y_test"]
    if 0 < test_sample < len(y_te):
        from sklearn.model_selection import train_test_split

        keep, _ = train_test_split(
            np.arange(len(y_te)), train_size=test_sample, stratify=y_te, random_state=0
        )
        X_te, y_te = X_te[np.sort(keep)], y_te[np.sort(keep)]
    return train["X_train"], train["y_train"], X_te, y_te


def fit_and_score(method: str, X_train, X_test, seed: int, vae_params: dict):
    """(anomaly scores of X_test, higher = more anomalous; fit seconds; epochs run or None)."""
    started = time.perf_counter()
    if method == "vae_core":
        from vae_core import VAEDetector

        det = VAEDetector(random_state=seed, **vae_params).fit(X_train)
        fit_seconds = time.perf_counter() - started
        return det.anomaly_score(X_test), fit_seconds, len(det.history_)
    flat = lambda a: a.reshape(len(a), -1).astype("float32") / 255.0  # noqa: E731
    model = protocol.fit_iforest(flat(X_train), seed)
    return protocol.score_iforest(model, flat(X_test)), time.perf_counter() - started, None


def run(args: argparse.Namespace, vae_params: dict, meta: dict) -> list[dict]:
    """Every digit, seed and method; the JSON is rewritten after each digit and seed."""
    X_tr, y_tr, X_te, y_te = load_mnist(args.data_dir, args.test_sample)
    results = []
    for digit in args.digits:
        for seed in range(args.seeds):
            for method in args.methods:
                scores, fit_s, epochs = fit_and_score(
                    method, X_tr[y_tr == digit], X_te, seed, vae_params
                )
                metrics = protocol.detection_metrics((y_te != digit).astype(int), scores)
                results.append(
                    {"digit": digit, "seed": seed, "method": method, **metrics,
                     "fit_seconds": fit_s, "epochs_run": epochs, "n_test": len(y_te),
                     "n_test_normal": int((y_te == digit).sum())}
                )  # fmt: skip
                print(
                    f"  digit {digit} seed={seed} {method}: roc_auc={metrics['roc_auc']:.3f} "
                    f"fit={fit_s:.1f}s",
                    file=sys.stderr,
                )
            if args.json:
                protocol.write_json({"meta": meta, "results": results}, args.json)
    return results


def markdown_table(results: list[dict], methods: list[str], vae_params: dict) -> str:
    """ROC-AUC per digit (mean over seeds) and the mean over digits."""
    digits = sorted({r["digit"] for r in results})
    auc = {
        (d, m): float(
            np.mean([r["roc_auc"] for r in results if (r["digit"], r["method"]) == (d, m)])
        )
        for d in digits
        for m in methods
    }
    settings = ", ".join(f"{k}={v!r}" for k, v in vae_params.items())
    changed = set(vae_params) - set(CONV_SETTINGS) - {"epochs"}
    note = f" (**changed by --vae-param: {', '.join(sorted(changed))}**)" if changed else ""
    lines = [
        f"vae_core: `VAEDetector(random_state=seed, {settings})`{note}",
        "",
        "| digit | " + " | ".join(f"ROC-AUC {m}" for m in methods) + " |",
        "|---|" + "---|" * len(methods),
    ]
    lines += [f"| {d} | " + " | ".join(f"{auc[d, m]:.3f}" for m in methods) + " |" for d in digits]
    means = [f"**{np.mean([auc[d, m] for d in digits]):.3f}**" for m in methods]
    lines.append(f"| **mean ({len(digits)} digits)** | " + " | ".join(means) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    protocol.quiet_environment()
    protocol.set_torch_threads(args.threads)
    vae_params = {**CONV_SETTINGS, "epochs": args.epochs, **protocol.parse_params(args.vae_param)}
    meta = {**protocol.provenance(), "vae_params": vae_params, "test_sample": args.test_sample}
    results = run(args, vae_params, meta)
    print(markdown_table(results, args.methods, vae_params))
    return 0


if __name__ == "__main__":
    sys.exit(main())
