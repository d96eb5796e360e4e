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


# what a run directory holds once a run has started (graphsr train, distill, train-reco)
RUN_FILES = ("checkpoint.pt", "history.csv")


def claim_run_dir(out_dir: str | Path, *, resume: bool = False, overwrite: bool = False) -> Path:
    """Make ``out_dir`` ready for a run, without losing one that is there (call it once the run's inputs are
    checked, so that a refused run removes nothing).

    A directory that holds a run (:data:`RUN_FILES`) is refused unless ``resume`` (continue it: its checkpoint must
    exist) or ``overwrite`` (its run files are removed first, so that a failed new run leaves no mix of both).
    Both together are refused. Raises FileExistsError, FileNotFoundError or ValueError naming the directory.
    """
    out_dir = Path(out_dir)
    if resume and overwrite:
        raise ValueError(f"{out_dir}: resume continues the run there and overwrite replaces it; choose one")
    held = [name for name in RUN_FILES if (out_dir / name).exists()]
    if resume:
        if not (out_dir / RUN_FILES[0]).exists():
            raise FileNotFoundError(f"{out_dir} holds no checkpoint to resume ({out_dir / RUN_FILES[0]} is missing)")
    elif held and not overwrite:
        raise FileExistsError(f"{out_dir} holds a run ({', '.join(held)}): pass --resume to continue it or "
                              "--overwrite to replace it (or choose another --out)")
    elif held:
        for name in held:
            (out_dir / name).unlink()
    return out_dir


def write_calibration(path: str | Path, calibration: dict, *, sampling_defaults: bool = True) -> dict:
    """Store a calibration in the checkpoint at ``path``; with ``sampling_defaults`` the sampler settings it was
    fitted for become the checkpoint's sampling defaults (``graphsr calibrate`` for other settings). The calibration
    it replaces, with the sampling defaults it held for, is kept under ``"replaced_calibrations"`` (oldest first), so
    a refit never loses one. Returns the checkpoint state as written."""
    state = load_checkpoint(path)
    if state.get("calibration") is not None:
        state.setdefault("replaced_calibrations", []).append(
            {"calibration": state["calibration"], "sample": dict(state["config"]["sample"])})
    state["calibration"] = calibration
    for key in ("sampler", "steps", "eta", "ensemble") if sampling_defaults else ():
        if calibration.get(key) is not None:
            state["config"]["sample"][key] = calibration[key]
    save_checkpoint(state, path)
    return state


def model_weights(state: dict, use_ema: bool = True) -> dict:
    """The state dict of a checkpoint's model to load into a fresh one: its EMA weights (recommended; stored by
    ``torch.optim.swa_utils.AveragedModel``, which prefixes the wrapped module's keys and counts its updates) or its
    raw weights."""
    if not use_ema:
        return state["model"]
    return {k.removeprefix("module."): v for k, v in state["ema"].items() if k.startswith("module.")}
