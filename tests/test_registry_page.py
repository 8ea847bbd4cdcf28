"""The registry page a reviewer reads, on a real sqlite store: few tags per version, a review
that names what changed in the data, and runs that describe themselves."""

import dataclasses

from mlflow import MlflowClient

from tests.helpers import default_top_features, promote, register
from vae_core.estimator.detector import VAEDetector
from vae_core.kinds.table_scores import score_table
from vae_core.steps.batch_report import BatchSummary
from vae_core.steps.run_notes import RunRecord, data_changes
from vae_core.steps.training import train_and_evaluate
from vae_core.tracking import registry

NAME = "vae-anomaly"


def every_version_tags(client: MlflowClient) -> dict[str, dict[str, str]]:
    return {
        str(v.version): client.get_model_version(NAME, v.version).tags
        for v in client.search_model_versions(f"name = '{NAME}'")
    }


def assert_few_tags(client: MlflowClient) -> dict[str, dict[str, str]]:
    tags = every_version_tags(client)
    for version, these in tags.items():
        assert len(these) <= registry.MAX_VERSION_TAGS == 8, (version, sorted(these))
        assert all(value != "" for value in these.values()), (version, these)
    return tags


def test_every_version_has_at_most_8_tags_through_registration_and_promotion(
    pipeline_config, cardio_table, trained_cardio, tmp_path
):
    cfg = pipeline_config
    target, _ = register(cfg, cardio_table, trained_cardio)
    client = MlflowClient(target.uri)
    assert set(assert_few_tags(client)["1"]) == {
        "test_roc_auc",
        "threshold",
        "policy",
        "rows",
        "data_sha256",
        "promotion",
        "training_fingerprint",
        "registration_state",
    }  # fmt: skip  (registration_state: incomplete while registration is unfinished, then complete)
    assert promote(target, cfg, cardio_table).outcome == "promoted"
    assert_few_tags(client)

    trained_cardio.detector.save(tmp_path / "copy")
    loud = VAEDetector.load(tmp_path / "copy")
    loud.set_threshold(-1e9)  # flags every row: the gate rejects it
    register(cfg, cardio_table, dataclasses.replace(trained_cardio, detector=loud))
    assert promote(target, cfg, cardio_table).outcome == "rejected"
    assert assert_few_tags(client)["2"]["promotion"] == "rejected"
    forced = promote(target, cfg, cardio_table, force=True, reason="drill")
    assert forced.outcome == "forced"
    tags = assert_few_tags(client)
    assert tags["1"]["promotion"] == "replaced by v2" and tags["2"]["promotion"] == "forced"
    review = client.get_model_version(NAME, "2").description
    assert "manual override: drill" in review and "(367 rows)" in review  # the rest: there

    run = client.get_run(client.get_model_version(NAME, "1").run_id)
    assert "" not in run.data.tags.values()  # no empty calibration.fallback_reason
    note = run.data.tags["mlflow.note.content"]
    assert "data/cardio.csv" in note and "1831 rows" in note and "Test ROC-AUC" in note


def test_review_names_the_columns_added_and_removed_against_the_champion(
    pipeline_config, cardio_table, trained_cardio, tmp_path
):
    cfg = pipeline_config
    target, _ = register(cfg, cardio_table, trained_cardio)
    promote(target, cfg, cardio_table)
    features = cardio_table.features.drop(columns=["LB", "AC"])
    other = dataclasses.replace(cardio_table, features=features.assign(LB_hourly=features["ASTV"]))
    register(cfg, other, train_and_evaluate(other, cfg, tmp_path / "other"))
    review = MlflowClient(target.uri).get_model_version(NAME, "2").description
    line = next(x for x in review.splitlines() if x.startswith("- Data:"))
    assert "columns added: `LB_hourly`" in line and "columns removed: `LB`, `AC`" in line
    assert "fingerprint changed" not in review


def _record(columns: dict[str, str], sha: str = "a", **tags) -> RunRecord:
    schema = {"kind": "tabular", "columns": [{"name": n, "kind": k} for n, k in columns.items()]}
    tags = {"data.sha256": sha, "data.rows": "10", "data.label_column": "label"} | tags
    return RunRecord("r", {}, tags, {}, schema)


