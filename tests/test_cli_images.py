"""`vae-anomaly train` and `score` on images (data.kind: images), in process (CliRunner).

One tiny conv VAE per module is trained on data/mnist through the CLI, registered in a real
sqlite MLflow store (a copy of the migrated template) and promoted; the scoring tests use it.
"""

import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from tests.helpers import MNIST, PNG, ROOT, config_store, images_config, is_png, sqlite_client
from vae_core.cli import app

DIGITS = {"good": 0, "one": 1, "two": 2, "three": 3, "four": 4}
DIGITS |= {"five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9}

# This module's tiny image model: two epochs, two anomaly maps, no label or id columns.
SETTINGS = {
    "data": {"label_column": None, "id_columns": []},
    "images": {"top_maps": 2},
    "training": {"epochs": 2},
}
pytestmark = pytest.mark.usefixtures("own_store")


def _config(folder, overrides=None):
    return images_config(folder, SETTINGS, overrides or {})


def cli(*args):
    """Run `vae-anomaly ARGS` in this process; the click Result (stdout, stderr apart)."""
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def store(tmp_path_factory, _mlflow_template_db):
    """Trained, registered and promoted through the CLI: (folder, config, train result)."""
    folder = tmp_path_factory.mktemp("cli-images")
    shutil.copy(_mlflow_template_db, folder / "mlflow.db")
    config = _config(folder)
    with config_store():
        trained = cli("train", "--data", MNIST, "--out", folder / "run", "--config", config)
        assert trained.exit_code == 0, trained.stderr
        # a 2-epoch model flags none of the held-out anomalies, which the gate refuses for a
        # first model (tests/test_loop.py); these tests are about the image plumbing
        why = "plumbing test: a 2-epoch model"
        promoted = cli("promote", "--config", config, "--force", "--reason", why)
        assert promoted.exit_code == 0, promoted.stderr
        assert "FORCED to champion" in promoted.stdout
    return folder, config, trained


def test_train_registers_the_image_model_with_report_and_review(store):
    folder, _, trained = store
    run = folder / "run"
    assert (run / "model" / "model.json").exists() and (run / "report" / "report.md").exists()
    assert is_png(run / "review" / "prior_samples.png")
    assert len(list((run / "review" / "maps").glob("*.png"))) == 2
    assert "registered digits version 1 as @challenger" in trained.stdout
    assert f"review: {run / 'review'}" in trained.stdout
    client = sqlite_client(folder)
    version = client.get_model_version_by_alias("digits", "champion")
    assert str(version.version) == "1"
    tags = client.get_run(version.run_id).data.tags
    assert tags["data.kind"] == "images" and tags["split.test_rows"] == "70"
    logged = [a.path for a in client.list_artifacts(version.run_id, "review")]
    assert logged == [
        "review/interpolations.png",
        "review/latent.json",
        "review/latent_map.png",
        "review/prior_samples.png",
        "review/reconstructions.png",
        "review/review.json",
    ]
    run = client.get_run(version.run_id).data
    assert 0.0 <= run.metrics["review_reconstruction_retrieval"] <= 1.0
    assert 0.0 <= run.metrics["baseline_iforest_roc_auc"] <= 1.0
    description = client.get_model_version("digits", version.version).description
    assert "Against the simple thing" in description and "IsolationForest" in description


def test_score_a_folder_with_the_saved_model(store, tmp_path):
    folder, config, _ = store
    args = ["--data", MNIST / "test", "--out", tmp_path / "scores", "--batch-id", "nightly"]
    result = cli("score", "--model", folder / "run" / "model", *args, "--config", config)
    assert result.exit_code == 0, result.stderr
    out = pd.read_parquet(tmp_path / "scores" / "nightly.parquet")
    assert len(out) == 140 and out["path"].is_unique
    assert list(out.columns) == [
        "path", "class", "label", "anomaly_score", "is_anomaly", "anomaly_probability", "map_path"
    ]  # fmt: skip
    maps = sorted((tmp_path / "scores" / "nightly.maps").glob("*.png"))
    assert len(maps) == 2 and set(out.loc[out["map_path"] != "", "map_path"]) == set(map(str, maps))
    assert f"-> {tmp_path / 'scores' / 'nightly.parquet'}" in result.stdout
    assert "logged as run" not in result.stdout  # a saved folder is not tracked


def test_score_from_the_registry_logs_the_scoring_run(store, tmp_path):
    folder, config, _ = store
    result = cli(
        "score",
        "--model",
        "models:/digits@champion",
        "--data",
        MNIST / "test" / "seven",
        "--out",
        tmp_path,
        "--config",
        config,
    )
    assert result.exit_code == 0, result.stderr
    (written,) = tmp_path.glob("b-*.parquet")  # named by the hash of the files
    assert len(pd.read_parquet(written)) == 10
    run_id = result.stdout.split("logged as run ")[1].split()[0]
    client = sqlite_client(folder)
    run = client.get_run(run_id)
    assert run.data.tags["model.alias"] == "champion" and run.data.metrics["rows"] == 10
    assert len(client.list_artifacts(run_id, "anomaly_maps")) == 2


def test_an_image_batch_logs_its_drift_and_warns_as_a_table_batch_does(store, tmp_path):
    """Image batches pass through the one batch engine (issue 26): the scoring run logs
    ``score_psi``, the PSI of the batch's scores against the calibration score deciles, and
    the command warns of drift above ``scoring.drift_psi_warning``, as for a table."""
    from vae_core import VAEDetector
    from vae_core.steps.batch_report import population_stability_index

    folder, _, _ = store
    tracking = {"uri": f"sqlite:///{folder / 'mlflow.db'}"}
    config = _config(tmp_path, {"tracking": tracking, "scoring": {"drift_psi_warning": 1e-9}})
    out = tmp_path / "scores"
    result = cli(
        "score", "--model", "models:/digits@champion", "--data", MNIST / "test", "--out", out,
        "--batch-id", "drift", "--config", config,
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert "score drift: PSI" in result.stderr  # any drift exceeds a 1e-9 warning level
    run = sqlite_client(folder).get_run(result.stdout.split("logged as run ")[1].split()[0])
    scores = pd.read_parquet(out / "drift.parquet")["anomaly_score"].to_numpy()
    edges = np.asarray(
        VAEDetector.load(folder / "run" / "model").calibration_["details"]["score_deciles"]
    )
    counts = np.bincount(np.searchsorted(edges, scores, side="right"), minlength=len(edges) + 1)
    assert run.data.metrics["score_psi"] == pytest.approx(population_stability_index(counts))
    assert run.data.metrics["rows"] == 140


@pytest.fixture
def corrupt_folder(tmp_path):
    """Two real digits and one PNG that is not one."""
    batch = tmp_path / "batch"
    batch.mkdir()
    for p in sorted((MNIST / "test" / "seven").glob("*.png"))[:2]:
        shutil.copy(p, batch / p.name)
    (batch / "broken.png").write_bytes(PNG + b"not really")
    return batch


def test_a_corrupt_png_fails_scoring_naming_it_and_writes_nothing(store, corrupt_folder, tmp_path):
    folder, config, _ = store
    out = tmp_path / "scores"
    result = cli(
        "score", "--model", folder / "run" / "model", "--data", corrupt_folder, "--out", out,
        "--config", config,
    )  # fmt: skip
    assert result.exit_code == 2
    assert "broken.png: cannot be read" in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--label-column", "label"], "--label-column: table options, not for images"),
        (["train", "--id-column", "path"], "--id-column: table options, not for images"),
        (["score", "--id-column", "path"], "--id-column: table options, not for images"),
        (["score", "--out", "scores.parquet"], "for an image model, a folder"),
    ],
)
def test_table_options_and_a_file_out_are_refused_for_images(store, args, message, tmp_path):
    folder, config, _ = store
    defaults = {"train": ["--data", MNIST, "--out", tmp_path / "run"]}
    defaults["score"] = ["--model", folder / "run" / "model", "--data", MNIST / "test"]
    if "--out" not in args:
        defaults["score"] += ["--out", tmp_path / "scores"]
    result = cli(args[0], *defaults[args[0]], *args[1:], "--config", config)
    assert result.exit_code == 2, result.stdout
    assert message in result.stderr
    assert not (tmp_path / "run").exists() and not (tmp_path / "scores").exists()


