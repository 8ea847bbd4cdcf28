"""The one place the kind of data is decided: from the config (``data.kind``), from a dataset,
or from a fitted detector (its preprocessor). Every caller gets a ``protocol.DataKind`` and
calls its methods; nothing else asks which kind it has.
"""

from __future__ import annotations

from pathlib import Path

from vae_core.data.image_preprocess import ImagePreprocessor
from vae_core.foundations.config import PipelineConfig
from vae_core.kinds.images import ImageKind
from vae_core.kinds.protocol import DataKind, Dataset
from vae_core.kinds.table import TableKind

KINDS: dict[str, DataKind] = {kind.name: kind for kind in (TableKind(), ImageKind())}


def kind_named(name: str) -> DataKind:
    """The kind of ``data.kind`` ("table" or "images")."""
    return KINDS[name]


def kind_of(data: Dataset) -> DataKind:
    """The kind of a dataset."""
    return KINDS[data.kind]


def kind_of_model(det) -> DataKind:
    """The kind a fitted detector takes: images when it was fitted on images."""
    return KINDS["images" if isinstance(det.preprocessor_, ImagePreprocessor) else "table"]


def load_dataset(path: str | Path, cfg: PipelineConfig, *, require_label: bool = False) -> Dataset:
    """The dataset in ``path``, read as ``data.kind`` says: a table (CSV, Parquet, a folder of
    parts; ``data`` section) or images (a folder or an .npz; ``images`` section).
    require_label : tables: a named label column must be present."""
    return kind_named(cfg.data.kind).read(path, cfg, require_label=require_label)
