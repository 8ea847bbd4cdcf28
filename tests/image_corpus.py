"""A corpus of hostile image files, shared by the tests of every door images come in by.

Each case writes one file (or link, or pipe) into a folder and says which words the error
must carry. The reader must refuse every one with a ValueError that names the file, or, under
``on_error="skip"``, leave it out and list it with the same reason; never crash, hang (a pipe
named .png), follow a link loop, or decode a huge declared size into memory.

``ACCEPTED`` are files that look odd but are images the model can take, read as documented:
another colour mode is converted (RGB to L by the ITU-R 601 luma, L to RGB by copying the
channel), 16-bit grayscale is scaled to 8 bits.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from tests.helpers import MNIST

SIZE = (28, 28)


def digit(i: int = 0) -> np.ndarray:
    """A real MNIST zero from the embedded sample, uint8 (28, 28)."""
    files = sorted((MNIST / "train" / "good").glob("*.png"))
    return np.asarray(Image.open(files[i]))


def _encoded(array: np.ndarray, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt, **kw)
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def declared_png(height: int, width: int, rows: int | None = None) -> bytes:
    """A valid 8-bit grayscale PNG header declaring ``height`` x ``width`` pixels, followed by
    ``rows`` rows of zeros (all of them by default), compressed as they stream, so a file that
    would decode to gigabytes takes kilobytes on disk."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    packer = zlib.compressobj(9)
    row = b"\x00" * (width + 1)  # filter byte + pixels
    body = b"".join(packer.compress(row) for _ in range(height if rows is None else rows))
    body += packer.flush()
    png = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", body)
    return png + _chunk(b"IEND", b"")


def _zero_byte(folder: Path) -> Path:
    (path := folder / "empty.png").write_bytes(b"")
    return path


def _truncated_png(folder: Path) -> Path:
    data = _encoded(digit(1), "PNG")
    (path := folder / "truncated.png").write_bytes(data[: len(data) // 2])
    return path


def _truncated_jpeg(folder: Path) -> Path:
    data = _encoded(digit(2), "JPEG", quality=95)
    (path := folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    return path


def _text_named_png(folder: Path) -> Path:
    (path := folder / "notes.png").write_text("these are not pixels\n" * 20)
    return path


def _wrong_size(folder: Path) -> Path:
    (path := folder / "big.png").write_bytes(_encoded(np.zeros((32, 32), np.uint8), "PNG"))
    return path


def _gif_named_png(folder: Path) -> Path:
    (path := folder / "gif.png").write_bytes(_encoded(digit(3), "GIF"))
    return path


def _animated_gif(folder: Path) -> Path:
    frames = [Image.fromarray(digit(i)) for i in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    (path := folder / "animated.gif").write_bytes(buf.getvalue())
    return path


def _animated_png(folder: Path) -> Path:
    frames = [Image.fromarray(digit(i)) for i in range(2)]
    buf = io.BytesIO()
    frames[0].save(buf, format="PNG", save_all=True, append_images=frames[1:])
    (path := folder / "animated.png").write_bytes(buf.getvalue())
    return path


def _huge_declared(folder: Path) -> Path:
    # 30,000 x 30,000 pixels declared, 900 MB if decoded; 10 rows of data follow
    (path := folder / "huge.png").write_bytes(declared_png(30_000, 30_000, rows=10))
    return path


def _symlink_loop(folder: Path) -> Path:
    os.symlink("loop.png", path := folder / "loop.png")
    return path


def _dangling_link(folder: Path) -> Path:
    os.symlink("gone-for-good.png", path := folder / "dangling.png")
    return path


def _pipe(folder: Path) -> Path:
    os.mkfifo(path := folder / "pipe.png")  # opening it for reading would block forever
    return path


def _unreadable(folder: Path) -> Path:
    (path := folder / "locked.png").write_bytes(_encoded(digit(4), "PNG"))
    path.chmod(0)
    return path


# name -> (writer, words the error must carry)
CASES: dict[str, tuple[Callable[[Path], Path], str]] = {
    "zero-byte file": (_zero_byte, "cannot be read as a PNG or JPEG image"),
    "truncated PNG": (_truncated_png, "cannot be read as a PNG or JPEG image"),
    "truncated JPEG": (_truncated_jpeg, "cannot be read as a PNG or JPEG image"),
    "text file named .png": (_text_named_png, "cannot be read as a PNG or JPEG image"),
    "wrong size": (_wrong_size, "size 32x32, expected 28x28"),
    "GIF named .png": (_gif_named_png, "cannot be read as a PNG or JPEG image"),
    "animated GIF": (_animated_gif, "not an image file"),
    "animated PNG": (_animated_png, "an animated image (2 frames)"),
    "huge declared size": (_huge_declared, "exceeds"),  # PIL refuses it at open
    "symlink loop": (_symlink_loop, "cannot be opened"),
    "dangling link": (_dangling_link, "no such file"),
    "pipe named .png": (_pipe, "not a regular file"),
    "unreadable file": (_unreadable, "cannot be opened"),
}


def root_reads_everything() -> bool:
    """chmod 0 does not stop root: the "unreadable file" case cannot be made as root."""
    return hasattr(os, "geteuid") and os.geteuid() == 0


def case_ids() -> list[str]:
    return list(CASES)


def good_folder(folder: Path, n: int = 3) -> list[Path]:
    """``n`` real MNIST zeros copied into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    files = sorted((MNIST / "train" / "good").glob("*.png"))[:n]
    out = []
    for f in files:
        (dest := folder / f.name).write_bytes(f.read_bytes())
        out.append(dest)
    return out


def write_case(name: str, folder: Path) -> tuple[Path, str]:
    """Write case ``name`` into ``folder``: (its path, the words its error carries)."""
    writer, words = CASES[name]
    folder.mkdir(parents=True, exist_ok=True)
    return writer(folder), words


def write_all(folder: Path) -> dict[str, tuple[Path, str]]:
    """Every case (but "unreadable file" as root) into one folder."""
    return {
        name: write_case(name, folder)
        for name in CASES
        if not (name == "unreadable file" and root_reads_everything())
    }


# ---- accepted: odd, but images the model takes ----------------------------------------------
def rgb_for_a_grayscale_model(folder: Path) -> tuple[Path, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    rgb = np.stack([digit(5), digit(6), digit(7)], axis=-1)
    (path := folder / "colour.png").write_bytes(_encoded(rgb, "PNG"))
    return path, np.asarray(Image.fromarray(rgb).convert("L"))


def sixteen_bit(folder: Path) -> tuple[Path, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    eight = digit(8)
    wide = eight.astype(np.uint16) * 257  # 255 -> 65535: the 8-bit values, exactly
    img = Image.fromarray(wide)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    (path := folder / "deep.png").write_bytes(buf.getvalue())
    return path, eight
