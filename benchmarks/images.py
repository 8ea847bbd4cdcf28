"""One-class MNIST: vae_core's convolutional VAE beside IsolationForest on raw pixels.

Protocol (one class normal, as in Ruff et al., "Deep One-Class Classification", ICML 2018):
for each digit, fit on that digit's images of ``image_mnist_train5k`` (500 per digit,
unlabelled, no anomalies), then score MNIST test images: that digit is normal, the nine others
are anomalies. ``--test-sample N`` scores a class-stratified random sample of N test images
(fixed seed, the same for every digit and method) instead of all 10,000, to fit a CPU budget;
about 10% of the sample is then normal for each digit.

vae_core runs with the model and training settings of ``--config`` (default
``configs/mnist.yml``, the settings the image demo ships with), the same for every digit (no
per-digit tuning), ``random_state=seed``, on the uint8 (n, 28, 28) arrays; ``--epochs`` and
``--vae-param`` change them (the table then says so). IsolationForest: scikit-learn defaults,
``random_state=seed``, on pixels / 255.

Beside ROC-AUC, each digit's **reconstruction retrieval**: the share of that digit's test
images (the normal ones) whose reconstruction is nearer, in pixels / 255, to its own image than
to every other normal test image
(``vae_core.evaluation.image_maps.reconstruction_retrieval``; chance is 1 / n). A decoder
that ignores its input scores about chance.

Example::

    nice -n 10 python benchmarks/images.py --digits 0 1 2 --test-sample 2000
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

METHODS = ("vae_core", "iforest")
COMPRESSORS = ("png", "webp")
DEFAULT_CONFIG = protocol.ROOT / "configs" / "mnist.yml"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, default=protocol.SHARED_DATASETS)
    p.add_argument("--digits", type=int, nargs="+", default=list(range(10)))
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="pipeline config")
    p.add_argument("--epochs", type=int, help="vae_core maximum epochs (default: the config's)")
    p.add_argument("--seeds", type=int, default=1, help="seeds 0 .. N-1 (default 1)")
    p.add_argument(
        "--test-sample", type=int, default=0, help="score N stratified test images (0 = all)"
    )
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--vae-param", action="append", metavar="KEY=VALUE")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--json", type=Path, help="write all results to this JSON file")
    p.add_argument(
        "--complexity",
        choices=COMPRESSORS,
        nargs="+",
        default=[],
        help="also score vae_core's negative ELBO minus this lossless compressor's code length "
        "of the image in nats (Serra et al., ICLR 2020), from the same fit",
    )
    p.add_argument(
        "--background",
        type=float,
        default=0.0,
        metavar="RATE",
        help="also score the likelihood ratio against a background VAE fitted on the training "
        "images with each pixel replaced by noise with probability RATE (Ren et al., 2019)",
    )
    return p.parse_args(argv)


def code_length_nats(images: np.ndarray, compressor: str) -> np.ndarray:
    """Each uint8 image's lossless code length in nats (bytes x 8 ln 2): PNG (zlib, optimised)
    or lossless WebP, both through Pillow. The input-complexity estimate L(x) of Serra et al.,
    "Input complexity and out-of-distribution detection with likelihood-based generative
    models", ICLR 2020; their score is -log p(x) - L(x)."""
    import io

    from PIL import Image

    out = np.empty(len(images))
    for i, image in enumerate(images):
        buffer = io.BytesIO()
        if compressor == "png":
            Image.fromarray(image).save(buffer, format="PNG", optimize=True)
        else:
            Image.fromarray(image).save(buffer, format="WEBP", lossless=True, quality=100, method=6)
        out[i] = len(buffer.getvalue()) * 8 * np.log(2)
    return out


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


def perturb(images: np.ndarray, rate: float, seed: int) -> np.ndarray:
    """The background model's training images of Ren et al., "Likelihood ratios for
    out-of-distribution detection", NeurIPS 2019: each pixel replaced, with probability
    ``rate``, by a uniform random value."""
    rng = np.random.default_rng(seed + 7919)
    out = images.copy()
    replace = rng.random(images.shape) < rate
    out[replace] = rng.integers(0, 256, size=int(replace.sum()), dtype=images.dtype)
    return out


def fit_and_score(method: str, X_train, X_test, normal, seed: int, vae_params: dict):
    """(anomaly scores of X_test, higher = more anomalous; fit seconds; epochs run or None;
    reconstruction retrieval of the images ``normal`` (None: not measured) or None)."""
    started = time.perf_counter()
    if method == "vae_core":
        from vae_core import VAEDetector
        from vae_core.evaluation.image_maps import reconstruction_retrieval

        det = VAEDetector(**{**vae_params, "random_state": seed}).fit(X_train)
        fit_seconds = time.perf_counter() - started
        retrieval = None if normal is None else reconstruction_retrieval(det, normal, len(normal))
        return det.anomaly_score(X_test), fit_seconds, len(det.history_), retrieval
    flat = lambda a: a.reshape(len(a), -1).astype("float32") / 255.0  # noqa: E731
    model = protocol.fit_iforest(flat(X_train), seed)
    return protocol.score_iforest(model, flat(X_test)), time.perf_counter() - started, None, None