def test_data_changes_in_words():
    old = _record({"a": "numeric", "b": "numeric", "c": "categorical"})
    assert data_changes(old, old) == "the same table (same fingerprint)"
    new = _record({"a": "categorical", "c": "categorical", "d": "numeric"}, "b")
    text = data_changes(old, new)
    assert "columns added: `d`" in text and "columns removed: `b`" in text
    assert "kind changed: `a` numeric -> categorical" in text
    same = data_changes(old, dataclasses.replace(old, tags=old.tags | {"data.sha256": "b"}))
    assert "the same 3 columns, other values" in same
    wide = _record({f"x{i}": "numeric" for i in range(30)}, "b", **{"data.label_column": "y"})
    text = data_changes(_record({}), wide)
    assert "`x11` and 18 more" in text and "label column `label` -> `y`" in text
    unknown = data_changes(old, dataclasses.replace(new, schema=None))  # an older run
    assert unknown == "different data: 10 -> 10 rows"


def test_scoring_run_has_a_description_parameters_and_its_dataset(
    pipeline_config, cardio_table, trained_cardio, tmp_path
):
    cfg = pipeline_config
    target, _ = register(cfg, cardio_table, trained_cardio)
    promote(target, cfg, cardio_table)
    champion = registry.load_champion(target)
    batch_file = tmp_path / "batch-0601.csv"
    frame = cardio_table.features.iloc[:40]
    frame.to_csv(batch_file, index=False)
    scores = score_table(
        champion.detector, frame, cardio_table.ids.iloc[:40], top_features=default_top_features()
    )
    scores.to_parquet(tmp_path / "out.parquet")
    flagged = int(scores["is_anomaly"].sum())
    summary = BatchSummary(
        "0601", 40, flagged, champion.detector.threshold_, None, False,
        scores["anomaly_score"].to_numpy(), scores.head(3),
    )  # fmt: skip
    run_id = registry.log_batch_scoring(
        target, champion.ref, summary, tmp_path / "out.parquet", str(batch_file),
        settings=registry.scoring_settings(cfg),
    )  # fmt: skip
    run = MlflowClient(target.uri).get_run(run_id)
    params = run.data.params
    assert params["batch.id"] == "0601" and params["model.version"] == "1"
    assert params["model.alias"] == "champion" and params["data.source"] == str(batch_file)
    assert params["scoring.chunk_rows"] == str(cfg.scoring.chunk_rows)
    assert params["scoring.top_features"] == str(cfg.scoring.top_features)
    (data,) = run.inputs.dataset_inputs
    assert data.dataset.name == "batch-0601.csv" and str(batch_file) in data.dataset.source
    assert data.dataset.digest == registry.source_digest(batch_file)
    assert {t.key: t.value for t in data.tags} == {"mlflow.data.context": "scoring", "rows": "40"}
    assert [m.model_id for m in run.inputs.model_inputs] == [champion.ref.model_id]
    note = run.data.tags["mlflow.note.content"]
    assert "batch-0601.csv" in note and "models:/vae-anomaly/1 (@champion)" in note
    assert f"40 rows, {flagged} flagged" in note


def test_source_digest_follows_the_content_of_a_file_or_a_folder(tmp_path):
    folder = tmp_path / "parts"
    folder.mkdir()
    (folder / "a.csv").write_text("x\n1\n")
    (folder / "b.csv").write_text("x\n2\n")
    first = registry.source_digest(folder)
    assert len(first) == 16 and first == registry.source_digest(folder)
    assert registry.source_digest(folder / "a.csv") != registry.source_digest(folder / "b.csv")
    assert registry.source_digest(str(folder / "*.csv")) != registry.source_digest(folder / "a.csv")
    (folder / "b.csv").write_text("x\n3\n")
    assert registry.source_digest(folder) != first
    assert len(registry.source_digest(tmp_path / "missing.csv")) == 16  # named, not read
