"""Reading images: folders and npz arrays in, uint8 arrays (or files read on demand) out.

Ingestion. ``read_image_folder`` reads PNG and JPEG files, grayscale (mode "L") or RGB, at one
size fixed by the caller (other sizes are resized or rejected, as configured), from

* an MVTec-AD-like layout: ``root/train/good``, ``root/test/good``, ``root/test/<defect>``
  (pass ``split="train"`` or ``"test"``); label 0 for ``good``, 1 for every other folder;
* class subfolders ``root/<class>/*.png`` (labelled as above when one is called ``good``);
* a flat folder ``root/*.png`` (no labels).

An unreadable, corrupt, wrong-size or non-image file raises ``ValueError`` naming the file, or,
with ``on_error="skip"``, is left out, logged (logger ``vae_core.data.images``) and listed in
``ImageSet.skipped`` for the run's artifact: never dropped silently. Hidden files (names that
start with ".", such as ``.DS_Store`` or an unfinished atomic write) are not images and are
ignored. Before any pixel is decoded a file must be a regular file (not a pipe, a broken link
or a link loop), hold one frame and declare at most ``MAX_PIXELS`` pixels (and, under
``on_size_mismatch="reject"``, the expected size), so a hostile file can neither block the
reader nor make it allocate without bound (tests/image_corpus.py is the corpus of such files).
``image_npz.read_image_npz`` reads uint8 arrays from an ``.npz`` file.

Anomaly maps, reconstructions and pictures of images are ``vae_core.evaluation.image_maps`` and
``vae_core.evaluation.drawing``. PIL is imported inside the functions that read, so importing
``vae_core`` does not load it.
"""

from __future__ import annotations

import logging
import math
import stat
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
GOOD = "good"  # the MVTec-AD name of the normal class; every other folder is a defect
CHANNELS = {"L": 1, "RGB": 3}
SPLITS = ("train", "test")
# The largest image a file may declare: 64 megapixels (an 8192 x 8192 photograph), far above
# any size a VAE is trained at. Decoding is refused above it, before any pixel is allocated
# (PIL's own guard only warns below 179 megapixels); resizing still bounds what is kept.
MAX_PIXELS = 8192 * 8192


@dataclass
class ImageSet:
    """Images read from a folder or an npz file, with where each came from.

    images : uint8 (n, H, W) for grayscale, (n, 3, H, W) for RGB: the layout VAEDetector takes.
    paths : per image, its file (or ``file.npz::key[i]``).
    classes : per image, its subfolder name (``"good"``, a defect or a class); ``""`` in a flat
        folder; for npz, the class array's value as text (empty without one).
    labels : per image, 0 = good, 1 = defect; None where the layout does not say.
    skipped : (path, reason) for every file left out under ``on_error="skip"``.
    """

    images: np.ndarray
    paths: list[str]
    classes: list[str]
    labels: np.ndarray | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)

    def take(self, rows) -> ImageSet:
        """The images at positions ``rows`` (paths, classes, labels with them); no skips.
        Files stay unread when ``images`` is an ``ImageFiles``."""
        rows = np.asarray(rows, dtype="int64")
        labels = None if self.labels is None else self.labels[rows]
        pick = lambda items: [items[i] for i in rows]  # noqa: E731 - local shorthand
        images = (
            self.images.take(rows) if isinstance(self.images, ImageFiles) else self.images[rows]
        )
        return ImageSet(images, pick(self.paths), pick(self.classes), labels)

    def manifest(self) -> pd.DataFrame:
        """One row per image: path, class and (when known) label."""
        frame = pd.DataFrame({"path": self.paths, "class": self.classes})
        if self.labels is not None:
            frame["label"] = self.labels
        return frame

    def skipped_frame(self) -> pd.DataFrame:
        """The files left out, with why: the run's log artifact (columns path, reason)."""
        return pd.DataFrame(self.skipped, columns=["path", "reason"])


class _Unreadable(Exception):
    """A file that is not a usable image; the message says why (without the path)."""


