"""Exactness and robustness on data whose likelihood is known: probabilistic PCA.

x = W z + mu + noise, z ~ N(0, I_k), noise ~ N(0, s2 I_d) has the closed-form density
x ~ N(mu, W W^T + s2 I) (Tipping & Bishop, 1999), which a Gaussian VAE can represent. The
protocol of issue 23: d = 10, k = 2, W ~ N(0, 2^2), mu ~ N(0, 3^2), s2 = 0.1, 20,000 training
rows, 5,000 clean test rows, ``VAEDetector(latent_dim=2)`` otherwise at its defaults. Printed
per setting and seed, in nats per dimension of the data as given:

* ELBO gap: exact log p(x) minus the ELBO (1,024 draws of z), mean over the clean test rows;
* IWAE gap: exact log p(x) minus the importance-weighted bound with k = 200;
* the same ELBO gap when 5% of the training rows are outliers (the same draw plus N(0, 1.5^2)
  noise on every column), and the ROC-AUC with which the fitted model's scores find those
  training outliers among the training rows.

Example::

    python benchmarks/ppca.py --seeds 3 --setting base: --setting notrim:trim_fraction=0.0
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import protocol

D, K, S2 = 10, 2, 0.1
N_TRAIN, N_TEST, OUTLIER_SHARE, OUTLIER_SD = 20_000, 5_000, 0.05, 1.5


def ppca_data(seed: int) -> dict:
    """Training rows (clean and with 5% outliers), clean test rows and their exact log p(x)."""
    from scipy.stats import multivariate_normal

    rng = np.random.default_rng(seed)
    W, mu = rng.normal(0, 2, size=(D, K)), rng.normal(0, 3, size=D)

    def draw(n):
        return rng.normal(size=(n, K)) @ W.T + mu + rng.normal(0, np.sqrt(S2), size=(n, D))

    x_train, x_test = draw(N_TRAIN), draw(N_TEST)
    is_outlier = np.zeros(N_TRAIN, dtype=bool)
    is_outlier[rng.choice(N_TRAIN, int(OUTLIER_SHARE * N_TRAIN), replace=False)] = True
    x_dirty = x_train.copy()
    x_dirty[is_outlier] += rng.normal(0, OUTLIER_SD, size=(is_outlier.sum(), D))
    exact = multivariate_normal(mu, W @ W.T + S2 * np.eye(D)).logpdf(x_test)
    return {
        "x_train": x_train,
        "x_dirty": x_dirty,
        "is_outlier": is_outlier,
        "x_test": x_test,
        "exact": exact,
    }


def measure(params: dict, seed: int) -> dict:
    """The four figures of the module docstring for one setting and seed."""
    from sklearn.metrics import roc_auc_score

    from vae_core import VAEDetector

    data = ppca_data(seed)
    exact = data["exact"].mean()
    clean = VAEDetector(latent_dim=K, random_state=seed, **params).fit(data["x_train"])
    elbo = -clean.anomaly_score(data["x_test"], n_samples=1024).mean()
    iwae = clean.log_likelihood(data["x_test"], k=200).mean()
    dirty = VAEDetector(latent_dim=K, random_state=seed, **params).fit(data["x_dirty"])
    elbo_dirty = -dirty.anomaly_score(data["x_test"], n_samples=1024).mean()
    found = roc_auc_score(data["is_outlier"], dirty.anomaly_score(data["x_dirty"]))
    return {
        "elbo_gap": float((exact - elbo) / D),
        "iwae_gap": float((exact - iwae) / D),
        "elbo_gap_contaminated": float((exact - elbo_dirty) / D),
        "outliers_roc_auc": float(found),
        "left_out_clean": clean.n_left_out_,
        "left_out_contaminated": dirty.n_left_out_,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument(
        "--setting",
        action="append",
        default=None,
        metavar="NAME:key=value,...",
        help="a VAEDetector setting beside latent_dim=2 (repeatable; 'base:' = defaults)",
    )
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    protocol.quiet_environment()
    protocol.set_torch_threads(1)
    settings = []
    for text in args.setting or ["base:"]:
        name, _, rest = text.partition(":")
        settings.append((name, protocol.parse_params([x for x in rest.split(",") if x])))
    rows = []
    print(
        "| setting | seed | ELBO gap | IWAE(200) gap | ELBO gap, 5% outliers | outliers ROC-AUC "
        "| rows left out (clean / 5%) |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, params in settings:
        for seed in range(args.seeds):
            r = {"setting": name, "params": params, "seed": seed, **measure(params, seed)}
            rows.append(r)
            print(
                f"| {name} | {seed} | {r['elbo_gap']:.4f} | {r['iwae_gap']:.4f} | "
                f"{r['elbo_gap_contaminated']:.4f} | {r['outliers_roc_auc']:.4f} | "
                f"{r['left_out_clean']} / {r['left_out_contaminated']} |",
                flush=True,
            )
    if args.json:
        protocol.write_json({"meta": protocol.provenance(), "results": rows}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
