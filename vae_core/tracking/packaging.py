"""The packaged model: a saved ``VAEDetector`` logged as an MLflow pyfunc model
(models-from-code: ``vae_core/tracking/mlflow_model.py`` is its code, no pickle of project classes)
with its signature, input example and pinned requirements, and read back from the registry.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.models import Model, ModelSignature, infer_signature
from mlflow.types.schema import Array, ColSpec, ParamSchema, ParamSpec, Schema

import vae_core
from vae_core.estimator.detector import VAEDetector
from vae_core.kinds.choice import kind_of_model
from vae_core.kinds.protocol import PREDICT_OUTPUTS

DETECTOR_ARTIFACT = "detector"  # the pyfunc artifact holding weights.pt + model.json
# What the packaged model imports when it is loaded; versions are pinned to this environment's.
RUNTIME_PACKAGES = (
    "mlflow",
    "torch",
    "numpy",
    "pandas",
    "scikit-learn",
    "scipy",
    "pyarrow",
    "pydantic",
    "pyyaml",
)


def pip_requirements() -> list[str]:
    """Pinned requirements of the packaged model (local version labels like +cpu dropped)."""
    return [
        f"{name}=={importlib.metadata.version(name).split('+')[0]}" for name in RUNTIME_PACKAGES
    ]


def log_packaged_model(
    det: VAEDetector,
    example: pd.DataFrame,
    example_output: pd.DataFrame,
    *,
    top_features: int,
    on_size_mismatch: str,
):
    """Log ``det`` as a pyfunc model in the active run (models-from-code, no pickle of
    project classes) with a signature, the input example and pinned requirements.

    example : raw feature rows (``kinds.table.input_example``); for an image detector, a
        DataFrame of image paths (``path``).
    example_output : the packaged model's scores for ``example``, computed by the pipeline
        (the kind's ``score_input``): the signature's outputs.
    on_size_mismatch : image models: "reject" or "resize" image files of another size.
    Returns MLflow's ``ModelInfo`` (``model_uri`` is ``models:/m-<id>``).
    """
    package = Path(vae_core.__file__).resolve().parent
    config = {"top_features": int(top_features), "on_size_mismatch": on_size_mismatch}
    with tempfile.TemporaryDirectory() as tmp, _without_info("mlflow.pyfunc"):
        det.save(Path(tmp) / "detector")
        return mlflow.pyfunc.log_model(
            name="model",
            python_model=str(package / "tracking" / "mlflow_model.py"),
            artifacts={DETECTOR_ARTIFACT: str(Path(tmp) / "detector")},
            code_paths=[str(package)],
            model_config=config,
            signature=_signature(det, example, example_output),
            input_example=example,
            pip_requirements=pip_requirements(),
        )


@contextlib.contextmanager
def _without_info(name: str) -> Iterator[None]:
    """Logger ``name`` at WARNING meanwhile: MLflow's INFO line "Validating input example
    against model signature" on every training run is noise (the validation still runs)."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _signature(det: VAEDetector, example: pd.DataFrame, output: pd.DataFrame) -> ModelSignature:
    """Tables: the example's columns. Images: an optional ``path`` (image file) column or an
    optional ``image`` column of (H, W) or (C, H, W) integer arrays. Outputs: ``output``'s."""
    params = ParamSchema([ParamSpec("output", "string", PREDICT_OUTPUTS[0])])  # predict(params=...)
    if kind_of_model(det).columns:  # a table's columns, as the example has them
        return infer_signature(example, output, params={"output": "scores"})
    pixels = Array(Array("long"))
    if det.preprocessor_.image_shape[0] > 1:
        pixels = Array(pixels)
    inputs = Schema(
        [ColSpec("string", "path", required=False), ColSpec(pixels, "image", required=False)]
    )
    return ModelSignature(inputs, infer_signature(example, output).outputs, params)


def load_packaged_detector(name: str, version: str | int) -> VAEDetector:
    """The VAEDetector inside a registered version, read with VAEDetector.load (no pickle)."""
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(f"models:/{name}/{version}", dst_path=tmp)
        conf = Model.load(local).flavors["python_function"]
        return VAEDetector.load(Path(local) / conf["artifacts"][DETECTOR_ARTIFACT]["path"])
