"""Atomic file writes: a temporary file in the target's folder, then a rename over it.

Readers (a worker, a reviewer, a second scoring run) see the old file or the whole new one,
never a part, and a crash leaves no half-written file where they look.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Write ``path`` through ``write(file)`` on a temporary file in the same folder, then
    rename it over ``path``: readers see the old file or the whole new one, never a part.

    The file ends readable by all (0644): mkstemp creates it private (0600), and models,
    reports and pictures are meant to be read by the workers and reviewers that use them.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """``atomic_write`` of a bytes object."""
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_frame(frame, path: Path) -> Path:
    """Write a DataFrame as CSV or Parquet (by suffix) with ``atomic_write``."""
    if Path(path).suffix.lower() == ".csv":
        return atomic_write(path, lambda f: frame.to_csv(f, index=False))
    return atomic_write(path, lambda f: frame.to_parquet(f, index=False))
