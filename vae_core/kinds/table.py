"""The table kind (``data.kind: table``): rows of a CSV or Parquet file, its ``LabelledTable``
dataset, and ``TableKind``, which implements ``protocol.DataKind`` for tables.

    read: ``load_table`` (features, labels and ids as the data config says) -> LabelledTable
    a batch: partitions (files, row groups) -> chunks of ``scoring.chunk_rows`` rows validated
        against the model's schema (``table_input``) -> the scores frame (``score_table``)
    the review: the latent space of the test split; the examples: the top anomalies with
        their columns, rows decoded from the prior, the packaged model's input example
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd

from vae_core.data.ingest import is_table_file, load_table, table_fingerprint, table_output
from vae_core.estimator.detector import VAEDetector
from vae_core.evaluation.latent_review import write_latent_review
from vae_core.foundations.atomic import atomic_write_frame
from vae_core.foundations.config import PipelineConfig
from vae_core.kinds.protocol import BatchOutputs, Chunk, DataRecord, Partition
from vae_core.kinds.table_input import list_partitions, validated_chunks
from vae_core.kinds.table_latent import embed_table, find_table_rows, latent_table_input
from vae_core.kinds.table_scores import score_table

# A training run shows the TOP_ANOMALIES highest test scores (with their columns),
# PRIOR_SAMPLES rows decoded from the prior and EXAMPLE_ROWS test rows as the packaged model's
# input example; a batch's summary keeps its TOP_ROWS highest-scoring rows.
TOP_ANOMALIES, PRIOR_SAMPLES, EXAMPLE_ROWS, TOP_ROWS = 20, 200, 5, 10


@dataclass
class LabelledTable:
    """Features (n, d), optional labels (n,) with 1 = anomaly, and pass-through id columns:
    the table kind's ``protocol.Dataset``.

    label_column : the column the labels came from (recorded with a training run), if any.
    """

    features: pd.DataFrame
    labels: np.ndarray | None
    ids: pd.DataFrame
    label_column: str | None = None

    kind: ClassVar[str] = "table"
    # Rows that only train (an image layout's train/ folder): none, every row is split.
    n_fit_only: ClassVar[int] = 0

    def __len__(self) -> int:
        return len(self.features)

    @property
    def skipped(self) -> list[tuple[str, str]]:
        """Inputs left out while reading, (path, reason): none for a table (a bad row is an
        error naming it)."""
        return []

    def fingerprint(self) -> dict[str, str | int]:
        """SHA-256 of the feature names, values and labels, with the table's shape."""
        return table_fingerprint(self)

    def features_at(self, rows) -> pd.DataFrame:
        """The feature rows at positions ``rows``."""
        return self.features.iloc[rows]

    def labels_at(self, rows) -> np.ndarray | None:
        """The labels at positions ``rows``, or None without labels."""
        return None if self.labels is None else self.labels[rows]


def read_labelled_table(path, data, *, require_label: bool = False) -> LabelledTable:
    """``ingest.load_table``'s columns as a ``LabelledTable``."""
    return LabelledTable(*load_table(path, data, require_label=require_label))


def input_example(features: pd.DataFrame) -> pd.DataFrame:
    """Rows for the packaged model's signature, integer columns as float: scoring data may
    hold NaN there (MLflow rejects floats for an integer column but accepts integers for a
    double one)."""
    ints = features.select_dtypes(include=["integer"]).columns
    return features.astype({c: "float64" for c in ints}).reset_index(drop=True)


def top_anomalies(
    det: VAEDetector,
    table: LabelledTable,
    rows,
    scores,
    *,
    top_features: int,
    n: int = TOP_ANOMALIES,
) -> pd.DataFrame:
    """The n highest-scoring of ``rows`` by their ``scores`` (the evaluation's, threshold
    units): ids, label, score, flag, probability and the columns that contributed most,
    highest score first. Only those n rows are scored again, for their columns (a row's
    score does not depend on the rows scored beside it)."""
    order = np.argsort(-np.asarray(scores), kind="stable")[:n]
    top = np.asarray(rows)[order]
    features, ids = table.features.iloc[top], table.ids.iloc[top]
    scored = score_table(det, features, ids, top_features=max(top_features, 1))
    if table.labels is not None:
        scored["label"] = table.labels[top]
    return scored.reset_index(drop=True)


