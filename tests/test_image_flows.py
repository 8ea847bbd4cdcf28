"""Images through the same flows, registry and packaged model as tables (issue 7).

One image train flow per module (a tiny conv VAE on data/mnist, under prefect_test_harness,
against a real sqlite MLflow store) registers and promotes a model; the scoring tests use it.
"""

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from PIL import Image

from tests.helpers import (
    MNIST,
    PNG,
    ROOT,
    config_store,
    images_config,
    is_png,
    sqlite_client,
)
from vae_core import VAEDetector
from vae_core.data.images import ImageSet
from vae_core.foundations.config import ImagesConfig, SplitConfig, load_config
from vae_core.kinds import image_scores, image_sets
from vae_core.steps.pipeline import held_out, split_data

# This module's tiny image model: four epochs, three anomaly maps, scores in ./scores.
SETTINGS = {
    "data": {"score_path": str(MNIST / "test")},
    "images": {"top_maps": 3},
    "training": {"epochs": 4},
    "scoring": {"output_dir": "scores"},
}
pytestmark = pytest.mark.usefixtures("own_store")


def _images(folder, overrides=None):
    """A tiny image config in ``folder`` (its own sqlite store unless overridden)."""
    return images_config(folder, SETTINGS, overrides or {})


@pytest.fixture(scope="module")
def store(tmp_path_factory, harness):
    """The image train flow's result in a fresh folder: (folder, config, result)."""
    from flows.train import train

    folder = tmp_path_factory.mktemp("image-flows")
    config = _images(folder)
    with config_store():
        result = train(config_path=str(config), out_dir=str(folder / "run"))
    return folder, config, result


def _artifacts(client: MlflowClient, run_id: str, path: str = "") -> list[str]:
    return [a.path for a in client.list_artifacts(run_id, path)]


def test_image_train_flow_registers_and_promotes_with_grids_and_maps(store):
    folder, _, result = store
    assert result["version"] == "1" and result["promoted"] is True
    client = sqlite_client(folder)
    champion = client.get_model_version_by_alias("digits", "champion")
    assert str(champion.version) == "1" and champion.tags["promotion"] == "promoted"
    assert "(70 rows)" in champion.description  # the held-out rows promotion scored
    run_id = result["run_id"]
    review = _artifacts(client, run_id, "review")
    assert review == [
        "review/interpolations.png",
        "review/latent.json",
        "review/latent_map.png",
        "review/prior_samples.png",
        "review/reconstructions.png",
        "review/review.json",
    ]
    maps = _artifacts(client, run_id, "anomaly_maps")
    assert len(maps) == 3 and all(p.endswith(".png") for p in maps)
    assert "evaluation/image_scores.csv" in _artifacts(client, run_id, "evaluation")
    manifest = pd.read_csv(client.download_artifacts(run_id, "data/images.csv"))
    assert manifest["split"].value_counts().to_dict() == {
        "train": 200,
        "calibration": 70,
        "test": 70,
    }
    tags = client.get_run(run_id).data.tags
    assert tags["data.kind"] == "images" and tags["data.image_shape"] == "28x28"
    assert "340 images of 28x28 pixels" in champion.description
    assert (folder / "run" / "review" / "maps").is_dir()


