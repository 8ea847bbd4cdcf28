"""The network: the VAE (encode, reparameterize, decode), the negative ELBO and IWAE bound
in nats, the training loop with callbacks, devices. Imports only ``foundations``.

Layers: docs/architecture.md.
"""
