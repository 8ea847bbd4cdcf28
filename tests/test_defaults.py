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
