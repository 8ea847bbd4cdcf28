"""The variational auto-encoder of Kingma & Welling (2014), "Auto-Encoding Variational Bayes".

One pure file: a config dataclass, the encoder q(z|x), the reparameterization and the decoder
p(x|z). No I/O, no globals. The likelihood terms live in ``likelihood.py``.

Notation follows the paper (section 2.4 and appendix C):

* encoder   q_phi(z|x)   = N(z; mu, diag sigma^2), outputs (mu, log sigma^2)       (eq. 9)
* reparam.  z = mu + sigma * eps, eps ~ N(0, I)                                     (sec. 2.4)
* decoder   p_theta(x|z): a Gaussian with mean and *learned* per-sample variance    (app. C.2)
            for continuous features, Bernoulli for binary ones                     (app. C.1)
            and, our extension for categorical columns, a categorical distribution.

The decoder emits one flat parameter vector per row, laid out by :class:`FeatureLayout`.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class FeatureLayout:
    """How the columns of the model's input are modelled.

    The model input is the concatenation, in this order, of ``n_gaussian`` continuous columns,
    ``n_bernoulli`` binary columns (values in [0, 1]) and one one-hot block per categorical
    column (``categorical_sizes`` gives the block widths).
    """

    n_gaussian: int = 0
    n_bernoulli: int = 0
    categorical_sizes: tuple[int, ...] = ()
    # For each Bernoulli column, the Gaussian column it gates, or -1: where the indicator is 1
    # (the value is missing, or sits on the column's point mass) that Gaussian column is left
    # out of p(x|z), which is then the indicator's probability alone. Empty: no gates.
    gates: tuple[int, ...] = ()

    @property
    def input_dim(self) -> int:
        return self.n_gaussian + self.n_bernoulli + sum(self.categorical_sizes)

    @property
    def param_dim(self) -> int:
        """Width of the decoder output: (mean, raw variance) per Gaussian, one logit otherwise."""
        return 2 * self.n_gaussian + self.n_bernoulli + sum(self.categorical_sizes)


@dataclass(frozen=True)
class VAEConfig:
    """Architecture of a VAE. Serialised as JSON next to the weights."""

    layout: FeatureLayout
    latent_dim: int = 8
    hidden_dims: tuple[int, ...] = (128, 64)
    architecture: str = "mlp"  # "mlp" for tables, "conv" for images
    image_shape: tuple[int, int, int] | None = None  # (channels, height, width) for "conv"
    min_variance: float = 1e-3  # floor on the decoder variance, in model-input units
    # How the decoder variance of the Gaussian columns is parameterised:
    # "sample": a function of z, per row and column (AEVB appendix C.2);
    # "feature": one learned variance per column, shared by every row;
    # "shared": one learned variance per channel (images) or for the whole row (tables), as in
    #   the calibrated decoders of Rybkin et al. (2021), so no pixel can buy likelihood by
    #   declaring its own error large.
    decoder_variance: str = "sample"
    # Optional ceiling on the decoder variance (model-input units): a conditional variance
    # above the marginal one (1 for standardised columns) lets p(x|z) explain anything away.
    max_variance: float | None = None
    # Optional bound on what the encoder sees of the Gaussian columns (model-input units):
    # q(z|x) may be any function of x, and clipping its input keeps the network inside the
    # range it was trained on; the likelihood still scores the value itself.
    encoder_clip: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> VAEConfig:
        d = dict(d)
        layout = d.pop("layout")
        layout["categorical_sizes"] = tuple(layout.get("categorical_sizes", ()))
        layout["gates"] = tuple(layout.get("gates", ()))
        image_shape = d.pop("image_shape", None)
        return cls(
            layout=FeatureLayout(**layout),
            hidden_dims=tuple(d.pop("hidden_dims")),
            image_shape=tuple(image_shape) if image_shape is not None else None,
            **d,
        )


@dataclass
class DecoderOutput:
    """Parameters of p(x|z) for a batch of latent codes, shape (n, ...) each."""

    mean: torch.Tensor  # (n, n_gaussian): Gaussian means
    log_var: torch.Tensor  # (n, n_gaussian): Gaussian log variances (floored)
    logits: torch.Tensor  # (n, n_bernoulli + sum(categorical_sizes)): discrete logits


# Encoder log-variance is clamped only to keep exp() finite; it never binds in normal training.
_LOG_VAR_MIN, _LOG_VAR_MAX = -30.0, 20.0


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for n_in, n_out in itertools.pairwise(sizes):
        layers += [nn.Linear(n_in, n_out), nn.SiLU()]
    return nn.Sequential(*layers)


class _GaussianEncoder(nn.Module):
    """q(z|x) = N(mu, diag sigma^2): ``head(body(x))`` split into mu and log sigma^2 (clamped
    for stability). Subclasses build ``body`` (features) and ``head`` (a linear layer)."""

    body: nn.Module
    head: nn.Linear

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, log_var = self.head(self.body(x)).chunk(2, dim=-1)
        return mu, log_var.clamp(_LOG_VAR_MIN, _LOG_VAR_MAX)


class MLPEncoder(_GaussianEncoder):
    """x (n, d) -> (mu, log sigma^2), each (n, latent_dim): eq. (12) of the paper, deeper."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        sizes = [cfg.layout.input_dim, *cfg.hidden_dims]
        self.body = _mlp(sizes)
        self.head = nn.Linear(sizes[-1], 2 * cfg.latent_dim)


