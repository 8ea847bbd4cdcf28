"""Evaluation: metrics, bootstrap intervals and plots on a test split, per-pixel anomaly
maps and reconstructions, pictures of images.

Layers: docs/architecture.md.
"""
