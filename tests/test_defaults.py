"""One set of defaults: mlflow.yml states the config's defaults, and the config's model and
training sections default to VAEDetector's own arguments (the library used without a config
behaves as the pipeline does)."""

import inspect
from pathlib import Path

from vae_core import VAEDetector
from vae_core.foundations.config import ModelConfig, PipelineConfig, TrainingConfig, load_config

ROOT = Path(__file__).resolve().parents[1]


def test_mlflow_yml_states_the_defaults():
    documented = load_config(ROOT / "mlflow.yml").model_dump(exclude={"root"})
    assert documented == PipelineConfig().model_dump(exclude={"root"})


def test_the_config_defaults_are_the_detectors_defaults():
    signature = inspect.signature(VAEDetector.__init__).parameters
    for section in (ModelConfig(), TrainingConfig()):
        for key, value in section.model_dump().items():
            assert key in signature, f"{key}: not a VAEDetector argument"
            default = signature[key].default
            if isinstance(default, tuple | list):
                value, default = tuple(value), tuple(default)
            assert value == default, f"{key}: config {value!r}, VAEDetector {default!r}"


def test_the_detector_and_the_config_refuse_the_same_values():
    """Each limit is written once (the config's sections): a value the config refuses, the
    detector refuses too, naming the argument."""
    import pydantic
    import pytest

    bad = {
        "latent_dim": 0,
        "hidden_dims": [],
        "n_score_samples": 10**6,
        "likelihood": "poisson",
        "epochs": 0,
        "lr": 0.0,
        "validation_fraction": 0.5,
        "trim_fraction": 1.0,
        "device": "gpu",
    }
    for key, value in bad.items():
        section = ModelConfig if key in ModelConfig.model_fields else TrainingConfig
        with pytest.raises(pydantic.ValidationError):
            section(**{key: value})
        with pytest.raises(ValueError, match=key):
            VAEDetector(**{key: value})._check_params()