# ---- npz with class ids: labels for calibration and evaluation --------------------------------
@pytest.fixture
def digits_npz(tmp_path):
    """200 MNIST digits (150 zeros) as ``digits`` with their class ids as ``digit``."""
    files = sorted((MNIST / "train" / "good").glob("*.png"))[:150]
    files += sorted(p for p in (MNIST / "test").rglob("*.png") if p.parent.name != "good")[:50]
    path = tmp_path / "digits.npz"
    np.savez(
        path,
        digits=np.stack([np.asarray(Image.open(p)) for p in files]),
        digit=np.array([DIGITS[p.parent.name] for p in files]),
    )
    return path


NPZ_KEYS = {"npz_image_key": "digits", "npz_class_key": "digit", "npz_normal_classes": [0]}


def test_npz_class_ids_and_normal_classes_give_labels(digits_npz):
    from vae_core.foundations.config import ImagesConfig
    from vae_core.kinds.image_sets import load_images

    data = load_images(digits_npz, ImagesConfig(**NPZ_KEYS))
    classes = np.array(data.images.classes)
    assert len(data.images) == 200 and data.labels.sum() == 50
    np.testing.assert_array_equal(data.labels, (classes != "0").astype("int64"))
    unlabelled = load_images(digits_npz, ImagesConfig(npz_image_key="digits"))
    assert unlabelled.labels is None


