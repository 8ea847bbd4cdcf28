"""Threshold policies and anomaly probability on hand-made score arrays with known answers.

Most cases use ``scores = 0, 1, ..., 99`` so the answer can be read off by hand: flagging the
top k rows means ``threshold = 99 - k`` under the tie rule (flag iff score > threshold).
"""

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
from pydantic import TypeAdapter, ValidationError
from sklearn.isotonic import IsotonicRegression

from vae_core.foundations.calibrate import (
    Calibration,
    CalibrationFallbackWarning,
    CalibrationPolicy,
    Contamination,
    MaxFBeta,
    MinCost,
    TargetFPR,
    TargetPrecision,
    TargetRecall,
    calibrate_threshold,
    flag_anomalies,
)
from vae_core.foundations.score_distribution import AnomalyProbability

SCORES = np.arange(100.0)


def labels_at(*anomalous_scores: int) -> np.ndarray:
    """(100,) labels for SCORES, 1 at the given scores."""
    y = np.zeros(100, dtype=int)
    y[list(anomalous_scores)] = 1
    return y


TOP10 = labels_at(*range(90, 100))
TOP10_AND_50 = labels_at(50, *range(90, 100))


def n_flagged(scores: np.ndarray, threshold: float) -> int:
    return int(flag_anomalies(scores, threshold).sum())


# --------------------------------------------------------------------------- policy config


def test_yaml_mapping_parses_into_the_policy_union():
    adapter = TypeAdapter(CalibrationPolicy)
    assert adapter.validate_python({"name": "target_fpr", "fpr": 0.01}) == TargetFPR(fpr=0.01)
    assert adapter.validate_python({"name": "max_f_beta"}) == MaxFBeta(beta=1.0)
    cost = adapter.validate_python({"name": "min_cost", "cost_fp": 1, "cost_fn": 20})
    assert isinstance(cost, MinCost) and cost.params() == {
        "fallback_fpr": 0.01,
        "cost_fp": 1.0,
        "cost_fn": 20.0,
    }


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        ({"name": "target_fpr", "fpr": 0.0}, "fpr must be in the open interval"),
        ({"name": "target_fpr", "fpr": 1.0}, "fpr must be in the open interval"),
        ({"name": "contamination", "rate": 1.5}, "rate must be in the open interval"),
        ({"name": "target_recall", "recall": -0.1}, "recall must be in the open interval"),
        ({"name": "target_precision", "precision": 1}, "precision must be in the open"),
        ({"name": "min_cost", "cost_fp": 0, "cost_fn": 1}, "cost_fp must be a finite number"),
        ({"name": "min_cost", "cost_fp": 1, "cost_fn": -2}, "cost_fn must be a finite number"),
        ({"name": "max_f_beta", "beta": float("nan")}, "beta must be a finite number"),
        ({"name": "max_f_beta", "fallback_fpr": 2}, "fallback_fpr must be in the open"),
        ({"name": "target_fpr", "fpr": 0.1, "pot_tail_quantile": 1}, "pot_tail_quantile"),
        ({"name": "target_fpr", "fpr": 0.1, "pot_min_exceedances": 3}, "pot_min_exceedances"),
        ({"name": "target_fpr", "fpr": 0.1, "recall": 0.5}, "Extra inputs are not permitted"),
        ({"name": "percentile", "q": 99}, "does not match any of the expected tags"),
        ({"name": "target_recall"}, "Field required"),
    ],
)
def test_policy_rejects_bad_parameters_naming_the_field(mapping, message):
    with pytest.raises(ValidationError, match=message):
        TypeAdapter(CalibrationPolicy).validate_python(mapping)


# --------------------------------------------------------------------------- labelled policies


def test_max_f1_flags_exactly_the_ten_anomalies():
    cal = calibrate_threshold(SCORES, TOP10, policy=MaxFBeta())
    assert cal.threshold == 89.0
    assert np.array_equal(flag_anomalies(SCORES, cal.threshold), TOP10.astype(bool))
    assert cal.method == "pr_curve_max_f1"
    assert cal.metrics["f1"] == 1.0 and cal.n_anomalies == 10