class ImageFiles:
    """Images left in their files and decoded when indexed: a read-only uint8 "array".

    It has ``shape`` ((n, H, W) for mode "L", (n, 3, H, W) for "RGB"), ``dtype``, ``ndim`` and
    ``len``; ``files[i]`` decodes one image, ``files[rows]`` (a slice, integer positions or a
    boolean mask) decodes those into an ndarray, and ``take(rows)`` narrows the set without
    reading. So a training set far larger than memory is read minibatch by minibatch (see
    ``VAEDetector.fit``); ``np.asarray(files)`` decodes them all, for small sets only.

    The files were checked when the set was listed (``index_images``); one that has become
    unreadable since is a ValueError naming it.
    """

    def __init__(self, paths, size, mode: str = "L", on_size_mismatch: str = "reject"):
        height, width = _check_read_settings(size, mode, on_size_mismatch, "raise")
        self.paths = [str(p) for p in paths]
        self.size, self.mode, self.on_size_mismatch = (height, width), mode, on_size_mismatch
        pixels = (height, width) if mode == "L" else (CHANNELS[mode], height, width)
        self.shape = (len(self.paths), *pixels)
        self.dtype = np.dtype(np.uint8)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape)

    def __len__(self) -> int:
        return len(self.paths)

    def __repr__(self) -> str:
        return f"ImageFiles({len(self)} files, shape {self.shape})"

    def _positions(self, key) -> np.ndarray:
        if isinstance(key, torch.Tensor):
            key = key.cpu().numpy()
        return np.arange(len(self.paths))[key]

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            return self._read(self._positions([key]))[0]
        return self._read(np.atleast_1d(self._positions(key)))

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        arr = self[:]
        return arr if dtype is None else arr.astype(dtype)

    def take(self, rows) -> ImageFiles:
        """The files at positions ``rows``, unread."""
        picked = [self.paths[i] for i in self._positions(np.asarray(rows, dtype="int64"))]
        return ImageFiles(picked, self.size, self.mode, self.on_size_mismatch)

    def concat(self, other: ImageFiles) -> ImageFiles:
        """These files followed by ``other``'s (read with the same settings)."""
        if (other.size, other.mode, other.on_size_mismatch) != (
            self.size,
            self.mode,
            self.on_size_mismatch,
        ):
            raise ValueError("ImageFiles read with different settings cannot be joined")
        return ImageFiles(self.paths + other.paths, self.size, self.mode, self.on_size_mismatch)

    def _read(self, positions: np.ndarray) -> np.ndarray:
        out = np.empty((len(positions), *self.shape[1:]), dtype=np.uint8)
        for j, i in enumerate(positions):
            path = Path(self.paths[i])
            try:
                out[j] = _read_image(path, self.size, self.mode, self.on_size_mismatch)
            except _Unreadable as exc:
                raise ValueError(
                    f"{path}: {exc} (it was readable when the images were listed)"
                ) from exc.__cause__
        return out


def image_rows(images):
    """``images`` as something to slice rows from: an ``ImageFiles`` as it is (unread),
    anything else as an ndarray."""
    return images if isinstance(images, ImageFiles) else np.asarray(images)


# ---- ingestion --------------------------------------------------------------------------------
def read_image_folder(
    path: str | Path,
    size: tuple[int, int],
    mode: str = "L",
    on_size_mismatch: str = "reject",
    on_error: str = "raise",
    split: str | None = None,
) -> ImageSet:
    """Read the PNG/JPEG images under ``path`` (layouts in the module docstring).

    Parameters
    ----------
    size : (height, width) every image must have (or is resized to).
    mode : "L" (grayscale, images (n, H, W)) or "RGB" (images (n, 3, H, W)); other colour
        modes are converted (alpha dropped, 16-bit grayscale scaled to 8 bits).
    on_size_mismatch : "reject" (the file is an error, see ``on_error``) or "resize"
        (bilinear, antialiased; the aspect ratio is not kept).
    on_error : "raise" (ValueError naming the file) or "skip" (logged, listed in ``skipped``).
    split : "train" or "test" for an MVTec-like layout; None for class subfolders or a flat
        folder.

    Files are read in sorted order, so the same folder gives the same ImageSet. ValueError
    when none of the files can be read.
    """
    _check_read_settings(size, mode, on_size_mismatch, on_error)  # before touching the folder
    manifest = image_manifest(path, split)
    got = read_images(manifest, size, mode, on_size_mismatch, on_error)
    require_readable(len(got), len(manifest), got.skipped, path)
    return got


def require_readable(n_read: int, n_files: int, skipped: list[tuple[str, str]], source) -> None:
    """ValueError naming ``source`` (and the first skipped file) when none of its ``n_files``
    image files could be read."""
    if not n_read:
        first = f"; first: {skipped[0][0]}: {skipped[0][1]}" if skipped else ""
        raise ValueError(f"{source}: none of its {n_files} image files could be read{first}")


def image_manifest(path: str | Path, split: str | None = None) -> pd.DataFrame:
    """The files ``read_image_folder`` would read, without opening them: one row per file,
    sorted, with ``path``, ``class`` and, where the layout labels them, ``label`` (0 = good)."""
    files, classes, labelled = _list_images(Path(path), split)
    frame = pd.DataFrame({"path": [str(f) for f in files], "class": classes})
    if labelled:
        frame["label"] = np.array([c != GOOD for c in classes], dtype="int64")
    return frame


