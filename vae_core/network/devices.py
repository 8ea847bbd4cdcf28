"""Torch devices: which ones a config may name, and which one a model can use here."""

from __future__ import annotations

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
