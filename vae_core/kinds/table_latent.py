"""The table kind's latent space: the coordinates of every row of a table, the rows a latent
path joins (by id), and the packaged model's latent frame. Tables are read and validated as
batch scoring reads them (``table_input.validated_chunks``), a chunk at a time.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd

from vae_core.evaluation.latent_review import latent_coordinates
from vae_core.kinds.table_input import list_partitions, validated_chunks


def embed_table(det, source, id_columns, chunk_rows: int) -> pd.DataFrame:
    """Validate and embed a table (a file, a glob or a folder of partitions) a chunk at a
    time, as scoring reads it: ids (or ``row``, the 1-based position, without id columns),
    ``z0`` .. ``z{k-1}`` (posterior means) and ``anomaly_score``."""
    frames, position = [], 0
    for clean in _validated_chunks(det, source, id_columns, chunk_rows):
        ids = (
            clean[list(id_columns)].reset_index(drop=True)
            if id_columns
            else pd.DataFrame({"row": np.arange(position + 1, position + len(clean) + 1)})
        )
        frames.append(latent_coordinates(det, clean, ids))
        position += len(clean)
    return pd.concat(frames, ignore_index=True)


def _validated_chunks(det, source, id_columns, chunk_rows: int) -> Iterator[pd.DataFrame]:
    """Every partition of ``source`` read and validated as batch scoring reads it."""
    empty = True
    for part in list_partitions(source):
        for clean in validated_chunks(det, part, id_columns, chunk_rows):
            empty = False
            yield clean
    if empty:
        raise ValueError(f"{source}: no rows")


def find_table_rows(det, source, id_columns, values, chunk_rows: int) -> list:
    """The one row whose id equals each of ``values`` (compared as text; with several id
    columns a value joins them with ","), each a one-row DataFrame of the model's columns, read
    a chunk at a time; ValueError naming the id, the column(s) and the source when a value is
    missing or not unique."""
    if not id_columns:
        raise ValueError("--from/--to name rows by their id: give --id-column (or data.id_columns)")
    wanted = [str(v) for v in values]
    hits: dict[str, list] = {v: [] for v in wanted}
    lines: dict[str, list[int]] = {v: [] for v in wanted}
    features, position = list(det.preprocessor_.feature_names), 0
    for clean in _validated_chunks(det, source, id_columns, chunk_rows):
        keys = clean[list(id_columns)].astype(str).agg(",".join, axis=1).to_numpy()
        for v in wanted:
            for i in np.flatnonzero(keys == v):
                hits[v].append(clean.iloc[[i]][features])
                lines[v].append(position + i + 1)
        position += len(clean)
    names = ", ".join(map(repr, id_columns))
    for v in wanted:
        if not hits[v]:
            raise ValueError(f"id {v!r} not found in column(s) {names} of {source}")
        if len(hits[v]) > 1:
            shown = ", ".join(map(str, lines[v][:5]))
            raise ValueError(f"id {v!r} is not unique in column(s) {names} of {source} "
                             f"(rows {shown})")  # fmt: skip
    return [hits[v][0] for v in wanted]


def latent_table_input(det, model_input) -> pd.DataFrame:
    """The packaged model's ``output="latent"`` for a table model: z0 .. z{k-1} (posterior
    means) per input row, in order."""
    names = list(det.get_feature_names_out())
    return pd.DataFrame(det.transform(pd.DataFrame(model_input)), columns=names)
