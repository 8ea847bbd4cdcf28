"""Image training with bounded memory (issue 7): images that stay in their files.

A set whose decoded pixels exceed ``images.in_memory_mb`` is listed and checked once
(``index_images``), kept as ``ImageFiles`` and read a minibatch at a time by
``VAEDetector.fit``. The contract tested here: the streamed model is the in-memory model, bit
for bit (same weights, scores, floors and fingerprints), no read ever takes more than a
minibatch or a block, and a file that breaks later is named."""

from typing import ClassVar

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers import MNIST
from vae_core import VAEDetector
from vae_core.data import image_stream
from vae_core.data import images as vi
from vae_core.data.input_stats import fingerprint, grid_variance
from vae_core.foundations.calibrate import TargetFPR
from vae_core.foundations.config import ImagesConfig, SplitConfig
from vae_core.kinds import image_sets
from vae_core.steps.pipeline import split_data

SIZE = (28, 28)
SETTINGS = dict(
    architecture="conv", hidden_dims=(8, 16), latent_dim=4, epochs=3, batch_size=16,
    n_score_samples=2, lr=0.003,
)  # fmt: skip


class CountingFiles(vi.ImageFiles):
    """ImageFiles that records how many images each read decodes."""

    reads: ClassVar[list[int]] = []

    def _read(self, positions):
        CountingFiles.reads.append(len(positions))
        return super()._read(positions)

    def take(self, rows):
        sub = super().take(rows)
        return CountingFiles(sub.paths, sub.size, sub.mode, sub.on_size_mismatch)


@pytest.fixture(scope="module")
def zeros():
    """The 200 training zeros of the embedded sample: in memory and as files."""
    in_memory = vi.read_image_folder(MNIST, SIZE, split="train")
    files = CountingFiles(in_memory.paths, SIZE)
    return in_memory.images, files


def test_image_files_index_like_the_array_they_stand_for(zeros):
    array, files = zeros
    assert files.shape == array.shape and files.dtype == np.uint8 and files.ndim == 3
    assert len(files) == 200 and files.nbytes == array.nbytes
    np.testing.assert_array_equal(files[7], array[7])
    np.testing.assert_array_equal(files[-1], array[-1])
    np.testing.assert_array_equal(files[10:14], array[10:14])
    rows = np.array([5, 3, 190, 5])
    np.testing.assert_array_equal(files[rows], array[rows])
    np.testing.assert_array_equal(files[torch.tensor(rows)], array[rows])
    mask = np.arange(200) % 50 == 0
    np.testing.assert_array_equal(files[mask], array[mask])
    np.testing.assert_array_equal(files.take(rows)[1:3], array[rows][1:3])
    np.testing.assert_array_equal(np.asarray(files.take([0, 1])), array[:2])
    joined = files.take([0]).concat(files.take([199]))
    np.testing.assert_array_equal(np.asarray(joined), array[[0, 199]])


def test_a_streamed_fit_is_the_in_memory_fit_and_reads_a_batch_at_a_time(zeros, monkeypatch):
    array, files = zeros
    in_memory = VAEDetector(**SETTINGS).fit(array)
    monkeypatch.setattr(image_stream, "IMAGE_BLOCK", 64)
    CountingFiles.reads.clear()
    streamed = VAEDetector(**SETTINGS).fit(files)
    # Nothing decoded the 200 images at once: minibatches (16), validation slices (4 x 16),
    # blocks (64) for the floors, fingerprint and the fit's threshold.
    assert CountingFiles.reads and max(CountingFiles.reads) <= 64
    for name, value in in_memory.model_.state_dict().items():
        torch.testing.assert_close(streamed.model_.state_dict()[name], value, rtol=0, atol=0)
    assert streamed.training_fingerprint_ == in_memory.training_fingerprint_
    whole = in_memory.preprocessor_.transform(array)
    assert in_memory.training_fingerprint_ == fingerprint(whole)  # the whole-array rule
    assert streamed.history_[-1]["val_loss"] == in_memory.history_[-1]["val_loss"]
    assert streamed.threshold_ == in_memory.threshold_
    np.testing.assert_array_equal(
        streamed.anomaly_score(files[:40]), in_memory.anomaly_score(array[:40])
    )
    np.testing.assert_array_equal(
        streamed.anomaly_score(files.take(range(40))), in_memory.anomaly_score(array[:40])
    )

    # Calibration on files: same threshold and fingerprint as on the array.
    policy = TargetFPR(fpr=0.1, tail_method="quantile")
    streamed.calibrate(files.take(range(100, 200)), policy=policy)
    in_memory.calibrate(array[100:200], policy=policy)
    assert streamed.threshold_ == in_memory.threshold_
    assert (
        streamed.calibration_["details"]["calibration_fingerprint"]
        == in_memory.calibration_["details"]["calibration_fingerprint"]
    )


