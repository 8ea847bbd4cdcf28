"""A generic training loop for the VAE: Adam on minibatches, early stopping, callbacks.

Progress bars, MLflow logging or a custom stop rule plug in from outside through callbacks
(``on_epoch_end(log)``), as in minGPT's trainer. Training is seeded: the same data, config and
seed give the same weights on the same machine and thread count.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch

from vae_core.network.likelihood import negative_elbo, training_loss, trimmed_mean
from vae_core.network.model import VAE


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings. ``epochs`` is a maximum: early stopping usually ends sooner."""

    epochs: int = 200
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 0.0
    kl_warmup_epochs: int = 0  # linear KL weight 0 -> 1 over these epochs (0 = off)
    # Epochs without validation improvement before stopping. Short on purpose: the data are
    # contaminated, and stopping early keeps the model from fitting the anomalies too
    # (ADBench protocol, 16 sets x 3 seeds: mean ROC-AUC 0.836 with 5 against 0.829 with 15;
    # docs/benchmarks.md).
    patience: int = 5
    min_delta: float = 1e-4  # relative improvement that counts, of |best validation loss|
    clip_grad_norm: float | None = 10.0
    n_mc_samples: int = 1  # L in eq. (7); the paper uses L = 1 with minibatches of 100
    # Share of each minibatch (the rows with the highest loss) left out of the gradient and of
    # the validation loss, from epoch ``trim_warmup_epochs`` on: training data that holds
    # anomalies then shapes the model less (0 = the plain negative ELBO).
    trim_fraction: float = 0.0
    trim_warmup_epochs: int = 2
    trim_validation: bool = True  # trim the early-stopping loss as well
    # After a trimmed fit, the data decide which rows stay out: a row is left out when the
    # trimmed model's negative ELBO of it lies more than ``refine_cutoff`` robust standard
    # deviations (1.4826 MAD) above the median of the training rows' (Hampel's rule). The
    # model is then refined on every other row with the full negative ELBO, so on clean data
    # (almost nothing left out) the objective is the paper's, exactly. None: no refinement.
    refine_cutoff: float | None = None
    refine_lr_factor: float = 0.1  # the refinement's Adam step, a fraction of ``lr``
    # Keep, beside the best weights, the network as it was after this fraction of the epochs
    # up to the best one (a snapshot of the same run): a second member whose scores are
    # averaged with the final network's. Deep generative models fit the bulk of the data
    # before its outliers (the inlier-memorisation effect; Kim et al., ODIM, ICML 2024), so the
    # earlier network still finds improbable what the final one may have learnt as a mode of
    # its own: a compact cluster of anomalies in the training data. None: one network.
    snapshot_fraction: float | None = None
    seed: int = 0
    device: str = "cpu"


@dataclass
class EpochLog:
    """What one epoch did; all losses are mean negative ELBO terms in nats per row."""

    epoch: int
    train_loss: float  # beta * KL + reconstruction, the minimised objective
    train_kl: float
    train_reconstruction: float
    val_loss: float  # negative ELBO (beta = 1) on the validation split
    beta: float
    seconds: float
    phase: str = "fit"  # "fit" (the trimmed objective) or "refine" (full ELBO, kept rows)

    def to_dict(self) -> dict:
        return asdict(self)


class StopTraining(Exception):
    """Raise from a callback to end training after the current epoch."""


EpochCallback = Callable[[EpochLog], None]


@dataclass
class TrainResult:
    history: list[EpochLog] = field(default_factory=list)
    best_epoch: int = 0
    best_val_loss: float = math.inf
    stopped_early: bool = False
    # The refinement (``TrainConfig.refine_cutoff``): the loss above which a training row was
    # left out, in nats, and how many training rows that left out; None without refinement.
    loss_cutoff: float | None = None
    n_left_out: int | None = None
    # ``TrainConfig.snapshot_fraction``: the weights of the fitting phase's epoch
    # ``snapshot_epoch`` (0-based, as ``best_epoch``); None without a snapshot.
    snapshot_state: dict | None = field(default=None, repr=False)
    snapshot_epoch: int | None = None

    def members(self, model: VAE) -> list[VAE]:
        """``[model]`` and, with a snapshot, a copy of it holding the snapshot's weights."""
        if self.snapshot_state is None:
            return [model]
        snapshot = copy.deepcopy(model)
        snapshot.load_state_dict(self.snapshot_state)
        return [model, snapshot.eval()]


def kl_weight(epoch: int, warmup_epochs: int) -> float:
    """KL warm-up (Bowman et al. 2016; Sønderby et al. 2016): beta rises linearly to 1."""
    if warmup_epochs <= 0:
        return 1.0
    return min(1.0, (epoch + 1) / warmup_epochs)


