"""Images end to end (issue 7): folder and npz ingestion, the conv VAE on the embedded MNIST
sample, per-pixel anomaly maps, reconstructions and PNG grids.

The detector is fitted once per module on ``data/mnist/train/good`` (200 real digit-0 images)
and scored on ``data/mnist/test`` (50 zeros, 90 other digits): one-class MNIST."""

import copy
import io
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.metrics import roc_auc_score

from tests.helpers import MNIST, ROOT, SHARED
from vae_core import VAEDetector
from vae_core.data import images as vi
from vae_core.data.image_npz import read_image_npz
from vae_core.evaluation import drawing, image_maps
from vae_core.foundations.calibrate import TargetFPR
from vae_core.foundations.config import load_config

SIZE = (28, 28)
# The test split holds 140 images (50 zeros), so the ROC-AUC moves with the weights. Measured
# with the settings of configs/mnist.yml (300 epochs), seeds 0-4 on 1 torch thread, AMD
# machine: 0.992, 0.990, 0.989, 0.992, 0.990 (at the earlier 100-epoch cap, Intel: 0.975-0.984).
# The floor sits 0.049 under the lowest, so a machine whose last bits differ still passes (an
# earlier model measured 0.924 on one machine and 0.956 on another for the same seed).
AUC_FLOOR = 0.94
# Reconstruction retrieval of the 50 normal test zeros (chance 0.02), same runs: 0.98, 0.98,
# 0.96, 0.98, 0.94 (100 epochs: 0.78-0.86); the floor sits 0.19 under the lowest. A model
# whose reconstructions ignore their input is at about chance.
RETRIEVAL_FLOOR = 0.75
SQUARE = (slice(11, 17), slice(11, 17))  # 6x6, over the hole in the middle of a zero


def _png(path, array) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _read_png(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


def _digits(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 8, 8), dtype=np.uint8)


@pytest.fixture
def mvtec(tmp_path):
    """root/train/good, root/test/good, root/test/hole, root/test/scratch with 8x8 PNGs."""
    arrays = {"train/good": _digits(4, 1), "test/good": _digits(2, 2)}
    arrays |= {"test/hole": _digits(1, 3), "test/scratch": _digits(2, 4)}
    for folder, images in arrays.items():
        for i, image in enumerate(images):
            _png(tmp_path / folder / f"img{i}.png", image)
    return tmp_path, arrays


@pytest.fixture(scope="module")
def mnist():
    return (
        vi.read_image_folder(MNIST, SIZE, split="train"),
        vi.read_image_folder(MNIST, SIZE, split="test"),
    )


@pytest.fixture(scope="module")
def digit0(mnist):
    """The convolutional Gaussian VAE on digit-0 training images, with the model and training
    settings the image demo ships with (configs/mnist.yml), seed 0: the quality tests
    (``slow``: about 4 minutes on 2 cores)."""
    params = load_config(ROOT / "configs" / "mnist.yml").detector_params()
    return VAEDetector(**params).fit(mnist[0].images)


@pytest.fixture(scope="module")
def digit0_tiny(mnist):
    """The shipped architecture on digit-0 training images for 3 epochs: for the tests of
    the maps' arithmetic and files, which hold for any fitted model (seconds to fit)."""
    params = load_config(ROOT / "configs" / "mnist.yml").detector_params() | {"epochs": 3}
    return VAEDetector(**params).fit(mnist[0].images)


# ---- ingestion --------------------------------------------------------------------------------
def test_mvtec_layout_gives_images_labels_classes_and_paths(mvtec):
    root, arrays = mvtec
    train = vi.read_image_folder(root, (8, 8), split="train")
    test = vi.read_image_folder(root, (8, 8), split="test")
    np.testing.assert_array_equal(train.images, arrays["train/good"])  # PNG is lossless
    assert train.images.dtype == np.uint8 and train.labels.tolist() == [0] * 4
    assert test.classes == ["good", "good", "hole", "scratch", "scratch"]
    assert test.labels.tolist() == [0, 0, 1, 1, 1]
    assert test.paths[2] == str(root / "test" / "hole" / "img0.png")
    assert test.skipped == [] and list(test.manifest().columns) == ["path", "class", "label"]


