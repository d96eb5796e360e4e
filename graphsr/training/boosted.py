"""Training of the boosted-tree flow-matching baseline (:mod:`graphsr.models.boosted`): rows from the training events,
two LightGBM fits, the validation loss the networks report, and a checkpoint that loads as theirs do.

Deterministic on CPU for a given config and thread count (seeded draws, LightGBM's ``deterministic`` mode).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import torch

from graphsr.config import Config
from graphsr.graphs import GraphLoader, collate_events
from graphsr.models.boosted import flow_rows
from graphsr.models.factory import build_denoiser, build_loss
from graphsr.models.sr3 import add_inputs, node_weights
from graphsr.training.checkpoint import claim_run_dir, save_checkpoint
from graphsr.training import trainer  # the run record and the data helpers
from graphsr.training.history import History

logger = logging.getLogger(__name__)

CHUNK = 256  # events turned into rows at a time


def _rows(subset, energy_model, factor: int, model, draws: int, generator: torch.Generator,
          coarse_weight: float) -> tuple:
    """:func:`~graphsr.models.boosted.flow_rows` of every event of ``subset`` (numpy, fine and coarse), weighted as
    the network's loss weighs its nodes (``diffusion.coarse_weight`` included)."""
    import numpy as np

    parts = []
    indices = torch.as_tensor(subset.indices())
    for chunk in torch.split(indices, CHUNK):
        batch = add_inputs(collate_events(*subset.storage(), chunk), factor)
        fine, coarse = energy_model.encode(batch)
        weight = node_weights(batch, coarse_weight)
        parts.append(flow_rows(batch, torch.cat([fine, coarse]), weight, model.net.cell_size, draws, generator))
    return tuple(tuple(np.concatenate(column) for column in zip(*(p[i] for p in parts))) for i in range(2))


def train_boosted(config: Config, out_dir: str | Path, *, resume: bool = False, overwrite: bool = False,
                  progress: bool = True, stop_after: int | None = None):
    """Fit the boosted trees of ``config`` and write ``out_dir/checkpoint.pt`` (and ``history.csv``, one row); the
    checkpoint has the networks' layout (its "EMA" is the trees themselves), so sampling, calibration and evaluation
    take it as any other. A fit is not resumable: ``resume`` and ``stop_after`` are refused."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("boosted trees are fitted in one process: run graphsr train without torchrun")
    if resume or stop_after is not None:
        raise ValueError("boosted trees are fitted in one go (minutes) and cannot be resumed or paused: run again "
                         "with --overwrite")
    if config.diffusion.parameterisation != "cfm":
        raise ValueError("the boosted generator learns the flow-matching velocity: set diffusion.parameterisation: "
                         f"cfm (not {config.diffusion.parameterisation!r})")
    out_dir, tc = Path(out_dir), config.train
    if trainer.resolve_device(tc.device).type != "cpu":
        logger.info("boosted trees fit and predict on the CPU")
    train_set, val_set, _ = trainer.load_splits(config)
    if len(train_set) == 0:
        raise ValueError(f"no training events in {config.data.train}")
    claim_run_dir(out_dir, overwrite=overwrite)
    energy_model = trainer.fit_energy_model(train_set, "shares")
    factor = trainer.data_factor(train_set)
    model = build_denoiser(config)
    started = time.perf_counter()
    draws = torch.Generator().manual_seed(tc.seed + 1)
    coarse_weight = config.diffusion.coarse_weight
    rows = _rows(train_set, energy_model, factor, model, config.boosted.draws, draws, coarse_weight)
    valid = _rows(val_set, energy_model, factor, model, 1, torch.Generator().manual_seed(tc.seed + 2),
                  coarse_weight) if len(val_set) else None
    logger.info(f"boosted trees: {len(rows[0][1]):,} fine and {len(rows[1][1]):,} coarse training rows")
    remaining = None if tc.time_limit is None else max(tc.time_limit - (time.perf_counter() - started), 1.0)
    fit = model.net.fit(*rows, seed=tc.seed, time_limit=remaining, valid=valid)
    seconds = time.perf_counter() - started
    loss_fn = build_loss(config)
    val_loss = trainer.validation_loss(loss_fn, model.eval(), GraphLoader(val_set, tc.batch_size), energy_model,
                                       torch.device("cpu"), factor, coarse_weight) \
        if len(val_set) else float("nan")
    weights = model.state_dict()
    run = trainer._run_record(config, None, train_set, val_set, energy_model, factor)
    rounds = max(fit["rounds"])
    save_checkpoint({**run, "model": weights, "ema": {**{f"module.{k}": v for k, v in weights.items()},
                                                      "n_averaged": torch.tensor(1)},
                     "step": rounds, "epoch": 0, "position": 0, "val_loss": val_loss, "seconds": seconds,
                     "boosted_fit": fit}, out_dir / trainer.CHECKPOINT)
    history = History(out_dir)
    history.log(rounds, epoch=0, seconds=seconds, lr=config.boosted.learning_rate, train_loss=None, val_loss=val_loss,
                events_per_s=len(train_set) / max(seconds, 1e-9))
    history.close()
    logger.info(f"boosted trees: {fit['rounds']} rounds (fine, coarse) in {seconds:.0f} s; validation loss "
                f"{val_loss:.4f}")
    rate = len(train_set) / max(seconds, 1e-9)
    return trainer.TrainResult(out_dir / trainer.CHECKPOINT, rounds, float("nan"), val_loss, rate, False, rate)
