"""Checkpoints: written atomically, read back with ``weights_only=True``.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts (no pickled classes), so loading it
cannot run code: model and EMA state dicts, optimiser and scheduler state, the step, the config as a dict and the
data normalisation.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch


def save_checkpoint(state: dict, path: str | Path) -> Path:
    """Write ``state`` to ``path`` through a temporary file in the same directory and an atomic rename.

    A run killed while writing leaves the previous checkpoint intact (and at worst a stray ``.tmp`` file).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint safely (``weights_only=True``); errors name the file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # truncated or foreign files
        raise ValueError(f"{path} is not a readable graphsr checkpoint: {error}") from error


def slim_checkpoint(path: str | Path, out: str | Path) -> Path:
    """Write to ``out`` what sampling needs of the checkpoint at ``path``: no raw weights, optimiser or scheduler
    state, the EMA weights in float16 (half their float32 size; the model loads them into float32). Used for the
    checkpoints that come back from a GPU run and for the shipped pretrained model."""
    state = load_checkpoint(path)
    for key in ("model", "optimizer", "scheduler"):
        state.pop(key, None)
    state["ema"] = {k: v.half() if v.is_floating_point() else v for k, v in state["ema"].items()}
    return save_checkpoint(state, out)