def test_class_subfolders_and_flat_folders(mvtec):
    root, _ = mvtec
    by_class = vi.read_image_folder(root / "test", (8, 8))  # has "good": labelled
    assert by_class.labels.tolist() == [0, 0, 1, 1, 1]
    (root / "test" / "good").rename(root / "test" / "ok")  # no "good": classes only
    unlabelled = vi.read_image_folder(root / "test", (8, 8))
    assert unlabelled.labels is None and unlabelled.classes[:2] == ["hole", "ok"]
    flat = vi.read_image_folder(root / "train" / "good", (8, 8))
    assert flat.labels is None and flat.classes == [""] * 4 and len(flat) == 4


def test_colour_modes_and_jpeg(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    _png(tmp_path / "rgb" / "a.png", rgb)
    got = vi.read_image_folder(tmp_path / "rgb", (8, 8), mode="RGB")
    assert got.images.shape == (1, 3, 8, 8)
    np.testing.assert_array_equal(got.images[0], rgb.transpose(2, 0, 1))
    assert vi.read_image_folder(tmp_path / "rgb", (8, 8), mode="L").images.shape == (1, 8, 8)
    gray = np.full((8, 8), 200, np.uint8)
    Image.fromarray(gray).save(tmp_path / "rgb" / "b.jpeg", quality=95)
    both = vi.read_image_folder(tmp_path / "rgb", (8, 8), mode="RGB")
    assert np.abs(both.images[1].astype(int) - 200).max() <= 2  # JPEG is lossy
    assert (both.images[1] == both.images[1][0]).all()  # grey replicated to three channels


def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path):
    wide = np.array([[0, 257, 32896, 65535]], dtype=np.uint16).repeat(4, 0)
    _png(tmp_path / "deep" / "a.png", wide)
    got = vi.read_image_folder(tmp_path / "deep", (4, 4)).images[0]
    assert got[0].tolist() == [0, 1, 128, 255]


def test_size_mismatch_is_rejected_naming_the_file_or_resized(tmp_path):
    _png(tmp_path / "a.png", _digits(1)[0])
    _png(tmp_path / "b.png", np.zeros((10, 12), np.uint8))
    with pytest.raises(ValueError, match=r"b\.png: size 10x12, expected 8x8"):
        vi.read_image_folder(tmp_path, (8, 8))
    resized = vi.read_image_folder(tmp_path, (8, 8), on_size_mismatch="resize")
    assert resized.images.shape == (2, 8, 8) and resized.skipped == []
    kept = vi.read_image_folder(tmp_path, (8, 8), on_error="skip")
    assert len(kept) == 1 and kept.skipped == [
        (str(tmp_path / "b.png"), "size 10x12, expected 8x8")
    ]


def test_corrupt_and_non_image_files_raise_or_are_skipped_and_listed(tmp_path, caplog):
    _png(tmp_path / "good.png", _digits(1)[0])
    buf = io.BytesIO()
    Image.fromarray(_digits(1)[0]).save(buf, format="PNG")
    (tmp_path / "truncated.png").write_bytes(buf.getvalue()[:40])
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / ".DS_Store").write_bytes(b"\0")  # hidden: not an image, ignored
    with pytest.raises(ValueError, match=r"notes\.txt: not an image file"):
        vi.read_image_folder(tmp_path, (8, 8))
    (tmp_path / "notes.txt").unlink()
    with pytest.raises(ValueError, match=r"truncated\.png: cannot be read as a PNG or JPEG"):
        vi.read_image_folder(tmp_path, (8, 8))
    (tmp_path / "notes.txt").write_text("not an image")
    with caplog.at_level("WARNING", logger="vae_core.data.images"):
        got = vi.read_image_folder(tmp_path, (8, 8), on_error="skip")
    assert got.paths == [str(tmp_path / "good.png")]
    skipped = got.skipped_frame()
    assert skipped["path"].tolist() == [str(tmp_path / n) for n in ("notes.txt", "truncated.png")]
    assert all(reason for reason in skipped["reason"])
    assert "truncated.png" in caplog.text and "notes.txt" in caplog.text


