"""One path for tables and images: the dataset interface and the one place the kind is decided.

A dataset is a table (``ingest.LabelledTable``) or images (``image_pipeline.ImageData``);
both give the pipeline the same interface: ``kind``, ``len``, ``labels``,
``features_at(rows)`` / ``labels_at(rows)`` (table rows, or images that may stay in their
files), ``n_fit_only`` (images of a layout's ``train/`` folder: training only), ``skipped``
(inputs left out while reading) and ``fingerprint()``.

What differs between the kinds is held by one ``DataKind`` each (``TABLE``, ``IMAGES``):
how to read one, the reviewer's files, what a training run shows of the model, how the
packaged model scores its input, what a run records of the data, and how a batch is scored.
The kind is decided here only: from the config (``load_dataset``, ``kind_named``:
``data.kind``), from a dataset (``kind_of``) or from a fitted detector (``kind_of_model``:
its preprocessor). Every other module asks the ``DataKind`` it is handed.

    load_dataset -> train_and_evaluate (split, fit, calibrate, evaluate, save, review,
    examples) -> the tracking layer logs the outcome (``data_record``: what it records of
    the data)
    score_batch: a fitted detector and a batch -> the scores file (and maps) and its
        ``batch.BatchSummary``, for ``vae-anomaly score`` and the score flow alike

Nothing here knows about Prefect or MLflow.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from vae_core.data.image_npz import is_npz_member
from vae_core.data.image_preprocess import ImagePreprocessor
from vae_core.data.ingest import TABLE_SUFFIXES, LabelledTable, load_table
from vae_core.estimator.detector import VAEDetector
from vae_core.evaluation.drawing import write_image_png
from vae_core.foundations.atomic import atomic_write_frame
from vae_core.foundations.config import PipelineConfig
from vae_core.network.train import EpochCallback
from vae_core.steps import image_pipeline, latent
from vae_core.steps.batch import BatchSummary, ScoreParts, batch_identity, score_table_batch
from vae_core.steps.image_pipeline import ImageData
from vae_core.steps.latent import write_latent_review
from vae_core.steps.pipeline import (
    Splits,
    TrainOutcome,
    calibrate_detector,
    evaluate_detector,
    fit_detector,
    leave_out_of_training,
    save_outcome,
    split_data,
)
from vae_core.steps.scoring import score_table

Data = LabelledTable | ImageData

# A training run shows the TOP_ANOMALIES highest test scores (tables, with their columns),
# PRIOR_SAMPLES rows decoded from the prior (tables) and EXAMPLE_ROWS test rows as the
# packaged model's input example.
TOP_ANOMALIES, PRIOR_SAMPLES, EXAMPLE_ROWS = 20, 200, 5


@dataclass
class DataRecord:
    """What a training run records of its data, computed here for the tracking layer.

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


@dataclass(frozen=True)
class DataKind:
    """What is particular to one kind of data (``data.kind``); see the module doc.

    read(path, cfg, require_label) : the dataset in ``path``.
    review(det, data, rows, scores, out_dir, cfg) : the reviewer's files from the test split
        ``rows`` and its ``scores``; {name: path or value}.
    examples(det, data, rows, scores, cfg) : ``TrainOutcome.examples``.
    score_input(det, model_input, top_features, on_size_mismatch) : the packaged model's
        scores frame for its input.
    record(data, splits) : the ``DataRecord`` a training run logs.
    score_batch(det, source, cfg, out, batch_id, score_parts, on_wait) : a batch scored into
        ``out`` (``score_batch``).
    latent_input(det, model_input, on_size_mismatch) : the packaged model's latent output.
    embed(det, source, cfg, id_columns) : latent coordinates of every row or image of a source.
    ends(det, source, cfg, id_columns, names) : the two rows (by id) or images (by file name)
        of a source that a latent path joins.
    write_decoded(decoded, out, stem) : decoded rows (a .csv or .parquet file) or images (a
        folder of PNGs, ``<stem>_0000.png`` ...) written; (how many, "rows" or "images").
    settings : the config sections a scoring run records besides ``scoring``.
    columns : whether label and id columns name anything (tables; an image is identified by
        its path and labelled by its folder or npz class).
    """

    name: str
    read: Callable[..., Data]
    review: Callable[..., dict]
    examples: Callable[..., dict]
    score_input: Callable[..., pd.DataFrame]
    record: Callable[[Data, Splits], DataRecord]
    score_batch: Callable[..., BatchSummary]
    latent_input: Callable[..., pd.DataFrame]
    embed: Callable[..., pd.DataFrame]
    ends: Callable[..., tuple]
    write_decoded: Callable[..., tuple[int, str]]
    settings: tuple[str, ...] = ()
    columns: bool = True


