"""Training steps that end the way ``graphsr train``, ``graphsr distill`` and ``graphsr train-reco`` end: calibrated,
or scored on held-out events."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch

from graphsr.eval.reco_report import test_split_metrics
from graphsr.inference import fit_calibration, load_resolver, occupancy_text
from graphsr.reco import ParticleFlowReco, RecoConfig
from graphsr.reco import train_reco as train_reco_model
from graphsr.reco.training import RecoTrainResult
from graphsr.training.checkpoint import load_checkpoint, write_calibration
from graphsr.training.distill import distill as distill_rounds
from graphsr.training.boosted import train_boosted
from graphsr.training.trainer import TrainResult, load_splits
from graphsr.training.trainer import train as train_model

logger = logging.getLogger(__name__)


def calibrate(checkpoint: str | Path, *, events: int | None = None, device: str | torch.device = "auto",
              sampling_defaults: bool = True, **sampling) -> dict:
    """Fit the spread and occupancy calibration of a checkpoint on its validation events
    (:func:`~graphsr.inference.fit_calibration`) and store it in the checkpoint, keeping the one it replaces
    (:func:`~graphsr.training.checkpoint.write_calibration`). Returns the calibration.

    Args:
        checkpoint: written by training or distillation.
        events: validation events to use (default: the config's ``sample.calibration_events``).
        device: where to sample.
        sampling_defaults: make the settings it was fitted for the checkpoint's sampling defaults.
        sampling: ``ensemble``, ``sampler``, ``steps``, ``eta`` to fit for (default: the checkpoint's).
    """
    resolver = load_resolver(checkpoint, device=device)
    _, val_set, _ = load_splits(resolver.config)
    chosen = torch.as_tensor(val_set.indices()[:events or resolver.config.sample.calibration_events])
    calibration = fit_calibration(resolver, val_set.storage(), chosen, **sampling)
    write_calibration(checkpoint, calibration, sampling_defaults=sampling_defaults)
    logger.info(f"calibrated on {len(chosen)} validation events: spread factors coarse {calibration['coarse']:.2f}, "
                f"fine {calibration['fine']:.2f}; {occupancy_text(calibration)}")
    return calibration


def _calibrates(state: dict) -> bool:
    """Whether a finished run's checkpoint state gets a spread calibration: generative models with validation events
    to fit on, by the rank that writes (under torchrun)."""
    if os.environ.get("RANK", "0") != "0":
        return False
    config = state["config"]
    val = state["events"]["val"]
    return state["energy_model"]["kind"] == "shares" and config["sample"]["calibration_events"] > 0 and \
        any(len(f["entries"]) for f in val)


def train(config, out_dir: str | Path, **train_args) -> TrainResult:
    """Train (:func:`graphsr.training.trainer.train`, or for boosted trees
    :func:`graphsr.training.boosted.train_boosted`, with ``train_args``), then calibrate on validation events, as
    ``graphsr train`` does; a run paused by ``stop_after`` is calibrated when it finishes."""
    fit = train_boosted if config.model.generator == "boosted" else train_model
    result = fit(config, out_dir, **train_args)
    if not result.paused and _calibrates(load_checkpoint(result.checkpoint)):
        calibrate(result.checkpoint, device=config.train.device, sampling_defaults=False)
    return result


def distill(checkpoint: str | Path, out: str | Path, **distill_args) -> Path:
    """Distil (:func:`graphsr.training.distill.distill`, with ``distill_args``), then calibrate the student on
    validation events, as ``graphsr distill`` does; a paused distillation is calibrated when it finishes."""
    path = distill_rounds(checkpoint, out, **distill_args)
    state = load_checkpoint(path)
    if (state.get("distill_run") or {}).get("complete", True) and state.get("calibration") is None \
            and _calibrates(state):
        calibrate(path, device=distill_args.get("device", "auto"), sampling_defaults=False)
    return path


def train_reco(config: RecoConfig, input_type: str, out_dir: str | Path, **train_args) -> RecoTrainResult:
    """Train a particle-flow model (:func:`graphsr.reco.train_reco`, with ``train_args``), then score it on its
    held-out test events beside the hand-written clustering on the same cells, into ``out_dir/test_metrics.json``
    and the result's ``test``, as ``graphsr train-reco`` does."""
    result = train_reco_model(config, input_type, out_dir, **train_args)
    if result.paused:  # scored when it finishes
        return result
    reco = ParticleFlowReco(result.checkpoint, device=config.train.device)
    result.test = test_split_metrics(reco, result.test_set)
    (Path(out_dir) / "test_metrics.json").write_text(json.dumps(result.test, indent=2, default=float))
    return result
