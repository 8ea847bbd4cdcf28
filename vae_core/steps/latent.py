"""The latent space for people: embeddings of a whole input, paths between two of its rows or
images, and how realistic the model's samples are.

``VAEDetector`` holds the mathematics (``transform``, ``reconstruct``, ``interpolate``,
``sample``, ``decode``); this module reads inputs the way scoring does (validated table
partitions a chunk at a time; image folders or npz files at the model's size and colour mode)
and measures sample realism with a classifier two-sample test (Lopez-Paz & Oquab, ICLR 2017,
"Revisiting classifier two-sample tests"). The command line (``vae-anomaly embed``, ``sample``,
``interpolate``) and the review call these functions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from vae_core.data.image_input import (
    packaged_reading,
    parse_image_input,
    read_in_chunks,
)

# What the packaged model's predict returns, by ``params={"output": ...}``; the first is the
# default (declared in the model's signature as a predict parameter).
PREDICT_OUTPUTS = ("scores", "latent")


def embed_table(det, source, id_columns=(), chunk_rows: int = 100_000) -> pd.DataFrame:
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
        frames.append(_coordinates(det, clean, ids))
        position += len(clean)
    return pd.concat(frames, ignore_index=True)


def _validated_chunks(det, source, id_columns, chunk_rows: int):
    from vae_core.steps import batch

    schema = batch.input_schema(det, list(id_columns))
    empty = True
    for part in batch.list_partitions(source):
        for chunk in batch.read_partition(part, chunk_rows):
            empty = False
            yield batch.validate_chunk(chunk, schema, part.name)
    if empty:
        raise ValueError(f"{source}: no rows")


def find_table_rows(det, source, id_columns, values, chunk_rows: int = 100_000) -> list:
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


def latent_image_input(
    det, model_input, on_size_mismatch: str = "reject", chunk_images: int | None = None
) -> pd.DataFrame:
    """The packaged model's ``output="latent"`` for an image model: z0 .. z{k-1} per input
    image, in order, for a ``path`` column (kept in the output, read ``chunk_images`` at a
    time, by default the config's ``images.chunk_images``), an ``image`` column or an array
    (``image_input.parse_image_input``)."""
    names = list(det.get_feature_names_out())
    parsed = parse_image_input(model_input)
    if isinstance(parsed, pd.DataFrame):
        reading = packaged_reading(det, on_size_mismatch, chunk_images)
        parts = [det.transform(part.images) for part in read_in_chunks(parsed, reading)]
        return pd.concat([parsed, pd.DataFrame(np.concatenate(parts), columns=names)], axis=1)
    return pd.DataFrame(det.transform(parsed), columns=names)


def embed_images(det, images) -> pd.DataFrame:
    """path, ``z0`` .. ``z{k-1}`` and anomaly_score of an ImageSet."""
    return _coordinates(det, images.images, pd.DataFrame({"path": images.paths}))


def _coordinates(det, X, ids: pd.DataFrame) -> pd.DataFrame:
    z = pd.DataFrame(det.transform(X), columns=det.get_feature_names_out())
    scores = pd.DataFrame({"anomaly_score": det.anomaly_score(X)})
    return pd.concat([ids.reset_index(drop=True), z, scores], axis=1)


def find_image(images, name: str, source) -> np.ndarray:
    """The one image whose file name (or path relative to ``source``, or full path) is
    ``name``, as a batch of one; ValueError naming it and the source otherwise."""
    root = Path(source)
    hits = [
        i
        for i, p in enumerate(images.paths)
        if name in (Path(p).name, str(p)) or _relative(p, root) == name
    ]
    if not hits:
        raise ValueError(f"image {name!r} not found in {source}")
    if len(hits) > 1:
        shown = ", ".join(images.paths[i] for i in hits[:3])
        raise ValueError(f"image name {name!r} is not unique in {source} ({shown}); "
                         "give its path relative to the folder")  # fmt: skip
    return np.asarray(images.take([hits[0]]).images)


def _relative(path: str, root: Path) -> str | None:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return None


def sample_realism(det, real: pd.DataFrame, random_state: int = 0, folds: int = 5) -> float:
    """Classifier two-sample test of the model's samples against real rows: the cross-validated
    ROC-AUC of a gradient-boosted classifier told to separate ``real`` (held-out rows) from as
    many draws x ~ p(x|z), z ~ N(0, I). 0.5: indistinguishable; 1.0: every sample is told
    apart. Both sets enter the classifier as the model sees them (``det.model_input``).
    """
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from threadpoolctl import threadpool_limits

    if det.preprocessor_.image_shape is not None:
        raise ValueError("sample realism is measured for tables")
    n = len(real)
    if n < 2 * folds:
        raise ValueError(f"sample realism needs at least {2 * folds} real rows, got {n}")
    fake = det.sample(n, random_state=random_state)
    x = np.vstack([det.model_input(real), det.model_input(fake)])
    y = np.r_[np.zeros(n), np.ones(n)]
    clf = HistGradientBoostingClassifier(random_state=random_state)
    cv = StratifiedKFold(folds, shuffle=True, random_state=random_state)
    # One OpenMP thread: on a busy machine the boosting's threads wait for cores (measured on
    # 2 cores under load: 8 s with the default threads, 0.9 s with one); same result.
    with threadpool_limits(limits=1, user_api="openmp"):
        proba = cross_val_predict(clf, x, y, cv=cv, method="predict_proba")[:, 1]
    return float(roc_auc_score(y, proba))


def top_variance_directions(z: np.ndarray, n: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """The ``n`` directions of the latent means with the most variance (principal axes) and
    the share of the variance each carries: (directions (n, k), shares (n,))."""
    centred = z - z.mean(0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    var = s**2
    total = var.sum() or 1.0
    k = min(n, len(vt))
    return vt[:k], var[:k] / total


def write_latent_review(
    det,
    X,
    scores,
    y,
    out_dir,
    random_state: int = 0,
    *,
    interpolations: bool = False,
    realism: bool = False,
) -> dict:
    """The latent space for the reviewer, from the test split ``X`` (its ``scores`` and known
    labels ``y`` or None), in ``out_dir``:

    * ``latent_map.png``: the posterior means projected on their two directions of most
      variance, coloured by score, known anomalies circled (``report.plot_latent_map``);
    * with ``interpolations`` (images), ``interpolations.png``: decoded paths between two
      normal test images and between a normal image and the top-scoring one;
    * with ``realism`` (tables), the realism of samples (``sample_realism``: a classifier
      two-sample test on the test rows; needs 10 rows);
    * ``latent.json`` with the numbers.

    Returns {name: path} and the numbers under ``variance_shares`` and ``sample_realism_auc``
    (None where not measured)."""
    import json

    from vae_core.evaluation.report import plot_latent_map
    from vae_core.foundations.atomic import atomic_write

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    scores = np.asarray(scores, dtype="float64")
    z = det.transform(X)
    directions, shares = top_variance_directions(z)
    coords = (z - z.mean(0)) @ directions.T
    paths: dict = {
        "latent_map": plot_latent_map(coords, scores, y, shares, out_dir / "latent_map.png")
    }
    realism_auc = None
    if interpolations:
        from vae_core.data.images import image_rows
        from vae_core.evaluation.drawing import interpolation_grid_png

        images = image_rows(X)
        normal = np.arange(len(scores)) if y is None else np.flatnonzero(np.asarray(y) == 0)
        if len(normal) >= 2:
            order = normal[np.argsort(scores[normal], kind="stable")]  # most normal first
            top = int(np.argmax(scores))
            pairs = [(order[0], order[1]), (order[0], top)]
            pairs = [(np.asarray(images[[i]])[0], np.asarray(images[[j]])[0]) for i, j in pairs]
            paths["interpolations"] = interpolation_grid_png(
                det, pairs, out_dir / "interpolations.png"
            )
    if realism and len(X) >= 10:
        realism_auc = sample_realism(det, X, random_state=random_state)
    summary = {
        "variance_shares": [float(v) for v in shares],
        "sample_realism_auc": realism_auc,
        "rows": len(scores),
    }
    paths["latent_summary"] = atomic_write(
        out_dir / "latent.json", lambda fh: fh.write(json.dumps(summary, indent=2).encode())
    )
    return paths | {
        "variance_shares": summary["variance_shares"],
        "sample_realism_auc": realism_auc,
    }
