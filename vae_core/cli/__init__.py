"""The ``vae-anomaly`` command: train (and register), promote, score (``commands``); embed,
sample and interpolate (the latent space, ``latent``); the options and error handling they
share (``common``). The top layer: it may import every other.
"""

from vae_core.cli.commands import app, main

__all__ = ["app", "main"]
