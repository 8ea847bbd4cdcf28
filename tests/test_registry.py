"""Tracking, the packaged model, registration, review and promotion on a real sqlite store.

Each test gets its own store (a copy of a migrated template, ``mlflow_uri``) and artifact
folder in tmp_path; the model is the session's tiny cardio detector unless a test trains.
"""

import dataclasses
import json
import time

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from tests.helpers import (
    CARDIO,
    default_top_features,
    free_port,
    promote,
    register,
    write_pipeline_config,
)
from vae_core.cli import app
from vae_core.estimator.detector import VAEDetector
from vae_core.foundations.config import PromotionConfig, load_config
from vae_core.kinds.table_scores import score_table
from vae_core.steps.promotion import gate_checks
from vae_core.steps.training import train_and_evaluate
from vae_core.tracking import registry


def with_threshold(outcome, tmp_path, threshold):
    """The outcome with a copy of its detector whose threshold is moved."""
    outcome.detector.save(tmp_path / "copy")
    det = VAEDetector.load(tmp_path / "copy")
    det.set_threshold(threshold)
    return dataclasses.replace(outcome, detector=det)


# --------------------------------------------------------------------------- tracking


def test_training_run_logs_settings_epochs_data_report_and_model(
    pipeline_config, cardio_table, tmp_path
):
    cfg = pipeline_config
    target = registry.TrackingTarget.from_config(cfg)
    run_id = registry.start_training_run(target, cfg, "data/cardio.csv")
    epoch_log = registry.epoch_logger(target, run_id)
    outcome = train_and_evaluate(cardio_table, cfg, tmp_path / "run", callbacks=[epoch_log])
    model_uri = registry.log_training_run(
        target, run_id, cfg, cardio_table, outcome, "data/cardio.csv"
    )

    client = MlflowClient(target.uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and model_uri.startswith("models:/m-")
    assert run.info.artifact_uri.startswith(str(tmp_path / "mlartifacts"))
    params = run.data.params
    assert params["model.latent_dim"] == "2" and params["training.epochs"] == "3"
    assert params["calibration.policy.name"] == "target_fpr" and "tracking.uri" not in params
    history = client.get_metric_history(run_id, "val_loss")
    assert [m.step for m in history] == list(range(len(outcome.detector.history_)))
    assert np.isclose(history[-1].value, outcome.detector.history_[-1]["val_loss"])
    metrics = run.data.metrics
    assert (
        metrics["test_roc_auc_ci_low"] <= metrics["test_roc_auc"] <= metrics["test_roc_auc_ci_high"]
    )
    assert metrics["threshold"] == pytest.approx(outcome.detector.threshold_)

    (data_input,) = run.inputs.dataset_inputs
    tags = {t.key: t.value for t in data_input.tags}
    fingerprint = registry.table_fingerprint(cardio_table)
    assert tags["mlflow.data.context"] == "training" and tags["rows"] == "1831"
    assert tags["columns"] == "21" and tags["sha256"] == fingerprint["sha256"]
    assert run.data.tags["data.sha256"] == fingerprint["sha256"]

    files = {f.path for f in client.list_artifacts(run_id)}
    files |= {
        f.path
        for d in ("report", "evaluation", "samples", "review")
        for f in client.list_artifacts(run_id, d)
    }
    for name in (
        "feature_schema.json",
        "report/report.md",
        "report/report.json",
        "report/roc_curve.png",
        "report/training_curve.png",
        "evaluation/top_anomalies.json",
        "samples/prior_samples.json",
        "review/latent_map.png",
        "review/latent.json",
    ):
        assert name in files, name
    latent = json.loads((tmp_path / "run" / "review" / "latent.json").read_text())
    assert metrics["review_sample_realism_auc"] == pytest.approx(latent["sample_realism_auc"])
    assert 0.0 <= metrics["review_sample_realism_auc"] <= 1.0
    shares = [metrics[f"review_latent_variance_share_{i}"] for i in (1, 2)]
    assert shares == pytest.approx(latent["variance_shares"]) and sum(shares) <= 1 + 1e-9
    top = json.loads(
        (tmp_path / "mlartifacts" / run_id / "artifacts/evaluation/top_anomalies.json").read_text()
    )
    assert {"record_id", "anomaly_score", "label", "top_feature_1", "top_feature_1_nats"} <= set(
        top["columns"]
    )
    scores = [row[top["columns"].index("anomaly_score")] for row in top["data"]]
    assert scores == sorted(scores, reverse=True) and len(scores) == 20


def test_settings_fingerprint_and_requirements(cardio_table, tmp_path):
    cfg = load_config(write_pipeline_config(tmp_path))
    params = registry.settings_params(cfg)
    assert params["model.hidden_dims"] == "[8]" and params["promotion.flagged_rate_max"] == "0.2"
    assert not any(k.startswith("tracking.") for k in params)
    changed = dataclasses.replace(cardio_table, features=cardio_table.features.assign(LB=0.0))
    assert (
        registry.table_fingerprint(changed)["sha256"]
        != registry.table_fingerprint(cardio_table)["sha256"]
    )
    requirements = registry.pip_requirements()
    assert any(r.startswith("torch==") for r in requirements)
    assert all("+" not in r and "==" in r for r in requirements)


# --------------------------------------------------------------------------- registry


def test_register_challenger_writes_a_review_and_tags(
    pipeline_config, cardio_table, trained_cardio
):
    target, ref = register(pipeline_config, cardio_table, trained_cardio)
    client = MlflowClient(target.uri)
    mv = client.get_model_version(ref.name, ref.version)
    assert (ref.name, ref.version, ref.alias) == ("vae-anomaly", "1", "challenger")
    assert client.get_registered_model("vae-anomaly").aliases == {"challenger": 1}
    text = mv.description
    for part in (
        "**Data**",
        "1831 rows",
        "**Settings**",
        "latent_dim=2",
        "**Threshold**",
        "target_fpr",
        "**Test metrics**",
        "| ROC-AUC |",
        "95% CI",
        "no champion yet",
        "**Code**",
        "**Promotion log**",
    ):
        assert part in text, part
    tags = mv.tags
    assert float(tags["threshold"]) == pytest.approx(trained_cardio.detector.threshold_, rel=1e-3)
    assert tags["policy"] == "target_fpr" and "test_roc_auc" in tags and tags["rows"] == "1831"
    assert tags["data_sha256"] == registry.table_fingerprint(cardio_table)["sha256"][:16]
    assert tags["promotion"] == "pending" and tags["registration_state"] == "complete"
    assert len(tags) <= registry.MAX_VERSION_TAGS
    assert "vae_core" in text and "commit `" in text  # the code version: in the review


def test_first_model_becomes_champion_then_a_second_passes_the_gate(
    pipeline_config, cardio_table, trained_cardio
):
    cfg = pipeline_config
    target, _ = register(cfg, cardio_table, trained_cardio)
    first = promote(target, cfg, cardio_table)
    assert first.outcome == "promoted" and first.previous_champion is None
    assert "No champion yet" in first.summary()

    register(cfg, cardio_table, trained_cardio)
    client = MlflowClient(target.uri)
    review = client.get_model_version("vae-anomaly", "2").description
    assert "**Against the champion** (version 1)" in review and "Settings: identical" in review

    second = promote(target, cfg, cardio_table)
    assert second.outcome == "promoted" and second.previous_champion == "1"
    assert {c.name for c in second.checks} == {"flagged_rate", "baseline", "roc_auc"}
    assert second.challenger_metrics["roc_auc"] == pytest.approx(second.champion_metrics["roc_auc"])
    assert client.get_registered_model("vae-anomaly").aliases == {"champion": 2}
    v1, v2 = (client.get_model_version("vae-anomaly", v) for v in ("1", "2"))
    assert v2.tags["promotion"] == "promoted" and "compared" not in v2.tags
    log = v2.description.split("**Promotion log**")[1]
    assert "promoted to champion" in log and "Scored on held-out rows (367 rows)" in log
    assert v2.description.startswith("## Review of vae-anomaly version 2\n")  # no alias: it moves
    assert v1.tags["promotion"] == "replaced by v2"
    assert "replaced as champion by version 2" in v1.description
    assert promote(target, cfg, cardio_table, version=2).outcome == "unchanged"


def test_gate_rejects_a_challenger_that_flags_too_much_and_force_overrides(
    pipeline_config, cardio_table, trained_cardio, tmp_path
):
    cfg = pipeline_config
    target, _ = register(cfg, cardio_table, trained_cardio)
    promote(target, cfg, cardio_table)
    loud = with_threshold(trained_cardio, tmp_path, threshold=-1e9)  # flags every row
    register(cfg, cardio_table, loud)

    rejected = promote(target, cfg, cardio_table)
    assert rejected.outcome == "rejected" and not rejected.promoted
    assert "flagged rate 100.00% above [0.00%, 20.00%]" in rejected.summary()
    client = MlflowClient(target.uri)
    assert client.get_registered_model("vae-anomaly").aliases == {"champion": 1, "challenger": 2}
    v2 = client.get_model_version("vae-anomaly", "2")
    assert v2.tags["promotion"] == "rejected"
    assert "not promoted; champion stays version 1" in v2.description

    with pytest.raises(ValueError, match="needs a reason"):
        promote(target, cfg, cardio_table, force=True)
    forced = promote(target, cfg, cardio_table, force=True, reason="incident 42: rollback test")
    assert forced.outcome == "forced"
    v2 = client.get_model_version("vae-anomaly", "2")
    assert v2.tags["promotion"] == "forced"
    assert "FORCED to champion (manual override: incident 42" in v2.description
    assert client.get_registered_model("vae-anomaly").aliases == {"champion": 2}


def test_gate_rules():
    gate = PromotionConfig(max_roc_auc_drop=0.01, flagged_rate_min=0.01, flagged_rate_max=0.2)
    champion = {"flagged_rate": 0.05, "roc_auc": 0.90}

    def verdict(rate, auc, champ=champion):
        ours = {"flagged_rate": rate, "roc_auc": auc, "baseline_roc_auc": 0.5}
        checks, notes = gate_checks(gate, ours, champ)
        return {c.name: c.passed for c in checks}, notes

    ahead = {"flagged_rate": True, "roc_auc": True, "baseline": True}
    assert verdict(0.05, 0.895) == (ahead, [])
    assert verdict(0.05, 0.885)[0] == {**ahead, "roc_auc": False}
    assert verdict(0.005, 0.95)[0]["flagged_rate"] is False  # below the minimum
    checks, notes = verdict(0.05, None)
    assert checks == {"flagged_rate": True} and "ROC-AUC not compared" in notes[0]
    checks, notes = verdict(0.5, 0.99, champ=None)
    assert checks == {"flagged_rate": False, "baseline": True} and "No champion yet" in notes[0]


def test_promote_without_a_challenger_names_the_fix(pipeline_config, cardio_table):
    target = registry.TrackingTarget.from_config(pipeline_config)
    with pytest.raises(ValueError, match="no version with alias 'challenger'"):
        promote(target, pipeline_config, cardio_table)
    with pytest.raises(ValueError, match="no such registered model 'vae-anomaly'"):
        promote(target, pipeline_config, cardio_table, version=7)  # none of that name yet


# --------------------------------------------------------------------------- loading, scoring


def test_champion_loads_and_scoring_run_is_linked_to_its_version(
    pipeline_config, cardio_table, trained_cardio, tmp_path
):
    target, ref = register(pipeline_config, cardio_table, trained_cardio)
    promote(target, pipeline_config, cardio_table)
    champion = registry.load_champion(target)
    assert (champion.ref.version, champion.ref.alias) == (ref.version, "champion")
    rows = cardio_table.features.iloc[:50]
    np.testing.assert_array_equal(
        champion.detector.anomaly_score(rows), trained_cardio.detector.anomaly_score(rows)
    )

    scores = score_table(
        champion.detector, rows, cardio_table.ids.iloc[:50], top_features=default_top_features()
    )
    path = tmp_path / "scores.parquet"
    scores.to_parquet(path)
    run_id = registry.log_scoring_run(
        target, champion.ref, scores, path, champion.detector.threshold_, "data/cardio.csv"
    )
    client = MlflowClient(target.uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert (
        run.data.tags["model.version"] == ref.version and run.data.tags["model.alias"] == "champion"
    )
    assert run.data.metrics["rows"] == 50
    assert run.data.metrics["flagged_count"] == scores["is_anomaly"].sum()
    assert run.data.metrics["flagged_rate"] == pytest.approx(scores["is_anomaly"].mean())
    assert run.data.metrics["score_p50"] == pytest.approx(scores["anomaly_score"].median())
    assert [m.model_id for m in run.inputs.model_inputs] == [ref.model_id]
    files = {f.path for d in ("scores", "plots") for f in client.list_artifacts(run_id, d)}
    assert files == {"scores/scores.parquet", "plots/score_histogram.png"}
    assert "score_distribution.json" in {f.path for f in client.list_artifacts(run_id)}


# --------------------------------------------------------------------------- errors, CLI


def test_unreachable_tracking_server_fails_fast_naming_the_uri(tmp_path, monkeypatch, cardio_table):
    uri = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    cfg = load_config(write_pipeline_config(tmp_path))  # tracking.max_retries: 1
    target = registry.TrackingTarget.from_config(cfg)
    assert target.artifact_location is None  # a server chooses its own
    started = time.monotonic()
    with pytest.raises(registry.TrackingUnavailable, match=uri.replace(".", r"\.")):
        registry.start_training_run(target, cfg, "data/cardio.csv")
    assert time.monotonic() - started < 10

    result = CliRunner().invoke(app, ["promote", "--config", str(tmp_path / "mlflow.yml")])
    assert result.exit_code == 2
    assert uri in result.output and "unreachable" in result.output
    assert "Traceback" not in result.output


def test_cli_train_registers_promote_moves_champion_score_logs(pipeline_config, tmp_path):
    config = str(tmp_path / "mlflow.yml")
    runner = CliRunner()
    common = ["--data", str(CARDIO), "--label-column", "label", "--id-column", "record_id"]
    trained = runner.invoke(
        app, ["train", *common, "--out", str(tmp_path / "run"), "--config", config]
    )
    assert trained.exit_code == 0, trained.output
    assert "registered vae-anomaly version 1 as @challenger" in trained.output
    assert "mlflow ui --backend-store-uri" in trained.output

    promoted = runner.invoke(app, ["promote", "--config", config])
    assert promoted.exit_code == 0, promoted.output
    assert "version 1: promoted to champion" in promoted.output
    assert "models:/vae-anomaly@champion -> version 1" in promoted.output

    out = tmp_path / "scores.parquet"
    scored = runner.invoke(
        app,
        [
            "score",
            "--model",
            "models:/vae-anomaly@champion",
            "--data",
            str(CARDIO),
            "--id-column",
            "record_id",
            "--out",
            str(out),
            "--config",
            config,
        ],
    )
    assert scored.exit_code == 0, scored.output
    assert len(pd.read_parquet(out)) == 1831
    assert "scored with models:/vae-anomaly/1 (@champion); logged as run" in scored.output

    reason_only = runner.invoke(app, ["promote", "--reason", "x", "--config", config])
    assert reason_only.exit_code == 2 and "--reason goes with --force" in reason_only.output


def test_cli_no_register_leaves_the_store_alone(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = write_pipeline_config(tmp_path)
    result = CliRunner().invoke(
        app,
        [
            "train",
            "--data",
            str(CARDIO),
            "--out",
            str(tmp_path / "run"),
            "--config",
            str(config),
            "--no-register",
        ],
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "model" / "model.json").exists()
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlartifacts").exists()


def test_a_tracking_call_leaves_the_environment_as_it_was(tmp_path, monkeypatch):
    """mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI; the registry must not leak it,
    or a second config in the same process would silently use the first store."""
    import os

    from vae_core.tracking import registry

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    target = registry.TrackingTarget(
        uri=f"sqlite:///{tmp_path / 'a.db'}",
        experiment="e",
        model_name="m",
        artifact_location=str(tmp_path / "art"),
    )
    with pytest.raises(ValueError, match="no such registered model 'm'"):
        registry.load_registered(target, "models:/m@champion")
    assert "MLFLOW_TRACKING_URI" not in os.environ


def test_own_table_from_the_command_line_only_in_a_folder_without_a_config(
    tmp_path, monkeypatch, _mlflow_template_db
):
    """A table unlike the demo's (other columns, its own id and label names), from the command
    line only, in a folder with no mlflow.yml: train under its own registered name, promote on
    the same file, score with models:/NAME@champion."""
    import shutil

    from tests.helpers import config_store, own_table

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    shutil.copy(_mlflow_template_db, tmp_path / "mlflow.db")  # the default store, migrated
    table = own_table(tmp_path)
    own = ["--data", "my.parquet", "--label-column", "is_fraud", "--id-column", "txn_id"]
    runner = CliRunner()
    with config_store():
        trained = runner.invoke(
            app, ["train", *own, "--out", "runs/v1", "--epochs", "3",
                  "--registered-model", "fraud", "--experiment", "fraud-dev"],
        )  # fmt: skip
        assert trained.exit_code == 0, trained.output
        assert "registered fraud version 1 as @challenger" in trained.output
        assert "vae-anomaly promote --registered-model fraud" in trained.output
        promoted = runner.invoke(app, ["promote", *own, "--registered-model", "fraud"])
        assert promoted.exit_code == 0, promoted.output
        assert "models:/fraud@champion -> version 1" in promoted.output
        scored = runner.invoke(
            app, ["score", "--model", "models:/fraud@champion", "--data", "my.parquet",
                  "--id-column", "txn_id", "--out", "scores.parquet", "--experiment", "fraud-dev"],
        )  # fmt: skip
        assert scored.exit_code == 0, scored.output
        # mistyped: an alias (the aliases there are listed), a name (said to be absent)
        score = ["score", "--data", "my.parquet", "--out", "x.parquet", "--model"]
        typo = runner.invoke(app, [*score, "models:/fraud@champoin"])
        assert typo.exit_code == 2
        said = " ".join(typo.output.split())
        assert "registered model 'fraud' has no alias 'champoin'" in said
        assert "its aliases: @champion (version 1)" in said  # challenger: promoted
        assert "did you mean @champion?" in said and "vae-anomaly train" not in said
        absent = runner.invoke(app, [*score, "models:/frod@champion"])
        assert absent.exit_code == 2
        said = " ".join(absent.output.split())
        assert "no such registered model 'frod'" in said and "did you mean 'fraud'?" in said
        # no --id-column: the id column the model was trained with
        by_default = runner.invoke(app, [*score[:-1], "--model", "runs/v1/model"])
        assert by_default.exit_code == 0, by_default.output
    scores = pd.read_parquet(tmp_path / "scores.parquet")
    assert scores["txn_id"].tolist() == table["txn_id"].tolist()
    assert pd.read_parquet(tmp_path / "x.parquet")["txn_id"].tolist() == table["txn_id"].tolist()
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert [m.name for m in client.search_registered_models()] == ["fraud"]
    experiment = client.get_experiment_by_name("fraud-dev")
    assert len(client.search_runs([experiment.experiment_id])) == 2  # training and scoring
    assert not (tmp_path / "mlflow.yml").exists()


def test_a_new_local_store_is_announced_before_it_is_made(tmp_path, capsys, monkeypatch):
    """From a folder without a config or store, a command that uses MLflow says first where
    the store it creates will be; an existing store is not announced."""
    from vae_core.cli.common import announce_new_store

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = load_config(write_pipeline_config(tmp_path))
    cfg = cfg.model_copy(
        update={"tracking": cfg.tracking.model_copy(update={"uri": "sqlite:///fresh.db"})}
    )
    announce_new_store(cfg)
    said = " ".join(capsys.readouterr().err.split())
    assert f"creating a new MLflow store: {tmp_path / 'fresh.db'} and" in said
    (tmp_path / "fresh.db").touch()
    announce_new_store(cfg)
    assert capsys.readouterr().err == ""
