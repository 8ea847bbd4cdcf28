"""Data: reading tables and images, the packaged model's image input, the map from user
data to model input and back (the preprocessors), images into the model a block at a time,
variance floors and fingerprints of model input.

Layers: docs/architecture.md.
"""
