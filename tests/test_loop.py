"""Closing the loop (issue 24): the promotion gate knows the simple baseline.

The gate's rules as pure functions on the numbers, then on a real table (ADBench vowels,
written as a CSV with ids and labels) through the command line into a sqlite store: a VAE
trained deliberately short (3 epochs, a 2-d latent space) trails IsolationForest and is
refused with the baseline named; one trained as usual beats it and is promoted. The figures
come from the runs; the tests assert the decisions and the words.
"""

import re

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from tests.helpers import config_store, demo_like_report, shared_dataset, write_pipeline_config
from vae_core.evaluation.report_record import baseline_sentence
from vae_core.foundations.config import PromotionConfig
from vae_core.steps.promotion import decide, gate_checks

GATE = PromotionConfig()


def numbers(roc_auc=0.8, baseline=0.7, recall=0.5, anomalies=10, flagged_rate=0.05):
    return {
        "rows": 200,
        "anomalies": anomalies,
        "flagged_rate": flagged_rate,
        "roc_auc": roc_auc,
        "recall": recall,
        "baseline_roc_auc": baseline,
    }


def test_the_sentence_says_which_is_better_and_by_how_much():
    assert baseline_sentence(0.69, 0.92) == (
        "IsolationForest is better than the VAE by 0.230 ROC-AUC on the same rows "
        "(0.920 against 0.690): the simple baseline wins here."
    )
    assert baseline_sentence(0.93, 0.75).startswith(
        "The VAE is better than IsolationForest by 0.180"
    )
    assert "level" in baseline_sentence(0.900, 0.902)


def test_a_challenger_behind_the_baseline_by_more_than_allowed_is_refused_naming_it():
    decision = decide("m", "1", None, GATE, numbers(roc_auc=0.69, baseline=0.92), None)
    assert decision.outcome == "rejected"
    text = decision.summary()
    failed = text.split("failed: ")[1].split("passed: ")[0]
    assert "IsolationForest is better than the VAE by 0.230" in failed
    assert "0.920 against 0.690" in failed and "max_behind_baseline 0.05" in failed
    # within the allowance it passes, and the sentence still says who is ahead
    close = decide("m", "1", None, GATE, numbers(roc_auc=0.88, baseline=0.92), None)
    assert close.promoted and "IsolationForest is better than the VAE by 0.040" in close.summary()
    assert not decide(
        "m",
        "1",
        None,
        PromotionConfig(max_behind_baseline=0.03),
        numbers(roc_auc=0.88, baseline=0.92),
        None,
    ).promoted


def test_a_forced_promotion_overrides_the_baseline_and_records_why():
    decision = decide("m", "1", None, GATE, numbers(roc_auc=0.6, baseline=0.9), None, "drill")
    assert decision.outcome == "forced" and "manual override: drill" in decision.summary()
    assert "IsolationForest is better" in decision.summary()


def test_a_first_model_that_flags_no_labelled_anomaly_is_refused():
    checks, _ = gate_checks(GATE, numbers(recall=0.0, anomalies=12), None)
    recall = [c for c in checks if c.name == "recall"]
    assert recall and not recall[0].passed
    assert "0 of the 12 labelled held-out anomalies flagged" in recall[0].detail
    assert not decide("m", "1", None, GATE, numbers(recall=0.0), None).promoted
    # with a champion, ROC-AUC against it decides instead
    checks, _ = gate_checks(GATE, numbers(recall=0.0), numbers())
    assert "recall" not in {c.name for c in checks}


def test_without_labels_the_gate_says_it_could_not_compare():
    unlabelled = numbers(roc_auc=None, baseline=None, recall=None, anomalies=None)
    decision = decide("m", "1", None, GATE, unlabelled, None)
    assert decision.promoted
    assert "Could not compare with IsolationForest: the held-out rows lack labels" in (
        decision.summary()
    )
    assert {c.name for c in decision.checks} == {"flagged_rate"}


# --------------------------------------------------------------------------- a real table


@pytest.fixture(scope="module")
def vowels_csv(tmp_path_factory):
    """ADBench vowels (1,456 rows, 12 columns, 50 anomalies) as a CSV with ids and labels."""
    X, y = shared_dataset("adbench_vowels")
    table = pd.DataFrame(X, columns=[f"f{i}" for i in range(X.shape[1])])
    table.insert(0, "record_id", np.arange(len(table)) + 1000)
    table["label"] = y.astype(int)
    path = tmp_path_factory.mktemp("vowels") / "vowels.csv"
    table.to_csv(path, index=False)
    return path


