"""The hostile-image corpus (tests/image_corpus.py) through the reader, training and the CLI.

Every case must end in a ValueError naming the file (exit code 2 and no output at the command
line), or, under ``on_error: skip``, be left out and listed with its reason; nothing may hang,
crash or decode a huge declared size. The score flow and the packaged model meet the same
corpus in tests/test_image_flows.py.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from tests import image_corpus as corpus
from tests.helpers import write_pipeline_config
from vae_core.cli import app
from vae_core.data.images import index_images, read_image_folder

CASES = [
    pytest.param(
        name,
        marks=pytest.mark.skipif(
            name == "unreadable file" and corpus.root_reads_everything(),
            reason="chmod 0 does not stop root from reading a file",
        ),
    )
    for name in corpus.case_ids()
]


@pytest.fixture(autouse=True)
def _no_hang():
    """A case that blocks (a pipe opened for reading) fails the test instead of the suite."""

    def _hung(signum, frame):
        raise TimeoutError("reading the corpus hung for 120 s")

    previous = signal.signal(signal.SIGALRM, _hung)
    signal.alarm(120)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def _named(path, words: str) -> str:
    return re.escape(f"{path}: ") + ".*" + re.escape(words)


# ---- the reader ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", CASES)
def test_each_hostile_file_is_refused_naming_it_or_skipped_and_listed(name, tmp_path):
    good = corpus.good_folder(tmp_path / "flat")
    path, words = corpus.write_case(name, tmp_path / "flat")
    with pytest.raises(ValueError, match=_named(path, words)):
        read_image_folder(tmp_path / "flat", corpus.SIZE)
    got = read_image_folder(tmp_path / "flat", corpus.SIZE, on_error="skip")
    assert got.paths == [str(p) for p in good]
    ((listed, reason),) = got.skipped
    assert listed == str(path) and words in reason
    streamed = index_images(got.manifest().iloc[:0], corpus.SIZE)  # nothing to read: fine
    assert len(streamed) == 0
    manifest = pd.DataFrame({"path": [str(p) for p in [*good, path]]})
    with pytest.raises(ValueError, match=_named(path, words)):
        index_images(manifest, corpus.SIZE, chunk_images=2)  # the streaming reader too


def test_the_whole_corpus_in_one_folder_is_skipped_and_listed_case_by_case(tmp_path):
    good = corpus.good_folder(tmp_path / "mixed" / "good")
    written = corpus.write_all(tmp_path / "mixed" / "good")
    got = read_image_folder(tmp_path / "mixed", corpus.SIZE, on_error="skip")
    assert got.paths == [str(p) for p in good]
    reasons = dict(got.skipped)
    assert len(reasons) == len(written)
    for name, (path, words) in written.items():
        assert words in reasons[str(path)], name


def test_a_huge_declared_size_is_refused_before_decoding_in_bounded_memory(tmp_path):
    """12,000 x 12,000 pixels (144 MB decoded, PIL only warns at that size), every row present,
    under ``on_size_mismatch="resize"``; the reader runs with its address space capped at
    80 MB above what it holds after imports, so decoding the file would die of MemoryError."""
    path = tmp_path / "folder" / "wide.png"
    path.parent.mkdir()
    path.write_bytes(corpus.declared_png(12_000, 12_000))
    assert path.stat().st_size < 1_000_000
    script = textwrap.dedent(
        f"""
        import resource
        from vae_core.data.images import read_image_folder
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[0])
        cap = pages * resource.getpagesize() + 80 * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        try:
            read_image_folder({str(path.parent)!r}, (28, 28), on_size_mismatch="resize")
        except ValueError as exc:
            print("refused:", exc)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"refused: {path}: declared size 12000x12000 exceeds" in done.stdout


def test_other_colour_modes_are_converted_and_16_bit_is_scaled(tmp_path):
    colour, as_gray = corpus.rgb_for_a_grayscale_model(tmp_path / "odd")
    deep, eight = corpus.sixteen_bit(tmp_path / "odd")
    got = read_image_folder(tmp_path / "odd", corpus.SIZE)
    by_path = dict(zip(got.paths, got.images, strict=True))
    np.testing.assert_array_equal(by_path[str(colour)], as_gray)
    np.testing.assert_array_equal(by_path[str(deep)], eight)
    rgb = read_image_folder(tmp_path / "odd", corpus.SIZE, mode="RGB")
    gray_as_rgb = rgb.images[rgb.paths.index(str(deep))]
    assert gray_as_rgb.shape == (3, 28, 28)
    for channel in gray_as_rgb:
        np.testing.assert_array_equal(channel, eight)