class MLPDecoder(nn.Module):
    """z (n, latent_dim) -> flat parameters of p(x|z), (n, layout.param_dim)."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        sizes = [cfg.latent_dim, *reversed(cfg.hidden_dims)]
        self.body = _mlp(sizes)
        self.head = nn.Linear(sizes[-1], cfg.layout.param_dim)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(z))


def _conv_sizes(height: int, width: int, n_layers: int) -> list[tuple[int, int]]:
    """Spatial sizes after each stride-2 conv (kernel 4, padding 1): floor(size / 2)."""
    sizes = [(height, width)]
    for _ in range(n_layers):
        h, w = sizes[-1]
        sizes.append((h // 2, w // 2))
    return sizes


class ConvEncoder(_GaussianEncoder):
    """Images (n, C, H, W) -> (mu, log sigma^2): stride-2 convolutions, then a linear head."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        channels, height, width = cfg.image_shape
        widths = [channels, *cfg.hidden_dims]
        sizes = _conv_sizes(height, width, len(cfg.hidden_dims))
        if min(sizes[-1]) < 1:
            raise ValueError(f"image {height}x{width} is too small for {len(widths) - 1} layers")
        layers: list[nn.Module] = []
        for c_in, c_out in itertools.pairwise(widths):
            layers += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), nn.SiLU()]
        self.body = nn.Sequential(*layers, nn.Flatten())
        h, w = sizes[-1]
        self.head = nn.Linear(widths[-1] * h * w, 2 * cfg.latent_dim)


