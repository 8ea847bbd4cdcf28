"""The image kind (``data.kind: images``): ``ImageKind`` implements ``protocol.DataKind`` for
images, with the dataset (``image_sets.ImageData``) and the work on a fitted detector
(``image_scores``) beside it.

    read: a folder (MVTec-AD-like or class subfolders) or an .npz -> ImageData
    a batch: one partition, the folder (or .npz), read ``images.chunk_images`` files at a time
        -> the scores frame (path, class, label, scores) -> anomaly maps of the top
        ``images.top_maps`` and the list of skipped files beside the scores
    the review: grids, anomaly maps, image scores, the latent space; the examples: the packaged
        model's input example (paths, or pixels for an .npz)
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from vae_core.data.image_npz import is_npz_member
from vae_core.data.images import image_manifest
from vae_core.data.ingest import is_table_file
from vae_core.evaluation.drawing import write_image_png
from vae_core.foundations.config import PipelineConfig
from vae_core.kinds.image_scores import (
    embed_images,
    find_image,
    image_chunks,
    image_scores,
    latent_image_input,
    read_images_as_model,
    score_image_input,
    write_batch_outputs,
    write_review,
)
from vae_core.kinds.image_sets import ImageData, is_npz, load_images
from vae_core.kinds.protocol import BatchOutputs, Chunk, DataRecord, Partition

EXAMPLE_IMAGES = 5  # test images as the packaged model's input example


def label_source(paths: list[str]) -> str:
    """Where the labels of an image set came from, for the run's tags."""
    if paths and is_npz_member(paths[0]):
        return "npz class array (normal classes = 0)"
    return "folder name (good = 0)"


def _regular_file(path: str) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)  # follows links
    except OSError:
        return False


class ImageKind:
    """Images (``data.kind: images``), as ``protocol.DataKind`` says."""

    name = "images"
    settings: tuple[str, ...] = ("images.",)
    columns = False
    unit = "images"

    # ---- training -------------------------------------------------------------------------
    def read(self, path, cfg: PipelineConfig, *, require_label: bool = False) -> ImageData:
        return load_images(path, cfg.images)

    def review(self, det, data: ImageData, rows, scores, *, out_dir, cfg: PipelineConfig) -> dict:
        """Grids, anomaly maps, image scores, the latent space (``image_scores.write_review``)."""
        return write_review(
            det, data, rows, Path(out_dir), top_maps=cfg.images.top_maps, scores=scores
        )

    def examples(self, det, data: ImageData, rows, scores, cfg: PipelineConfig) -> dict:
        rows = rows[:EXAMPLE_IMAGES]
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
            "example_output": score_image_input(det, example, on_size_mismatch=mismatch),
            "model_config": {"top_features": 0, "on_size_mismatch": mismatch},
        }

    def record(self, data: ImageData, splits: Mapping[str, np.ndarray]) -> DataRecord:
        images = data.images
        listed = images.manifest()
        manifest = listed.assign(split="")
        for name, rows in splits.items():
            manifest.loc[rows, "split"] = name
        texts = {"data/images.csv": manifest.to_csv(index=False)}
        if images.skipped:
            texts["data/skipped_images.csv"] = images.skipped_frame().to_csv(index=False)
        labelled = images.labels is not None
        tags = {
            "data.kind": "images",
            "data.image_shape": "x".join(str(d) for d in images.images.shape[1:]),
            "data.label_column": label_source(images.paths) if labelled else "",
            "data.anomalies": str(int(images.labels.sum())) if labelled else "",
            "data.skipped": str(len(images.skipped)),
        }
        if data.streamed:  # too many to hold: the dataset is the list of files
            return DataRecord(data.fingerprint(), frame=listed, tags=tags, texts=texts)
        return DataRecord(
            data.fingerprint(), array=images.images, targets=images.labels, tags=tags, texts=texts
        )

    # ---- batch scoring ----------------------------------------------------------------------
    def destination(self, out: Path, batch_id: str | None) -> Path | None:
        """None: images are scored into the folder ``out`` (``<batch id>.parquet``,
        ``<batch id>.maps/``, ``<batch id>.skipped.csv``); ValueError for a table file."""
        if is_table_file(out):
            raise ValueError(
                f"{out}: for an image model, a folder (it gets <batch id>.parquet and "
                "<batch id>.maps/; the batch id names them)"
            )
        return None

    def partitions(self, source) -> list[Partition]:
        """One: the folder or .npz, read a chunk at a time (``chunks``)."""
        return [Partition(str(source))]

    def files(self, source) -> list[str]:
        """The .npz, or the folder's regular files: a dangling or looping link, or a pipe
        named like an image, is left to the reader (which names it, or skips it as
        ``images.on_error`` says) rather than opened here to be hashed."""
        if is_npz(source):
            return [str(source)]
        return [p for p in image_manifest(source)["path"].tolist() if _regular_file(p)]

    def chunks(self, det, part: Partition, cfg: PipelineConfig) -> Iterator[Chunk]:
        return image_chunks(det, part.path, cfg.images)

    def score_frame(self, det, inputs, cfg: PipelineConfig) -> pd.DataFrame:
        return image_scores(det, inputs)

    def top_rows(self, cfg: PipelineConfig) -> int:
        return cfg.images.top_maps

    def finish_batch(self, det, top, skipped, dest: Path, cfg: PipelineConfig) -> BatchOutputs:
        """Anomaly maps of the ``top`` images and the list of ``skipped`` files beside
        ``dest``; ``map_path`` in the scores (``image_scores.write_batch_outputs``)."""
        return write_batch_outputs(det, top, skipped, dest, cfg.images)

    # ---- the packaged model and the latent space ------------------------------------------
    def score_input(self, det, model_input, *, top_features: int, on_size_mismatch: str):
        return score_image_input(det, model_input, on_size_mismatch=on_size_mismatch)

    def latent_frame(self, det, model_input, *, on_size_mismatch: str) -> pd.DataFrame:
        return latent_image_input(det, model_input, on_size_mismatch=on_size_mismatch)

    def embed(self, det, source, cfg: PipelineConfig, id_columns) -> pd.DataFrame:
        return embed_images(det, read_images_as_model(det, source, cfg.images))

    def ends(self, det, source, cfg: PipelineConfig, id_columns, names) -> tuple:
        images = read_images_as_model(det, source, cfg.images)
        return tuple(find_image(images, name, source) for name in names)

    def write_decoded(self, decoded: np.ndarray, out: Path, stem: str) -> tuple[int, str]:
        """One PNG per image (uint8 after rounding and clipping), written atomically."""
        if out.suffix:
            raise ValueError(f"--out {out}: for an image model, a folder (one PNG per image)")
        images = decoded[:, None] if decoded.ndim == 3 else decoded
        out.mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(images):
            write_image_png(image, out / f"{stem}_{i:04d}.png")
        return len(images), "images"