def test_layout_errors_name_the_folder(tmp_path, mvtec):
    root, _ = mvtec
    with pytest.raises(FileNotFoundError, match="does not exist"):
        vi.read_image_folder(tmp_path / "nowhere", (8, 8))
    with pytest.raises(ValueError, match=r"nest one level only \(pass split="):
        vi.read_image_folder(root, (8, 8))  # an MVTec root read without split
    with pytest.raises(FileNotFoundError, match="MVTec-like layout"):
        vi.read_image_folder(root / "test", (8, 8), split="train")
    with pytest.raises(ValueError, match="split must be one of"):
        vi.read_image_folder(root, (8, 8), split="validation")
    _png(root / "test" / "stray.png", _digits(1)[0])
    with pytest.raises(ValueError, match="both files"):
        vi.read_image_folder(root, (8, 8), split="test")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no image files"):
        vi.read_image_folder(tmp_path / "empty", (8, 8))
    (tmp_path / "empty" / "x.png").write_bytes(b"junk")
    with pytest.raises(ValueError, match="none of its 1 image files could be read"):
        vi.read_image_folder(tmp_path / "empty", (8, 8), on_error="skip")
    with pytest.raises(ValueError, match="on_error must be one of"):
        vi.read_image_folder(root, (8, 8), on_error="ignore")


def test_read_image_npz(tmp_path):
    path = tmp_path / "digits.npz"
    images, classes = _digits(6), np.array([0, 1, 0, 2, 0, 1])
    np.savez(path, X_train=images, y_train=classes)
    got = read_image_npz(path, class_key="y_train", normal_classes=[0])
    np.testing.assert_array_equal(got.images, images)
    assert got.labels.tolist() == [0, 1, 0, 1, 0, 1] and got.classes[3] == "2"
    assert got.paths[1] == f"{path}::images[1]"
    np.savez(path, X=images[..., None].repeat(3, -1).astype(np.int64))  # channels last, int64
    assert read_image_npz(path).images.shape == (6, 3, 8, 8)
    with pytest.raises(ValueError, match=r"digits\.npz: no array 'Z' \(arrays: X\)"):
        read_image_npz(path, key="Z")
    np.savez(path, X=images / 255.0)
    with pytest.raises(ValueError, match=r"digits\.npz\[X\]: expected uint8 pixel values"):
        read_image_npz(path)
    np.savez(path, a=images, b=images)
    with pytest.raises(ValueError, match="pass key="):
        read_image_npz(path)
    path.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=r"digits\.npz: cannot be read as \.npz"):
        read_image_npz(path)


def test_embedded_mnist_sample_is_small_real_and_laid_out_like_mvtec(mnist):
    train, test = mnist
    assert train.images.shape == (200, 28, 28) and set(train.classes) == {"good"}
    assert (test.labels == 0).sum() == 50 and (test.labels == 1).sum() == 90
    assert sum(p.stat().st_size for p in MNIST.rglob("*")) < 2_000_000
    assert "data/mnist" in (ROOT / "data" / "README.md").read_text()
    # Provenance: every file is the source image its name gives, pixel for pixel.
    sources = {
        "train5k": ("image_mnist_train5k", "X_train"),
        "test": ("image_mnist_test", "X_test"),
    }
    for image_set in (train, test):
        prefix = image_set.paths[0].rsplit("/", 1)[1].split("_")[0]
        name, key = sources[prefix]
        if not (SHARED / f"{name}.npz").exists():
            pytest.skip(f"{name}.npz not available")
        source = np.load(SHARED / f"{name}.npz")[key]
        index = [int(p.rsplit("_", 1)[1][:-4]) for p in image_set.paths]
        np.testing.assert_array_equal(image_set.images, source[index])


# ---- the model and its anomaly maps ----------------------------------------------------------
@pytest.mark.slow
def test_one_class_mnist_reaches_the_roc_auc_floor(digit0, mnist):
    test = mnist[1]
    auc = roc_auc_score(test.labels, digit0.anomaly_score(test.images))
    assert auc >= AUC_FLOOR, f"one-class MNIST (digit 0) ROC-AUC {auc:.3f} < {AUC_FLOOR}"


def test_anomaly_maps_add_up_with_the_kl_to_the_anomaly_score(digit0_tiny, mnist):
    images = mnist[1].images[::7]
    maps = image_maps.anomaly_maps(digit0_tiny, images)
    assert maps.shape == (len(images), 28, 28)
    total = maps.sum(axis=(1, 2)) + digit0_tiny.kl_divergence(images)
    np.testing.assert_allclose(total, digit0_tiny.anomaly_score(images), rtol=1e-6, atol=1e-3)
    np.testing.assert_array_equal(image_maps.anomaly_maps(digit0_tiny, images, block_size=3), maps)


