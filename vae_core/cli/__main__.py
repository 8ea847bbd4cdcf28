"""``python -m vae_core.cli``: the ``vae-anomaly`` command."""

from vae_core.cli.commands import main

main()