def cli(*args):
    from vae_core.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def train_and_promote(tmp_path, data, name: str, model: dict, epochs: int, *promote_args):
    config = write_pipeline_config(
        tmp_path,
        {
            "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "registered_model": name},
            "model": model,
            "promotion": {"max_behind_baseline": 0.05},
        },
    )
    trained = cli(
        "train",
        "--config",
        config,
        "--data",
        data,
        "--label-column",
        "label",
        "--id-column",
        "record_id",
        "--out",
        tmp_path / name,
        "--epochs",
        epochs,
    )
    assert trained.exit_code == 0, trained.output
    promoted = cli("promote", "--config", config, *promote_args)
    return trained, promoted


def test_on_a_real_table_the_gate_refuses_a_vae_behind_isolation_forest_and_promotes_one_ahead(
    vowels_csv, tmp_path, _mlflow_template_db
):
    import shutil

    from mlflow import MlflowClient

    shutil.copy(_mlflow_template_db, tmp_path / "mlflow.db")
    short = {"latent_dim": 2, "hidden_dims": [8]}
    with config_store():
        trained, refused = train_and_promote(tmp_path, vowels_csv, "short", short, 3)
        assert refused.exit_code == 0, refused.output
        assert "version 1: not promoted; champion stays unset" in refused.output
        assert re.search(
            r"IsolationForest is better than the VAE by 0\.\d{3} ROC-AUC", refused.output
        )
        theirs, ours = map(  # IsolationForest first
            float, re.search(r"\((0\.\d+) against (0\.\d+)\)", refused.output).groups()
        )
        assert theirs - ours > 0.05  # both figures named, and the baseline clearly ahead
        assert "IsolationForest is better than the VAE" in trained.output  # the report's sentence
        client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
        description = client.get_model_version("short", "1").description
        assert "IsolationForest is better than the VAE" in description  # review and log
        assert client.get_model_version("short", "1").tags["promotion"] == "rejected"

        forced = cli("promote", "--config", tmp_path / "mlflow.yml", "--force", "--reason", "drill")
        assert "FORCED to champion (manual override: drill)" in forced.output
        assert "IsolationForest is better" in forced.output
        assert client.get_model_version("short", "1").tags["promotion"] == "forced"

        usual = {"latent_dim": 8, "hidden_dims": [128, 64]}
        trained, promoted = train_and_promote(tmp_path, vowels_csv, "usual", usual, 200)
        assert promoted.exit_code == 0, promoted.output
        assert "version 1: promoted to champion" in promoted.output
        assert re.search(
            r"The VAE is better than IsolationForest by 0\.\d{3} ROC-AUC", promoted.output
        )
        description = client.get_model_version("usual", "1").description
        assert "The VAE is better than IsolationForest" in description


def test_the_demo_says_which_is_better_in_words():
    from flows.demo import meaning_lines
    from vae_core.foundations.calibrate import TargetFPR

    report = demo_like_report()
    vae = report["metrics"]["roc_auc"]["value"]
    report["baseline"] = {"method": "IsolationForest", "roc_auc": vae + 0.2}
    text = "\n".join(meaning_lines(report, TargetFPR(fpr=0.01)))
    assert "IsolationForest is better than the VAE by 0.200 ROC-AUC on the same rows" in text


# --------------------------------------------------------------------------- the loop