@pytest.mark.slow
def test_a_pasted_square_gets_the_mass_of_the_anomaly_map(digit0, mnist):
    # A map in nats per pixel carries a constant part (log sigma and the pixel scale); what a
    # defect adds is the difference to the map of the same image without it.
    good = mnist[1].images[mnist[1].labels == 0]
    defect = good.copy()
    defect[(slice(None), *SQUARE)] = 255
    added = image_maps.anomaly_maps(digit0, defect) - image_maps.anomaly_maps(digit0, good)
    inside = np.zeros(SIZE, bool)
    inside[SQUARE] = True
    share = added[:, inside].sum(1) / np.abs(added).sum(axis=(1, 2))
    # The square covers 36 of 784 pixels (0.046). Measured, seeds 0-4 (300 epochs): it holds a
    # median 0.60-0.68 of what the defect adds to the map, at least 0.22 on every image.
    assert np.median(share) > 0.45 and (share > 0.15).all(), np.round(share, 2)
    assert (digit0.anomaly_score(defect) > digit0.anomaly_score(good)).all()


@pytest.mark.slow
def test_reconstructions_follow_their_input(digit0, mnist):
    normal = mnist[1].images[mnist[1].labels == 0]  # 50 zeros, chance 0.02
    retrieval = image_maps.reconstruction_retrieval(digit0, normal)
    assert retrieval >= RETRIEVAL_FLOOR, f"reconstruction retrieval {retrieval:.2f}"