# ---- tables --------------------------------------------------------------------------------
def _read_table(path, cfg: PipelineConfig, require_label: bool = False) -> LabelledTable:
    return load_table(path, cfg.data, require_label=require_label)


def _table_review(det, data: LabelledTable, rows, scores, out_dir, cfg: PipelineConfig) -> dict:
    """The latent space from the test split (``latent.write_latent_review``)."""
    features, labels = data.features_at(rows), data.labels_at(rows)
    seed = cfg.split.seed
    return write_latent_review(det, features, scores, labels, Path(out_dir), seed, realism=True)


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
    top_features: int = 3,
    n: int = TOP_ANOMALIES,
) -> pd.DataFrame:
    """The n highest-scoring of ``rows`` by their ``scores`` (the evaluation's, threshold
    units): ids, label, score, flag, probability and the columns that contributed most,
    highest score first. Only those n rows are scored again, for their columns (a row's
    score does not depend on the rows scored beside it)."""
    order = np.argsort(-np.asarray(scores), kind="stable")[:n]
    top = np.asarray(rows)[order]
    scored = score_table(det, table.features.iloc[top], table.ids.iloc[top], max(top_features, 1))
    if table.labels is not None:
        scored["label"] = table.labels[top]
    return scored.reset_index(drop=True)


def _score_table_input(det, model_input, top_features: int = 3, on_size_mismatch=None):
    frame = pd.DataFrame(model_input)
    return score_table(det, frame, top_features=top_features).reset_index(drop=True)


def _table_examples(det, data: LabelledTable, rows, scores, cfg: PipelineConfig) -> dict:
    top_features = cfg.scoring.top_features
    example = input_example(data.features.iloc[rows[:EXAMPLE_ROWS]])
    return {
        "top_anomalies": top_anomalies(det, data, rows, scores, top_features),
        "prior_samples": det.sample(PRIOR_SAMPLES),
        "input_example": example,
        "example_output": _score_table_input(det, example, top_features),
        "model_config": {"top_features": int(top_features), "on_size_mismatch": "reject"},
    }


def _table_record(data: LabelledTable, splits: Splits) -> DataRecord:
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


def _score_table_batch(det, source, cfg: PipelineConfig, out: Path, batch_id, score_parts, on_wait):
    """A table batch into the file ``out`` (.csv or .parquet; its name is the batch id) or
    into ``out/<batch id>.parquet`` (the id ``batch_id``, or a hash of the input's files)."""
    if is_table_file(out):
        if batch_id is not None:
            raise ValueError(
                f"a batch id ({batch_id!r}) names the file in an output folder; the batch "
                f"written to {out} is named by that file"
            )
        dest, ident = out, out.stem
    else:
        ident = batch_identity(source, batch_id)
        dest = out / f"{ident}.parquet"
    waiting = None if on_wait is None else (lambda: on_wait(ident))
    id_columns = list(cfg.data.id_columns)
    return score_table_batch(
        det, source, dest, ident, cfg.scoring, id_columns, score_parts=score_parts, on_wait=waiting
    )


def _embed_table(det, source, cfg: PipelineConfig, id_columns) -> pd.DataFrame:
    return latent.embed_table(det, source, id_columns, cfg.scoring.chunk_rows)


def _table_ends(det, source, cfg: PipelineConfig, id_columns, names) -> tuple:
    return latent.find_table_rows(det, source, id_columns, names, cfg.scoring.chunk_rows)


def is_table_file(out: Path) -> bool:
    """Whether ``out`` names a table file (.csv, .parquet, .pq), not a folder."""
    return TABLE_SUFFIXES.get(Path(out).suffix.lower()) is not None


def table_output(out: Path) -> None:
    """ValueError unless ``out`` names a table file (.csv or .parquet)."""
    if not is_table_file(out):
        raise ValueError(f"--out {out}: use a .csv or .parquet file name")


