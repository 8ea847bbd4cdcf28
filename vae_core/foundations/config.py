"""The pipeline's one typed config, parsed once from ``mlflow.yml`` at an entry point.

Precedence (highest first): command-line flag > environment variable (``MLFLOW_TRACKING_URI``)
> ``mlflow.yml`` > the defaults below. Unknown keys are rejected and every error names the key.
Library functions take the section they need (``cfg.model``, ``cfg.calibration``), never a path.
Relative paths in the file are resolved against the folder that holds it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from vae_core.foundations.calibrate import CalibrationPolicy, TargetFPR

DEFAULT_CONFIG = "mlflow.yml"
# Limits on network sizes (the config and model.json): far above any model this project trains,
# low enough that a typo cannot ask for terabytes.
MAX_WIDTH, MAX_LAYERS = 65_536, 64
MAX_CONFIG_BYTES = 1 << 20  # a config file is a page of settings, not data


def safe_yaml(text: str, source) -> object:
    """``yaml.safe_load`` that refuses anchors and aliases: a few lines of aliases can expand
    to billions of nodes (a "billion laughs" file) and stall whatever walks the result."""
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
                raise ValueError(
                    f"invalid config {source}: YAML anchors and aliases (&name, *name) are not "
                    f"allowed (line {event.start_mark.line + 1}); write the values out"
                )
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"invalid config {source}: not valid YAML ({exc})") from exc


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TrackingConfig(_Section):
    """Where MLflow keeps runs, artifacts and the model registry."""

    uri: str = "sqlite:///mlflow.db"  # relative sqlite paths are resolved against the config
    experiment: str = "vae-anomaly"
    # scoring runs; null: ``experiment``. A scoring worker of its own then needs EDIT on this
    # experiment only (vae-anomaly access, docs/production.md)
    scoring_experiment: str | None = None
    artifact_location: str = "mlartifacts"
    registered_model: str = "vae-anomaly"
    max_retries: int = Field(3, ge=0, le=10)  # for an unreachable tracking server


class DataConfig(_Section):
    """The training table (or image folder) and how to read it."""

    kind: Literal["table", "images"] = "table"  # images: see ImagesConfig
    train_path: str = "data/cardio.csv"
    score_path: str = "data/cardio.csv"
    label_column: str | None = "label"
    id_columns: list[str] = Field(default_factory=lambda: ["record_id"])
    drop_columns: list[str] = Field(default_factory=list)
    # Tables: training reads at most this many rows, a fixed uniform random sample streamed
    # from the file(s) (ingest.read_table_sample): memory bounded whatever the size; null: all.
    max_train_rows: int | None = Field(500_000, ge=1)

    def for_file(self, path: str | Path | None, root: Path) -> DataConfig:
        """This section for reading ``path``: unchanged when ``path`` is None or this
        section's own data (``train_path`` or ``score_path``, relative ones resolved against
        ``root``, the config's folder; ``path`` against the working directory); for any other
        file the same section with no label, id or dropped columns. Those three describe one
        file's columns: the checkout's demo settings (``record_id``, ``label`` of
        data/cardio.csv) must never apply silently to a user's table, whose columns only the
        command line's flags (--label-column, --id-column) then name."""
        if path is None or _resolved(path) in {
            _resolved(root / Path(own).expanduser()) for own in (self.train_path, self.score_path)
        }:
            return self
        return self.model_copy(update={"label_column": None, "id_columns": [], "drop_columns": []})


def _resolved(path: str | Path) -> str:
    """An absolute, normalised spelling of ``path`` (``root / p`` keeps an absolute ``p``)."""
    return os.path.normpath(os.path.abspath(Path(path).expanduser()))


