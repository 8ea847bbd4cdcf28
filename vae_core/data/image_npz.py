"""Images from an ``.npz`` archive of named arrays: the image array (uint8, any of the layouts
``images.as_image_array`` takes), optionally class ids and which classes are normal. Nothing is
unpickled; a malformed file is a ValueError naming the file and the array."""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import numpy as np

from vae_core.data.images import ImageSet, as_image_array

# An image of an .npz is named ``<file>.npz::<key>[<i>]`` where a file's image has its path.
NPZ_MEMBER = "::"


def is_npz_member(path: str) -> bool:
    """Whether ``path`` names an image inside an .npz (``read_image_npz``), not a file."""
    return NPZ_MEMBER in path


def read_image_npz(
    path: str | Path,
    key: str | None = None,
    class_key: str | None = None,
    normal_classes=None,
) -> ImageSet:
    """Images from an ``.npz`` file: uint8 (n, H, W), (n, C, H, W) or channels-last (n, H, W, C).

    key : the image array; by default the only array with 3 or 4 dimensions.
    class_key : an optional (n,) array of class ids, kept as ``classes``.
    normal_classes : with ``class_key``, the classes that are normal: labels are 0 for them
        and 1 for every other class (the one-class protocol).
    ValueError names the file and the array on anything malformed; nothing is unpickled.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"input {path} does not exist")
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise ValueError(f"{path}: cannot be read as .npz ({exc})") from exc
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ValueError(f"{path}: a single .npy array, not an .npz archive of named arrays")
    with data:
        images = _npz_images(data, key, path)
        ids = None if class_key is None else _npz_array(data, class_key, path)
    n = len(images)
    classes, labels = [""] * n, None
    if ids is not None:
        if ids.shape != (n,):
            raise ValueError(f"{path}: {class_key!r} has shape {ids.shape}, expected ({n},)")
        classes = [str(c) for c in ids.tolist()]
        if normal_classes is not None:
            normal = {str(c) for c in np.atleast_1d(normal_classes).tolist()}
            labels = np.array([c not in normal for c in classes], dtype="int64")
    name = key or "images"
    return ImageSet(images, [f"{path}{NPZ_MEMBER}{name}[{i}]" for i in range(n)], classes, labels)


def _npz_array(data, key: str, path: Path) -> np.ndarray:
    if key not in data.files:
        raise ValueError(f"{path}: no array {key!r} (arrays: {', '.join(data.files)})")
    try:
        return data[key]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise ValueError(f"{path}: array {key!r} cannot be read ({exc})") from exc


def _npz_images(data, key: str | None, path: Path) -> np.ndarray:
    if key is None:
        candidates = [k for k in data.files if _npz_array(data, k, path).ndim in (3, 4)]
        if len(candidates) != 1:
            raise ValueError(
                f"{path}: pass key=, the image array ({len(candidates)} arrays with 3 or 4 "
                f"dimensions among {', '.join(data.files)})"
            )
        key = candidates[0]
    return as_image_array(_npz_array(data, key, path), f"{path}[{key}]")