def read_images(
    manifest: pd.DataFrame,
    size: tuple[int, int],
    mode: str = "L",
    on_size_mismatch: str = "reject",
    on_error: str = "raise",
) -> ImageSet:
    """Read the files of a manifest (``path``, optional ``class`` and ``label``), in order.

    Arguments as ``read_image_folder``; a manifest can be read in slices (bounded memory).
    Unlike ``read_image_folder``, the result may be empty when every file was skipped.
    """
    height, width = _check_read_settings(size, mode, on_size_mismatch, on_error)
    files = [Path(p) for p in manifest["path"]]
    shape = (height, width) if mode == "L" else (CHANNELS[mode], height, width)
    images = np.empty((len(files), *shape), dtype=np.uint8)  # one copy in memory, filled
    kept, skipped = [], []
    for i, file in enumerate(files):
        try:
            images[len(kept)] = _read_image(file, (height, width), mode, on_size_mismatch)
            kept.append(i)
        except _Unreadable as exc:
            if on_error == "raise":
                raise ValueError(f"{file}: {exc}") from exc.__cause__
            logger.warning("skipped image %s: %s", file, exc)
            skipped.append((str(file), str(exc)))
    if len(kept) < len(files):
        images = images[: len(kept)].copy()  # release the rows of the skipped files
    classes = manifest["class"].tolist() if "class" in manifest else [""] * len(files)
    labels = manifest["label"].to_numpy("int64")[kept] if "label" in manifest else None
    return ImageSet(
        images, [str(files[i]) for i in kept], [classes[i] for i in kept], labels, skipped
    )


def index_images(
    manifest: pd.DataFrame,
    size: tuple[int, int],
    mode: str = "L",
    on_size_mismatch: str = "reject",
    on_error: str = "raise",
    chunk_images: int = 1024,
) -> ImageSet:
    """``read_images`` without keeping the pixels: every file is decoded once, ``chunk_images``
    at a time, to find the unreadable ones (raised or skipped exactly as ``read_images``
    does), and the set that comes back holds an ``ImageFiles`` over the readable files.
    Memory stays at one chunk of pixels whatever the number of files."""
    _check_read_settings(size, mode, on_size_mismatch, on_error)
    paths: list[str] = []
    classes: list[str] = []
    labels: list[np.ndarray] = []
    skipped: list[tuple[str, str]] = []
    for start in range(0, len(manifest), int(chunk_images)):
        part = manifest.iloc[start : start + int(chunk_images)]
        got = read_images(part, size, mode, on_size_mismatch, on_error)  # pixels dropped
        paths += got.paths
        classes += got.classes
        skipped += got.skipped
        if got.labels is not None:
            labels.append(got.labels)
    labelled = np.concatenate(labels) if "label" in manifest else None
    files = ImageFiles(paths, size, mode, on_size_mismatch)
    return ImageSet(files, paths, classes, labelled, skipped)


def _check_read_settings(size, mode: str, on_size_mismatch: str, on_error: str):
    """(height, width) after checking the reading settings; ValueError naming a bad one."""
    _check_choice("mode", mode, tuple(CHANNELS))
    _check_choice("on_size_mismatch", on_size_mismatch, ("reject", "resize"))
    _check_choice("on_error", on_error, ("raise", "skip"))
    height, width = (int(s) for s in size)
    if height < 1 or width < 1:
        raise ValueError(f"size must be two positive integers (height, width), got {size}")
    return height, width


