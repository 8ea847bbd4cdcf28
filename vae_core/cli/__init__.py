"""The ``vae-anomaly`` command: train (and register), promote, score (``commands``); embed,
sample and interpolate (the latent space, ``latent``); the options and error handling they
share (``common``). The top layer: it may import every other.
"""

from vae_core.cli.commands import app, main
from vae_core.cli.common import whole_short_help

whole_short_help(app)  # every command registered by now (commands imports the others)

__all__ = ["app", "main"]
