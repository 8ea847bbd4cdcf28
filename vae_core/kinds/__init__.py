"""The kinds of data, each a class behind one typed contract (``protocol.DataKind``): tables
(``table``: ``TableKind``, ``LabelledTable``) and images (``images``: ``ImageKind``;
``image_sets.ImageData``), side by side. ``choice`` decides which kind a config, a dataset or a
fitted detector has; the pipeline's steps (``vae_core.steps``) call the kind they are handed
and never name a kind's class.

Layers: docs/architecture.md.
"""