class TableKind:
    """Tables (``data.kind: table``), as ``protocol.DataKind`` says."""

    name = "table"
    settings: tuple[str, ...] = ()
    columns = True
    unit = "rows"

    # ---- training -------------------------------------------------------------------------
    def read(self, path, cfg: PipelineConfig, *, require_label: bool = False) -> LabelledTable:
        return read_labelled_table(path, cfg.data, require_label=require_label)

    def review(
        self, det, data: LabelledTable, rows, scores, *, out_dir, cfg: PipelineConfig
    ) -> dict:
        """The latent space from the test split (``latent_review.write_latent_review``)."""
        features, labels = data.features_at(rows), data.labels_at(rows)
        return write_latent_review(
            det, features, scores, labels, Path(out_dir), random_state=cfg.split.seed, realism=True
        )

    def examples(self, det, data: LabelledTable, rows, scores, cfg: PipelineConfig) -> dict:
        top_features = cfg.scoring.top_features
        example = input_example(data.features.iloc[rows[:EXAMPLE_ROWS]])
        output = self.score_input(det, example, top_features=top_features, on_size_mismatch="")
        return {
            "top_anomalies": top_anomalies(det, data, rows, scores, top_features=top_features),
            "prior_samples": det.sample(PRIOR_SAMPLES),
            "input_example": example,
            "example_output": output,
            "model_config": {"top_features": int(top_features), "on_size_mismatch": "reject"},
        }

    def record(self, data: LabelledTable, splits: Mapping[str, np.ndarray]) -> DataRecord:
        frame, label = data.features, data.label_column
        if data.labels is not None and label:
            frame = frame.assign(**{label: data.labels})
        anomalies = "" if data.labels is None else str(int(np.sum(data.labels)))
        return DataRecord(
            data.fingerprint(),
            frame=frame,
            targets=label if data.labels is not None else None,
            tags={"data.label_column": label or "", "data.anomalies": anomalies},
        )

    # ---- batch scoring ----------------------------------------------------------------------
    def destination(self, out: Path, batch_id: str | None) -> Path | None:
        """``out`` when it names a .csv or .parquet file (its name is the batch id), else None
        (a folder: ``<batch id>.parquet`` in it)."""
        if not is_table_file(out):
            return None
        if batch_id is not None:
            raise ValueError(
                f"a batch id ({batch_id!r}) names the file in an output folder; the batch "
                f"written to {out} is named by that file"
            )
        return Path(out)

    def partitions(self, source) -> list[Partition]:
        return list_partitions(source)

    def files(self, source) -> list[str]:
        return sorted({p.path for p in list_partitions(source)})

    def chunks(self, det, part: Partition, cfg: PipelineConfig) -> Iterator[Chunk]:
        ids, rows = cfg.data.id_columns, cfg.scoring.chunk_rows
        return (Chunk(clean) for clean in validated_chunks(det, part, ids, rows))

    def score_frame(self, det, inputs: pd.DataFrame, cfg: PipelineConfig) -> pd.DataFrame:
        ids = inputs[list(cfg.data.id_columns)]
        return score_table(det, inputs, ids, top_features=cfg.scoring.top_features)

    def top_rows(self, cfg: PipelineConfig) -> int:
        return TOP_ROWS

    def finish_batch(self, det, top, skipped, dest: Path, cfg: PipelineConfig) -> BatchOutputs:
        return BatchOutputs()  # nothing beside a table's scores

    # ---- the packaged model and the latent space ------------------------------------------
    def score_input(self, det, model_input, *, top_features: int, on_size_mismatch: str):
        frame = pd.DataFrame(model_input)
        return score_table(det, frame, top_features=top_features).reset_index(drop=True)

    def latent_frame(self, det, model_input, *, on_size_mismatch: str) -> pd.DataFrame:
        return latent_table_input(det, model_input)

    def embed(self, det, source, cfg: PipelineConfig, id_columns) -> pd.DataFrame:
        return embed_table(det, source, id_columns, cfg.scoring.chunk_rows)

    def ends(self, det, source, cfg: PipelineConfig, id_columns, names) -> tuple:
        return find_table_rows(det, source, id_columns, names, cfg.scoring.chunk_rows)

    def write_decoded(self, decoded: pd.DataFrame, out: Path, stem: str) -> tuple[int, str]:
        table_output(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        frame = decoded if isinstance(decoded.index, pd.RangeIndex) else decoded.reset_index()
        atomic_write_frame(frame, out)
        return len(decoded), "rows"
