"""Hostile configs and model folders (issue 15): each is one clear error naming the key or the
file, before anything is allocated or run."""

import json
import pickle
import shutil

import pytest
import torch

from vae_core import VAEDetector
from vae_core.foundations.config import load_config


def _config(tmp_path, text: str):
    path = tmp_path / "mlflow.yml"
    path.write_text(text)
    return path


CONFIG_CASES = [
    ("model:\n  latnet_dim: 4\n", r"model\.latnet_dim: unknown key; did you mean latent_dim\?"),
    ("modle:\n  latent_dim: 4\n", r"modle: unknown key; did you mean model\?"),
    ("model:\n  colour: red\n", r"model\.colour: unknown key; the keys here: latent_dim, hidden"),
    ("training:\n  epochs: many\n", r"training\.epochs: Input should be a valid integer"),
    ("training:\n  batch_size: -5\n", r"training\.batch_size: Input should be greater than"),
    ("model:\n  hidden_dims: [1000000000]\n", r"model\.hidden_dims: .*at most 65536 units"),
    ("model:\n  latent_dim: 10000000\n", r"model\.latent_dim: Input should be less than"),
    ("training:\n  trim_fraction: 1.5\n", r"training\.trim_fraction: Input should be less"),
    ("scoring:\n  missing: ignore\n", r"scoring\.missing: Input should be 'marginalise'"),
    # A kind and a network that do not go together: refused at load, naming both keys.
    ("data:\n  kind: images\n", r"data\.kind 'images' needs model\.architecture 'conv', got 'mlp'"),
    ("model:\n  architecture: conv\n", r"data\.kind 'table' needs model\.architecture 'mlp'"),
    ("model: [1, 2\n", r"not valid YAML"),
    ("- just\n- a list\n", r"the top level must be a mapping"),
    # A "billion laughs": nine levels of nine aliases each.
    (
        "a: &a [x, x, x, x, x, x, x, x, x]\n"
        + "".join(
            f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n"
            for i in range(8)
        ),
        r"anchors and aliases .* are not allowed \(line 1\)",
    ),
]


@pytest.mark.parametrize(("text", "message"), CONFIG_CASES)
def test_a_bad_config_is_one_message_naming_the_key(tmp_path, text, message):
    path = _config(tmp_path, text)
    with pytest.raises(ValueError, match=message) as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_a_config_that_does_not_exist_or_is_huge_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere\.yml does not exist"):
        load_config(tmp_path / "nowhere.yml")
    huge = _config(tmp_path, "# padding\n" * 200_000)
    with pytest.raises(ValueError, match="more than a config file holds"):
        load_config(huge)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, mixed_data):
    folder = tmp_path_factory.mktemp("model") / "good"
    VAEDetector(epochs=1, hidden_dims=(8,), latent_dim=2).fit(mixed_data).save(folder)
    return folder


def _copy(saved, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(saved, folder)
    return folder


def _edit_json(folder, change):
    meta = json.loads((folder / "model.json").read_text())
    change(meta)
    (folder / "model.json").write_text(json.dumps(meta))


class _RunsCode:
    def __reduce__(self):
        return (print, ("this must never run",))


MODEL_CASES = {
    "absurd width": (
        lambda f: _edit_json(f, lambda m: m["model_config"].update(hidden_dims=[10**12])),
        r"model\.json: network sizes out of range",
    ),
    "absurd latent": (
        lambda f: _edit_json(f, lambda m: m["model_config"].update(latent_dim=10**9)),
        r"model\.json: network sizes out of range",
    ),
    "json that does not match the weights": (
        lambda f: _edit_json(f, lambda m: m["model_config"].update(hidden_dims=[16])),
        r"model\.json does not describe .*weights\.pt",
    ),
    "not json": (
        lambda f: (f / "model.json").write_text("{not json"),
        r"model\.json: not valid JSON",
    ),
    "corrupted weights": (
        lambda f: (f / "weights.pt").write_bytes((f / "weights.pt").read_bytes()[:200]),
        r"weights\.pt: not a weights file this project wrote",
    ),
    "pickle payload": (
        lambda f: (f / "weights.pt").write_bytes(pickle.dumps({"model.x": _RunsCode()})),
        r"weights\.pt: not a weights file this project wrote",
    ),
    "torch file holding an object": (
        lambda f: torch.save({"model.x": _RunsCode()}, f / "weights.pt"),
        r"weights\.pt: not a weights file this project wrote",
    ),
}


@pytest.mark.parametrize("case", list(MODEL_CASES))
def test_a_hostile_model_folder_is_refused_naming_the_file(saved, tmp_path, capsys, case):
    spoil, message = MODEL_CASES[case]
    folder = _copy(saved, tmp_path)
    spoil(folder)
    with pytest.raises(ValueError, match=message):
        VAEDetector.load(folder)
    assert "this must never run" not in capsys.readouterr().out


def test_the_untouched_copy_still_loads(saved, tmp_path, mixed_data):
    folder = _copy(saved, tmp_path)
    assert (VAEDetector.load(folder).anomaly_score(mixed_data.head(3)) > -1e9).all()


@pytest.mark.parametrize(
    "batch_id", ["../escape", "/etc/passwd", "a\x00b", "", ".", "..", ".hidden", "a/b", "x" * 201]
)
def test_a_batch_id_that_would_leave_its_folder_is_refused(batch_id):
    from vae_core.steps.batch import checked_batch_id

    with pytest.raises(ValueError, match="batch id"):
        checked_batch_id(batch_id)


def test_ordinary_batch_ids_pass():
    from vae_core.steps.batch import checked_batch_id

    for batch_id in ("nightly", "2026-11-30", "run_7.b"):
        assert checked_batch_id(batch_id) == batch_id


def test_every_server_the_project_starts_or_prints_binds_loopback():
    """The MLflow UI command the CLI and the demo print, the local Dask cluster's dashboard,
    and the server commands in the README all name 127.0.0.1 (issue 15)."""
    import re

    from flows.score import task_runner
    from tests.helpers import ROOT
    from vae_core.tracking.registry import TrackingTarget

    cfg = load_config(None, {"tracking": {"uri": "sqlite:///x.db"}})
    assert "--host 127.0.0.1" in TrackingTarget.from_config(cfg).ui_command()
    dask_cfg = load_config(None, {"scoring": {"task_runner": "dask"}})
    dashboard = task_runner(dask_cfg).cluster_kwargs["dashboard_address"]
    assert dashboard.startswith("127.0.0.1:")
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(
        r"(?:mlflow (?:ui|server)|prefect server start|dask scheduler)[^\n]*", readme
    )
    assert commands and all("127.0.0.1" in c for c in commands), commands
