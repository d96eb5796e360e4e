"""Distributed training on torch's own engine: two CPU processes (gloo) against one, same global batch."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
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


@pytest.mark.slow  # three trainings (~25 s); the default suite keeps the 2-rank run with an empty rank below
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


def test_ranks_take_distinct_consecutive_shares_that_cover_each_batch(tmp_path):
    from graphsr.datasets import CocoaDataset
    from graphsr.graphs import GraphLoader

    data = tmp_path / "e.root"
    write_cocoa(data, simulate_events(SingleElectronGun(), 11, factor=2, seed=3, neighbour_branches=False))
    dataset = CocoaDataset([data], root=tmp_path / "cache", log=False)
    fine = torch.diff(dataset.slices["fine_layer"])
    for world, batch_size in ((3, 5), (2, 1), (4, 11)):
        loaders = [GraphLoader(dataset, batch_size, part=(rank, world)) for rank in range(world)]
        for parts in zip(*(loader.shares(torch.arange(11)) for loader in loaders)):
            shares = [share for _, share in parts]
            first = [s["events"][0] for s in shares]
            stop = [s["events"][1] for s in shares]
            total = shares[0]["events"][2]
            # consecutive, disjoint, covering the batch; sizes differ by one at most (by hand: 5 -> 2, 2, 1)
            assert first[0] == 0 and stop[-1] == total and first[1:] == stop[:-1]
            sizes = [b - a for a, b in zip(first, stop)]
            assert max(sizes) - min(sizes) <= 1 and sorted(sizes, reverse=True) == sizes
            # every event of the batch once, in batch order (entries here are 0-10, one per event)
            events = torch.cat([batch.event for batch, _ in parts])
            assert torch.equal(events, torch.arange(int(events[0]), int(events[0]) + total))
            for (batch, share), size in zip(parts, sizes):
                assert batch.num_graphs == size
                f0, f1, whole = share["fine"]  # each share's fine nodes sit where the whole batch has them
                assert f0 == int(fine[int(events[0]):int(events[0]) + first[shares.index(share)]].sum())
                assert f1 - f0 == len(batch.fine_energy) and whole == int(fine[events].sum())
        if (world, batch_size) == (3, 5):
            firsts = next(zip(*(loader.shares(torch.arange(11)) for loader in loaders)))
            assert [share["events"][:2] for _, share in firsts] == [(0, 2), (2, 4), (4, 5)]


@pytest.mark.parametrize("processes, batch_size", [pytest.param(3, 5, marks=pytest.mark.slow), (2, 1)])  # shares of
# 2, 2, 1 (three processes: make test-slow); a rank with no event
def test_uneven_shares_weight_every_event_as_one_process_does(tmp_path, processes, batch_size):
    data = tmp_path / "e.root"
    write_cocoa(data, simulate_events(SingleElectronGun(), 30, factor=2, seed=11, neighbour_branches=False))
    config = tiny_config(data, tmp_path / "cache", steps=4, val_every=4, batch_size=batch_size)
    config.sample.calibration_events = 0
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(config.to_dict()))
    torch.set_num_threads(1)
    single = load_checkpoint(train(config, tmp_path / "one", progress=False).checkpoint)
    torchrun("--config", config_file, "--out", tmp_path / "many", processes=processes)
    many = load_checkpoint(tmp_path / "many" / "checkpoint.pt")
    assert many["step"] == single["step"] == 4
    # averaging the ranks' means instead would weigh the lone event of a 2-2-1 split twice: ~1e-3 off here
    close(single["model"], many["model"])
    close(single["ema"], many["ema"])
