"""The `vae-anomaly` command through its real entry point (a subprocess), on real files."""

import os
import subprocess
import sys

import pandas as pd
import pytest

from tests.conftest import ROOT


def run_cli(*args, cwd=None):
    env = dict(os.environ, MLFLOW_TRACKING_URI=os.environ.get("MLFLOW_TRACKING_URI", ""))
    return subprocess.run(
        [sys.executable, "-m", "vae_core.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd or ROOT,
        env=env,
        timeout=300,
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    result = run_cli(
        "train",
        "--data",
        ROOT / "data" / "cardio.csv",
        "--label-column",
        "label",
        "--id-column",
        "record_id",
        "--out",
        out,
        "--epochs",
        "5",
        "--no-register",
    )
    assert result.returncode == 0, result.stderr
    return out, result


def test_train_writes_model_and_report(trained):
    out, result = trained
    assert (out / "model" / "model.json").exists() and (out / "model" / "weights.pt").exists()
    for name in ("report.json", "report.md", "roc_curve.png", "training_curve.png"):
        assert (out / "report" / name).exists(), name
    assert "ROC-AUC" in result.stdout and "Threshold" in result.stdout


def test_score_writes_ids_scores_and_flags(trained, tmp_path):
    out, _ = trained
    dest = tmp_path / "scores.parquet"
    result = run_cli(
        "score",
        "--model",
        out / "model",
        "--data",
        ROOT / "data" / "cardio.csv",
        "--id-column",
        "record_id",
        "--out",
        dest,
    )
    assert result.returncode == 0, result.stderr
    scores = pd.read_parquet(dest)
    assert len(scores) == 1831
    assert list(scores.columns[:5]) == [
        "record_id",
        "anomaly_score",
        "is_anomaly",
        "missing_columns",
        "anomaly_probability",
    ]
    assert scores["record_id"].is_unique and scores["top_feature_1"].notna().all()
    assert (scores["missing_columns"] == "").all()  # cardio.csv has no empty cells


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["score", "--model", "nowhere", "--data", "data/cardio.csv", "--out", "x.csv"],
            "nowhere is not a saved model",
        ),
        (["train", "--data", "missing.csv", "--out", "x"], "missing.csv does not exist"),
        (
            ["train", "--data", "data/cardio.csv", "--label-column", "nope", "--out", "x"],
            "label column 'nope' not found",
        ),
        (["train", "--data", "mlflow.yml", "--out", "x"], "unsupported file type '.yml'"),
    ],
)
def test_user_mistakes_give_one_line_and_exit_code_2(args, message, tmp_path):
    result = run_cli(*args, cwd=ROOT)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