def _rows(x, idx: torch.Tensor) -> torch.Tensor:
    """Rows ``idx`` (CPU indices) of a tensor or a row source (see ``train_vae``)."""
    return x[idx.to(x.device)] if isinstance(x, torch.Tensor) else x[idx]


def _device(model: VAE) -> torch.device:
    return next(model.parameters()).device


def _minibatches(x, order: torch.Tensor, size: int):
    """The minibatches of ``x`` in ``order``. From a row source (which reads, e.g. decodes image
    files), the next batch is read on a second thread while the current one trains, so reading
    overlaps the network; the batches and their order are the same either way."""
    picks = [order[i : i + size] for i in range(0, len(order), size)]
    if isinstance(x, torch.Tensor):
        yield from (_rows(x, idx) for idx in picks)
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="vae-read") as pool:
        pending = pool.submit(_rows, x, picks[0]) if picks else None
        for k in range(len(picks)):
            batch = pending.result()
            if k + 1 < len(picks):
                pending = pool.submit(_rows, x, picks[k + 1])
            yield batch


def _train_epoch(model, opt, x, cfg: TrainConfig, beta: float, trim: float, gen):
    model.train()
    order = torch.randperm(len(x), generator=gen, device="cpu")
    sums, n_seen = np.zeros(3), 0
    for batch in _minibatches(x, order, cfg.batch_size):
        eps = torch.randn(cfg.n_mc_samples, len(batch), model.cfg.latent_dim, generator=gen).to(
            batch.device
        )
        loss, kl, rec = training_loss(model, batch, eps, beta, trim)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.clip_grad_norm:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad_norm)
        opt.step()
        sums += len(batch) * np.array([loss.item(), kl.item(), rec.item()])
        n_seen += len(batch)
    return sums / n_seen


def _improves(val: float, best: float, min_delta: float) -> bool:
    """Progress counts when the loss drops by more than ``min_delta`` of its magnitude."""
    return val < best - min_delta * abs(best)


@torch.no_grad()
def _validation_loss(model: VAE, x_val, eps: torch.Tensor, batch: int, trim: float) -> float:
    """Mean negative ELBO of the validation rows (trimmed as the training loss is)."""
    model.eval()
    per_row = torch.cat(
        [
            negative_elbo(model, x_val[i : i + batch], eps[:, i : i + batch])
            for i in range(0, len(x_val), batch)
        ]
    )
    return trimmed_mean(per_row.double(), trim).item()


def train_vae(
    model: VAE,
    x_train,
    x_val,
    cfg: TrainConfig,
    callbacks: Sequence[EpochCallback] = (),
) -> TrainResult:
    """Fit ``model`` in place by minimising the mean negative ELBO; restore the best epoch.

    Parameters
    ----------
    x_train, x_val : (n, d) float tensors in the model's input space, or row sources: objects
        with ``len`` whose ``[index]`` (a CPU LongTensor of positions, or a slice) returns
        those rows as such a tensor on the model's device. A source reads rows when asked
        (images from their files), so memory is bounded by a minibatch, not the data; the
        same rows in the same order give the same weights as the tensor they stand for.
    callbacks : called after every epoch with its :class:`EpochLog`; may raise StopTraining.

    Early stopping watches the validation negative ELBO (always with beta = 1, estimated with
    fixed noise so epochs are compared on equal terms) and keeps the best weights.

    With ``cfg.trim_fraction`` > 0 and ``cfg.refine_cutoff`` set, training has two phases:
    the trimmed fit, then a refinement on the rows the trimmed model does not find
    improbable (see ``TrainConfig.refine_cutoff``), with the full negative ELBO at
    ``refine_lr_factor * lr``, early-stopped on the validation rows under the same cutoff.
    """
    gen = torch.Generator().manual_seed(cfg.seed)
    val_eps = torch.randn(1, len(x_val), model.cfg.latent_dim, generator=gen).to(_device(model))
    result = TrainResult()
    stop = _run_phase(model, x_train, x_val, val_eps, cfg, callbacks, gen, result, "fit")
    if stop or cfg.refine_cutoff is None or cfg.trim_fraction <= 0.0:
        model.eval()
        return result
    losses = _per_row_loss(model, x_train, gen, 4 * cfg.batch_size)
    median = losses.median()
    cutoff = float(median + cfg.refine_cutoff * 1.4826 * (losses - median).abs().median())
    kept = torch.nonzero(losses <= cutoff).flatten()
    val_losses = _per_row_loss(model, x_val, gen, 4 * cfg.batch_size)
    kept_val = torch.nonzero(val_losses <= cutoff).flatten()
    result.loss_cutoff, result.n_left_out = cutoff, int(len(x_train) - len(kept))
    if len(kept) < 2 or len(kept_val) < 1:  # nothing sensible to refine on
        model.eval()
        return result
    refine = replace(
        cfg,
        lr=cfg.lr * cfg.refine_lr_factor,
        trim_fraction=0.0,
        trim_validation=False,
        kl_warmup_epochs=0,
    )
    _run_phase(
        model,
        _subset(x_train, kept),
        _subset(x_val, kept_val),
        val_eps[:, kept_val.to(val_eps.device)],
        refine,
        callbacks,
        gen,
        result,
        "refine",
    )
    model.eval()
    return result


