"""The latent space: transform (a scikit-learn transformer), reconstruct, interpolate, decode,
sample, the realism of samples, and the `embed`, `sample` and `interpolate` commands."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from typer.testing import CliRunner

from tests.helpers import MNIST, mixed_frame, write_pipeline_config
from vae_core import VAEDetector
from vae_core.cli import app
from vae_core.evaluation.latent_review import sample_realism, top_variance_directions


@pytest.fixture(scope="module")
def digits():
    files = sorted((MNIST / "train" / "good").glob("*.png"))[:96]
    return np.stack([np.asarray(Image.open(p)) for p in files])


@pytest.fixture(scope="module")
def conv(digits):
    return VAEDetector(architecture="conv", hidden_dims=(4, 8), latent_dim=3, epochs=2).fit(digits)


# ---- transform ---------------------------------------------------------------------------
def test_transform_gives_posterior_means_and_stds_per_row_whatever_the_batch(
    fitted_mixed, mixed_data
):
    mu, std = fitted_mixed.transform(mixed_data, return_std=True)
    assert mu.shape == std.shape == (len(mixed_data), 2) and (std > 0).all()
    np.testing.assert_array_equal(fitted_mixed.transform(mixed_data), mu)
    np.testing.assert_array_equal(fitted_mixed.transform(mixed_data.iloc[[7]]), mu[[7]])
    assert list(fitted_mixed.get_feature_names_out()) == ["z0", "z1"]
    # the posterior mean is what the encoder gives: scoring's z = mu + sigma * eps at eps = 0
    import torch

    u = torch.from_numpy(fitted_mixed.model_input(mixed_data.iloc[:5]))
    with torch.no_grad():
        enc_mu, enc_log_var = fitted_mixed.model_.encode(u)
    np.testing.assert_allclose(mu[:5], enc_mu.double().numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(std[:5], torch.exp(0.5 * enc_log_var).double().numpy(), rtol=1e-6)


def test_transform_in_a_scikit_learn_pipeline():
    X = mixed_frame(400, seed=3)
    y = (X["mode"] == "high").astype(int)  # the latent space must carry the main factor
    pipe = Pipeline(
        [("vae", VAEDetector(latent_dim=2, hidden_dims=(16,), epochs=30)),
         ("clf", LogisticRegression())]
    )  # fmt: skip
    pipe.fit(X, y)
    assert pipe.score(X, y) > 0.8
    assert list(pipe[:-1].get_feature_names_out()) == ["z0", "z1"]
    vae = pipe.named_steps["vae"].set_output(transform="pandas")
    frame = vae.transform(X.iloc[:3])
    assert isinstance(frame, pd.DataFrame) and list(frame.columns) == ["z0", "z1"]
    vae.set_output(transform="default")


def test_transform_of_images(conv, digits):
    z = conv.transform(digits[:10])
    assert z.shape == (10, 3)
    np.testing.assert_array_equal(conv.transform(digits[:10, None]), z)  # (n, 1, H, W) too


# ---- reconstruct ---------------------------------------------------------------------------
def test_reconstruct_returns_rows_in_the_original_columns(fitted_mixed, mixed_data):
    rec = fitted_mixed.reconstruct(mixed_data)
    assert list(rec.columns) == list(mixed_data.columns) and len(rec) == len(mixed_data)
    assert set(rec["site"]) <= {"north", "south", "east"} and set(rec["mode"]) <= {"high", "low"}
    assert pd.api.types.is_float_dtype(rec["temperature"])
    # numbers come back in their units, and follow their row
    corr = np.corrcoef(rec["temperature"], mixed_data["temperature"])[0, 1]
    assert corr > 0.8, corr
    assert (rec["mode"] == mixed_data["mode"]).mean() > 0.8


def test_the_inverse_of_the_preprocessing_gives_labels_and_blanks(fitted_mixed):
    """The mean of p(x|z) mapped back: a missing indicator above 0.5 blanks its value, a
    categorical block gives its most probable label; a number is unscaled exactly."""
    pre = fitted_mixed.preprocessor_
    u = pre.transform(mixed_frame(4, seed=9)).astype("float64")
    back = pre.inverse_transform(u, None, most_probable=True)
    source = mixed_frame(4, seed=9)
    np.testing.assert_allclose(back["temperature"], source["temperature"], rtol=1e-6)
    assert back["site"].tolist() == source["site"].tolist()
    assert back["load"].isna().tolist() == source["load"].isna().tolist()


def test_reconstruct_images_as_uint8_shaped_as_the_input(conv, digits):
    rec = conv.reconstruct(digits[:5])
    assert rec.dtype == np.uint8 and rec.shape == (5, 28, 28)
    assert conv.reconstruct(digits[:5, None]).shape == (5, 1, 28, 28)
    np.testing.assert_array_equal(conv.reconstruct(digits[:5, None])[:, 0], rec)


# ---- interpolate, decode, sample ---------------------------------------------------------
@pytest.mark.parametrize("method", ["linear", "spherical"])
def test_interpolation_ends_are_the_reconstructions_of_the_ends(fitted_mixed, mixed_data, method):
    a, b = mixed_data.iloc[[3]], mixed_data.iloc[10]  # a one-row frame and a Series
    path = fitted_mixed.interpolate(a, b, steps=6, method=method)
    assert len(path) == 6 and path.index.tolist() == pytest.approx(np.linspace(0, 1, 6))
    ends = fitted_mixed.reconstruct(mixed_data.iloc[[3, 10]])
    pd.testing.assert_frame_equal(
        path.iloc[[0, -1]].reset_index(drop=True), ends.reset_index(drop=True)
    )
    assert not path.iloc[2].equals(path.iloc[0])


@pytest.mark.parametrize("method", ["linear", "spherical"])
def test_image_interpolation_ends_are_the_reconstructions(conv, digits, method):
    path = conv.interpolate(digits[0], digits[1], steps=5, method=method)
    assert path.shape == (5, 28, 28) and path.dtype == np.uint8
    np.testing.assert_array_equal(path[[0, -1]], conv.reconstruct(digits[:2]))


def test_spherical_paths_keep_the_norm_between_codes_of_equal_norm(fitted_mixed):
    from vae_core.estimator.latent_space import _lerp, _slerp

    a, b = np.array([3.0, 0.0]), np.array([0.0, 3.0])
    t = np.linspace(0, 1, 7)
    np.testing.assert_allclose(np.linalg.norm(_slerp(a, b, t), axis=1), 3.0)
    assert np.linalg.norm(_lerp(a, b, t)[3]) < 3.0  # the straight line cuts inside
    np.testing.assert_allclose(_slerp(a, 2 * a, t), _lerp(a, 2 * a, t))  # parallel: a line


def test_interpolate_refuses_bad_arguments_naming_them(fitted_mixed, mixed_data):
    one = mixed_data.iloc[[0]]
    with pytest.raises(ValueError, match="steps must be at least 2"):
        fitted_mixed.interpolate(one, one, steps=1)
    with pytest.raises(ValueError, match="method must be 'linear' or 'spherical'"):
        fitted_mixed.interpolate(one, one, method="cubic")
    with pytest.raises(ValueError, match="a: expected one row, got 2"):
        fitted_mixed.interpolate(mixed_data.iloc[:2], one)


def test_decode_and_sample_means_are_in_the_data_terms(fitted_mixed, conv):
    z = np.zeros((3, 2))
    decoded = fitted_mixed.decode(z)
    assert list(decoded.columns) == list(fitted_mixed.preprocessor_.feature_names)
    assert decoded.duplicated(keep=False).all()  # the same code decodes to the same row
    with pytest.raises(ValueError, match=r"z must be \(n, 2\)"):
        fitted_mixed.decode(np.zeros((3, 5)))
    means = fitted_mixed.sample(5, random_state=1, mean=True)
    pd.testing.assert_frame_equal(means, fitted_mixed.sample(5, random_state=1, mean=True))
    draws = fitted_mixed.sample(5, random_state=1)
    assert list(draws.columns) == list(means.columns)
    assert conv.sample(4, mean=True).dtype == np.uint8
    assert conv.sample(4, mean=True).shape == (4, 1, 28, 28)


# ---- sample realism and the latent directions ----------------------------------------------
def test_sample_realism_tells_a_trained_model_from_an_untrained_one(fitted_mixed, mixed_data):
    untrained = VAEDetector(epochs=1, hidden_dims=(32, 16), latent_dim=2, lr=1e-5).fit(mixed_data)
    held_out = mixed_frame(400, seed=5)
    good, bad = sample_realism(fitted_mixed, held_out), sample_realism(untrained, held_out)
    assert 0.4 < good < bad, (good, bad)
    assert bad > 0.9
    assert sample_realism(fitted_mixed, held_out) == good  # seeded: the same number again


def test_top_variance_directions():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(500, 3)) * [5.0, 1.0, 0.1]
    directions, shares = top_variance_directions(z)
    assert directions.shape == (2, 3) and shares[0] > shares[1] > 0
    assert abs(directions[0, 0]) > 0.99


# ---- the command line ------------------------------------------------------------------------
def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def saved(tmp_path_factory, fitted_mixed, mixed_data):
    folder = tmp_path_factory.mktemp("latent-cli")
    fitted_mixed.save(folder / "model")
    table = mixed_data.assign(key=[f"r{i}" for i in range(len(mixed_data))])
    table.to_csv(folder / "table.csv", index=False)
    # the config's id columns apply to its own data only (DataConfig.for_file)
    own = {"id_columns": ["key"], "train_path": str(folder / "table.csv")}
    config = write_pipeline_config(folder, {"data": own})
    return folder, config


def test_cli_embed_writes_ids_coordinates_and_scores(saved, fitted_mixed, mixed_data):
    folder, config = saved
    out = folder / "latent.parquet"
    result = cli("embed", "--model", folder / "model", "--data", folder / "table.csv",
                 "--out", out, "--config", config)  # fmt: skip
    assert result.exit_code == 0, result.stderr
    got = pd.read_parquet(out)
    assert list(got.columns) == ["key", "z0", "z1", "anomaly_score"]
    np.testing.assert_allclose(got[["z0", "z1"]], fitted_mixed.transform(mixed_data), rtol=1e-12)
    np.testing.assert_array_equal(got["anomaly_score"], fitted_mixed.anomaly_score(mixed_data))


def test_cli_interpolate_by_id_and_sample(saved, fitted_mixed, mixed_data):
    folder, config = saved
    out = folder / "path.csv"
    result = cli("interpolate", "--model", folder / "model", "--data", folder / "table.csv",
                 "--from", "r3", "--to", "r10", "--steps", 4, "--out", out,
                 "--config", config)  # fmt: skip
    assert result.exit_code == 0, result.stderr
    got = pd.read_csv(out)
    assert got["t"].tolist() == pytest.approx([0, 1 / 3, 2 / 3, 1])
    ends = fitted_mixed.reconstruct(mixed_data.iloc[[3, 10]])
    np.testing.assert_allclose(got["temperature"].iloc[[0, -1]], ends["temperature"], rtol=1e-9)
    drawn = cli("sample", "--model", folder / "model", "-n", 7, "--out", folder / "s.parquet",
                "--config", config)  # fmt: skip
    assert drawn.exit_code == 0, drawn.stderr
    assert len(pd.read_parquet(folder / "s.parquet")) == 7


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--from", "nope", "--to", "r1"], "id 'nope' not found in column(s) 'key' of"),
        (["--from", "r1", "--to", "r2", "--id-column", "site"], "id 'r1' not found"),
        (["--from", "north", "--to", "r2", "--id-column", "site"], "id 'north' is not unique"),
    ],
)
def test_cli_interpolate_names_a_bad_id(saved, args, message):
    folder, config = saved
    out = folder / "bad.csv"
    result = cli("interpolate", "--model", folder / "model", "--data", folder / "table.csv",
                 "--out", out, "--config", config, *args)  # fmt: skip
    assert result.exit_code == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()


def test_cli_on_an_image_model(tmp_path, conv):
    conv.save(tmp_path / "model")
    config = write_pipeline_config(
        tmp_path, {"data": {"kind": "images"}, "model": {"architecture": "conv"}}
    )
    folder = MNIST / "test" / "good"
    names = sorted(p.name for p in folder.glob("*.png"))
    embedded = cli("embed", "--model", tmp_path / "model", "--data", folder,
                   "--out", tmp_path / "z.csv", "--config", config)  # fmt: skip
    assert embedded.exit_code == 0, embedded.stderr
    got = pd.read_csv(tmp_path / "z.csv")
    assert list(got.columns) == ["path", "z0", "z1", "z2", "anomaly_score"]
    assert len(got) == len(names)
    walked = cli("interpolate", "--model", tmp_path / "model", "--data", folder,
                 "--from", names[0], "--to", names[1], "--steps", 3,
                 "--out", tmp_path / "walk", "--config", config)  # fmt: skip
    assert walked.exit_code == 0, walked.stderr
    steps = sorted((tmp_path / "walk").glob("step_*.png"))
    assert len(steps) == 3
    first = np.asarray(Image.open(steps[0]))
    own = conv.reconstruct(np.asarray(Image.open(folder / names[0]))[None])[0]
    np.testing.assert_array_equal(first, own)
    bad = cli("interpolate", "--model", tmp_path / "model", "--data", folder,
              "--from", "missing.png", "--to", names[1], "--out", tmp_path / "bad",
              "--config", config)  # fmt: skip
    assert bad.exit_code == 2 and "image 'missing.png' not found in" in bad.stderr
    assert not (tmp_path / "bad").exists()
    sampled = cli("sample", "--model", tmp_path / "model", "-n", 3, "--mean",
                  "--out", tmp_path / "samples", "--config", config)  # fmt: skip
    assert sampled.exit_code == 0, sampled.stderr
    assert len(list((tmp_path / "samples").glob("sample_*.png"))) == 3
