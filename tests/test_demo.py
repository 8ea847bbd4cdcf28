"""`make demo`'s closing words, without running the flows: what the evaluation's numbers mean
(from a real ``report.json`` payload) and how to open the runs (absolute paths, the UIs)."""

import sys
from pathlib import Path

import numpy as np

from flows.demo import where_to_look
from tests.helpers import demo_like_report
from vae_core.evaluation.meaning import meaning_lines, stopping_line
from vae_core.evaluation.report import evaluate
from vae_core.foundations.calibrate import TargetFPR


def test_the_numbers_are_said_in_words_with_their_counts_and_the_target():
    report = demo_like_report()
    m = {k: v["value"] for k, v in report["metrics"].items()}
    text = "\n".join(meaning_lines(report, TargetFPR(fpr=0.01)))
    tp, flagged = int(m["tp"]), int(m["flagged_count"])
    assert "367 rows the model never saw, 35 of them labelled anomalies (9.5%)" in text
    assert "to flag about 1% of the normal rows (calibration.policy target_fpr, fpr 0.01)" in text
    assert f"ROC-AUC {m['roc_auc']:.3g}: the chance that an anomaly scores higher" in text
    assert f"Recall {m['recall']:.3g}: the share of the anomalies flagged ({tp} of 35)" in text
    assert f"Precision {m['precision']:.3g}: the share of flagged rows that are anomalies " \
        f"({tp} of {flagged})" in text  # fmt: skip
    assert f"({int(m['fp'])} of 332), against the 1% target" in text
    assert "95% CI: the range each number may take on another sample" in text
    assert "To flag more, raise calibration.policy fpr" in text
    wide = {**report, "metrics": {**report["metrics"], "precision": {"value": 0.5, "low": 0.0,
                                                                   "high": 1.0}}}  # fmt: skip
    assert "Here precision 0 to 1: too few rows to tell." in "\n".join(
        meaning_lines(wide, TargetFPR(fpr=0.01))
    )


def test_without_labels_only_the_flagged_share_is_explained():
    text = "\n".join(meaning_lines(demo_like_report(labelled=False), TargetFPR(fpr=0.01)))
    assert "367 rows the model never saw." in text and "ROC-AUC" in text
    assert "Recall" not in text and "Without labels" in text


def test_where_to_look_gives_absolute_paths_and_the_ui_commands(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ui = f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000"
    text = "\n".join(where_to_look(ui, "vae-anomaly", "vae-anomaly", Path(".prefect")))
    mlflow = Path(sys.executable).parent / "mlflow"  # outside tmp_path: an absolute path
    assert f"MLflow UI:   {mlflow} ui --backend-store-uri {uri}" in text
    assert "Models > vae-anomaly" in text and "http://127.0.0.1:5000" in text
    assert f"PREFECT_HOME={tmp_path / '.prefect'} " in text  # resolved, not $PREFECT_HOME
    assert "server start --host 127.0.0.1 --port 4200" in text
    assert "http://127.0.0.1:4200/runs" in text


def mnist_like_report() -> dict:
    """A test split like the image demo's: 70 images, 45 anomalies the model tells apart,
    and 2 of the 25 normal images above a threshold set for a 5% false-positive rate."""
    y = np.r_[np.zeros(25, int), np.ones(45, int)]
    scores = np.r_[np.linspace(0.0, 1.0, 25), np.linspace(2.0, 3.0, 45)]
    threshold = float(np.sort(scores[:25])[-3])  # two normal images above it
    return evaluate(scores, y, threshold, n_bootstrap=50).to_dict()


def test_the_closing_sentence_follows_the_numbers():
    """A high recall is not called low, and a test false-positive rate above the target is
    said (the image demo: 0.08 against 5%, most of the split flagged because most of it are
    anomalies)."""
    report = mnist_like_report()
    m = {k: v["value"] for k, v in report["metrics"].items()}
    assert m["fpr"] == 2 / 25 and m["recall"] == 1.0
    text = "\n".join(meaning_lines(report, TargetFPR(fpr=0.05)))
    assert "flags few rows" not in text and "low recall" not in text
    assert "The threshold flags 45 of the 45 anomalies (100%) and 2 of the 25 normal" in text
    assert "false-positive rate (0.08, 2 of 25 normal rows) is above the 5% target" in text
    assert "one row moves the rate by 0.04" in text
    # at the target, nothing is said about it
    calm = "\n".join(meaning_lines(report, TargetFPR(fpr=0.08)))
    assert "above the" not in calm


def test_why_training_stopped_is_said():
    capped = stopping_line(epochs_run=100, best_epoch=100, max_epochs=100, patience=15)
    assert "epoch cap, training.epochs = 100" in capped and "not by convergence" in capped
    assert "still improving" in capped
    assert "the best epoch was 97" in stopping_line(100, 97, 100, 15)
    early = stopping_line(epochs_run=23, best_epoch=18, max_epochs=200, patience=5)
    assert early.startswith("converged: stopped after 23 epochs, 5 without validation progress")