class ImagesConfig(_Section):
    """How image folders are read (``data.kind: images``) and how many anomaly maps are drawn."""

    size: tuple[int, int] = (28, 28)  # (height, width) every image has, or is resized to
    mode: Literal["L", "RGB"] = "L"
    on_size_mismatch: Literal["reject", "resize"] = "reject"
    on_error: Literal["raise", "skip"] = "raise"  # skip: left out, logged and listed
    top_maps: int = Field(10, ge=0)  # anomaly-map PNGs for the highest scores, per run or batch
    chunk_images: int = Field(1024, ge=1)  # images read and scored at a time (bounded memory)
    # Decoded training images up to this size are held in memory; a larger set is read from
    # its files minibatch by minibatch (memory bounded by a batch, at the cost of decoding
    # every file once per epoch). Scoring is always chunked (chunk_images).
    in_memory_mb: float = Field(1024.0, ge=0)
    # An .npz input (train or score path): which arrays hold the images and their classes.
    npz_image_key: str | None = None  # default: the only array with 3 or 4 dimensions
    npz_class_key: str | None = None  # an (n,) array of class ids, kept as ``class``
    # With npz_class_key: the classes that are normal (label 0); every other class is an
    # anomaly (label 1), which calibration and evaluation use (the one-class protocol).
    npz_normal_classes: list[int | str] | None = None

    @field_validator("size")
    @classmethod
    def _positive_size(cls, v: tuple[int, int]) -> tuple[int, int]:
        if min(v) < 1:
            raise ValueError("size must be two positive integers [height, width]")
        return v

    @model_validator(mode="after")
    def _normal_classes_need_classes(self) -> ImagesConfig:
        if self.npz_normal_classes is None:
            return self
        if self.npz_class_key is None:
            raise ValueError("npz_normal_classes needs npz_class_key (the array of class ids)")
        if not self.npz_normal_classes:
            raise ValueError("npz_normal_classes must name at least one class")
        return self


class SplitConfig(_Section):
    """Held-out shares: calibration sets the threshold, test measures it; neither is trained on."""

    calibration_fraction: float = Field(0.2, gt=0, lt=0.5)
    test_fraction: float = Field(0.2, gt=0, lt=0.5)
    seed: int = 0
    train_on_normal_only: bool = False  # with labels: drop known anomalies from training