def _check_choice(name: str, value, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")


def _visible(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def _list_images(root: Path, split: str | None) -> tuple[list[Path], list[str], bool]:
    """Files, their class names, and whether the layout labels them (has a "good" class)."""
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    if split is not None:
        _check_choice("split", split, SPLITS)
        root = root / split
        if not root.is_dir():
            raise FileNotFoundError(
                f"{root} does not exist: an MVTec-like layout has {split}/good and, for test, "
                f"{split}/<defect> folders"
            )
    entries = _visible(root)
    folders = [p for p in entries if p.is_dir()]
    files = [p for p in entries if not p.is_dir()]
    if folders and files:
        raise ValueError(
            f"{root} holds both files ({files[0].name}) and subfolders ({folders[0].name}): "
            "expected a flat folder of images or one subfolder per class"
        )
    if not folders:
        if not files:
            raise ValueError(f"{root} holds no image files")
        if split is not None:
            raise ValueError(
                f"{root} holds files ({files[0].name}) but no class folders: an MVTec-like "
                f"layout has {split}/good and, for test, {split}/<defect> folders"
            )
        return files, [""] * len(files), False
    return _class_folders(root, folders, split)


def _class_folders(root: Path, folders: list[Path], split: str | None):
    files, classes = [], []
    for folder in folders:
        inside = _visible(folder)
        nested = [p for p in inside if p.is_dir()]
        if nested:
            hint = "" if split else " (pass split='train' or 'test' for an MVTec-like layout)"
            raise ValueError(f"{nested[0]}: image folders nest one level only{hint}")
        files += inside
        classes += [folder.name] * len(inside)
    if not files:
        raise ValueError(f"{root}: its subfolders hold no image files")
    return files, classes, split is not None or GOOD in classes


def _read_image(path: Path, size: tuple[int, int], mode: str, on_size_mismatch: str):
    """One file as uint8 (H, W) or (3, H, W); raises _Unreadable with the reason.

    Checked before any pixel is decoded, so a hostile file costs no memory: the path is a
    regular file (not a FIFO that would block, a device, a broken link or a link loop), its
    header is a PNG or JPEG one, it holds one frame (not an animation), its declared size is
    at most ``MAX_PIXELS`` and, under ``on_size_mismatch="reject"``, the expected size.
    """
    from PIL import Image

    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise _Unreadable(f"not an image file (expected {', '.join(IMAGE_SUFFIXES)})")
    _check_regular_file(path)
    height, width = size
    try:
        with Image.open(path, formats=["PNG", "JPEG"]) as img:
            _check_header(img, (height, width), on_size_mismatch)
            img.load()  # decode now: a truncated or corrupt file fails here, not later
            img = _convert(img, mode)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise _Unreadable(f"cannot be read as a PNG or JPEG image ({exc})") from exc
    if img.size != (width, height):  # only under "resize": "reject" failed on the header
        img = img.resize((width, height), Image.Resampling.BILINEAR)
    arr = np.asarray(img, dtype=np.uint8)
    return arr if mode == "L" else arr.transpose(2, 0, 1)


def _check_regular_file(path: Path) -> None:
    try:
        info = path.stat()  # follows links: a loop or a dangling link fails here
    except FileNotFoundError as exc:
        raise _Unreadable("no such file (or a link to a file that does not exist)") from exc
    except OSError as exc:  # ELOOP, EACCES, ...
        raise _Unreadable(f"cannot be opened ({exc.strerror or exc})") from exc
    if not stat.S_ISREG(info.st_mode):
        raise _Unreadable("not a regular file (a pipe, device or folder named like an image)")


def _check_header(img, size: tuple[int, int], on_size_mismatch: str) -> None:
    """Refuse, from the header alone, what would be decoded to no use or without bound."""
    frames = getattr(img, "n_frames", 1)
    if frames > 1:
        raise _Unreadable(f"an animated image ({frames} frames), expected a still image")
    height, width = size
    if img.width * img.height > MAX_PIXELS:
        raise _Unreadable(
            f"declared size {img.height}x{img.width} exceeds {MAX_PIXELS:,} pixels "
            "(refused before decoding)"
        )
    if img.size != (width, height) and on_size_mismatch == "reject":
        raise _Unreadable(f"size {img.height}x{img.width}, expected {height}x{width}")


def _convert(img, mode: str):
    """``img`` in mode "L" or "RGB"; 16-bit grayscale is scaled (PIL's convert would clip)."""
    from PIL import Image

    if img.mode.startswith("I"):
        wide = np.asarray(img).astype("int64")
        if wide.min() < 0 or wide.max() > 65535:
            raise ValueError(f"pixel values {wide.min()}..{wide.max()} exceed 16 bits")
        img = Image.fromarray(((wide * 255 + 32767) // 65535).astype(np.uint8))
    return img.convert(mode)


def as_image_array(arr, source: str = "images") -> np.ndarray:
    """uint8 images (n, H, W) or (n, 3, H, W) from an array; ValueError naming ``source``.

    Accepts one channel as (n, 1, H, W) and channels-last (n, H, W, C); integer arrays within
    0..255 are cast to uint8; floats are refused (their scale is unknown, and the score's units
    depend on it).
    """
    arr = np.asarray(arr)
    if arr.ndim == 4 and arr.shape[1] not in (1, 3) and arr.shape[-1] in (1, 3):
        arr = arr.transpose(0, 3, 1, 2)
    if arr.ndim == 4 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim not in (3, 4) or (arr.ndim == 4 and arr.shape[1] != 3) or len(arr) == 0:
        raise ValueError(
            f"{source}: expected images (n, H, W), (n, 1 or 3, H, W) or (n, H, W, 1 or 3), "
            f"got shape {arr.shape}"
        )
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype.kind not in "iu" or arr.min() < 0 or arr.max() > 255:
        raise ValueError(f"{source}: expected uint8 pixel values 0..255, got {arr.dtype}")
    return arr.astype(np.uint8)