@pytest.mark.parametrize(
    ("layout", "words"),
    [
        ("empty folder", "holds no image files"),
        ("only hidden files", "holds no image files"),
        ("a folder named like an image", "image folders nest one level only"),
        ("a link from a class folder to the root", "image folders nest one level only"),
        ("only files that are not images", "none of its 2 image files could be read"),
    ],
)
def test_folders_without_usable_images_are_refused_naming_the_folder(layout, words, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    if layout == "only hidden files":
        (root / ".DS_Store").write_bytes(b"\0" * 16)
    elif layout == "a folder named like an image":
        corpus.good_folder(root / "good")
        (root / "good" / "odd.png").mkdir()
    elif layout == "a link from a class folder to the root":
        corpus.good_folder(root / "good")
        (root / "good" / "loop").symlink_to(root, target_is_directory=True)
    elif layout == "only files that are not images":
        (root / "readme.txt").write_text("hello")
        (root / "notes.png").write_text("hello")
    with pytest.raises(ValueError, match=re.escape(words)) as raised:
        read_image_folder(root, corpus.SIZE, on_error="skip")
    assert str(root) in str(raised.value)


# ---- the command line: training and scoring ------------------------------------------------
TINY = {
    "tracking": {"uri": "sqlite:///mlflow.db", "max_retries": 1},
    "data": {"kind": "images", "label_column": None, "id_columns": []},
    "images": {"top_maps": 1, "chunk_images": 4},
    "model": {"architecture": "conv", "hidden_dims": [4, 8], "latent_dim": 2,
              "n_score_samples": 1},
    "training": {"epochs": 1, "batch_size": 32},
    "calibration": {"policy": {"name": "target_fpr", "fpr": 0.1, "tail_method": "quantile"}},
}  # fmt: skip


def _config(folder, **images):
    settings = {k: dict(v) for k, v in TINY.items()}
    settings["images"] |= images
    folder.mkdir(parents=True, exist_ok=True)
    return write_pipeline_config(folder, settings)


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A tiny conv VAE trained (one epoch, not registered) on the embedded MNIST sample."""
    folder = tmp_path_factory.mktemp("corpus-model")
    config = _config(folder)
    trained = cli("train", "--data", corpus.MNIST, "--out", folder / "run", "--config", config,
                  "--no-register")  # fmt: skip
    assert trained.exit_code == 0, trained.stderr
    return folder / "run" / "model"


def _clean_failure(result, path, words):
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert re.search(_named(path, words), result.stderr), result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("name", CASES)
def test_cli_train_and_score_refuse_each_hostile_file_writing_nothing(name, model, tmp_path):
    data = tmp_path / "data"
    corpus.good_folder(data / "good", n=6)
    path, words = corpus.write_case(name, data / "good")
    config = _config(tmp_path / "config")
    trained = cli("train", "--data", data, "--out", tmp_path / "run", "--config", config,
                  "--no-register")  # fmt: skip
    _clean_failure(trained, path, words)
    assert not (tmp_path / "run").exists()
    scored = cli("score", "--model", model, "--data", data, "--out", tmp_path / "scores",
                 "--config", config)  # fmt: skip
    _clean_failure(scored, path, words)
    assert not (tmp_path / "scores").exists()


def test_cli_under_skip_trains_and_scores_around_the_whole_corpus(model, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(corpus.MNIST, data)
    written = corpus.write_all(data / "train" / "good")
    config = _config(tmp_path / "config", on_error="skip")
    trained = cli("train", "--data", data, "--out", tmp_path / "run", "--config", config,
                  "--no-register")  # fmt: skip
    assert trained.exit_code == 0, trained.stderr
    assert f"## Skipped files ({len(written)})" in trained.stdout
    for path, _ in written.values():
        assert f"`{path}`" in trained.stdout
    batch = tmp_path / "batch"
    good = corpus.good_folder(batch, n=5)
    written = corpus.write_all(batch)
    out = tmp_path / "scores"
    scored = cli("score", "--model", model, "--data", batch, "--out", out, "--config", config,
                 "--batch-id", "corpus")  # fmt: skip
    assert scored.exit_code == 0, scored.stderr
    rows = pd.read_parquet(out / "corpus.parquet")
    assert sorted(rows["path"]) == sorted(str(p) for p in good)
    listed = pd.read_csv(out / "corpus.skipped.csv")
    assert len(listed) == len(written)
    reasons = dict(zip(listed["path"], listed["reason"], strict=True))
    for name, (path, words) in written.items():
        assert words in reasons[str(path)], name
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary left