class ModelConfig(_Section):
    """VAEDetector architecture parameters."""

    # Upper limits: a typo such as 1e9 is refused naming the key, before anything is allocated.
    latent_dim: int = Field(8, ge=1, le=MAX_WIDTH)
    hidden_dims: tuple[int, ...] = (128, 64)
    likelihood: Literal["gaussian", "bernoulli"] = "gaussian"
    architecture: Literal["mlp", "conv"] = "mlp"
    n_score_samples: int = Field(8, ge=1, le=100_000)
    min_variance: float = Field(1e-3, gt=0)
    # null: "shared" for conv (images), "sample" for mlp (tables); see VAEDetector
    decoder_variance: Literal["sample", "feature", "shared"] | None = None
    scaling: Literal["standard", "robust"] = "robust"
    point_mass_share: float | None = Field(None, gt=0, le=1)

    @field_validator("hidden_dims")
    @classmethod
    def _positive_widths(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v or min(v) < 1:
            raise ValueError("hidden_dims must be a non-empty list of positive widths")
        if max(v) > MAX_WIDTH or len(v) > MAX_LAYERS:
            raise ValueError(
                f"hidden_dims: at most {MAX_LAYERS} layers of at most {MAX_WIDTH} units"
            )
        return v


class TrainingConfig(_Section):
    """Optimisation parameters of VAEDetector."""

    epochs: int = Field(200, ge=1, le=1_000_000)
    batch_size: int = Field(128, ge=1, le=1_000_000)
    lr: float = Field(3e-3, gt=0)
    patience: int = Field(5, ge=1)
    kl_warmup_epochs: int = Field(0, ge=0)
    validation_fraction: float = Field(0.1, gt=0, lt=0.5)
    weight_decay: float = Field(0.0, ge=0)
    clip_grad_norm: float | None = 10.0
    trim_fraction: float = Field(0.3, ge=0, lt=1)
    # After the trimmed fit, rows whose negative ELBO lies more than this many robust standard
    # deviations above the median are left out and the model is refined on the rest with the
    # full negative ELBO (exact where the data are clean; e.g. 3.0); null (the default): no
    # refinement. Off by default: it costs clustered anomalies (docs/benchmarks.md).
    refine_cutoff: float | None = Field(None, gt=0)
    # Score with the best epoch's network and a snapshot of the same run taken after this
    # fraction of the epochs up to the best one: the mean of their negative ELBOs (nats; an
    # upper bound on -log of their normalised product). The earlier network still finds
    # improbable a compact cluster of anomalies the final one learnt as a mode of its own
    # (docs/benchmarks.md). null: the final network alone.
    snapshot_fraction: float | None = Field(0.5, gt=0, lt=1)
    random_state: int = 0
    # cpu | cuda | cuda:N: where the model trains and scores. A model trained on a GPU scores
    # on the CPU of a machine without one (VAEDetector.load).
    device: str = Field("cpu", pattern=r"^(cpu|cuda(:\d+)?)$")


class CalibrationConfig(_Section):
    """How the threshold is set on the calibration split."""

    score: Literal["negative_elbo", "iwae"] = "negative_elbo"
    iwae_samples: int = Field(64, ge=1, le=100_000)
    policy: CalibrationPolicy = Field(default_factory=lambda: TargetFPR(fpr=0.01))
    # resamples for the evaluation report's intervals
    bootstrap: int = Field(1000, ge=0, le=1_000_000)


class ScoringConfig(_Section):
    """Batch scoring output."""

    output_dir: str = "outputs/scores"
    chunk_rows: int = Field(100_000, ge=1)
    top_features: int = Field(3, ge=0)
    drift_psi_warning: float = Field(0.2, gt=0)
    # a missing value in a numeric column that had none in training: left out of the
    # likelihood (the row is scored on its other columns; see the missing_columns output
    # column), or the batch is refused naming the cells
    missing: Literal["marginalise", "refuse"] = "marginalise"
    task_runner: Literal["threads", "dask"] = "threads"  # how partitions are scored
    max_workers: int = Field(2, ge=1)  # partitions at once: threads, or local Dask workers
    dask_address: str | None = None  # an existing Dask scheduler (tcp://host:8786)
    model_cache: str = "outputs/models"  # local copies of registry models used for scoring


class PromotionConfig(_Section):
    """The gate a challenger must pass to become champion."""

    max_roc_auc_drop: float = Field(0.01, ge=0)
    # IsolationForest (scikit-learn defaults) fitted on the challenger's training rows and
    # scored on the same held-out rows may be ahead by at most this much ROC-AUC.
    max_behind_baseline: float = Field(0.05, ge=0)
    flagged_rate_min: float = Field(0.0, ge=0, le=1)
    flagged_rate_max: float = Field(0.2, ge=0, le=1)

    @model_validator(mode="after")
    def _ordered(self) -> PromotionConfig:
        if self.flagged_rate_min > self.flagged_rate_max:
            raise ValueError("flagged_rate_min must not exceed flagged_rate_max")
        return self


class SchedulesConfig(_Section):
    """Deployments of the flows (flows/deploy.py): their names and cron schedules."""

    score_cron: str = "0 2 * * *"
    train_cron: str = "0 3 * * 0"
    timezone: str = "UTC"
    score_deployment: str = "nightly"  # -> 'score/nightly'
    train_deployment: str = "weekly"  # -> 'train/weekly'
    feedback_deployment: str = "reviews"  # -> 'feedback/reviews' (on demand)


class AlertsConfig(_Section):
    """What a scored batch tells people and the training deployment (flows/alerts.py emits the
    events; flows/deploy.py creates the Prefect automations). Limits are off by default."""

    # A batch crosses a limit when it flags more than this share of its rows (or images) ...
    max_flagged_share: float | None = Field(None, ge=0, le=1)
    # ... or when its score distribution's PSI against calibration exceeds this.
    max_psi: float | None = Field(None, gt=0)
    # Where a crossed limit is sent: a notification block the team saved (Slack, e-mail, ...),
    # as "<block type slug>/<name>", which keeps its secret; or a plain webhook URL, saved as a
    # custom-webhook block. Never a secret here: a URL that is one goes in a block.
    notify_block: str | None = None
    webhook_url: str | None = None
    retrain_on_drift: bool = True  # a batch whose drift warns runs the training deployment
    retrain_cooldown_hours: float = Field(24, gt=0)  # at most one such run in this window

    @field_validator("notify_block")
    @classmethod
    def _block_reference(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[a-z0-9-]+/[^/\s]+", value):
            raise ValueError(
                f"{value!r} is not a block reference: write <block type slug>/<name>, for "
                "example slack-webhook/ops-alerts (`prefect block ls` lists them)"
            )
        return value

    @field_validator("webhook_url")
    @classmethod
    def _plain_url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        url = urlsplit(value)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"{value!r} is not an http(s) URL")
        if url.username or url.password:
            raise ValueError(
                "a webhook URL with credentials is a secret: save it in a notification block "
                "and name the block in notify_block"
            )
        return value

    @model_validator(mode="after")
    def _one_destination(self) -> AlertsConfig:
        if self.notify_block and self.webhook_url:
            raise ValueError("give notify_block or webhook_url, not both")
        return self


# The network each kind of data trains: its model.architecture.
KIND_ARCHITECTURE = {"table": "mlp", "images": "conv"}


class PipelineConfig(_Section):
    """The whole of ``mlflow.yml``."""

    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    images: ImagesConfig = Field(default_factory=ImagesConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)
    scoring: ScoringConfig = Field(default_factory=ScoringConfig)
    promotion: PromotionConfig = Field(default_factory=PromotionConfig)
    schedules: SchedulesConfig = Field(default_factory=SchedulesConfig)
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)
    root: Path = Field(default_factory=Path.cwd, exclude=True)  # folder of the config file

    @model_validator(mode="after")
    def _kind_fits_architecture(self) -> PipelineConfig:
        """A table trains the MLP and images the convolutional VAE: refused here, at load,
        naming both keys, rather than at fit after the data was read."""
        wanted = KIND_ARCHITECTURE[self.data.kind]
        if self.model.architecture != wanted:
            raise ValueError(
                f"data.kind {self.data.kind!r} needs model.architecture {wanted!r}, got "
                f"{self.model.architecture!r}: set both keys together"
            )
        return self

    def path(self, value: str) -> Path:
        """A path from the config, resolved against the config file's folder."""
        p = Path(value).expanduser()
        return Path(os.path.normpath(p if p.is_absolute() else self.root / p))  # no "x/../"

    def tracking_uri(self) -> str:
        """MLFLOW_TRACKING_URI if set, else the file's URI with relative sqlite paths resolved."""
        env = os.environ.get("MLFLOW_TRACKING_URI")
        if env:
            return env
        uri = self.tracking.uri
        prefix = "sqlite:///"
        if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
            return prefix + str(self.path(uri[len(prefix) :]))
        return uri

    def detector_params(self) -> dict:
        """Keyword arguments for VAEDetector from the model and training sections."""
        return self.model.model_dump() | self.training.model_dump()