def run(args: argparse.Namespace, vae_params: dict, meta: dict) -> list[dict]:
    """Every digit, seed and method; the JSON is rewritten after each digit and seed."""
    X_tr, y_tr, X_te, y_te = load_mnist(args.data_dir, args.test_sample)
    lengths = {c: code_length_nats(X_te, c) for c in args.complexity}
    results = []
    for digit in args.digits:
        train, normal = X_tr[y_tr == digit], X_te[y_te == digit]
        y = (y_te != digit).astype(int)
        for seed in range(args.seeds):
            for method in args.methods:
                scores, fit_s, epochs, retrieval = fit_and_score(
                    method, train, X_te, normal, seed, vae_params
                )
                scored = {method: scores}
                if method == "vae_core":
                    scored |= {f"vae_core-{c}": scores - lengths[c] for c in lengths}
                    if args.background:
                        noisy = perturb(train, args.background, seed)
                        background, *_ = fit_and_score(method, noisy, X_te, None, seed,
                                                       vae_params)  # fmt: skip
                        scored[f"vae_core-ratio{args.background:g}"] = scores - background
                for name, these in scored.items():
                    metrics = protocol.detection_metrics(y, these)
                    results.append(
                        {"digit": digit, "seed": seed, "method": name, **metrics,
                         "reconstruction_retrieval": retrieval,
                         "fit_seconds": fit_s, "epochs_run": epochs, "n_test": len(y_te),
                         "n_test_normal": len(normal)}
                    )  # fmt: skip
                    shown = "" if retrieval is None else f" retrieval={retrieval:.3f}"
                    print(
                        f"  digit {digit} seed={seed} {name}: roc_auc={metrics['roc_auc']:.3f}"
                        f"{shown} fit={fit_s:.1f}s",
                        file=sys.stderr,
                    )
            if args.json:
                protocol.write_json({"meta": meta, "results": results}, args.json)
    return results


def markdown_table(results: list[dict], methods: list[str], vae_params: dict, note: str) -> str:
    """ROC-AUC per digit (mean over seeds), vae_core's reconstruction retrieval, the means."""
    digits = sorted({r["digit"] for r in results})

    def mean(d, m, key):
        return float(np.mean([r[key] for r in results if (r["digit"], r["method"]) == (d, m)]))

    auc = {(d, m): mean(d, m, "roc_auc") for d in digits for m in methods}
    retrieval = {d: mean(d, "vae_core", "reconstruction_retrieval") for d in digits}
    with_vae = "vae_core" in methods
    settings = ", ".join(f"{k}={v!r}" for k, v in vae_params.items())
    head = [f"ROC-AUC {m}" for m in methods] + (["retrieval vae_core"] if with_vae else [])
    lines = [
        f"vae_core: `VAEDetector({settings})`{note}",
        "",
        "| digit | " + " | ".join(head) + " |",
        "|---|" + "---|" * len(head),
    ]
    for d in digits:
        cells = [f"{auc[d, m]:.3f}" for m in methods] + (
            [f"{retrieval[d]:.3f}"] if with_vae else []
        )
        lines.append(f"| {d} | " + " | ".join(cells) + " |")
    means = [f"**{np.mean([auc[d, m] for d in digits]):.3f}**" for m in methods]
    if with_vae:
        means.append(f"**{np.mean(list(retrieval.values())):.3f}**")
    lines.append(f"| **mean ({len(digits)} digits)** | " + " | ".join(means) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    protocol.quiet_environment()
    protocol.set_torch_threads(args.threads)
    from vae_core.foundations.config import load_config

    changed = protocol.parse_params(args.vae_param)
    if args.epochs is not None:
        changed["epochs"] = args.epochs
    vae_params = load_config(args.config).detector_params() | changed
    vae_params.pop("random_state", None)
    shown = ", ".join(sorted(changed))
    note = f" (settings of `{args.config.name}`" + (
        f"; **changed by the command line: {shown}**)" if changed else ")"
    )
    meta = {**protocol.provenance(), "vae_params": vae_params, "test_sample": args.test_sample}
    results = run(args, vae_params, meta)
    corrected = [f"vae_core-{c}" for c in args.complexity]
    corrected += [f"vae_core-ratio{args.background:g}"] if args.background else []
    corrected = corrected if "vae_core" in args.methods else []
    methods = args.methods + corrected
    print(markdown_table(results, methods, vae_params, note))
    return 0


if __name__ == "__main__":
    sys.exit(main())