def test_image_score_flow_writes_one_row_per_image_with_maps(store):
    from flows.score import score

    folder, config, _ = store
    result = score(config_path=str(config), batch_id="nightly")
    out = pd.read_parquet(result["output"])
    files = sorted(str(p) for p in (MNIST / "test").rglob("*.png"))
    assert len(out) == 140 and sorted(out["path"]) == files
    assert list(out.columns) == [
        "path", "class", "label", "anomaly_score", "is_anomaly", "anomaly_probability", "map_path"
    ]  # fmt: skip
    assert out["anomaly_probability"].between(0, 1).all()
    maps = out.loc[out["map_path"] != ""].sort_values("anomaly_score", ascending=False)
    assert len(maps) == 3
    top3 = out.nlargest(3, "anomaly_score")
    assert set(top3["map_path"]) == set(maps["map_path"])
    assert all(is_png(p) for p in maps["map_path"])
    client = sqlite_client(folder)
    run = client.get_run(result["mlflow_run_id"])
    assert run.data.tags["model.version"] == "1" and run.data.metrics["rows"] == 140
    assert len(_artifacts(client, run.info.run_id, "anomaly_maps")) == 3
    assert result["skipped"] is None
    # the one batch engine: the drift against the calibration deciles, as for a table
    assert result["psi"] is not None and result["psi"] >= 0
    assert run.data.metrics["score_psi"] == pytest.approx(result["psi"])


def test_pyfunc_scores_image_paths_and_arrays_in_a_fresh_process(store):
    folder, _, _ = store
    paths = sorted(str(p) for p in (MNIST / "test" / "good").glob("*.png"))[:2]
    paths.append(str(MNIST / "test" / "seven" / "test_00000.png"))
    code = f"""
import json, numpy as np, pandas as pd, mlflow
from PIL import Image
model = mlflow.pyfunc.load_model("models:/digits@champion")
paths = {paths!r}
by_path = model.predict(pd.DataFrame({{"path": paths}}))
arrays = [np.asarray(Image.open(p)) for p in paths]
by_array = model.predict(pd.DataFrame({{"image": arrays}}))
latent = model.predict(pd.DataFrame({{"path": paths}}), params={{"output": "latent"}})
print(json.dumps({{"columns": list(by_path.columns), "paths": by_path["path"].tolist(),
    "latent_columns": list(latent.columns), "latent": latent.drop(columns="path").values.tolist(),
    "scores": by_path["anomaly_score"].tolist(), "array_scores": by_array["anomaly_score"].tolist(),
    "loaded": sorted(m for m in ("prefect",) if m in __import__("sys").modules)}}))
"""
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{folder / 'mlflow.db'}")
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=folder, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["columns"] == ["path", "anomaly_score", "is_anomaly", "anomaly_probability"]
    assert got["paths"] == paths and got["loaded"] == []
    np.testing.assert_array_equal(got["scores"], got["array_scores"])
    # The registered model is the one the train flow saved: the same scores, bit for bit.
    saved = VAEDetector.load(folder / "run" / "model")
    pixels = np.stack([np.asarray(Image.open(p)) for p in paths])
    np.testing.assert_array_equal(got["scores"], saved.threshold_score(pixels))
    assert got["latent_columns"] == ["path", "z0", "z1", "z2", "z3"]  # latent_dim 4
    np.testing.assert_allclose(got["latent"], saved.transform(pixels), rtol=1e-12)


@pytest.fixture
def corrupt_folder(tmp_path):
    """Six real digits in class folders and one PNG that is not one."""
    for cls in ("good", "seven"):
        for p in sorted((MNIST / "test" / cls).glob("*.png"))[:3]:
            (tmp_path / "batch" / cls).mkdir(parents=True, exist_ok=True)
            shutil.copy(p, tmp_path / "batch" / cls / p.name)
    (tmp_path / "batch" / "seven" / "broken.png").write_bytes(PNG + b"not really")
    return tmp_path / "batch"


