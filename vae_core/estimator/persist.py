"""Save and load a fitted VAEDetector: a folder with ``weights.pt`` and ``model.json``.

``weights.pt`` holds tensors only (the VAE ``state_dict`` as ``model.*``, a snapshot
member's as ``member1.*``, and the fixed scoring noise) and is read with
``torch.load(..., weights_only=True)``; ``model.json`` holds the constructor
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

from vae_core.data.preprocess import preprocessor_from_dict
from vae_core.foundations.atomic import atomic_write_bytes
from vae_core.foundations.config import MAX_LAYERS, MAX_WIDTH
from vae_core.network.devices import usable_device
from vae_core.network.model import VAE, VAEConfig

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
    "loss_cutoff_",  # absent from models saved before the refinement: None when loaded
    "n_left_out_",
    "snapshot_epoch_",  # absent from models saved before snapshots: None when loaded
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
        "state": {k: getattr(det, k, None) for k in _PLAIN_STATE},
    }
    if hasattr(det, "feature_names_in_"):
        meta["state"]["feature_names_in_"] = list(det.feature_names_in_)
    # the pass-through id columns of the training table (pipeline.fit_detector): scoring
    # writes them by default
    meta["state"]["id_columns_"] = list(getattr(det, "id_columns_", []))
    if det.probability_ is not None:
        meta["anomaly_probability"] = det.probability_.to_dict()
    return meta


def save_detector(det, path) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().cpu() for k, v in det.model_.state_dict().items()}
    for m, member in enumerate(det._members()[1:], start=1):  # the snapshot (members_)
        tensors |= {f"member{m}.{k}": v.detach().cpu() for k, v in member.state_dict().items()}
    tensors["score_eps"] = det.score_eps_.cpu()
    with tempfile.SpooledTemporaryFile() as buf:
        torch.save(tensors, buf)
        buf.seek(0)
        atomic_write_bytes(path / WEIGHTS, buf.read())
    text = json.dumps(detector_metadata(det), indent=2, default=_json_default)
    atomic_write_bytes(path / META, text.encode())
    return path


def _read_weights(path: Path) -> dict:
    """The tensors of ``weights.pt``. ``weights_only=True``: a file that holds pickled objects
    (code to run) is refused, never executed."""
    try:
        tensors = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError (corrupt zip), EOFError, ...
        raise ValueError(f"{path}: not a weights file this project wrote ({exc!r:.300})") from exc
    if not isinstance(tensors, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in tensors.items()
    ):
        raise ValueError(f"{path}: expected a mapping of names to tensors")
    return tensors


def _checked_model(cfg: VAEConfig, tensors: dict, path: Path) -> VAE:
    """The VAE of ``cfg``, built only after its shapes are checked against the weights on the
    meta device (no memory): a model.json asking for an absurd network is refused before
    anything is allocated, and so is one that does not describe these weights."""
    widths = [cfg.latent_dim, cfg.layout.input_dim, *cfg.hidden_dims]
    if min(widths) < 1 or max(widths) > 10 * MAX_WIDTH or len(cfg.hidden_dims) > MAX_LAYERS:
        raise ValueError(f"{path / META}: network sizes out of range ({widths[:8]})")
    try:
        with torch.device("meta"):
            skeleton = VAE(cfg)
    except (ValueError, TypeError, RuntimeError) as exc:
        raise ValueError(f"{path / META}: not a model description ({exc})") from exc
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    for prefix in sorted({"model"} | {k.partition(".")[0] for k in tensors} - {"score_eps"}):
        stored = {
            k.partition(".")[2]: tuple(v.shape)
            for k, v in tensors.items()
            if k.startswith(prefix + ".")
        }
        if expected != stored:
            wrong = sorted(set(expected.items()) ^ set(stored.items()))[:3]
            raise ValueError(f"{path / META} does not describe {path / WEIGHTS} (e.g. {wrong})")
    return VAE(cfg)


def _members(cfg: VAEConfig, tensors: dict, model: VAE) -> list[VAE]:
    """``[model]`` and a network for each further member stored (``member1.`` ...)."""
    members = [model]
    n_more = len({k.partition(".")[0] for k in tensors if k.startswith("member")})
    for m in range(1, 1 + n_more):
        prefix = f"member{m}."
        member = VAE(cfg)
        member.load_state_dict(
            {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        )
        members.append(member)
    return members


def load_detector(path, cls):
    """The detector of class ``cls`` (VAEDetector) saved in the folder ``path``."""

    path = Path(path)
    for name in (META, WEIGHTS):
        if not (path / name).is_file():
            raise FileNotFoundError(f"{path} is not a saved model: {name} is missing")
    try:
        meta = json.loads((path / META).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path / META}: not valid JSON ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        version = meta.get("format_version") if isinstance(meta, dict) else None
        raise ValueError(f"{path / META}: unsupported format_version {version}")
    try:
        params = dict(meta["params"], hidden_dims=tuple(meta["params"]["hidden_dims"]))
        params.setdefault("snapshot_fraction", None)  # saved before snapshots: one network
        det = cls(**params)
        cfg = VAEConfig.from_dict(meta["model_config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path / META}: not a model description ({exc!r})") from exc
    tensors = _read_weights(path / WEIGHTS)
    model = _checked_model(cfg, tensors, path)
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    det.device = usable_device(det.device)  # fitted on a GPU, scored where there is none
    det.model_ = model.to(det.device).eval()
    det.members_ = [det.model_] + [
        m.to(det.device).eval() for m in _members(cfg, tensors, model)[1:]
    ]
    det.config_ = cfg
    if "score_eps" not in tensors:
        raise ValueError(f"{path / WEIGHTS}: the scoring noise (score_eps) is missing")
    det.score_eps_ = tensors["score_eps"]
    det.preprocessor_ = preprocessor_from_dict(meta["preprocessing"])
    det.loss_cutoff_ = det.n_left_out_ = det.snapshot_epoch_ = None
    det.id_columns_ = []  # a model saved before they were recorded
    for key, value in meta["state"].items():
        setattr(det, key, np.asarray(value, dtype=object) if key == "feature_names_in_" else value)
    det.probability_ = None
    if "anomaly_probability" in meta:
        from vae_core.foundations.score_distribution import AnomalyProbability

        det.probability_ = AnomalyProbability.from_dict(meta["anomaly_probability"])
    return det