def test_max_f_beta_trades_precision_for_recall_as_beta_grows():
    # Anomalies at 85-87 and 95-99. Flag 95-99: F1 10/13 = .77 (best), F2 25/37 = .68.
    # Flag 85-99: F1 16/23 = .70, F2 40/47 = .85 (best).
    y = labels_at(85, 86, 87, 95, 96, 97, 98, 99)
    assert calibrate_threshold(SCORES, y, policy=MaxFBeta(beta=1.0)).threshold == 94.0
    f2 = calibrate_threshold(SCORES, y, policy=MaxFBeta(beta=2.0))
    assert f2.threshold == 84.0 and f2.details["f_beta"] == pytest.approx(40 / 47)


@pytest.mark.parametrize(("target", "threshold"), [(0.9, 89.0), (0.95, 49.0)])
def test_target_recall_takes_the_highest_threshold_reaching_it(target, threshold):
    # 11 anomalies: the top 10 give recall 10/11 = .91; reaching .95 must include score 50.
    cal = calibrate_threshold(SCORES, TOP10_AND_50, policy=TargetRecall(recall=target))
    assert cal.threshold == threshold
    assert cal.metrics["recall"] >= target


def test_target_precision_takes_the_lowest_threshold_reaching_it():
    # Flagging the top k (k <= 50) holds 10 anomalies: precision 10/k >= .5 up to k = 20.
    cal = calibrate_threshold(SCORES, TOP10_AND_50, policy=TargetPrecision(precision=0.5))
    assert cal.threshold == 79.0 and cal.metrics["precision"] == 0.5


def test_unreachable_target_precision_says_the_best_available():
    y = labels_at(*range(80, 90))  # the ten highest scores are normal: precision <= .5
    with pytest.raises(ValueError, match=r"unreachable.*best precision at any threshold is 0.500"):
        calibrate_threshold(SCORES, y, policy=TargetPrecision(precision=0.9))


@pytest.mark.parametrize(
    ("cost_fp", "cost_fn", "threshold"),
    [(1.0, 1.0, 89.0), (1.0, 100.0, 49.0)],  # missing score 50 costs 1 vs 40 false alarms
)
def test_min_cost_weighs_false_alarms_against_misses(cost_fp, cost_fn, threshold):
    policy = MinCost(cost_fp=cost_fp, cost_fn=cost_fn)
    assert calibrate_threshold(SCORES, TOP10_AND_50, policy=policy).threshold == threshold


def test_min_cost_can_flag_nothing_or_everything():
    lowest_are_anomalies = labels_at(0, 1, 2, 3, 4)
    none = calibrate_threshold(SCORES, lowest_are_anomalies, policy=MinCost(cost_fp=1, cost_fn=1))
    assert none.threshold == 99.0 and none.metrics["flagged_count"] == 0
    every = calibrate_threshold(SCORES, lowest_are_anomalies, policy=MinCost(cost_fp=1, cost_fn=99))
    assert every.threshold < 0.0 and every.metrics["flagged_count"] == 100


# --------------------------------------------------------------------------- unlabelled policies


def test_target_fpr_unlabelled_uses_the_conformal_order_statistic():
    # k = ceil(1001 * .95) = 951: threshold 951 flags 952..1000, 49 rows (4.9% <= 5%), and a
    # new normal score exceeds it with probability 50/1001 <= .05. The empirical quantile
    # (threshold 950, 50 flags) would give 51/1001 > .05 on new data.
    scores = np.arange(1.0, 1001.0)
    cal = calibrate_threshold(scores, policy=TargetFPR(fpr=0.05))
    assert cal.threshold == 951.0 and cal.method == "quantile"
    assert n_flagged(scores, cal.threshold) == 49
    assert cal.details["reference"] == "scores assumed normal" and cal.n_anomalies is None


def test_target_fpr_with_labels_uses_only_the_normal_rows():
    # Normals are 0..89 (n = 90): k = ceil(91 * .8) = 73, threshold s_(73) = 72, FPR 17/90.
    cal = calibrate_threshold(SCORES, TOP10, policy=TargetFPR(fpr=0.2))
    assert cal.threshold == 72.0 and cal.details["reference"] == "labelled normal rows"
    assert cal.metrics["fpr"] == pytest.approx(17 / 90) and cal.metrics["recall"] == 1.0