def test_maps_sum_channels_for_rgb_and_work_for_bernoulli():
    rng = np.random.default_rng(0)
    grey = (load_digits().images[:60] * 16).astype(np.uint8)
    rgb = np.stack([grey, grey // 2, rng.integers(0, 30, grey.shape, dtype=np.uint8)], 1)
    for images, likelihood in ((rgb, "gaussian"), (grey, "bernoulli")):
        det = VAEDetector(
            architecture="conv", hidden_dims=(4,), latent_dim=2, epochs=2, likelihood=likelihood
        ).fit(images)
        maps = image_maps.anomaly_maps(det, images[:5])
        terms = det.reconstruction_terms(images[:5]).reshape(5, -1, 8, 8)
        np.testing.assert_allclose(maps, terms.sum(1))
        total = maps.sum(axis=(1, 2)) + det.kl_divergence(images[:5])
        np.testing.assert_allclose(total, det.anomaly_score(images[:5]), rtol=1e-6, atol=1e-3)
        assert image_maps.reconstructions(det, images[:5]).shape == images[:5].shape


@pytest.mark.slow
def test_reconstructions_are_closer_for_the_trained_digit(digit0, mnist):
    test = mnist[1]
    recon = image_maps.reconstructions(digit0, test.images)
    assert recon.shape == test.images.shape and recon.dtype == np.uint8
    error = ((recon.astype("float64") - test.images) ** 2).mean(axis=(1, 2))
    assert error[test.labels == 0].mean() < error[test.labels == 1].mean()
    assert image_maps.prior_means(digit0, 5, random_state=1).shape == (5, 1, 28, 28)


def test_maps_need_a_detector_fitted_on_images(fitted_mixed):
    with pytest.raises(ValueError, match="fitted on images"):
        image_maps.anomaly_maps(fitted_mixed, np.zeros((2, 28, 28), np.uint8))


def test_saved_model_gives_the_same_maps(digit0_tiny, mnist, tmp_path):
    digit0_tiny.save(tmp_path / "model")
    loaded = VAEDetector.load(tmp_path / "model")
    images = mnist[1].images[:4]
    np.testing.assert_array_equal(
        image_maps.anomaly_maps(loaded, images), image_maps.anomaly_maps(digit0_tiny, images)
    )


# ---- pictures and the per-image report -----------------------------------------------------
def test_image_grid_png_tiles_the_images_pixel_for_pixel(tmp_path, mnist):
    images = mnist[0].images[:10]
    path = drawing.image_grid_png(images, tmp_path / "grid.png", ncols=4, scale=2)
    grid = _read_png(path)
    assert grid.shape == (2 * (3 * 30 + 2), 2 * (4 * 30 + 2))
    np.testing.assert_array_equal(grid[4:60:2, 4:60:2], images[0])
    assert (path.stat().st_mode & 0o777) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]  # no temporary file left
    rgb = np.stack([images[:3]] * 3, 1)
    assert _read_png(drawing.image_grid_png(rgb, tmp_path / "rgb.png")).shape[-1] == 3


def test_score_images_writes_maps_for_the_top_anomalies(digit0_tiny, mnist, tmp_path):
    test = mnist[1]
    frame = drawing.score_images(digit0_tiny, test, tmp_path, top_k=3)
    assert len(frame) == len(test) and frame["path"].tolist() == test.paths
    np.testing.assert_array_equal(frame["is_anomaly"], digit0_tiny.predict(test.images) == -1)
    assert frame["anomaly_probability"].isna().all()  # not calibrated yet
    top = frame.sort_values("rank").head(4)
    assert top["score"].is_monotonic_decreasing and top["rank"].tolist() == [1, 2, 3, 4]
    maps = [p for p in top["map_path"] if p]
    assert len(maps) == 3 and all(_read_png(p).shape[1] > 500 for p in maps)
    written = pd.read_csv(tmp_path / "image_scores.csv", keep_default_na=False)
    assert written["map_path"].tolist() == frame["map_path"].tolist()
    policy = TargetFPR(fpr=0.1, tail_method="quantile")
    calibrated = copy.deepcopy(digit0_tiny).calibrate(test.images[test.labels == 0], policy=policy)
    probs = drawing.score_images(calibrated, test, tmp_path, top_k=0)["anomaly_probability"]
    assert probs.between(0, 1).all()


def test_review_grids_for_the_registry(digit0_tiny, mnist, tmp_path):
    """Each grid is the plain tile grid (28 px digits at 2x), pixel for pixel, under a title
    and beside a label for each row: a reader need not guess which rows are inputs."""
    paths = drawing.write_review_grids(digit0_tiny, mnist[1].images, tmp_path, n=12, ncols=8)
    prior, recon = (_read_png(paths[k]) for k in ("prior_samples", "reconstructions"))
    for picture, rows in ((prior, 2), (recon, 4)):  # recon: originals, reconstructions
        plain = (2 * (rows * 30 + 2), 2 * (8 * 30 + 2))
        top, left = picture.shape[0] - plain[0], picture.shape[1] - plain[1]
        assert top > 10 and left > 30  # room for the title and the row labels
        tiles = picture[top:, left:]
        assert (tiles[:4] == 128).all()  # the grid's grey border, where the plain grid has it
        title, labels = picture[:top, :], picture[top:, :left]
        assert (title < 100).any()  # dark text on white
        for row in range(rows):  # a label beside every row of tiles
            middle = 4 + row * 60 + 28
            assert (labels[middle - 8 : middle + 8] < 100).any(), row
    first = recon[recon.shape[0] - 2 * (4 * 30 + 2) :, recon.shape[1] - 2 * (8 * 30 + 2) :]
    np.testing.assert_array_equal(first[4:60:2, 4:60:2], mnist[1].images[0])


def test_an_anomaly_map_says_what_is_normal(digit0, mnist):
    """The map's legend: the image's mean per pixel against the threshold spread over its
    pixels, so a colour can be read as more or less than a flagged image's."""
    amap = image_maps.anomaly_maps(digit0, mnist[1].images[:1])[0]
    said = drawing.map_legend(amap, threshold=1568.0)
    assert f"this image: {amap.mean():.2f} nats per pixel on average" in said
    assert "\nthe threshold, 1568.0 nats an image, is 2.00 per pixel" in said  # 2 lines
    assert drawing.map_legend(amap, None).endswith("on average")


def test_importing_the_modules_loads_neither_pil_nor_matplotlib():
    code = (
        "import sys, vae_core.data.images, vae_core.evaluation.image_maps, "
        "vae_core.evaluation.drawing;"
        "print([m for m in ('PIL', 'matplotlib') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_reading_sits_below_the_detector_and_drawing_above_it():
    """Reading images and streaming them into the model import neither the detector nor the
    drawing; the detector does not import the drawing (or the maps drawn from it)."""
    import ast
    from pathlib import Path

    root = Path(vi.__file__).parents[1]  # vae_core

    def imports(name: str) -> set[str]:
        """What ``name`` (``layer.module``) imports: each module's layer and module name."""
        tree = ast.parse((root / f"{name.replace('.', '/')}.py").read_text())
        found = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        return {part for m in found if m.startswith("vae_core.") for part in m.split(".")[1:]}

    above = {"detector", "drawing", "image_maps", "kinds", "latent_review", "registry", "cli"}
    for below in ("data.images", "data.image_stream", "data.input_stats"):
        assert not imports(below) & above, below
    assert not imports("estimator.detector") & {"drawing", "image_maps"}
    assert not imports("evaluation.image_maps") & {"drawing"}
