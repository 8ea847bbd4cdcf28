"""Save and load a fitted VAEDetector: a folder with ``weights.pt`` and ``model.json``.

``weights.pt`` holds tensors only (the VAE ``state_dict`` and the fixed scoring noise) and is
read with ``torch.load(..., weights_only=True)``; ``model.json`` holds the constructor
parameters, the architecture, the preprocessing statistics and feature schema, the threshold
and the training history. Nothing is pickled, so loading a model file cannot run code.
Files are written under temporary names and renamed, so a crash leaves no half-written model.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from vae_core.atomic import atomic_write_bytes
from vae_core.model import VAE, VAEConfig
from vae_core.preprocess import preprocessor_from_dict

FORMAT_VERSION = 1
WEIGHTS, META = "weights.pt", "model.json"
# Fitted attributes stored in JSON as they are (the rest are rebuilt from tensors and configs).
_PLAIN_STATE = (
    "threshold_",
    "offset_",
    "history_",
    "best_epoch_",
    "n_features_in_",
    "training_fingerprint_",
    "score_kind_",
    "iwae_samples_",
    "calibration_",
)


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray | tuple):
        return list(o)
    raise TypeError(f"cannot serialise {type(o).__name__} to JSON")


def detector_metadata(det) -> dict:
    """Everything but the tensors, as a JSON-safe dict."""
    meta = {
        "format_version": FORMAT_VERSION,
        "params": det.get_params(),
        "model_config": det.config_.to_dict(),
        "preprocessing": det.preprocessor_.to_dict(),
        "state": {k: getattr(det, k) for k in _PLAIN_STATE},
    }
    if hasattr(det, "feature_names_in_"):
        meta["state"]["feature_names_in_"] = list(det.feature_names_in_)
    if det.probability_ is not None:
        meta["anomaly_probability"] = det.probability_.to_dict()
    return meta


def save_detector(det, path) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().cpu() for k, v in det.model_.state_dict().items()}
    tensors["score_eps"] = det.score_eps_.cpu()
    with tempfile.SpooledTemporaryFile() as buf:
        torch.save(tensors, buf)
        buf.seek(0)
        atomic_write_bytes(path / WEIGHTS, buf.read())
    text = json.dumps(detector_metadata(det), indent=2, default=_json_default)
    atomic_write_bytes(path / META, text.encode())
    return path


def load_detector(path):
    from vae_core.detector import VAEDetector

    path = Path(path)
    for name in (META, WEIGHTS):
        if not (path / name).is_file():
            raise FileNotFoundError(f"{path} is not a saved model: {name} is missing")
    meta = json.loads((path / META).read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path / META}: unsupported format_version {meta.get('format_version')}")
    params = dict(meta["params"], hidden_dims=tuple(meta["params"]["hidden_dims"]))
    det = VAEDetector(**params)
    cfg = VAEConfig.from_dict(meta["model_config"])
    tensors = torch.load(path / WEIGHTS, map_location="cpu", weights_only=True)
    model = VAE(cfg)
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    det.model_ = model.to(det.device).eval()
    det.config_ = cfg
    det.score_eps_ = tensors["score_eps"]
    det.preprocessor_ = preprocessor_from_dict(meta["preprocessing"])
    for key, value in meta["state"].items():
        setattr(det, key, np.asarray(value, dtype=object) if key == "feature_names_in_" else value)
    det.probability_ = None
    if "anomaly_probability" in meta:
        from vae_core.calibrate import AnomalyProbability

        det.probability_ = AnomalyProbability.from_dict(meta["anomaly_probability"])
    return det