def _write_rows(decoded: pd.DataFrame, out: Path, stem: str) -> tuple[int, str]:
    table_output(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    frame = decoded if isinstance(decoded.index, pd.RangeIndex) else decoded.reset_index()
    atomic_write_frame(frame, out)
    return len(decoded), "rows"


TABLE = DataKind(
    "table",
    _read_table,
    _table_review,
    _table_examples,
    _score_table_input,
    _table_record,
    _score_table_batch,
    lambda det, model_input, on_size_mismatch=None: latent.latent_table_input(det, model_input),
    _embed_table,
    _table_ends,
    _write_rows,
)


# ---- images --------------------------------------------------------------------------------
def _read_images(path, cfg: PipelineConfig, require_label: bool = False) -> ImageData:
    return image_pipeline.load_images(path, cfg.images)


def _image_review(det, data: ImageData, rows, scores, out_dir, cfg: PipelineConfig) -> dict:
    """Grids, anomaly maps, image scores and the latent space (``image_pipeline.write_review``)."""
    top_maps = cfg.images.top_maps
    return image_pipeline.write_review(det, data, rows, Path(out_dir), top_maps, scores)


def _image_examples(det, data: ImageData, rows, scores, cfg: PipelineConfig) -> dict:
    rows = rows[:EXAMPLE_ROWS]
    paths = [data.images.paths[i] for i in rows]
    if any(is_npz_member(p) for p in paths):  # an .npz's images have no files: their pixels
        pixels = np.asarray(data.features_at(rows))
        example = pd.DataFrame({"image": [image.tolist() for image in pixels]})
    else:
        example = pd.DataFrame({"path": paths})
    mismatch = cfg.images.on_size_mismatch
    return {
        "top_anomalies": None,  # the review's anomaly maps show them
        "prior_samples": None,  # the review's prior_samples.png shows them
        "input_example": example,
        "example_output": image_pipeline.score_image_input(det, example, mismatch),
        "model_config": {"top_features": 0, "on_size_mismatch": mismatch},
    }


def _score_image_input(det, model_input, top_features=None, on_size_mismatch: str = "reject"):
    return image_pipeline.score_image_input(det, model_input, on_size_mismatch)


def _label_source(paths: list[str]) -> str:
    """Where the labels of an image set came from, for the run's tags."""
    if paths and is_npz_member(paths[0]):
        return "npz class array (normal classes = 0)"
    return "folder name (good = 0)"


def _image_record(data: ImageData, splits: Splits) -> DataRecord:
    images = data.images
    listed = images.manifest()
    manifest = listed.assign(split="")
    for name in ("train", "calibration", "test"):
        manifest.loc[getattr(splits, name), "split"] = name
    texts = {"data/images.csv": manifest.to_csv(index=False)}
    if images.skipped:
        texts["data/skipped_images.csv"] = images.skipped_frame().to_csv(index=False)
    labelled = images.labels is not None
    tags = {
        "data.kind": "images",
        "data.image_shape": "x".join(str(d) for d in images.images.shape[1:]),
        "data.label_column": _label_source(images.paths) if labelled else "",
        "data.anomalies": str(int(images.labels.sum())) if labelled else "",
        "data.skipped": str(len(images.skipped)),
    }
    if data.streamed:  # too many to hold: the dataset is the list of files
        return DataRecord(data.fingerprint(), frame=listed, tags=tags, texts=texts)
    return DataRecord(
        data.fingerprint(), array=images.images, targets=images.labels, tags=tags, texts=texts
    )


def _score_image_batch(det, source, cfg: PipelineConfig, out: Path, batch_id, score_parts, on_wait):
    """Images into the folder ``out``: ``<batch id>.parquet``, ``.maps/``, ``.skipped.csv``
    (``image_pipeline.score_image_batch``)."""
    if is_table_file(out):
        raise ValueError(
            f"{out}: for an image model, a folder (it gets <batch id>.parquet and "
            "<batch id>.maps/; the batch id names them)"
        )
    return image_pipeline.score_image_batch(det, source, cfg.images, out, batch_id)


def _embed_images(det, source, cfg: PipelineConfig, id_columns=()) -> pd.DataFrame:
    return latent.embed_images(det, image_pipeline.read_images_as_model(det, source, cfg.images))


def _image_ends(det, source, cfg: PipelineConfig, id_columns, names) -> tuple:
    images = image_pipeline.read_images_as_model(det, source, cfg.images)
    return tuple(latent.find_image(images, name, source) for name in names)


def _write_images(decoded: np.ndarray, out: Path, stem: str) -> tuple[int, str]:
    """One PNG per image (uint8 after rounding and clipping), written atomically."""
    if out.suffix:
        raise ValueError(f"--out {out}: for an image model, a folder (one PNG per image)")
    images = decoded[:, None] if decoded.ndim == 3 else decoded
    out.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        write_image_png(image, out / f"{stem}_{i:04d}.png")
    return len(images), "images"


IMAGES = DataKind(
    "images",
    _read_images,
    _image_review,
    _image_examples,
    _score_image_input,
    _image_record,
    _score_image_batch,
    latent.latent_image_input,
    _embed_images,
    _image_ends,
    _write_images,
    settings=("images.",),
    columns=False,
)

KINDS = {kind.name: kind for kind in (TABLE, IMAGES)}


# ---- the decisions -------------------------------------------------------------------------
def kind_named(name: str) -> DataKind:
    """The ``DataKind`` of ``data.kind`` ("table" or "images")."""
    return KINDS[name]


def kind_of(data: Data) -> DataKind:
    """The ``DataKind`` of a dataset."""
    return KINDS[data.kind]


def kind_of_model(det: VAEDetector) -> DataKind:
    """The ``DataKind`` a fitted detector takes: images when it was fitted on images."""
    return IMAGES if isinstance(det.preprocessor_, ImagePreprocessor) else TABLE


def load_dataset(path: str | Path, cfg: PipelineConfig, require_label: bool = False) -> Data:
    """The dataset in ``path``, read as ``data.kind`` says: a table (CSV, Parquet, a folder of
    parts; ``data`` section) or images (a folder or an .npz; ``images`` section).
    require_label : tables: a named label column must be present."""
    return kind_named(cfg.data.kind).read(path, cfg, require_label)


def write_review(det, data: Data, rows, scores, out_dir, cfg: PipelineConfig) -> dict:
    """The reviewer's files from the test split ``rows`` and its ``scores`` in ``out_dir``."""
    return kind_of(data).review(det, data, rows, scores, out_dir, cfg)


def examples(det, data: Data, rows, scores, cfg: PipelineConfig) -> dict:
    """What a training run shows of the model, from the test split ``rows`` and their
    ``scores`` (``TrainOutcome.examples``)."""
    return kind_of(data).examples(det, data, rows, scores, cfg)


def data_record(data: Data, splits: Splits) -> DataRecord:
    """What a training run records of ``data`` split as ``splits``."""
    return kind_of(data).record(data, splits)


def score_model_input(
    det, model_input, top_features: int = 3, on_size_mismatch: str = "reject"
) -> pd.DataFrame:
    """The packaged model's scores frame for its input: table rows, or image paths / arrays
    (``image_pipeline.score_image_input``), as the detector was fitted."""
    return kind_of_model(det).score_input(det, model_input, top_features, on_size_mismatch)


def score_batch(
    det,
    source: str | Path,
    cfg: PipelineConfig,
    out: str | Path,
    batch_id: str | None = None,
    *,
    score_parts: ScoreParts | None = None,
    on_wait: Callable[[str], None] | None = None,
) -> BatchSummary:
    """Score one batch with ``det`` as the config says; the one batch scoring of
    ``vae-anomaly score`` and the score flow, so that both write the same file.

    A table model scores a table (a file, a glob or a folder of partitions; ``data.id_columns``
    pass through, ``scoring.chunk_rows`` / ``top_features`` / ``drift_psi_warning`` apply)
    into ``out``: a .csv or .parquet file, or a folder that gets ``<batch id>.parquet``
    (``batch.score_table_batch``). An image model scores a folder of images or an .npz into
    the folder ``out`` (``image_pipeline.score_image_batch``; the ``images`` section applies).
    Rerunning a batch replaces its output.

    batch_id : the batch's name in an output folder (default: a hash of the input's files).
    score_parts : tables: how the partitions are scored (the flow: Prefect tasks).
    on_wait : tables: called with the batch id if another run of it holds the batch's lock.
    """
    return kind_of_model(det).score_batch(
        det, source, cfg, Path(out), batch_id, score_parts, on_wait
    )


def latent_model_input(det, model_input, on_size_mismatch: str = "reject") -> pd.DataFrame:
    """The packaged model's ``output="latent"``: z0 .. z{k-1} per input row or image."""
    return kind_of_model(det).latent_input(det, model_input, on_size_mismatch)


def train_and_evaluate(
    data: Data,
    cfg: PipelineConfig,
    out_dir: str | Path,
    callbacks: Sequence[EpochCallback] = (),
    leave_out: np.ndarray | None = None,
) -> TrainOutcome:
    """Split, fit, calibrate, evaluate a dataset of either kind; save the model to
    ``out_dir/model``, the report to ``out_dir/report`` and the review to ``out_dir/review``.
    ``callbacks`` run after every epoch; ``leave_out``: positions kept out of the training
    split (rows reviewers confirmed as anomalies, ``feedback.confirmed_positions``).
    Returns everything the tracking layer logs and a caller prints."""
    out_dir = Path(out_dir)
    splits = leave_out_of_training(split_data(data, cfg.split), leave_out)
    train, cal, test = splits.train, splits.calibration, splits.test
    det = fit_detector(data.features_at(train), cfg, callbacks)
    calibrate_detector(det, data.features_at(cal), data.labels_at(cal), cfg.calibration)
    report, scores = evaluate_detector(
        det,
        data.features_at(test),
        data.labels_at(test),
        cfg.calibration,
        cfg.split.seed,
        train_features=data.features_at(train),
    )
    paths = save_outcome(det, report, scores, data.labels_at(test), out_dir)
    review = write_review(det, data, test, scores, out_dir / "review", cfg)
    shown = examples(det, data, test, scores, cfg)
    return TrainOutcome(det, splits, report, scores, paths, review, shown)
