"""One parser for the packaged model's image input, used by its scores and its latent output:
the same errors, the same files read ``chunk_images`` at a time (the config's value by
default), the same results whatever the chunk."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests.helpers import MNIST
from vae_core import VAEDetector
from vae_core.data import image_input
from vae_core.foundations.config import ImagesConfig
from vae_core.kinds.image_scores import latent_image_input, score_image_input


@pytest.fixture(scope="module")
def files():
    return sorted(str(p) for p in (MNIST / "train" / "good").glob("*.png"))[:10]


@pytest.fixture(scope="module")
def conv(files):
    digits = np.stack([np.asarray(Image.open(p)) for p in files])
    det = VAEDetector(architecture="conv", hidden_dims=(4,), latent_dim=2, epochs=1)
    return det.fit(digits), digits


@pytest.fixture
def reads(monkeypatch):
    """The number of files each read of the packaged input decodes."""
    sizes = []
    real = image_input.read_images

    def counting(manifest, *args):
        sizes.append(len(manifest))
        return real(manifest, *args)

    monkeypatch.setattr(image_input, "read_images", counting)
    return sizes


def test_parse_gives_a_manifest_or_images(conv, files):
    _det, digits = conv
    manifest = image_input.parse_image_input(pd.DataFrame({"path": files, "other": 1}))
    assert list(manifest.columns) == ["path"] and manifest["path"].tolist() == files
    from_column = image_input.parse_image_input(pd.DataFrame({"image": list(digits)}))
    np.testing.assert_array_equal(from_column, digits)
    np.testing.assert_array_equal(image_input.parse_image_input(digits), digits)


@pytest.mark.parametrize("output", [score_image_input, latent_image_input])
def test_both_outputs_refuse_the_same_input_with_the_same_message(conv, output):
    det, _digits = conv
    with pytest.raises(ValueError, match=r"expected a column 'path' \(image files\) or 'image'"):
        output(det, pd.DataFrame({"pixels": [1]}))
    with pytest.raises(ValueError, match="do not share one shape"):
        output(det, pd.DataFrame({"image": [np.zeros((28, 28)), np.zeros((27, 28))]}))


@pytest.mark.parametrize("output", [score_image_input, latent_image_input])
def test_paths_are_read_chunk_images_at_a_time_with_the_same_result(conv, files, reads, output):
    det, digits = conv
    paths = pd.DataFrame({"path": files})
    whole = output(det, paths)
    assert reads == [len(files)] and ImagesConfig().chunk_images >= len(files)  # the default
    reads.clear()
    chunked = output(det, paths, on_size_mismatch="reject", chunk_images=4)
    assert reads == [4, 4, 2]
    pd.testing.assert_frame_equal(chunked, whole)
    assert chunked["path"].tolist() == files
    from_arrays = output(det, digits).reset_index(drop=True)
    pd.testing.assert_frame_equal(whole.drop(columns="path"), from_arrays)