def test_the_block_by_block_floor_equals_the_whole_array_rule(zeros):
    array, files = zeros
    det = VAEDetector(**SETTINGS | {"epochs": 1}).fit(array[:20])
    whole = grid_variance(det.preprocessor_.transform(array))
    np.testing.assert_array_equal(
        image_stream.scan_images(det.preprocessor_, files, floors=True)[0], whole
    )
    assert (whole == 0).any() and (whole > 0).any()  # constant corners and varying pixels


def test_the_floor_rule_holds_for_colour_images_in_small_blocks(monkeypatch):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (30, 3, 8, 8), dtype=np.uint8)
    rgb[:, 1] //= 4  # a channel on a coarser grid: larger gaps, larger floors
    rgb[:, 2, :2] = 7  # constant pixels: no gap, no floor
    det = VAEDetector(**SETTINGS | {"epochs": 1}).fit(rgb)
    monkeypatch.setattr(image_stream, "BLOCK_VALUES", 3 * 8 * 8 * 4)  # blocks of 4 images
    whole = grid_variance(det.preprocessor_.transform(rgb))
    np.testing.assert_array_equal(
        image_stream.scan_images(det.preprocessor_, rgb, floors=True)[0], whole
    )
    assert image_stream.image_block_size(det.preprocessor_) == 4 and (whole == 0).sum() == 16


def test_load_images_streams_above_the_memory_limit_with_the_same_data():
    cfg = ImagesConfig()
    held = image_sets.load_images(MNIST, cfg)
    streamed = image_sets.load_images(MNIST, cfg.model_copy(update={"in_memory_mb": 0}))
    assert not held.streamed and streamed.streamed
    assert streamed.n_fit_only == held.n_fit_only == 200
    assert streamed.images.paths == held.images.paths
    np.testing.assert_array_equal(streamed.labels, held.labels)
    assert image_sets.image_fingerprint(streamed.images) == image_sets.image_fingerprint(
        held.images
    )
    splits = split_data(streamed, SplitConfig())
    test = streamed.features_at(splits.test)
    assert isinstance(test, vi.ImageFiles) and len(test) == 70
    np.testing.assert_array_equal(np.asarray(test), held.features_at(splits.test))


def test_unreadable_files_are_named_or_skipped_when_listed_and_named_if_they_break_later(
    tmp_path,
):
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    (tmp_path / "3.png").write_bytes(b"not a png")
    manifest = vi.image_manifest(tmp_path)
    with pytest.raises(ValueError, match=r"3\.png: cannot be read"):
        vi.index_images(manifest, (8, 8), chunk_images=2)
    listed = vi.index_images(manifest, (8, 8), on_error="skip", chunk_images=2)
    assert len(listed) == 4 and [p for p, _ in listed.skipped] == [str(tmp_path / "3.png")]
    eager = vi.read_images(manifest, (8, 8), on_error="skip")
    assert listed.paths == eager.paths
    np.testing.assert_array_equal(np.asarray(listed.images), eager.images)

    (tmp_path / "4.png").write_bytes(b"truncated")  # breaks after it was listed
    with pytest.raises(ValueError, match=r"4\.png: .*readable when the images were listed"):
        listed.images[3]
