"""What every kind of data gives the pipeline: the typed contract (``typing.Protocol``) that the
table kind and the image kind implement, and the plain records that cross it.

``Dataset`` is what training reads (a table's rows or a folder's images); ``DataKind`` is what
differs between the kinds, as named methods: reading a dataset, a batch's partitions and its
chunks, the scores frame of a chunk, what a training run records of the data, the reviewer's
files, the examples a run shows, the packaged model's scores and latent frames, and the latent
space's inputs and outputs. The steps (``vae_core.steps``) and every door above them call these
methods on the kind ``vae_core.kinds.choice`` hands them, and never name a kind's class;
``tests/test_architecture.py`` checks both kinds implement every method here.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd

from vae_core.foundations.config import PipelineConfig

# What the packaged model's predict returns, by ``params={"output": ...}``: the kind's
# ``score_input`` or its ``latent_frame``; the first is the default (declared in the model's
# signature as a predict parameter).
PREDICT_OUTPUTS = ("scores", "latent")


@runtime_checkable
class Dataset(Protocol):
    """Rows or images to train, calibrate and test on.

    kind : the ``data.kind`` it was read as ("table" or "images").
    n_fit_only : how many items, first, only train (an image layout's ``train/`` folder).
    """

    kind: str
    n_fit_only: int

    def __len__(self) -> int: ...

    @property
    def labels(self) -> np.ndarray | None:
        """(n,) with 1 = anomaly, or None without labels."""

    @property
    def skipped(self) -> list[tuple[str, str]]:
        """Inputs left out while reading, (path, reason)."""

    def fingerprint(self) -> dict[str, str | int]:
        """{sha256, rows, columns} of the data."""

    def features_at(self, rows) -> Any:
        """The model's input at positions ``rows`` (table rows, or images)."""

    def labels_at(self, rows) -> np.ndarray | None:
        """The labels at positions ``rows``, or None."""


@dataclass(frozen=True)
class Partition:
    """One unit of batch-scoring work: a table file, one row group of a Parquet file, or a
    folder (or .npz) of images."""

    path: str
    row_group: int | None = None

    @property
    def name(self) -> str:
        return self.path if self.row_group is None else f"{self.path} (row group {self.row_group})"


@dataclass
class Chunk:
    """A chunk of a partition as the model takes it (a validated DataFrame, or an
    ``ImageSet``), with the inputs left out while reading it, (path, reason)."""

    inputs: Any
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.inputs)


@dataclass
class BatchOutputs:
    """What a kind writes beside a batch's scores file, once every partition is scored.

    artifacts : {artifact folder: path} a scoring run logs (images: ``anomaly_maps``, and
        ``skipped``, the list of files left out).
    add_columns : columns added to each scored frame before it is committed (images:
        ``map_path``), or None.
    """

    artifacts: dict[str, Path] = field(default_factory=dict)
    add_columns: Any = None  # Callable[[pd.DataFrame], pd.DataFrame] | None


@dataclass
class DataRecord:
    """What a training run records of its data, computed by the kind for the tracking layer.

    fingerprint : {sha256, rows, columns}.
    frame / array : the data as MLflow's dataset takes it (a DataFrame, or an array of images
        with ``targets`` the labels); ``targets`` names the label column of ``frame``.
    tags : ``data.*`` tags besides the fingerprint's ("" values are left out).
    texts : {artifact path: text} (image runs: the image list with splits, skipped files).
    """

    fingerprint: dict
    frame: pd.DataFrame | None = None
    array: np.ndarray | None = None
    targets: str | np.ndarray | None = None
    tags: dict[str, str] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)


@runtime_checkable
class DataKind(Protocol):
    """What is particular to one kind of data (``data.kind``).

    name : "table" or "images".
    settings : the config sections a scoring run records besides ``scoring`` ("images.").
    columns : whether label and id columns name anything (tables; an image is identified by
        its path and labelled by its folder or npz class).
    unit : what one scored item is called ("rows", "images").
    """

    name: str
    settings: tuple[str, ...]
    columns: bool
    unit: str

    # ---- training -------------------------------------------------------------------------
    def read(self, path: str | Path, cfg: PipelineConfig, *, require_label: bool = False):
        """The ``Dataset`` in ``path``."""

    def review(self, det, data, rows, scores, *, out_dir: Path, cfg: PipelineConfig) -> dict:
        """The reviewer's files from the test split ``rows`` and its ``scores``."""

    def examples(self, det, data, rows, scores, cfg: PipelineConfig) -> dict:
        """What a training run shows of the model (``TrainOutcome.examples``)."""

    def record(self, data, splits: Mapping[str, np.ndarray]) -> DataRecord:
        """What a training run records of ``data`` split as ``splits`` ({name: positions})."""

    # ---- batch scoring ----------------------------------------------------------------------
    def destination(self, out: Path, batch_id: str | None) -> Path | None:
        """The scores file ``out`` names (a table file), or None for a folder, where the
        batch's file is ``<batch id>.parquet``; ValueError for an output the kind refuses."""

    def partitions(self, source: str | Path) -> list[Partition]:
        """The partitions of a batch, in a stable order."""

    def files(self, source: str | Path) -> list[str]:
        """The files a batch's default id hashes, in order."""

    def chunks(self, det, part: Partition, cfg: PipelineConfig) -> Iterator[Chunk]:
        """The partition read and validated a chunk at a time (memory ~ one chunk)."""

    def score_frame(self, det, inputs, cfg: PipelineConfig) -> pd.DataFrame:
        """The scores frame of one chunk's inputs: ids (or path and class), ``anomaly_score``
        (threshold units, higher = more anomalous), ``is_anomaly``, ``anomaly_probability``
        ... one row per input, in order."""

    def top_rows(self, cfg: PipelineConfig) -> int:
        """How many of the highest-scoring rows a batch's summary keeps."""

    def finish_batch(
        self, det, top: pd.DataFrame, skipped, dest: Path, cfg: PipelineConfig
    ) -> BatchOutputs:
        """Write what goes beside the batch's scores (``dest``), from its ``top`` rows and
        the inputs ``skipped``; under the batch's lock, before the scores are committed."""

    # ---- the packaged model and the latent space ------------------------------------------
    def score_input(
        self, det, model_input, *, top_features: int, on_size_mismatch: str
    ) -> pd.DataFrame:
        """The packaged model's scores frame for its input."""

    def latent_frame(self, det, model_input, *, on_size_mismatch: str) -> pd.DataFrame:
        """The packaged model's ``output="latent"``: z0 .. z{k-1} per input."""

    def embed(self, det, source, cfg: PipelineConfig, id_columns) -> pd.DataFrame:
        """Latent coordinates of every row or image of a source."""

    def ends(self, det, source, cfg: PipelineConfig, id_columns, names) -> tuple:
        """The two rows (by id) or images (by file name) of a source a latent path joins."""

    def write_decoded(self, decoded, out: Path, stem: str) -> tuple[int, str]:
        """Decoded rows (a table file) or images (a folder of PNGs) written; (count, unit)."""