def _format_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid config {source}:"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            lines.append(f"  {key}: {_unknown_key(e['loc'])}")
        else:
            lines.append(f"  {key}: {e['msg']}")
    return "\n".join(lines)


def _unknown_key(loc: tuple) -> str:
    """'unknown key' with the nearest key of its section ("did you mean latent_dim?"), or the
    section's keys when none is near."""
    import difflib

    section: type[BaseModel] | None = PipelineConfig
    for part in loc[:-1]:
        field = section.model_fields.get(str(part)) if section else None
        annotation = field.annotation if field else None
        section = (
            annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel)
            else None
        )
    if section is None:
        return "unknown key"
    known = [name for name in section.model_fields if name != "root"]
    near = difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.6)
    if near:
        return f"unknown key; did you mean {near[0]}?"
    return f"unknown key; the keys here: {', '.join(known)}"


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> PipelineConfig:
    """Parse ``mlflow.yml`` (or the defaults when path is None and no file exists).

    overrides : nested dict merged over the file (e.g. from command-line flags).
    Raises ValueError naming the file and the offending key.
    """
    source = Path(path) if path is not None else Path(DEFAULT_CONFIG)
    raw: dict = {}
    if source.exists():
        if source.stat().st_size > MAX_CONFIG_BYTES:
            raise ValueError(
                f"invalid config {source}: {source.stat().st_size} bytes, more than a config "
                f"file holds ({MAX_CONFIG_BYTES} at most)"
            )
        raw = safe_yaml(source.read_text(), source) or {}
        if not isinstance(raw, dict):
            raise ValueError(f"invalid config {source}: the top level must be a mapping")
    elif path is not None:
        raise FileNotFoundError(f"config file {source} does not exist")
    merged = _merge(raw, overrides or {})
    try:
        return PipelineConfig(**merged, root=source.resolve().parent)
    except ValidationError as err:
        raise ValueError(_format_error(err, str(source))) from None


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out
