"""Atomic file writes: a temporary file in the target's folder, then a rename over it.

Readers (a worker, a reviewer, a second scoring run) see the old file or the whole new one,
never a part, and a crash leaves no half-written file where they look. ``replace_folder``
does the same for a folder (anomaly maps). ``exclusive`` is the lock that lets only one run
of a batch write its outputs at a time.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO


def replace_folder(new: Path, dest: Path) -> None:
    """Put the folder ``new`` at ``dest``, replacing what was there, by two renames in the
    same parent folder (``dest`` is never half-written: the old folder or the whole new one;
    between the renames, briefly absent)."""
    old = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.old")
    if dest.exists():
        os.replace(dest, old)
    os.replace(new, dest)
    shutil.rmtree(old, ignore_errors=True)


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


@contextlib.contextmanager
def exclusive(path: Path, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold an exclusive lock named ``path`` (an ``flock`` on a file there) for the block:
    a second holder of the same name, in this or another process, waits until the first
    leaves. ``on_wait()`` is called once if it has to wait.

    The lock file is removed on the way out, without a race: a waiter that obtains the lock
    on a file that was meanwhile unlinked (or replaced) retries on the current one. A killed
    holder leaves the file behind, unlocked (the kernel drops the lock with the process); the
    next holder takes it and removes it.
    """
    path = Path(path)
    waited = False
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not waited and on_wait is not None:
                    on_wait()
                waited = True
                fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                current = os.stat(path)
            except FileNotFoundError:
                current = None
            held = os.fstat(fd)
            if current is not None and (current.st_ino, current.st_dev) == (
                held.st_ino,
                held.st_dev,
            ):
                break
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # the file we locked was removed by the previous holder: retry
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # while still holding it: a waiter on this file retries
        os.close(fd)
