"""Reviewers' verdicts as plain data: read and checked, merged with the earlier ones, and
turned into the numbers the loop uses (no MLflow: ``tracking.feedback_runs`` stores them).

A verdict is a row of a reviewer's file: the id columns of a scored row and a label, 0
(normal) or 1 (anomaly). Ids are compared as text, so ``1000`` in a CSV and the integer
1000 in a Parquet scores file are the same id. The record is a history: every verdict ever
given, with the submission it came in (``submission``, 1, 2, ...) and when
(``recorded_at``); the verdict that counts for an id is its latest (``current_verdicts``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from vae_core.data.ingest import check_id_columns, file_rows, quoted, read_table

LABEL = "label"  # the verdict's column in the record, whatever the reviewer's file calls it
SUBMISSION, RECORDED_AT, SOURCE = "submission", "recorded_at", "verdicts_file"


def read_verdicts(path: str | Path, id_columns: list[str], label_column: str) -> pd.DataFrame:
    """The verdicts in ``path`` (CSV or Parquet): the id columns as text and ``label`` (int,
    0 normal / 1 anomaly), in file order, the file's 0-based row positions as the index.

    Raises ValueError naming the file and the column for a missing column, the rows (as the
    file numbers them) for a label that is not 0 or 1, or for an empty id."""
    if not id_columns:
        raise ValueError("give the id column(s) of the verdicts (--id-column)")
    table = read_table(path)
    check_id_columns(table.columns, id_columns, path)
    if label_column not in table.columns:
        raise ValueError(
            f"{path}: label column {label_column!r} not found (--label-column); its columns: "
            f"{quoted(table.columns)}"
        )
    labels = _binary(table[label_column])
    bad = np.flatnonzero(labels < 0)
    if len(bad):
        shown = quoted(table[label_column].iloc[bad[:5]].tolist(), 5)
        raise ValueError(
            f"{path}: {len(bad)} verdict(s) in column {label_column!r} not 0 (normal) or 1 "
            f"(anomaly): {file_rows(path, bad)} ({shown}); nothing recorded"
        )
    ids = id_text(table, id_columns)
    empty = np.flatnonzero((ids == "").any(axis=1).to_numpy())
    if len(empty):
        raise ValueError(
            f"{path}: {len(empty)} verdict(s) without an id in {quoted(id_columns)}: "
            f"{file_rows(path, empty)}; nothing recorded"
        )
    return ids.assign(**{LABEL: labels})


def _binary(values: pd.Series) -> np.ndarray:
    """0 or 1 per cell (numbers equal to 0 or 1, or their text); -1 for anything else."""
    numbers = pd.to_numeric(values.astype("string").str.strip(), errors="coerce")
    out = np.full(len(values), -1, dtype=np.int64)
    for label in (0, 1):
        out[(numbers == label).fillna(False).to_numpy(dtype=bool)] = label
    return out


def id_text(table: pd.DataFrame, id_columns: list[str]) -> pd.DataFrame:
    """The id columns of ``table`` as text ("" for a missing cell), the form verdicts and
    scores are matched in: an integer id reads the same from CSV and Parquet."""
    out = pd.DataFrame(index=table.index)
    for col in id_columns:
        values = table[col]
        if pd.api.types.is_float_dtype(values) and (values.dropna() % 1 == 0).all():
            values = values.astype("Int64")  # 1000.0 (a CSV column with a gap) is id 1000
        out[col] = values.astype("string").fillna("").str.strip()
    return out


def unseen_rows(verdicts: pd.DataFrame, seen: pd.DataFrame, id_columns: list[str]) -> np.ndarray:
    """0-based positions of the verdicts whose ids are not among ``seen`` (the ids that the
    model's scoring runs scored, as text)."""
    known = pd.MultiIndex.from_frame(seen[id_columns].drop_duplicates())
    keys = pd.MultiIndex.from_frame(verdicts[id_columns])
    return np.flatnonzero(~keys.isin(known))


def check_seen(verdicts, seen, id_columns, path, model_name: str) -> None:
    """ValueError naming the rows of ``path`` whose ids no scoring run of the model scored."""
    unseen = unseen_rows(verdicts, seen, id_columns)
    if len(unseen):
        first = verdicts.iloc[unseen[0]][id_columns].tolist()
        raise ValueError(
            f"{path}: {len(unseen)} verdict(s) on ids that no scoring run of {model_name!r} "
            f"scored: {file_rows(path, unseen)} (first id {first}); nothing recorded"
        )


def merge_verdicts(
    history: pd.DataFrame | None, verdicts: pd.DataFrame, source: str, at: datetime | None = None
) -> pd.DataFrame:
    """The record with ``verdicts`` appended as the next submission (the last row of a file
    wins over an earlier one on the same id, as a later submission wins over an earlier)."""
    number = 1 if history is None or history.empty else int(history[SUBMISSION].max()) + 1
    stamp = (at or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    new = verdicts.reset_index(drop=True).assign(
        **{SUBMISSION: number, RECORDED_AT: stamp, SOURCE: Path(source).name}
    )
    if history is None or history.empty:
        return new
    return pd.concat([history, new], ignore_index=True)


def id_columns_of(history: pd.DataFrame) -> list[str]:
    """The id columns a verdict record is keyed by (its columns but the label and the
    submission's)."""
    return [c for c in history.columns if c not in (LABEL, SUBMISSION, RECORDED_AT, SOURCE)]


def current_verdicts(history: pd.DataFrame, id_columns: list[str]) -> pd.DataFrame:
    """The verdict that counts for each id: its latest (submission order, then file order)."""
    return history.drop_duplicates(id_columns, keep="last").reset_index(drop=True)


def verdict_counts(current: pd.DataFrame) -> dict[str, int]:
    """``reviewed``, ``anomalies`` (confirmed) and ``normals`` among the current verdicts."""
    anomalies = int(current[LABEL].sum())
    return {"reviewed": len(current), "anomalies": anomalies, "normals": len(current) - anomalies}


def reviewed_precision(
    scored: pd.DataFrame, current: pd.DataFrame, id_columns: list[str]
) -> tuple[int, int] | None:
    """(confirmed, reviewed) among the rows a scoring run flagged (``scored``: id columns as
    text and ``is_anomaly``): how many of its flagged rows reviewers have judged, and how
    many of those they confirmed as anomalies. None when none of its flagged rows is judged."""
    flagged = scored.loc[scored["is_anomaly"].astype(bool), id_columns].drop_duplicates()
    judged = flagged.merge(current[[*id_columns, LABEL]], on=id_columns, how="inner")
    if judged.empty:
        return None
    return int(judged[LABEL].sum()), len(judged)


@dataclass(frozen=True)
class Submission:
    """A checked submission of verdicts, ready to store: the merged ``history``, the
    ``current`` verdicts, their ``counts``, and ``precision`` {scoring run id: (confirmed,
    reviewed)} of each scoring run with judged flagged rows."""

    history: pd.DataFrame
    current: pd.DataFrame
    counts: dict[str, int]
    precision: dict[str, tuple[int, int]]
    new: int

    def summary(self, model_name: str) -> str:
        c = self.counts
        return (
            f"recorded {self.new} verdict(s) on {model_name} (submission "
            f"{int(self.history[SUBMISSION].max())}): {c['reviewed']} ids reviewed in all, "
            f"{c['anomalies']} confirmed anomalies and {c['normals']} normal"
        )


def prepare_submission(
    verdicts: pd.DataFrame,
    scored: pd.DataFrame,
    history: pd.DataFrame | None,
    id_columns: list[str],
    path: str | Path,
    model_name: str,
) -> Submission:
    """``verdicts`` (``read_verdicts``) checked against the rows the model's scoring runs
    scored (``scored``: id columns as text, ``is_anomaly``, ``run_id``) and merged into the
    ``history``; ValueError naming the rows of ``path`` whose ids no run scored (nothing is
    merged then), or whose id columns differ from the earlier verdicts'."""
    if history is not None and not history.empty:
        earlier = id_columns_of(history)
        if earlier != list(id_columns):
            raise ValueError(
                f"{path}: verdicts on {model_name!r} are keyed by {quoted(earlier)}, not "
                f"{quoted(id_columns)} (--id-column); nothing recorded"
            )
    check_seen(verdicts, scored, id_columns, path, model_name)
    merged = merge_verdicts(history, verdicts[[*id_columns, LABEL]], str(path))
    current = current_verdicts(merged, id_columns)
    precision = {
        run_id: found
        for run_id, rows in scored.groupby("run_id", sort=False)
        if (found := reviewed_precision(rows, current, id_columns)) is not None
    }
    return Submission(merged, current, verdict_counts(current), precision, len(verdicts))


def confirmed_positions(data, verdicts) -> np.ndarray:
    """0-based positions of the rows of ``data`` (a table with id columns) whose id
    reviewers confirmed as an anomaly (latest verdict 1), for training to leave out.
    ``verdicts``: (current verdicts, ..., id columns) as ``registry.reviewed_verdicts``
    returns them, or None. Empty for images and for tables without those id columns."""
    ids = getattr(data, "ids", None)
    if verdicts is None or ids is None:
        return np.zeros(0, dtype=np.int64)
    current, _, id_columns = verdicts
    if any(c not in ids.columns for c in id_columns):
        return np.zeros(0, dtype=np.int64)
    confirmed = current.loc[current[LABEL] == 1, id_columns].drop_duplicates()
    keys = pd.MultiIndex.from_frame(id_text(ids, id_columns))
    return np.flatnonzero(keys.isin(pd.MultiIndex.from_frame(confirmed)))
