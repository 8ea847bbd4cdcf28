"""The estimator: ``VAEDetector`` (the scikit-learn outlier contract over the
preprocessors and the network), its scores, its latent space and its file format.

Layers: docs/architecture.md.
"""