def test_normal_classes_need_the_class_array(tmp_path):
    config = _config(tmp_path, {"images": {"npz_normal_classes": [0]}})
    result = cli("train", "--data", tmp_path / "x.npz", "--out", tmp_path / "run", "-c", config)
    assert result.exit_code == 2
    assert "npz_normal_classes needs npz_class_key" in result.stderr


def test_train_without_registering_on_a_labelled_npz(digits_npz, tmp_path):
    config = _config(tmp_path, {"images": NPZ_KEYS, "split": {"train_on_normal_only": True}})
    out = tmp_path / "run"
    result = cli("train", "--data", digits_npz, "--out", out, "--no-register", "-c", config)
    assert result.exit_code == 0, result.stderr
    assert "Test split: 40 rows, 10 anomalies" in result.stdout
    assert (out / "model" / "weights.pt").exists() and (out / "review" / "maps").is_dir()
    assert "registered" not in result.stdout
    assert not (tmp_path / "mlflow.db").exists()  # the config's store: nothing tracked


def test_a_model_trained_on_an_npz_registers_with_arrays_as_its_input_example(digits_npz, tmp_path):
    """An .npz has no image files to show: the packaged model's input example is the test
    images' pixels (column ``image``), and the registered model scores them."""
    import mlflow

    config = _config(tmp_path, {"images": NPZ_KEYS})
    result = cli("train", "--data", digits_npz, "--out", tmp_path / "run", "-c", config)
    assert result.exit_code == 0, result.stderr
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    model = mlflow.pyfunc.load_model("models:/digits@challenger")
    example = model.input_example
    assert list(example.columns) == ["image"] and len(example) == 5
    scores = model.predict(example)
    assert len(scores) == 5 and scores["anomaly_score"].notna().all()


def test_mlflow_yml_documents_the_images_keys_at_their_defaults():
    from vae_core.foundations.config import ImagesConfig, load_config

    documented = load_config(ROOT / "mlflow.yml").images
    assert documented == ImagesConfig() and documented.npz_normal_classes is None