def test_a_corrupt_png_fails_the_score_flow_naming_it_or_is_skipped_and_listed(
    store, corrupt_folder
):
    from flows.score import score

    folder, config, _ = store
    with pytest.raises(ValueError, match=r"broken\.png: cannot be read"):
        score(data_path=str(corrupt_folder), batch_id="bad", config_path=str(config))
    assert not list((folder / "scores").glob("bad*"))
    (folder / "skip").mkdir()
    overrides = {"images": {"on_error": "skip", "top_maps": 2}}
    overrides["tracking"] = {"uri": f"sqlite:///{folder / 'mlflow.db'}"}
    overrides["scoring"] = {"output_dir": str(folder / "scores")}
    result = score(
        data_path=str(corrupt_folder),
        batch_id="bad",
        config_path=str(_images(folder / "skip", overrides)),
    )
    assert result["rows"] == 6
    listed = pd.read_csv(result["skipped"])
    assert listed["path"].tolist() == [str(corrupt_folder / "seven" / "broken.png")]
    client = sqlite_client(folder)
    run_id = result["mlflow_run_id"]
    logged = client.download_artifacts(run_id, "skipped/bad.skipped.csv")
    assert "broken.png" in open(logged).read()
    assert len(_artifacts(client, run_id, "anomaly_maps")) == 2


def test_the_hostile_image_corpus_through_the_score_flow_and_the_packaged_model(store, tmp_path):
    """tests/image_corpus.py: each case fails the score flow and the registered pyfunc with a
    ValueError naming the file (no output written); under on_error: skip the flow scores the
    good images and lists every case with its reason."""
    import mlflow

    from flows.score import score
    from tests import image_corpus as corpus

    folder, config, _ = store
    mlflow.set_tracking_uri(f"sqlite:///{folder / 'mlflow.db'}")
    packaged = mlflow.pyfunc.load_model("models:/digits@champion")
    cases = [
        n for n in corpus.CASES if n != "unreadable file" or not corpus.root_reads_everything()
    ]
    for i, name in enumerate(cases):
        batch = tmp_path / f"case{i}"
        good = corpus.good_folder(batch / "good")
        path, words = corpus.write_case(name, batch / "good")
        named = re.escape(f"{path}: ") + ".*" + re.escape(words)
        with pytest.raises(ValueError, match=named):
            score(data_path=str(batch), batch_id=f"case{i}", config_path=str(config))
        assert not list((folder / "scores").glob(f"case{i}*")), name
        with pytest.raises(ValueError, match=named):
            packaged.predict(pd.DataFrame({"path": [str(p) for p in [*good, path]]}))
    batch = tmp_path / "all"
    good = corpus.good_folder(batch / "good", n=4)
    written = corpus.write_all(batch / "good")
    (folder / "skip-all").mkdir()
    overrides = {"images": {"on_error": "skip", "top_maps": 1}}
    overrides["tracking"] = {"uri": f"sqlite:///{folder / 'mlflow.db'}"}
    overrides["scoring"] = {"output_dir": str(folder / "scores")}
    skipping = _images(folder / "skip-all", overrides)
    result = score(data_path=str(batch), batch_id="all", config_path=str(skipping))
    assert result["rows"] == len(good)
    listed = pd.read_csv(result["skipped"])
    reasons = dict(zip(listed["path"], listed["reason"], strict=True))
    assert len(reasons) == len(written)
    for name, (path, words) in written.items():
        assert words in reasons[str(path)], name


# ---- the nodes, without the orchestrator ---------------------------------------------------
def test_mvtec_layout_trains_on_train_and_splits_test_into_calibration_and_test():
    data = image_sets.load_images(MNIST, ImagesConfig())
    splits = split_data(data, SplitConfig())
    assert data.n_fit_only == 200 and splits.train.tolist() == list(range(200))
    assert len(splits.calibration) == len(splits.test) == 70
    assert not set(splits.calibration) & set(splits.test)
    assert data.labels_at(splits.test).sum() == data.labels_at(splits.calibration).sum() == 45
    images, labels = held_out(data, SplitConfig())
    np.testing.assert_array_equal(images, data.images.images[splits.test])
    np.testing.assert_array_equal(labels, data.labels[splits.test])


def test_class_subfolders_are_split_like_table_rows():
    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(40, "int64"), np.ones(10, "int64")]
    images = ImageSet(
        rng.integers(0, 256, (50, 4, 4), dtype=np.uint8), [""] * 50, [""] * 50, labels
    )
    cfg = SplitConfig(train_on_normal_only=True)
    splits = split_data(image_sets.ImageData(images), cfg)
    assert labels[splits.train].sum() == 0 and labels[splits.test].sum() == 2