def _subset(x, kept: torch.Tensor):
    """Rows ``kept`` of ``x``: a tensor of them, or a row source that reads them when asked."""
    return x[kept.to(x.device)] if isinstance(x, torch.Tensor) else _Subset(x, kept)


class _Subset:
    """Rows ``kept`` (CPU LongTensor of positions) of a tensor or row source, as a row source."""

    def __init__(self, x, kept: torch.Tensor):
        self.x, self.kept = x, kept

    def __len__(self) -> int:
        return len(self.kept)

    def __getitem__(self, idx):
        if isinstance(idx, slice):
            idx = torch.arange(len(self.kept))[idx]
        return _rows(self.x, self.kept[idx])


@torch.no_grad()
def _per_row_loss(model: VAE, x, gen: torch.Generator, batch: int) -> torch.Tensor:
    """Negative ELBO of every row of ``x`` (one fresh draw of z per row), on the CPU. (n,)"""
    model.eval()
    out = []
    for start in range(0, len(x), batch):
        idx = torch.arange(start, min(start + batch, len(x)))
        rows = _rows(x, idx)
        eps = torch.randn(1, len(rows), model.cfg.latent_dim, generator=gen).to(rows.device)
        out.append(negative_elbo(model, rows, eps).double().cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def _run_phase(model, x_train, x_val, val_eps, cfg, callbacks, gen, result, phase) -> bool:
    """Epochs of one phase with early stopping; loads the phase's best weights into ``model``
    (a refinement starts from the weights it is given, which stay if it never improves on
    them). Returns True when a callback stopped training."""
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    batch = 4 * cfg.batch_size
    best_state, best_val, stale, stopped = None, math.inf, 0, False
    if phase == "refine":
        best_state = copy.deepcopy(model.state_dict())
        best_val = _validation_loss(model, x_val, val_eps, batch, 0.0)
    first = len(result.history)
    snapshots = _Snapshots(cfg.snapshot_fraction if phase == "fit" else None)
    for epoch in range(first, first + cfg.epochs):
        started = time.perf_counter()
        beta = kl_weight(epoch - first, cfg.kl_warmup_epochs)
        trim = cfg.trim_fraction if epoch - first >= cfg.trim_warmup_epochs else 0.0
        loss, kl, rec = _train_epoch(model, opt, x_train, cfg, beta, trim, gen)
        val = _validation_loss(model, x_val, val_eps, batch, trim if cfg.trim_validation else 0.0)
        if not math.isfinite(val) or not math.isfinite(loss):
            raise FloatingPointError(f"training diverged at epoch {epoch} (loss {loss}, val {val})")
        log = EpochLog(epoch, loss, kl, rec, val, beta, time.perf_counter() - started, phase)
        result.history.append(log)
        # Only a fully weighted KL makes the validation loss a negative ELBO worth keeping.
        if beta >= 1.0:
            if best_state is None or _improves(val, best_val, cfg.min_delta):
                best_val, stale = val, 0
                result.best_epoch, result.best_val_loss = epoch, val
                best_state = copy.deepcopy(model.state_dict())
            else:
                stale += 1
        snapshots.after_epoch(epoch, model, result.best_epoch)
        try:
            for callback in callbacks:
                callback(log)
        except StopTraining:
            result.stopped_early = stopped = True
            break
        if stale >= cfg.patience:
            result.stopped_early = True
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    if phase == "fit":
        result.snapshot_epoch, result.snapshot_state = snapshots.chosen(result.best_epoch)
    return stopped


class _Snapshots:
    """The weights of the epochs a snapshot may still be taken from: epoch
    ``round(fraction * (best + 1)) - 1`` of the best epoch known so far, or a later one when
    the best moves on. Older weights are dropped as the best epoch advances, so memory
    holds about ``(1 - fraction) * best + patience`` copies of the (small) network."""

    def __init__(self, fraction: float | None):
        self.fraction, self.states = fraction, {}

    def _epoch(self, best: int) -> int:
        return max(0, round(self.fraction * (best + 1)) - 1)

    def after_epoch(self, epoch: int, model, best: int) -> None:
        if self.fraction is None:
            return
        self.states[epoch] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        keep_from = self._epoch(best)
        for old in [e for e in self.states if e < keep_from]:
            del self.states[old]

    def chosen(self, best: int) -> tuple[int | None, dict | None]:
        if self.fraction is None or not self.states:
            return None, None
        epoch = max(min(self._epoch(best), best), min(self.states))
        epoch = min(self.states, key=lambda e: abs(e - epoch))
        return epoch, self.states[epoch]