def test_contamination_flags_the_top_share_of_all_scores_ignoring_labels():
    scores = np.arange(1.0, 1001.0)
    cal = calibrate_threshold(scores, policy=Contamination(rate=0.05))
    assert cal.threshold == 951.0 and cal.policy == "contamination"
    with_labels = calibrate_threshold(SCORES, TOP10, policy=Contamination(rate=0.2))
    assert with_labels.threshold == 80.0  # k = ceil(101 * .8) = 81 -> s_(81) = 80


# --------------------------------------------------------------------------- tie rule


def test_tie_rule_score_equal_to_threshold_is_normal():
    assert flag_anomalies(np.array([1.0, 2.0, 2.0, 3.0]), 2.0).tolist() == [0, 0, 0, 1]


def test_ties_at_a_curve_threshold_stay_normal():
    # Five extra normal rows tie at 89, the highest normal score; max-F1 flags 90..99 only.
    scores = np.r_[SCORES, np.full(5, 89.0)]
    y = np.r_[TOP10, np.zeros(5, dtype=int)]
    cal = calibrate_threshold(scores, y, policy=MaxFBeta())
    assert cal.threshold == 89.0 and n_flagged(scores, cal.threshold) == 10


def test_ties_at_the_order_statistic_stay_normal():
    # 1..100 plus 20 extra 95s (n = 120): k = ceil(121 * .9) = 109 lands in the block of 95s,
    # so all 21 rows at 95 stay normal and only 96..100 are flagged (5/120 <= .1).
    scores = np.r_[np.arange(1.0, 101.0), np.full(20, 95.0)]
    cal = calibrate_threshold(scores, policy=TargetFPR(fpr=0.1))
    assert cal.threshold == 95.0 and n_flagged(scores, cal.threshold) == 5


# --------------------------------------------------------------------------- peaks over threshold

TRUE_EXP_QUANTILE = -np.log(0.001)  # Exp(1) exceeds 6.908 with probability 0.001


def test_pot_is_used_automatically_for_rare_rates_and_recorded():
    scores = np.random.default_rng(0).exponential(size=5000)  # 5 points expected above
    cal = calibrate_threshold(scores, policy=TargetFPR(fpr=0.001))
    assert cal.method == "pot_genpareto"
    assert cal.details["expected_points_above"] == 5.0
    assert "rate * n < 10" in cal.details["switch_rule"]
    assert cal.details["pot_fit"]["n_exceedances"] == 500
    # Tolerance: with 500 exceedances the fitted scale and shape have standard errors about
    # 1/sqrt(500) = .045; the quantile log(100) = 4.6 scale units beyond u moves by .045 * 4.6
    # (scale) and .045 * 4.6**2 / 2 (shape), about .5 in all. Three of those: 1.5.
    assert abs(cal.threshold - TRUE_EXP_QUANTILE) < 1.5


def test_pot_switch_is_at_ten_expected_points():
    scores = np.random.default_rng(1).exponential(size=1000)
    assert calibrate_threshold(scores, policy=TargetFPR(fpr=0.01)).method == "quantile"
    assert calibrate_threshold(scores, policy=TargetFPR(fpr=0.009)).method == "pot_genpareto"


def test_pot_beats_the_order_statistic_on_small_samples():
    errors = {"pot": [], "quantile": []}
    for seed in range(30):
        scores = np.random.default_rng(seed).exponential(size=2000)  # 2 points expected above
        for method in errors:
            policy = TargetFPR(fpr=0.001, tail_method=method)
            errors[method].append(calibrate_threshold(scores, policy=policy).threshold)
    rmse = {m: np.sqrt(np.mean((np.array(e) - TRUE_EXP_QUANTILE) ** 2)) for m, e in errors.items()}
    assert rmse["pot"] < rmse["quantile"]