def test_the_shipped_mnist_config_is_valid_and_its_own_model():
    cfg = load_config(ROOT / "configs" / "mnist.yml")
    assert cfg.data.kind == "images" and cfg.model.architecture == "conv"
    assert (
        cfg.tracking.registered_model != load_config(ROOT / "mlflow.yml").tracking.registered_model
    )
    assert cfg.path(cfg.data.train_path) == MNIST


def test_npz_arrays_train_unlabelled_and_score_with_maps(store, tmp_path):
    from flows.score import score

    _, config, _ = store
    digits = np.stack([np.asarray(Image.open(p)) for p in sorted(MNIST.rglob("*.png"))[:30]])
    np.savez(tmp_path / "batch.npz", images=digits)
    data = image_sets.load_images(tmp_path / "batch.npz", ImagesConfig())
    assert len(data.images) == 30 and data.labels is None
    with pytest.raises(ValueError, match=r"batch\.npz: images of shape \(28, 28\)"):
        image_sets.load_images(tmp_path / "batch.npz", ImagesConfig(size=(32, 32)))
    result = score(data_path=str(tmp_path / "batch.npz"), config_path=str(config))
    out = pd.read_parquet(result["output"])
    assert out["path"].tolist() == [f"{tmp_path / 'batch.npz'}::images[{i}]" for i in range(30)]
    assert all(is_png(p) for p in out["map_path"] if p) and (out["map_path"] != "").sum() == 3


def test_packaged_model_input_errors_name_the_file_or_the_columns(store):
    from vae_core import VAEDetector

    det = VAEDetector.load(store[0] / "run" / "model")
    with pytest.raises(ValueError, match=r"nowhere\.png: no such file"):
        image_scores.score_image_input(det, pd.DataFrame({"path": ["nowhere.png"]}))
    with pytest.raises(ValueError, match=r"expected a column 'path' .* got \['pixels'\]"):
        image_scores.score_image_input(det, pd.DataFrame({"pixels": [1]}))
    with pytest.raises(ValueError, match="images must have shape"):
        image_scores.score_image_input(det, np.zeros((2, 8, 8), np.uint8))


def test_the_mnist_config_has_its_own_deployment_names():
    from vae_core.foundations.config import load_config

    tabular, images = load_config(ROOT / "mlflow.yml"), load_config(ROOT / "configs" / "mnist.yml")
    assert images.schedules.score_deployment != tabular.schedules.score_deployment
    assert images.schedules.train_deployment != tabular.schedules.train_deployment


def test_a_set_above_the_memory_limit_trains_from_its_files_to_the_same_model(store, tmp_path):
    """images.in_memory_mb: 0 streams every image from its file, batch by batch; the flow
    registers the very model the in-memory run did (same threshold and test metrics)."""
    from flows.train import train

    folder, _, held = store
    config = _images(tmp_path, {"images": {"in_memory_mb": 0}})
    result = train(config_path=str(config), out_dir=str(tmp_path / "run"))
    assert result["version"] == "1" and result["promoted"] is True
    streamed, in_memory = sqlite_client(tmp_path), sqlite_client(folder)
    got = streamed.get_run(result["run_id"]).data
    want = in_memory.get_run(held["run_id"]).data
    timing = {"epoch_seconds", "fit_seconds", "seconds"}
    same = lambda metrics: {k: v for k, v in metrics.items() if k not in timing}  # noqa: E731
    assert len(same(got.metrics)) > 10 and same(got.metrics) == same(want.metrics)
    assert got.tags["data.rows"] == want.tags["data.rows"] == "340"
    for name in ("data.fingerprint", "model.threshold"):
        if name in want.tags:
            assert got.tags[name] == want.tags[name]
