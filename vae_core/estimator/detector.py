"""VAEDetector: a scikit-learn outlier detector over the preprocessing and the VAE.

The contract is scikit-learn's (``IsolationForest``): ``fit(X, y=None)`` returns self;
``score_samples`` is higher for normal rows; ``decision_function = score_samples - offset_``;
``predict`` returns -1 for anomalies and +1 for normal rows. Like PyOD, the threshold is kept in
raw score units, ``threshold_``, in nats of negative ELBO, with ``offset_ = -threshold_``.

Tie rule (one for the whole project): a row is an anomaly iff ``anomaly_score > threshold_``;
a score equal to the threshold is normal (``decision_function == 0`` -> +1, as in sklearn).

Scores are deterministic: the Monte Carlo noise is drawn once from ``random_state`` and shared
by every row, and rows are evaluated in fixed-size, zero-padded chunks, so a row's score is
bit-for-bit the same whatever the batch it arrives in (on a given device).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import pandas as pd
import torch
from pydantic import ValidationError
from sklearn.base import BaseEstimator, OutlierMixin
from sklearn.utils.validation import check_is_fitted

from vae_core.data.image_preprocess import ImagePreprocessor
from vae_core.data.image_stream import PixelRows, scan_images
from vae_core.data.images import image_rows
from vae_core.data.input_stats import fingerprint, grid_variance
from vae_core.data.preprocess import TabularPreprocessor
from vae_core.estimator.detector_scoring import ScoringMixin
from vae_core.estimator.latent_space import LatentSpaceMixin
from vae_core.estimator.persist import load_detector, save_detector
from vae_core.foundations.config import ModelConfig, TrainingConfig
from vae_core.network.devices import check_device
from vae_core.network.likelihood import observed_gaussians
from vae_core.network.model import VAE, VAEConfig
from vae_core.network.train import EpochCallback, TrainConfig, train_vae


class VAEDetector(OutlierMixin, ScoringMixin, LatentSpaceMixin, BaseEstimator):
    """Anomaly detector scoring rows by the negative ELBO of a Gaussian VAE.

    Parameters
    ----------
    latent_dim : int, default=8
        Dimension of z.
    hidden_dims : sequence of int, default=(128, 64)
        Widths of the MLP layers (or conv channels for images), encoder order.
    epochs : int, default=200
        Maximum number of epochs; early stopping on the validation negative ELBO.
    batch_size : int, default=128
        Adam minibatch size.
    lr : float, default=3e-3
        Adam learning rate (3e-3: chosen on one half of the benchmark sets and confirmed on
        the other, docs/benchmarks.md; 1e-3 stopped early short of the better fit).
    contamination : float in (0, 0.5), default=0.1
        Share of training rows above the threshold set at fit. ``calibrate`` sets a better
        threshold on held-out data.
    random_state : int, default=0
        Seeds initialisation, shuffling, the validation split and scoring noise.
    device : str, default="cpu"
        Torch device.
    likelihood : {"gaussian", "bernoulli"}, default="gaussian"
        "gaussian" (AEVB appendix C.2) or "bernoulli" for binary data / [0, 1] intensities
        (appendix C.1).
    architecture : {"mlp", "conv"}, default="mlp"
        "mlp" for tables, "conv" for images (n, H, W) or (n, C, H, W).
    n_score_samples : int, default=8
        L, the Monte Carlo samples of z per row for ``anomaly_score``: the knee of the
        measured curve, mean ROC-AUC within 0.0004 of 1,024 draws on the shared benchmark
        sets at a quarter of the cost of 32 (docs/benchmarks.md).
    validation_fraction : float in (0, 0.5), default=0.1
        Share of training rows held out for early stopping.
    kl_warmup_epochs : int, default=0
        Epochs over which the KL weight rises to 1 (``TrainConfig``).
    patience : int, default=5
        Epochs without a better validation loss before training stops (``TrainConfig``).
    min_variance : float, default=1e-3
        Floor on the decoder variance, in model-input units (``VAEConfig``).
    weight_decay : float, default=0.0
        Adam weight decay (``TrainConfig``).
    clip_grad_norm : float or None, default=10.0
        Gradient norm clipping; None for none (``TrainConfig``).
    quantization_floor : bool, default=True
        Floor each Gaussian column's variance at its value grid's dequantization variance
        (``grid_variance``).
    decoder_variance : {"sample", "feature", "shared"} or None, default=None
        "sample" (a function of z per row and column, appendix C.2), "feature" (one per
        column) or "shared" (one per channel, Rybkin et al. 2021); None: "shared" for
        images, where a per-pixel variance lets the decoder ignore its input, "sample" for
        tables.
    max_variance : float or None, default=None
        Optional ceiling on the decoder variance (standardised units).
    trim_fraction : float, default=0.3
        Share of each minibatch, the rows with the highest loss, left out of the gradient and
        of the early-stopping loss after 2 epochs (a trimmed likelihood for training data
        that holds anomalies). 0 trains on the plain negative ELBO.
    scaling : {"robust", "standard"}, default="robust"
        Numeric columns scaled by median and IQR / 1.349, or by mean and standard deviation;
        both affine, with the exact log-Jacobian in every score.
    trim_validation : bool, default=True
        Trim the early-stopping loss too.
    refine_cutoff : float or None, default=None
        Set (e.g. 3.0): after the trimmed fit, training rows whose negative ELBO lies more
        than this many robust standard deviations (1.4826 MAD) above the median are left out
        (Hampel's rule) and the model is refined on the rest with the full negative ELBO at a
        tenth of ``lr``: within 0.01 nats/dim of the exact log-likelihood on clean
        probabilistic PCA (0.1 for the trimmed fit alone), but a compact cluster of anomalies
        is learnt as a mode, so it is off by default (docs/benchmarks.md).
    snapshot_fraction : float in (0, 1) or None, default=0.5
        Score with two members of one run: the best epoch's network and the network after
        this fraction of the epochs up to it (no extra training; one more forward pass per
        score). A row's score is the mean of their negative ELBOs: nats, an upper bound on
        -log of their normalised product. Models fit the bulk of the data before its outliers
        (Kim et al., ODIM, ICML 2024): the earlier member still finds improbable a cluster of
        anomalies the final one learnt as a mode (docs/benchmarks.md). None: one network.
    point_mass_share : float in (0, 1] or None, default=None
        A numeric column's most frequent value, when held by at least that share of the rows,
        gets a point mass of its own (``TabularPreprocessor``). With it set, missing values
        are left out of the Gaussian likelihood (marginalised) instead of scored at the
        imputed median.
    encoder_clip : float or None, default=None
        c > 0: the encoder sees the Gaussian columns clipped to [-c, c] (model-input units);
        the likelihood still scores the values themselves.
    missing : {"marginalise", "refuse"}, default="marginalise"
        What scoring does with a missing value in a numeric column that had none at fit:
        "marginalise" (the encoder gets the training median and the column is left out of
        p(x|z), exact for the diagonal Gaussian decoder: the row is scored on its observed
        columns, and ``missing_columns`` names what was left out) or "refuse" (ValueError
        naming the column and rows). Gaussian likelihood only.

    Attributes
    ----------
    threshold_ : float
        The anomaly threshold in ``threshold_score`` units (nats); a row is an anomaly iff
        its score is above it. Set at fit (``contamination``), then by ``calibrate``.
    offset_ : float
        ``-threshold_``, so that ``decision_function = score_samples - offset_``.
    model_ : VAE
        The fitted network (``vae_core.network.model``), on ``device``: the best epoch's.
    members_ : list of VAE
        The networks each score averages: ``[model_]``, then the snapshot, if any.
    snapshot_epoch_ : int or None
        The snapshot's epoch (0-based, as ``best_epoch_``); None without one.
    config_ : VAEConfig
        The network's architecture: likelihood layout, sizes, variance settings.
    preprocessor_ : TabularPreprocessor or ImagePreprocessor
        The fitted preprocessing from the data to model input.
    score_eps_ : torch.Tensor of shape (n_score_samples, 1, latent_dim)
        The fixed quasi-Monte Carlo noise every score uses (deterministic scores).
    history_ : list of dict
        Per epoch: training and validation loss and its terms (``EpochLog.to_dict``).
    best_epoch_ : int
        The epoch whose weights were kept (early stopping).
    loss_cutoff_ : float or None
        The refinement's cutoff on the trimmed model's -ELBO (nats); None without it.
    n_left_out_ : int or None
        Training rows the cutoff left out (validation rows aside); None without it.
    training_fingerprint_ : str
        SHA-256 of the training data's model input (``fingerprint``).
    n_features_in_ : int
        Input columns (tables) or values per image (images) seen at fit.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Column names; set only when X at fit was a DataFrame.
    score_kind_ : {"negative_elbo", "iwae"}
        The score ``threshold_`` applies to (``calibrate(score=...)``).
    iwae_samples_ : int
        k of the IWAE score when ``score_kind_ == "iwae"``.
    calibration_ : dict or None
        How ``calibrate`` set the threshold (policy, parameters, calibration size and
        fingerprint, score deciles); None before ``calibrate``.
    probability_ : AnomalyProbability or None
        The map from score to anomaly probability fitted by ``calibrate``; None before.

    The defaults for tables were chosen on half of the shared benchmark sets and confirmed on
    the other half (docs/benchmarks.md, "What moved the numbers").
    """

    def __init__(
        self,
        *,
        latent_dim: int = 8,
        hidden_dims: Sequence[int] = (128, 64),
        epochs: int = 200,
        batch_size: int = 128,
        lr: float = 3e-3,
        contamination: float = 0.1,
        random_state: int = 0,
        device: str = "cpu",
        likelihood: str = "gaussian",
        architecture: str = "mlp",
        n_score_samples: int = 8,
        validation_fraction: float = 0.1,
        kl_warmup_epochs: int = 0,
        patience: int = 5,
        min_variance: float = 1e-3,
        weight_decay: float = 0.0,
        clip_grad_norm: float | None = 10.0,
        quantization_floor: bool = True,
        decoder_variance: str | None = None,
        max_variance: float | None = None,
        trim_fraction: float = 0.3,
        scaling: str = "robust",
        trim_validation: bool = True,
        refine_cutoff: float | None = None,
        point_mass_share: float | None = None,
        encoder_clip: float | None = None,
        missing: str = "marginalise",
        snapshot_fraction: float | None = 0.5,
    ):
        self.latent_dim = latent_dim
        self.hidden_dims = hidden_dims
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.contamination = contamination
        self.random_state = random_state
        self.device = device
        self.likelihood = likelihood
        self.architecture = architecture
        self.n_score_samples = n_score_samples
        self.validation_fraction = validation_fraction
        self.kl_warmup_epochs = kl_warmup_epochs
        self.patience = patience
        self.min_variance = min_variance
        self.weight_decay = weight_decay
        self.clip_grad_norm = clip_grad_norm
        self.quantization_floor = quantization_floor
        self.decoder_variance = decoder_variance
        self.max_variance = max_variance
        self.trim_fraction = trim_fraction
        self.scaling = scaling
        self.trim_validation = trim_validation
        self.refine_cutoff = refine_cutoff
        self.point_mass_share = point_mass_share
        self.encoder_clip = encoder_clip
        self.missing = missing
        self.snapshot_fraction = snapshot_fraction

    # ---- fitting -------------------------------------------------------------------------
    def _check_params(self) -> None:
        """ValueError naming the first argument out of its limits. Each limit is written
        once: the architecture and training arguments go through the config's own sections
        (``ModelConfig``, ``TrainingConfig``, which ``mlflow.yml`` is checked against), so the
        library and the pipeline refuse the same values; ``contamination``, which only the
        library takes, is checked here."""
        for section in (ModelConfig, TrainingConfig):
            values = {name: _plain(getattr(self, name)) for name in section.model_fields}
            try:
                section.model_validate(values)
            except ValidationError as exc:
                error = exc.errors()[0]
                name = str(error["loc"][0]) if error["loc"] else section.__name__
                got = values.get(name, "")
                raise ValueError(f"{name}: {error['msg']} (got {got!r})") from None
        if not 0.0 < self.contamination < 0.5:
            raise ValueError(f"contamination must be in (0, 0.5), got {self.contamination}")
        check_device(self.device)

    def _decoder_variance(self) -> str:
        """The decoder variance in use: as given, else "shared" for images and "sample" for
        tables (see the class docstring)."""
        if self.decoder_variance is not None:
            return self.decoder_variance
        return "shared" if self.architecture == "conv" else "sample"

    def _train_config(self) -> TrainConfig:
        return TrainConfig(
            epochs=int(self.epochs),
            batch_size=int(self.batch_size),
            lr=float(self.lr),
            weight_decay=float(self.weight_decay),
            kl_warmup_epochs=int(self.kl_warmup_epochs),
            patience=int(self.patience),
            clip_grad_norm=self.clip_grad_norm,
            seed=int(self.random_state),
            device=self.device,
            trim_fraction=float(self.trim_fraction),
            trim_validation=bool(self.trim_validation),
            refine_cutoff=None if self.refine_cutoff is None else float(self.refine_cutoff),
            snapshot_fraction=_plain(self.snapshot_fraction),  # checked: None or in (0, 1)
        )

    def fit(self, X, y=None, callbacks: Sequence[EpochCallback] = ()) -> VAEDetector:
        """Fit preprocessing and the VAE on X (unsupervised; y is ignored). Returns self.

        X : DataFrame or array (n, d) for tables; array (n, H, W) or (n, C, H, W) for images.
        callbacks : called after each epoch with an ``EpochLog`` (progress bars, MLflow).
        """
        self._check_params()
        images = self.architecture == "conv"
        if images:
            # Raw pixels (an ndarray, or files read on demand: images.ImageFiles) are turned
            # into model input a minibatch at a time: memory ~ the uint8 images, or one batch.
            X = image_rows(X)
            pre = ImagePreprocessor(self.likelihood).fit(X)
            n, d = len(X), math.prod(pre.image_shape)
        else:
            pre = TabularPreprocessor(self.likelihood, self.scaling, self.point_mass_share)
            u = pre.fit(X).transform(X)
            n, d = u.shape
        cfg = VAEConfig(
            layout=pre.layout,
            latent_dim=int(self.latent_dim),
            hidden_dims=tuple(int(h) for h in self.hidden_dims),
            architecture=self.architecture,
            image_shape=pre.image_shape if images else None,
            min_variance=float(self.min_variance),
            decoder_variance=self._decoder_variance(),
            max_variance=None if self.max_variance is None else float(self.max_variance),
            encoder_clip=None if self.encoder_clip is None else float(self.encoder_clip),
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(self.random_state))
            model = VAE(cfg)
        self.preprocessor_ = pre
        floored = self.quantization_floor and cfg.layout.n_gaussian > 0
        if images:  # one pass over the images for both
            floor, self.training_fingerprint_ = scan_images(pre, X, floored)
        else:
            observed = observed_gaussians(torch.from_numpy(u), cfg.layout).numpy() > 0.5
            floor = grid_variance(u[:, : cfg.layout.n_gaussian], observed) if floored else None
            self.training_fingerprint_ = fingerprint(u)
        if floored:
            model.set_variance_floor(torch.from_numpy(floor[: cfg.layout.n_gaussian]))
        model = model.to(self.device)
        rng = np.random.default_rng(int(self.random_state))
        order = rng.permutation(n)
        n_val = max(1, round(self.validation_fraction * n))
        val_idx, train_idx = order[:n_val], order[n_val:]
        if images:
            x_train = PixelRows(X, pre, train_idx, self.device)
            x_val = PixelRows(X, pre, val_idx, self.device)
        else:
            x = torch.from_numpy(u).to(self.device)
            x_train, x_val = x[torch.from_numpy(train_idx)], x[torch.from_numpy(val_idx)]
        result = train_vae(model, x_train, x_val, self._train_config(), callbacks)

        self.model_, self.config_ = model, cfg
        self.members_, self.snapshot_epoch_ = result.members(model), result.snapshot_epoch
        self.history_ = [log.to_dict() for log in result.history]
        self.best_epoch_ = result.best_epoch
        self.loss_cutoff_, self.n_left_out_ = result.loss_cutoff, result.n_left_out
        self.score_eps_ = self._noise(int(self.n_score_samples), salt=1)
        self.n_features_in_ = d if images else len(pre.feature_names)
        if isinstance(X, pd.DataFrame):
            self.feature_names_in_ = np.asarray(pre.feature_names, dtype=object)
        self.score_kind_, self.iwae_samples_ = "negative_elbo", 64
        self.calibration_, self.probability_ = None, None
        self.set_threshold(float(np.quantile(self.anomaly_score(X), 1.0 - self.contamination)))
        return self

    def model_input(self, X, rows=None) -> np.ndarray:
        """The rows ``rows`` (positions; default all) of X as the model sees them, float32
        (n, input_dim): standardised numbers, indicators and one-hot blocks, or pixels."""
        check_is_fitted(self, "preprocessor_")
        return self.preprocessor_.transform_rows(X, rows)

    def model_input_blocks(self, X):
        """``model_input`` of all of X in consecutive blocks (images: memory ~ one block)."""
        check_is_fitted(self, "preprocessor_")
        yield from self.preprocessor_.transform_blocks(X)

    def calibrate(self, X, y=None, policy=None, score: str = "negative_elbo", k: int = 64):
        """Set ``threshold_`` on held-out calibration data by a policy; returns self.

        X, y : calibration rows the model was not trained on; y (1 = anomaly) is optional.
        policy : a ``vae_core.foundations.calibrate`` policy (default: target FPR of 1% on
            normal rows).
        score : "negative_elbo" (``anomaly_score``) or "iwae" (``-log_likelihood(X, k)``); the
            threshold, ``score_samples`` and ``predict`` then use that score.

        Records how the threshold was set in ``calibration_`` (policy, parameters, calibration
        size and fingerprint) and fits ``anomaly_probability`` on the same scores.
        """
        from vae_core.foundations.calibrate import TargetFPR, calibrate_threshold
        from vae_core.foundations.score_distribution import AnomalyProbability

        if score not in ("negative_elbo", "iwae"):
            raise ValueError(f"score must be 'negative_elbo' or 'iwae', got {score!r}")
        self.score_kind_, self.iwae_samples_ = score, int(k)
        scores = self.threshold_score(X)
        result = calibrate_threshold(
            scores, y, policy=policy or TargetFPR(fpr=0.01), score_name=score
        )
        self.set_threshold(result.threshold)
        normal = scores if y is None else scores[np.asarray(y) == 0]
        data_id = {
            "calibration_fingerprint": self.preprocessor_.input_fingerprint(X),
            # Reference for drift checks at scoring time (population stability index).
            "score_deciles": np.quantile(normal, np.linspace(0.1, 0.9, 9)).tolist(),
        }
        self.calibration_ = replace(result, details=result.details | data_id).to_dict()
        self.probability_ = AnomalyProbability().fit(scores, y)
        return self

    def set_threshold(self, threshold: float) -> None:
        """Set ``threshold_`` (negative ELBO, nats) and ``offset_ = -threshold_``."""
        self.threshold_ = float(threshold)
        self.offset_ = -self.threshold_

    # ---- model input for scoring (the scores: ScoringMixin, in detector_scoring) -------------
    def _scoring_blocks(self, X, chunk: int):
        """(model input, observed mask or None) of X in blocks of whole chunks of ``chunk``
        rows, for ``_chunked``: the preprocessor's ``scoring_blocks``, missing cells left out
        of the likelihood as ``missing`` says."""
        marginalise = self.missing == "marginalise"
        return self.preprocessor_.scoring_blocks(X, chunk, marginalise)

    # ---- the sklearn outlier contract ---------------------------------------------------------
    def score_samples(self, X) -> np.ndarray:
        """Opposite of ``threshold_score``: the ELBO in nats (or the IWAE log-likelihood after
        ``calibrate(score="iwae")``); higher = more normal. (n,)"""
        return -self.threshold_score(X)

    def decision_function(self, X) -> np.ndarray:
        """score_samples - offset_; negative = anomaly. (n,)"""
        return self.score_samples(X) - self.offset_

    def predict(self, X) -> np.ndarray:
        """-1 for anomalies (threshold_score > threshold_), +1 otherwise. (n,)"""
        return np.where(self.decision_function(X) < 0, -1, 1)

    # ---- persistence ---------------------------------------------------------------------------
    def save(self, path) -> None:
        """Write weights (state_dict) and JSON to the folder ``path``; no pickle."""
        save_detector(self, path)

    @classmethod
    def load(cls, path) -> VAEDetector:
        """Load a detector written by ``save``; scores are bit-identical to the saved one's."""
        return load_detector(path, cls)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        tags.input_tags.string = True
        tags.input_tags.categorical = True
        tags.non_deterministic = False
        return tags


def _plain(value):
    """A NumPy scalar as the Python number it holds (what the config's sections take)."""
    return value.item() if isinstance(value, np.generic) else value
