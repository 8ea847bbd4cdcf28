"""Torch devices: which ones a config may name, which one a model can use here, and how many
CPU threads each of several scoring threads of one process should use."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch


def check_device(device: str) -> None:
    """ValueError unless torch can use ``device`` here ("cpu", "cuda", "cuda:N")."""
    kind, _, index = str(device).partition(":")
    if kind == "cpu" and not index:
        return
    if kind != "cuda" or (index and not index.isdigit()):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if not torch.cuda.is_available():
        raise ValueError(
            f"device {device!r}: torch {torch.__version__} sees no GPU on this machine "
            "(a CPU-only build, or no driver); use device 'cpu'"
        )
    if index and int(index) >= torch.cuda.device_count():
        raise ValueError(f"device {device!r}: this machine has {torch.cuda.device_count()} GPU(s)")


def usable_device(device: str) -> str:
    """``device`` where torch can use it, else "cpu": a model fitted on a GPU scores on the
    CPU of a machine without one (scores equal to the GPU's up to float rounding)."""
    try:
        check_device(device)
    except ValueError:
        return "cpu"
    return str(device)


def threads_per_worker(workers: int, cores: int | None = None) -> int:
    """Torch intra-op threads for each of ``workers`` threads that score at once in one
    process: the cores shared out, at least one. Torch's default (a thread per core for every
    caller) runs workers x cores threads on the cores; measured on 2 cores, 4 partitions of
    1M rows on 2 scoring threads: 150k rows/s with 1 torch thread each, 134k with 2."""
    if int(workers) < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, int(cores or 1) // int(workers))


def scoring_threads(workers: int) -> int:
    """Torch intra-op threads for each of ``workers`` threads of this process that score at
    once: torch's own count for one, the cores shared out (``threads_per_worker``) for more."""
    return torch.get_num_threads() if int(workers) <= 1 else threads_per_worker(workers)


@contextlib.contextmanager
def shared_cores(workers: int) -> Iterator[None]:
    """Inside the block, torch runs ``scoring_threads(workers)`` intra-op threads: the one
    rule of the score flow's thread runner and ``batch.local_parts``."""
    with intra_op_threads(scoring_threads(workers)):
        yield


@contextlib.contextmanager
def intra_op_threads(n: int) -> Iterator[None]:
    """Torch's intra-op thread count set to ``n`` inside the block, restored after. The count
    is the process's: use it where this process's scoring threads are started and joined."""
    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)
