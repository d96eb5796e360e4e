"""Distributed training on torch's own engine: two CPU processes (gloo) against one, same global batch."""

from __future__ import annotations

import os
import subprocess
import sys

import torch
import yaml

from graphsr.io import write_cocoa
from graphsr.simulation import SingleElectronGun, simulate_events
from graphsr.training.checkpoint import load_checkpoint
from graphsr.training.trainer import train

from test_training import tiny_config


def torchrun(*args, processes: int = 2):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                           str(processes), "-m", "graphsr", "train", *map(str, args)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def close(a: dict, b: dict):
    # float sums in another order: differences of ~1e-6 on weights of ~1e-2, so the tolerance scales with each
    # tensor's largest element; a model trained on other events differs by ~7e-3 (50x the tolerance)
    for key in a:
        x, y = a[key].float(), b[key].float()
        assert (x - y).abs().max() <= 1e-3 * x.abs().max() + 1e-6, (key, (x - y).abs().max().item())


def test_two_processes_train_like_one_with_the_same_global_batch(tmp_path):
    data = tmp_path / "e.root"
    write_cocoa(data, simulate_events(SingleElectronGun(), 48, factor=2, seed=11, neighbour_branches=False))
    config = tiny_config(data, tmp_path / "cache", steps=6, val_every=3)
    config.sample.calibration_events = 0
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(config.to_dict()))
    torch.set_num_threads(1)
    single = load_checkpoint(train(config, tmp_path / "one", progress=False).checkpoint)
    torchrun("--config", config_file, "--out", tmp_path / "two")
    double = load_checkpoint(tmp_path / "two" / "checkpoint.pt")
    # the two ranks each took half of every batch of 8 and drew that half's noise: the same steps, up to the
    # order of float sums in the gradient all-reduce
    assert double["step"] == single["step"] == 6
    close(single["model"], double["model"])
    close(single["ema"], double["ema"])
    assert abs(double["val_loss"] - single["val_loss"]) < 1e-4
    # resume with another number of processes: stop the 2-process run after 3 steps, finish on one
    torchrun("--config", config_file, "--out", tmp_path / "mixed", "--stop-after", "3")
    assert load_checkpoint(tmp_path / "mixed" / "checkpoint.pt")["step"] == 3
    train(config, tmp_path / "mixed", resume=True, progress=False)
    close(single["model"], load_checkpoint(tmp_path / "mixed" / "checkpoint.pt")["model"])