def test_pot_needs_enough_exceedances():
    scores = np.arange(100.0)  # 10 scores above the 90th percentile, 20 needed
    with pytest.raises(ValueError, match=r"need at least 20 scores above the 0.9 quantile.*got 10"):
        calibrate_threshold(scores, policy=TargetFPR(fpr=0.01))


def test_order_statistic_refuses_rates_below_one_over_n_plus_one():
    with pytest.raises(ValueError, match=r"below 1/\(n\+1\).*tail_method='pot'"):
        calibrate_threshold(SCORES, policy=TargetFPR(fpr=0.005, tail_method="quantile"))


# --------------------------------------------------------------------------- fallback


def test_labelled_policy_without_anomalies_falls_back_and_warns():
    scores = np.arange(1.0, 1001.0)
    with pytest.warns(CalibrationFallbackWarning, match="no anomaly.*target_fpr=0.05"):
        cal = calibrate_threshold(scores, np.zeros(1000), policy=MaxFBeta(fallback_fpr=0.05))
    assert cal.fallback_reason is not None and "max_f_beta" in cal.fallback_reason
    assert cal.threshold == 951.0 and cal.method == "quantile" and cal.n_anomalies == 0


def test_unlabelled_policies_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cal = calibrate_threshold(SCORES, np.zeros(100), policy=TargetFPR(fpr=0.1))
    assert cal.fallback_reason is None


# --------------------------------------------------------------------------- bad arguments


@pytest.mark.parametrize(
    ("scores", "y", "policy", "message"),
    [
        (np.r_[SCORES[:-1], np.nan], None, TargetFPR(fpr=0.1), "1 non-finite values"),
        (np.r_[SCORES[:-1], np.inf], None, TargetFPR(fpr=0.1), "non-finite"),
        (np.array([]), None, TargetFPR(fpr=0.1), "scores is empty"),
        (SCORES.reshape(50, 2), None, TargetFPR(fpr=0.1), "one-dimensional"),
        (SCORES, np.full(100, 2), MaxFBeta(), r"only 0 \(normal\) and 1 \(anomaly\)"),
        (SCORES, TOP10[:50], MaxFBeta(), r"y has shape \(50,\).*\(100,\)"),
        (SCORES[:10], None, TargetFPR(fpr=0.1), "at least 20 calibration scores, got 10"),
        (SCORES, labels_at(97, 98, 99), MaxFBeta(), "at least 5 labelled anomalies, got 3"),
        (SCORES, 1 - labels_at(0, 1), MaxFBeta(), "at least 5 labelled normal rows, got 2"),
        (SCORES, None, TargetRecall(recall=0.9), "needs labels y"),
        (SCORES, 1 - TOP10, TargetFPR(fpr=0.1), "at least 20 labelled normal rows, got 10"),
    ],
)
def test_bad_arguments_raise_clear_errors(scores, y, policy, message):
    with pytest.raises(ValueError, match=message):
        calibrate_threshold(scores, y, policy=policy)


def test_calibration_to_dict_is_json_safe_and_rebuilds():
    cal = calibrate_threshold(SCORES, TOP10, policy=MinCost(cost_fp=1, cost_fn=5))
    restored = Calibration(**json.loads(json.dumps(cal.to_dict(), allow_nan=False)))
    assert restored == cal


# --------------------------------------------------------------------------- probability

GRID = np.linspace(-50.0, 150.0, 2001)


def test_conformal_probability_matches_its_formula():
    prob = AnomalyProbability().fit(SCORES)
    # 51 of the 100 calibration scores are <= 50: p = 51/101 there, linear to the next score.
    assert prob.probability([50.0])[0] == pytest.approx(51 / 101)
    assert prob.probability([50.5])[0] == pytest.approx(51.5 / 101)
    low, high = prob.probability([-1.0, 1000.0])
    assert 0.0 < low < 1 / 101 and 100 / 101 < high <= 1.0
    assert prob.method_ == "conformal"


