"""Quality floors on real data (ADBench protocol: unsupervised fit on a stratified 70%,
ROC-AUC on the 30%), with the detector's defaults.

Measured with the defaults (trimmed objective, robust scaling), detector seeds 0-4 on 1 torch
thread, this test's split: on the AMD machine, before the decoder-variance rounding change,
cardio 0.754-0.777 (IWAE 0.744-0.767), thyroid 0.986-0.991 (IWAE 0.987-0.990); on the Intel
machine after it (2026-12-05), cardio 0.784-0.864 (IWAE 0.780-0.848), thyroid 0.972-0.989
(IWAE 0.983-0.988). Training is chaotic in the last bits: the same data min-max scaled first
(an affine map the model is invariant to in exact arithmetic) gave cardio 0.800 for seed 0.
The floors sit under the lowest value measured on either machine (cardio by 0.06, thyroid
by 0.04), so another machine or thread count passes; IsolationForest reaches about 0.93 and
0.98 on these sets (ADBench). See docs/benchmarks.md for the full table."""

import pytest
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split

from tests.helpers import shared_dataset
from vae_core import VAEDetector

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(("name", "floor"), [("adbench_cardio", 0.68), ("adbench_thyroid", 0.93)])
def test_roc_auc_floor_with_default_settings(name, floor):
    X, y = shared_dataset(name)
    X_train, X_test, _, y_test = train_test_split(X, y, test_size=0.3, stratify=y, random_state=0)
    det = VAEDetector(random_state=0).fit(X_train)
    auc = roc_auc_score(y_test, det.anomaly_score(X_test))
    iwae_auc = roc_auc_score(y_test, -det.log_likelihood(X_test, k=64))
    assert auc >= floor, f"{name}: ROC-AUC {auc:.3f} below the floor {floor}"
    assert iwae_auc >= floor, f"{name}: IWAE ROC-AUC {iwae_auc:.3f} below the floor {floor}"
