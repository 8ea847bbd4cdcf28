"""Evaluation numbers against scikit-learn, bootstrap intervals, report files and plots."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
from sklearn.ensemble import IsolationForest
from sklearn.metrics import (
    average_precision_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)
from sklearn.model_selection import train_test_split

from tests.helpers import shared_dataset
from vae_core.evaluation.report import (
    _labelled_block,
    _resample_counts,
    evaluate,
    write_report,
)
from vae_core.evaluation.report_plots import _histogram_range
from vae_core.foundations.atomic import atomic_write
from vae_core.foundations.calibrate import MaxFBeta, TargetFPR, calibrate_threshold

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def test_split():
    """(2000,) scores rounded to 0.1 (so classes tie) and labels with 10% anomalies."""
    rng = np.random.default_rng(0)
    y = (rng.random(2000) < 0.1).astype(int)
    scores = np.round(rng.normal(size=2000) + 2.0 * y, 1)
    return scores, y


@pytest.fixture(scope="module")
def report(test_split):
    scores, y = test_split
    return evaluate(scores, y, threshold=1.5, n_bootstrap=500)


def test_point_estimates_equal_sklearn(report, test_split):
    scores, y = test_split
    flagged = scores > 1.5
    tn, fp, fn, tp = confusion_matrix(y, flagged).ravel()
    expected = {
        "roc_auc": roc_auc_score(y, scores),
        "average_precision": average_precision_score(y, scores),
        "precision": precision_score(y, flagged),
        "recall": recall_score(y, flagged),
        "f1": f1_score(y, flagged),
        "fpr": fp / (fp + tn),
        "tn": tn, "fp": fp, "fn": fn, "tp": tp,
        "flagged_count": flagged.sum(),
        "flagged_share": flagged.mean(),
    }  # fmt: skip
    assert {name: est.value for name, est in report.metrics.items()} == pytest.approx(expected)


def test_resampled_metrics_equal_sklearn_with_counts_as_sample_weight(test_split):
    scores, y = test_split
    order = np.argsort(-scores, kind="stable")
    s_sorted, y_sorted = scores[order], y[order]
    strata = [np.flatnonzero(y_sorted == c) for c in (0, 1)]
    ends = np.append(np.flatnonzero(np.diff(s_sorted)), s_sorted.size - 1)
    counts = _resample_counts(strata, s_sorted.size, 4, np.random.default_rng(1))
    block = _labelled_block(counts, y_sorted, ends, int((s_sorted > 1.5).sum()))
    for i, w in enumerate(counts):
        flagged = s_sorted > 1.5
        auc = roc_auc_score(y_sorted, s_sorted, sample_weight=w)
        assert block["roc_auc"][i] == pytest.approx(auc)
        ap = average_precision_score(y_sorted, s_sorted, sample_weight=w)
        assert block["average_precision"][i] == pytest.approx(ap)
        assert block["f1"][i] == pytest.approx(f1_score(y_sorted, flagged, sample_weight=w))
        # Stratified: every resample keeps the class sizes.
        assert (w * y_sorted).sum() == y.sum() and w.sum() == y.size


def test_intervals_contain_the_point_estimate(report):
    for name, est in report.metrics.items():
        assert est.low <= est.value <= est.high, name
    assert report.metrics["roc_auc"].high - report.metrics["roc_auc"].low > 0


def test_bootstrap_is_deterministic_given_the_seed(test_split):
    scores, y = test_split
    a, b = (evaluate(scores, y, 1.5, n_bootstrap=200, random_state=7) for _ in range(2))
    c = evaluate(scores, y, 1.5, n_bootstrap=200, random_state=8)
    assert a == b and a.metrics["f1"] != c.metrics["f1"]


def test_unlabelled_evaluation_reports_flags_and_distribution_only():
    scores = np.arange(100.0)
    rep = evaluate(scores, None, threshold=89.0, n_bootstrap=100)
    assert set(rep.metrics) == {"flagged_count", "flagged_share"}
    assert rep.flagged_count == 10 and rep.n_anomalies is None
    assert set(rep.score_summary) == {"all"} and rep.score_summary["all"]["max"] == 99.0
    assert "Confusion" not in rep.to_markdown()


@pytest.mark.parametrize(
    ("y", "threshold", "kwargs", "message"),
    [
        (np.zeros(100), 50.0, {}, "only class 0: the test metrics need both"),
        (np.r_[np.zeros(50), np.ones(50)], float("nan"), {}, "threshold must be finite"),
        (np.r_[np.zeros(50), np.ones(50)], 50.0, {"n_bootstrap": 5}, "n_bootstrap must be >= 10"),
        (np.r_[np.zeros(50), np.ones(50)], 50.0, {"confidence": 1.0}, "confidence must be in"),
        (np.zeros(99), 50.0, {}, r"y has shape \(99,\)"),
    ],
)
def test_evaluate_rejects_bad_arguments(y, threshold, kwargs, message):
    with pytest.raises(ValueError, match=message):
        evaluate(np.arange(100.0), y, threshold, **kwargs)


# --------------------------------------------------------------------------- files and plots

HISTORY = [
    {"epoch": e, "train_loss": 40.0 / (e + 1), "val_loss": 45.0 / (e + 1)} for e in range(10)
]


def assert_valid_png(path: Path) -> None:
    import matplotlib.image

    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_write_report_writes_json_markdown_and_valid_pngs(tmp_path, report, test_split):
    scores, y = test_split
    cal = calibrate_threshold(scores, y, policy=MaxFBeta())
    rep = evaluate(scores, y, cal.threshold, n_bootstrap=200)
    paths = write_report(rep, tmp_path / "out", cal, HISTORY, scores=scores, y=y)
    plots = {"roc_curve", "pr_curve", "score_histogram", "training_curve"}
    assert set(paths) == plots | {"json", "markdown"}
    for name in plots:
        assert_valid_png(paths[name])
    payload = json.loads(paths["json"].read_text())
    assert payload["metrics"]["f1"]["value"] == rep.metrics["f1"].value
    assert payload["calibration"]["method"] == "pr_curve_max_f1"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        p.name for p in paths.values()
    )  # no temp files left behind


def test_markdown_shows_the_same_numbers_as_the_json(tmp_path, test_split):
    scores, y = test_split
    cal = calibrate_threshold(scores, y, policy=TargetFPR(fpr=0.05))
    rep = evaluate(scores, y, cal.threshold, n_bootstrap=200)
    paths = write_report(rep, tmp_path, cal)
    markdown, payload = paths["markdown"].read_text(), json.loads(paths["json"].read_text())
    assert "| metric | value | 95% CI |" in markdown and "`target_fpr` (" in markdown
    row = re.search(r"\| Recall \| (\S+) \| (\S+) – (\S+) \|", markdown)
    recall = payload["metrics"]["recall"]
    assert row.groups() == tuple(f"{recall[k]:.4g}" for k in ("value", "low", "high"))
    tp = payload["metrics"]["tp"]
    assert f"{tp['value']:.0f} [{tp['low']:.0f}, {tp['high']:.0f}]" in markdown
    assert set(paths) == {"json", "markdown"}  # no scores, no history: no plots


def test_markdown_states_a_fallback(test_split):
    scores, _ = test_split
    with pytest.warns(UserWarning, match="no anomaly"):
        cal = calibrate_threshold(scores, np.zeros(scores.size), policy=MaxFBeta())
    rep = evaluate(scores, None, cal.threshold, n_bootstrap=50)
    assert "**Fallback:**" in rep.to_markdown(cal)


def test_unlabelled_report_plots_one_histogram_and_skips_curves(tmp_path):
    scores = np.random.default_rng(0).lognormal(sigma=3.0, size=500)  # spans many decades
    assert _histogram_range(scores, 1.0)[1] == "log"
    rep = evaluate(scores, None, threshold=20.0, n_bootstrap=50)
    paths = write_report(rep, tmp_path, scores=scores)
    assert set(paths) == {"score_histogram", "json", "markdown"}
    assert_valid_png(paths["score_histogram"])


def test_histogram_clips_outliers_but_keeps_the_threshold_in_view():
    scores = np.r_[np.random.default_rng(0).normal(size=1000), 1e4]
    bins, scale, note = _histogram_range(scores, threshold=3.5)
    assert scale == "linear" and 3.5 <= bins[-1] < 100 and "rows outside the range" in note


def test_report_refuses_a_calibration_with_another_threshold(tmp_path, report, test_split):
    scores, y = test_split
    cal = calibrate_threshold(scores, y, policy=TargetFPR(fpr=0.01))
    with pytest.raises(ValueError, match="differs from the report"):
        write_report(report, tmp_path, cal)


def test_history_without_validation_loss_key_is_rejected(tmp_path, report):
    with pytest.raises(ValueError, match=r"history\[0\] lacks key\(s\) \['val_loss'\]"):
        write_report(report, tmp_path, history=[{"epoch": 0, "train_loss": 1.0}])


def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("old")

    def crash(fh):
        fh.write(b"half a rep")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, crash)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["report.json"]


# --------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def cardio_scores():
    """IsolationForest on the normal rows of a 40% training split of ADBench cardio; scores
    (higher = more anomalous) and labels of stratified calibration and test halves of the rest."""
    X, y = shared_dataset("adbench_cardio")
    y = y.astype(int)
    X_train, X_rest, y_train, y_rest = train_test_split(
        X, y, train_size=0.4, stratify=y, random_state=0
    )
    X_cal, X_test, y_cal, y_test = train_test_split(
        X_rest, y_rest, test_size=0.5, stratify=y_rest, random_state=0
    )
    forest = IsolationForest(random_state=0).fit(X_train[y_train == 0])
    return -forest.score_samples(X_cal), y_cal, -forest.score_samples(X_test), y_test


def test_target_fpr_on_normal_calibration_rows_holds_on_the_test_split(cardio_scores):
    s_cal, y_cal, s_test, y_test = cardio_scores
    cal = calibrate_threshold(s_cal[y_cal == 0], policy=TargetFPR(fpr=0.05))
    fpr = evaluate(s_test, y_test, cal.threshold).metrics["fpr"]
    assert fpr.low <= 0.05 <= fpr.high
    # Band: the test FPR varies with both the calibration quantile and the test sample, each
    # binomial, so its standard deviation is sqrt(.05 * .95 * (1/n_cal + 1/n_test)), about
    # .014 here; three of those. (The bootstrap interval covers the test sample only, so over
    # 40 random splits it held 0.05 in 85% of them, not 95%.)
    n_cal, n_test = (y_cal == 0).sum(), (y_test == 0).sum()
    assert abs(fpr.value - 0.05) <= 3 * np.sqrt(0.05 * 0.95 * (1 / n_cal + 1 / n_test))


def test_max_f1_on_calibration_labels_carries_over_to_the_test_split(cardio_scores):
    s_cal, y_cal, s_test, y_test = cardio_scores
    cal = calibrate_threshold(s_cal, y_cal, policy=MaxFBeta())
    test_f1 = evaluate(s_test, y_test, cal.threshold, n_bootstrap=200).metrics["f1"].value
    assert abs(test_f1 - cal.metrics["f1"]) <= 0.15
    assert test_f1 > 0.5  # IsolationForest reaches about 0.6 on cardio; chance is 0.17