class ConvDecoder(nn.Module):
    """z -> per-pixel parameters, flattened to (n, layout.param_dim) in the layout's order."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        channels, height, width = cfg.image_shape
        widths = [*reversed(cfg.hidden_dims)]
        sizes = list(reversed(_conv_sizes(height, width, len(cfg.hidden_dims))))
        self.start = (widths[0], *sizes[0])
        self.gaussian = cfg.layout.n_gaussian > 0
        out_channels = 2 * channels if self.gaussian else channels
        self.fc = nn.Linear(cfg.latent_dim, math.prod(self.start))
        layers: list[nn.Module] = [nn.SiLU()]
        outs = [*widths[1:], out_channels]
        for i, (c_in, c_out) in enumerate(zip(widths, outs, strict=True)):
            (h_in, w_in), (h_out, w_out) = sizes[i], sizes[i + 1]
            pad = (h_out - 2 * h_in, w_out - 2 * w_in)  # recovers odd sizes exactly
            layers.append(nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, output_padding=pad))
            if i < len(outs) - 1:
                layers.append(nn.SiLU())
        self.body = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out = self.body(self.fc(z).view(-1, *self.start))
        if not self.gaussian:
            return out.flatten(1)
        mean, raw_var = out.chunk(2, dim=1)
        return torch.cat([mean.flatten(1), raw_var.flatten(1)], dim=1)


class VAE(nn.Module):
    """q(z|x), the reparameterization and p(x|z). ``forward`` returns what the loss needs."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.cfg = cfg
        if cfg.architecture == "mlp":
            self.encoder, self.decoder = MLPEncoder(cfg), MLPDecoder(cfg)
        elif cfg.architecture == "conv":
            if cfg.image_shape is None:
                raise ValueError("architecture='conv' needs image_shape=(channels, height, width)")
            self.encoder, self.decoder = ConvEncoder(cfg), ConvDecoder(cfg)
        else:
            raise ValueError(f"architecture must be 'mlp' or 'conv', got {cfg.architecture!r}")
        # Per-column floor on the decoder variance (model-input units); see set_variance_floor.
        floor = torch.full((cfg.layout.n_gaussian,), float(cfg.min_variance))
        self.register_buffer("variance_floor", floor)
        if cfg.decoder_variance not in ("sample", "feature", "shared"):
            raise ValueError(
                "decoder_variance must be 'sample', 'feature' or 'shared', "
                f"got {cfg.decoder_variance!r}"
            )
        if cfg.decoder_variance != "sample":
            # softplus(log(e - 1)) = 1: unit variance at the start, in standardised units.
            start = math.log(math.expm1(1.0))
            self.raw_variance = nn.Parameter(torch.full((self._n_variances(),), start))

    def _n_variances(self) -> int:
        """Learned variances for decoder_variance "feature" (per column) or "shared"."""
        if self.cfg.decoder_variance == "feature":
            return self.cfg.layout.n_gaussian
        return self.cfg.image_shape[0] if self.cfg.architecture == "conv" else 1

    def _raw_variance(self, raw_from_z: torch.Tensor) -> torch.Tensor:
        """Unconstrained variance parameters for the configured kind: (n, n_gaussian) for
        "sample", one row (n_gaussian,) that broadcasts over the rows otherwise."""
        if self.cfg.decoder_variance == "sample":
            # A contiguous copy: the decoder output's column slice is strided, and the
            # elementwise kernels that follow run 10x slower on it than on the copy.
            return raw_from_z.contiguous()
        raw = self.raw_variance
        if self.cfg.decoder_variance == "shared" and self.cfg.architecture == "conv":
            pixels = self.cfg.layout.n_gaussian // len(raw)
            raw = raw.repeat_interleave(pixels)  # (C,) -> (C * H * W,) in (C, H, W) order
        return raw

    def set_variance_floor(self, floor: torch.Tensor) -> None:
        """Raise the floor per Gaussian column (it never goes below ``cfg.min_variance``)."""
        self.variance_floor.copy_(torch.clamp(floor, min=float(self.cfg.min_variance)))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of q(z|x), each (n, latent_dim)."""
        if self.cfg.architecture == "conv":
            x = x.view(-1, *self.cfg.image_shape)
        elif self.cfg.encoder_clip is not None:
            n_g, c = self.cfg.layout.n_gaussian, float(self.cfg.encoder_clip)
            x = torch.cat([x[:, :n_g].clamp(-c, c), x[:, n_g:]], dim=1)
        return self.encoder(x)

    @staticmethod
    def reparameterize(mu: torch.Tensor, log_var: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """z = mu + sigma * eps (section 2.4); eps (L, n, k) or (L, 1, k) -> z (L, n, k)."""
        return mu + torch.exp(0.5 * log_var) * eps

    def decode(self, z: torch.Tensor) -> DecoderOutput:
        """Parameters of p(x|z) for z of shape (..., latent_dim)."""
        lead = z.shape[:-1]
        flat = self.decoder(z.reshape(-1, z.shape[-1]))
        n_g = self.cfg.layout.n_gaussian
        # Both decoders emit [means | raw variances | logits] in the layout's order.
        mean, raw_var, logits = flat[:, :n_g], flat[:, n_g : 2 * n_g], flat[:, 2 * n_g :]
        # Learned variance with a floor (appendix C.2 learns log sigma^2 freely; the floor stops
        # the likelihood from diverging on near-duplicate or near-constant columns).
        raw_var = self._raw_variance(raw_var)
        if self.cfg.max_variance is None:
            var = self.variance_floor + F.softplus(raw_var)
        else:
            span = (float(self.cfg.max_variance) - self.variance_floor).clamp(min=0.0)
            var = self.variance_floor + span * torch.sigmoid(raw_var)
        return DecoderOutput(
            mean=mean.reshape(*lead, n_g),
            log_var=torch.log(var).expand(len(flat), n_g).reshape(*lead, n_g),
            logits=logits.reshape(*lead, logits.shape[-1]),
        )

    def forward(self, x: torch.Tensor, eps: torch.Tensor):
        """Encode, sample z with the given noise eps (L, n or 1, latent_dim), decode.

        Returns (mu, log_var, z, decoder output); z has shape (L, n, latent_dim).
        """
        mu, log_var = self.encode(x)
        z = self.reparameterize(mu, log_var, eps)
        return mu, log_var, z, self.decode(z)
