"""The IsolationForest baseline beside the VAE in the evaluation report (issue 16): the same
training split, the same test rows, in the report's JSON and Markdown."""

import json

import numpy as np
import pandas as pd
from sklearn.ensemble import IsolationForest
from sklearn.metrics import roc_auc_score

from tests.helpers import CARDIO
from vae_core.foundations.config import CalibrationConfig, load_config
from vae_core.kinds.choice import load_dataset
from vae_core.steps.pipeline import evaluate_detector, isolation_forest_baseline, split_data
from vae_core.steps.training import train_and_evaluate


def test_the_baseline_is_isolation_forest_on_the_model_input(fitted_mixed, mixed_data):
    train, test = mixed_data.iloc[:400], mixed_data.iloc[400:]
    labels = (test["temperature"] > test["temperature"].quantile(0.9)).to_numpy().astype(int)
    got = isolation_forest_baseline(fitted_mixed, train, test, labels, seed=3)
    forest = IsolationForest(random_state=3).fit(fitted_mixed.model_input(train))
    expected = roc_auc_score(labels, -forest.score_samples(fitted_mixed.model_input(test)))
    assert got["method"] == "IsolationForest" and got["train_rows"] == 400
    assert got["roc_auc"] == expected and 0 < got["average_precision"] <= 1


def test_no_baseline_without_labels_of_both_classes(fitted_mixed, mixed_data):
    cfg = CalibrationConfig(bootstrap=10)
    report, _ = evaluate_detector(
        fitted_mixed, mixed_data.iloc[:50], None, cfg, train_features=mixed_data
    )
    assert report.baseline is None and "Against the simple thing" not in report.to_markdown()


def test_train_and_evaluate_writes_the_baseline_in_both_report_files(tmp_path):
    cfg = load_config(
        None,
        {
            "data": {"train_path": str(CARDIO), "label_column": "label",
                     "id_columns": ["record_id"]},
            "model": {"latent_dim": 2, "hidden_dims": [8], "n_score_samples": 4},
            "training": {"epochs": 3},
            "calibration": {"bootstrap": 20},
        },
    )  # fmt: skip
    table = load_dataset(CARDIO, cfg)
    outcome = train_and_evaluate(table, cfg, tmp_path)
    saved = json.loads((tmp_path / "report" / "report.json").read_text())
    baseline = saved["baseline"]
    assert baseline == outcome.report.baseline and baseline["method"] == "IsolationForest"
    splits = split_data(table, cfg.split)
    assert baseline["train_rows"] == len(splits.train)
    text = (tmp_path / "report" / "report.md").read_text()
    assert "Against the simple thing" in text and f"{baseline['roc_auc']:.4g}" in text
    assert isinstance(outcome.report.baseline["roc_auc"], float)
    assert np.isfinite(pd.Series([baseline["roc_auc"], baseline["average_precision"]])).all()