def test_the_loop_from_the_command_line_in_an_empty_folder(
    tmp_path, monkeypatch, _mlflow_template_db
):
    """The issue's "done when", from the command line only: a labelled table (cardio) trained
    without its labels -> promote -> score a batch with ids -> two wrong verdict files (an
    id no run scored, a verdict that is not 0/1) end with exit code 2 and record nothing ->
    verdicts on 120 scored rows, from the labels -> recalibrate -> a new version whose
    description says it used the 120 reviewed rows, and meets the gate as @challenger."""
    import shutil

    from mlflow import MlflowClient

    from tests.helpers import CARDIO
    from vae_core.tracking.registration import version_ref
    from vae_core.tracking.registry import FEEDBACK_RUN_TAG

    monkeypatch.chdir(tmp_path)
    shutil.copy(_mlflow_template_db, tmp_path / "mlflow.db")
    table = pd.read_csv(CARDIO)
    table.drop(columns="label").to_csv("cardio.csv", index=False)  # trained without labels
    write_pipeline_config(tmp_path, {"tracking": {"uri": "sqlite:///mlflow.db"}})
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    name = "vae-anomaly"
    with config_store():
        out = cli(
            "train",
            "--config",
            "mlflow.yml",
            "--data",
            "cardio.csv",
            "--id-column",
            "record_id",
            "--out",
            "run",
        )
        assert out.exit_code == 0, out.output
        out = cli("promote", "--config", "mlflow.yml")
        assert out.exit_code == 0 and "models:/vae-anomaly@champion -> version 1" in out.output
        assert "Could not compare with IsolationForest" in out.output  # no labels held out
        out = cli(
            "score",
            "--config",
            "mlflow.yml",
            "--model",
            f"models:/{name}@champion",
            "--data",
            "cardio.csv",
            "--id-column",
            "record_id",
            "--out",
            "scores.parquet",
        )
        assert out.exit_code == 0, out.output

        scores = pd.read_parquet("scores.parquet").merge(table[["record_id", "label"]])
        flagged = scores[scores["is_anomaly"]]
        others = scores[~scores["is_anomaly"]].sample(120 - len(flagged), random_state=0)
        reviewed = pd.concat([flagged, others])[["record_id", "label"]]
        reviewed = reviewed.rename(columns={"label": "verdict"})
        unknown = pd.concat([reviewed, pd.DataFrame({"record_id": [999_999], "verdict": [1]})])
        unknown.to_csv("unknown.csv", index=False)
        not_binary = reviewed.astype({"verdict": "string"})
        not_binary.iloc[[3, 7], 1] = ["2", "yes"]
        not_binary.to_csv("not_binary.csv", index=False)
        reviewed.to_csv("verdicts.csv", index=False)

        def feedback(path):
            return cli(
                "feedback",
                "--config",
                "mlflow.yml",
                "--registered-model",
                name,
                "--data",
                path,
                "--id-column",
                "record_id",
                "--label-column",
                "verdict",
            )

        for wrong, words in (
            (
                "unknown.csv",
                "1 verdict(s) on ids that no scoring run of 'vae-anomaly' scored: line(s) 122",
            ),
            (
                "not_binary.csv",
                "2 verdict(s) in column 'verdict' not 0 (normal) or 1 (anomaly): line(s) 5, 9",
            ),
        ):
            out = feedback(wrong)
            assert out.exit_code == 2, out.output
            assert words in out.output and "nothing recorded" in out.output
            assert len(out.output.strip().splitlines()) == 1
            assert FEEDBACK_RUN_TAG not in client.get_registered_model(name).tags

        out = feedback("verdicts.csv")
        assert out.exit_code == 0, out.output
        assert "recorded 120 verdict(s)" in out.output and "120 ids reviewed" in out.output
        run_id = client.get_registered_model(name).tags[FEEDBACK_RUN_TAG]
        for wrong in ("unknown.csv", "not_binary.csv"):  # nothing recorded after verdicts either
            assert feedback(wrong).exit_code == 2
        assert client.get_metric_history(run_id, "reviewed_reviewed")[-1].step == 1
        # the scoring run's reviewed precision, on the run and on version 1's model
        precision = flagged["label"].mean()
        experiments = [e.experiment_id for e in client.search_experiments()]
        scoring = client.search_runs(experiments, "tags.`vae.step` = 'scoring'")[0]
        assert scoring.data.metrics["reviewed_precision"] == pytest.approx(precision)
        model_id = version_ref(client.get_model_version(name, "1")).model_id
        logged = client.get_logged_model(model_id)
        assert [m.value for m in logged.metrics if m.key == "reviewed_precision"] == [
            pytest.approx(precision)
        ]

        out = cli("recalibrate", "--config", "mlflow.yml", "--registered-model", name)
        assert out.exit_code == 0, out.output
        assert "registered vae-anomaly version 2 as @challenger" in out.output
        description = client.get_model_version(name, "2").description
        anomalies = int(reviewed["verdict"].sum())
        assert f"plus 120 reviewed rows ({anomalies} anomalies, {120 - anomalies} normals)" in (
            description
        )
        assert "reviewers' precision at the old threshold was" in description.lower()
        out = cli("promote", "--config", "mlflow.yml")
        assert out.exit_code == 0, out.output
        assert "version 2:" in out.output


def test_training_leaves_out_the_rows_reviewers_confirmed_as_anomalies(cardio_table):
    from vae_core.foundations.config import SplitConfig
    from vae_core.steps.feedback import LABEL, confirmed_positions
    from vae_core.steps.pipeline import leave_out_of_training, split_data

    ids = cardio_table.ids["record_id"].astype(str)
    current = pd.DataFrame({"record_id": ids.iloc[:50].to_numpy(), LABEL: [1] * 30 + [0] * 20})
    confirmed = confirmed_positions(cardio_table, (current, None, ["record_id"]))
    assert confirmed.tolist() == list(range(30))  # the normals' verdicts leave nothing out
    splits = split_data(cardio_table, SplitConfig())
    cleaner = leave_out_of_training(splits, confirmed)
    assert cleaner.left_out == np.isin(splits.train, confirmed).sum() > 0
    assert not np.isin(cleaner.train, confirmed).any()
    assert cleaner.test.tolist() == splits.test.tolist()  # the held-out rows do not move
    assert confirmed_positions(cardio_table, None).size == 0