def test_isotonic_probability_is_the_shrunk_pav_blocks_at_their_mean_scores():
    rng = np.random.default_rng(0)
    y = (rng.random(500) < 0.2).astype(int)
    scores = rng.normal(size=500) + 2.0 * y
    prob = AnomalyProbability().fit(scores, y)
    fitted = IsotonicRegression(y_min=0, y_max=1).fit(scores, y).predict(scores)
    assert prob.method_ == "isotonic"
    for value in np.unique(fitted):
        block = fitted == value
        centre, m = scores[block].mean(), block.sum()
        expected = (value * m + 0.5) / (m + 1)  # one pseudo-count at 1/2
        assert prob.probability([centre])[0] == pytest.approx(expected, abs=1e-12)
    assert 0.0 < prob.knots_p_.min() and prob.knots_p_.max() < 1.0


@pytest.mark.parametrize("labelled", [False, True])
def test_probability_is_strictly_increasing_where_the_score_changes(labelled):
    """No two scores share a probability: inside the calibration range (linear between knots)
    and beyond it (exponential tails), down to where a tail underflows."""
    rng = np.random.default_rng(2)
    y = (rng.random(400) < 0.15).astype(int)
    scores = np.round(rng.lognormal(size=400) * (1 + 3 * y), 1)  # ties, as real scores have
    prob = AnomalyProbability().fit(scores, y if labelled else None)
    grid = np.linspace(scores.min() - 5, scores.max() + 20, 5001)
    p = prob.probability(grid)
    resolvable = (p > 1e-300) & (p < 1 - 1e-15)
    assert resolvable.mean() > 0.95
    assert np.all(np.diff(p[resolvable]) > 0)


def test_probability_agrees_with_the_threshold(fitted_mixed, mixed_data):
    """Every flagged row (score > threshold) has a higher probability than every other."""
    from copy import deepcopy

    det = deepcopy(fitted_mixed)
    rng = np.random.default_rng(0)
    y = (rng.random(len(mixed_data)) < 0.1).astype(int)
    for labels in (None, y):
        det.calibrate(mixed_data, labels, policy=TargetFPR(fpr=0.1))
        p = det.anomaly_probability(mixed_data)
        flagged = det.predict(mixed_data) == -1
        assert flagged.any() and (~flagged).any()
        assert p[flagged].min() > p[~flagged].max()


def test_a_model_saved_before_the_tails_keeps_its_probabilities():
    prob = AnomalyProbability().fit(SCORES)
    old = {"method": "conformal", "knots_x": np.sort(SCORES).tolist(), "knots_p": []}
    legacy = AnomalyProbability.from_dict(old)
    assert legacy.probability([50.0])[0] == pytest.approx(1 - 51 / 101)  # the old step function
    assert legacy.probability([-1.0, 1000.0]).tolist() == [0.0, pytest.approx(100 / 101)]
    assert prob.probability([50.0])[0] != legacy.probability([50.0])[0]


def test_few_labelled_anomalies_use_the_conformal_p_value_on_normals():
    prob = AnomalyProbability().fit(SCORES, labels_at(97, 98, 99))
    assert prob.method_ == "conformal" and "3 labelled anomalies" in prob.fallback_reason_
    assert prob.knots_x_.max() == 96.0


@pytest.mark.parametrize("labelled", [False, True])
def test_probability_is_monotone_bounded_and_round_trips_bit_identically(labelled):
    rng = np.random.default_rng(1)
    y = (rng.random(300) < 0.1).astype(int)
    scores = rng.lognormal(size=300) * (1 + 3 * y)
    prob = AnomalyProbability().fit(scores, y if labelled else None)
    p = prob.probability(GRID)
    assert np.all(np.diff(p) >= 0) and p.min() >= 0.0 and p.max() <= 1.0
    restored = AnomalyProbability.from_dict(json.loads(json.dumps(prob.to_dict())))
    assert restored.probability(GRID).tobytes() == p.tobytes()


def test_probability_from_dict_rejects_unknown_method():
    with pytest.raises(ValueError, match="unknown anomaly-probability method 'pickle'"):
        AnomalyProbability.from_dict({"method": "pickle", "knots_x": [], "knots_p": []})


def test_importing_calibration_and_report_loads_no_plotting_or_orchestration():
    code = (
        "import sys, vae_core.foundations.calibrate, vae_core.evaluation.report; "
        "print(sorted(m for m in ('matplotlib', 'prefect', 'mlflow') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
