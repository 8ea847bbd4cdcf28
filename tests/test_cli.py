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


def test_score_takes_its_settings_from_the_config_and_a_flag_wins(trained, tmp_path):
    """The same precedence as the score flow: --flag > mlflow.yml (scoring.top_features,
    scoring.chunk_rows, scoring.drift_psi_warning) > the defaults."""
    from tests.conftest import write_pipeline_config

    out, _ = trained
    scoring = {"top_features": 1, "chunk_rows": 400, "drift_psi_warning": 1e-9}
    config = write_pipeline_config(tmp_path, {"scoring": scoring})
    args = ["score", "--model", out / "model", "--data", ROOT / "data" / "cardio.csv",
            "--id-column", "record_id", "--config", config]  # fmt: skip
    by_config = run_cli(*args, "--out", tmp_path / "a.parquet")
    assert by_config.returncode == 0, by_config.stderr
    columns = list(pd.read_parquet(tmp_path / "a.parquet").columns)
    assert "top_feature_1" in columns and "top_feature_2" not in columns
    assert "score drift: PSI" in by_config.stderr  # any drift exceeds a 1e-9 warning level
    by_flag = run_cli(*args, "--top-features", "2", "--out", tmp_path / "b.parquet")
    assert by_flag.returncode == 0, by_flag.stderr
    assert "top_feature_2" in pd.read_parquet(tmp_path / "b.parquet").columns
