"""Noise-only coarse cells added to events (graphsr.graphs.noise_cells): placement, truth, datasets, training split."""

from __future__ import annotations

import awkward as ak
import numpy as np
import pytest
import torch

from graphsr.config import config_from_dict
from graphsr.datasets import CocoaDataset
from graphsr.detector import Geometry
from graphsr.graphs import GraphOptions, build_storage
from graphsr.graphs.noise_cells import NoiseCells, add_noise_cells, dilute, pick_noise_cells
from graphsr.io import write_cocoa
from graphsr.simulation import SingleElectronGun, simulate_events
from graphsr.training.trainer import load_splits, train

from conftest import make_toy_events

COARSE = Geometry.cocoa().coarsen(2)


def cells(*triples):
    layer, ieta, iphi = np.array(triples).T
    return COARSE.cell_id(layer, ieta, iphi)


def square(layer, ieta, iphi, reach):
    """Ids of the (2 reach + 1)^2 square around a cell, by hand, without it."""
    return {int(c) for c in cells(*[(layer, ieta + a, iphi + b) for a in range(-reach, reach + 1)
                                    for b in range(-reach, reach + 1) if (a, b) != (0, 0)])}


def test_around_fills_the_first_ring_then_the_second():
    centre = cells((1, 40, 40))
    # layer 1 only: no cells of the adjacent layers; 8 neighbours in ring 1, 16 more in ring 2
    for count, expected in ((8, square(1, 40, 40, 1)), (24, square(1, 40, 40, 2))):
        event, added = pick_noise_cells(np.array([0]), centre, np.array([count]), COARSE, [1], "around",
                                        np.random.default_rng(0))
        assert set(added.tolist()) == expected and (event == 0).all()
    event, added = pick_noise_cells(np.array([0]), centre, np.array([12]), COARSE, [1], "around",
                                    np.random.default_rng(0))
    assert len(added) == 12 and square(1, 40, 40, 1) < set(added.tolist()) <= square(1, 40, 40, 2)


def test_each_event_gets_its_own_cells_and_none_it_has():
    present = cells((1, 40, 40), (1, 40, 41), (1, 40, 40))
    event, added = pick_noise_cells(np.array([0, 0, 1]), present, np.array([5, 30]), COARSE, [0, 1, 2],
                                    "around", np.random.default_rng(1))
    assert np.bincount(event).tolist() == [5, 30]
    assert not set(added[event == 0].tolist()) & {int(present[0]), int(present[1])}
    assert int(present[2]) not in added[event == 1]
    assert len(np.unique(event * COARSE.num_cells + added)) == len(added)  # no cell twice in one event

    event, added = pick_noise_cells(np.array([0, 1]), present[:2], np.array([50, 0]), COARSE, [2], "scattered",
                                    np.random.default_rng(1))
    layer = COARSE.cell_index(added)[0]
    assert (event == 0).all() and len(np.unique(added)) == 50 and (layer == 2).all()
    with pytest.raises(ValueError, match="layout"):
        pick_noise_cells(np.array([0]), cells((1, 4, 4)), np.array([1]), COARSE, [1], "ring", None)


def test_added_cells_hold_noise_and_empty_children():
    low, high = make_toy_events([[(1, 60, 10), (1, 60, 11)], [(2, 30, 5)]])
    options = GraphOptions(layers=(0, 1, 2))
    before, _ = build_storage(low, high, options, factor=2)
    new_low, new_high = add_noise_cells(low, high, np.array([400, 3]), 2, [1], "scattered", np.random.default_rng(2))
    after, slices = build_storage(new_low, new_high, options, factor=2)
    assert slices["coarse_energy"].diff().tolist() == [402, 4]
    assert len(after.fine_energy) == 4 * 406
    # the events' own cells keep their children's energies; every added cell's children are empty
    old = set(before.coarse_cell.tolist())
    added = ~torch.isin(after.coarse_cell, before.coarse_cell)
    assert added.sum() == 403 and old == set(after.coarse_cell[~added].tolist())
    assert (after.fine_energy[added[after.fine_parent + slices["coarse_energy"][:-1].repeat_interleave(
        slices["fine_energy"].diff())]] == 0).all()
    assert float(after.fine_energy.sum()) == pytest.approx(float(before.fine_energy.sum()), rel=1e-6)
    # their measured energy: the layer's noise, N(0, sigma) (layer 1 at 2x: COARSE.noise[1] MeV)
    noise = after.coarse_energy[added][:400] * 1000.0
    sigma = COARSE.noise[1]
    assert abs(float(noise.mean())) < 4 * sigma / 20 and float(noise.std()) == pytest.approx(sigma, rel=0.15)
    # other fields untouched
    assert ak.to_list(new_low.particle_e) == ak.to_list(low.particle_e)


def test_dilute_is_seeded_and_bounded_by_the_ratio():
    low, high = make_toy_events([[(1, 60 + i, 10) for i in range(10)] for _ in range(40)])
    a = dilute(low, high, NoiseCells(2.0), 2, [0, 1, 2], np.random.default_rng(3))
    b = dilute(low, high, NoiseCells(2.0), 2, [0, 1, 2], np.random.default_rng(3))
    c = dilute(low, high, NoiseCells(2.0), 2, [0, 1, 2], np.random.default_rng(4))
    counts = ak.num(a[0].cell_layer, axis=1).to_numpy() - 10
    assert ak.to_list(a[0].cell_e) == ak.to_list(b[0].cell_e) and ak.to_list(a[0].cell_e) != ak.to_list(c[0].cell_e)
    assert counts.min() >= 0 and counts.max() <= 20 and 5 < counts.mean() < 15  # uniform on [0, 20]: mean 10
    with pytest.raises(ValueError, match="noise_cells"):
        NoiseCells(-1.0)


def test_training_split_carries_noise_cells_and_the_others_do_not(tmp_path):
    path = tmp_path / "e.root"
    write_cocoa(path, simulate_events(SingleElectronGun(), 30, factor=2, seed=5, neighbour_branches=False))
    config = config_from_dict({"data": {"train": [str(path)], "cache": str(tmp_path / "cache"), "layers": [0, 1, 2]}})
    train, val, test = load_splits(config, noise_cells=2.0)
    plain = load_splits(config)
    assert train.indices() == plain[0].indices()
    for a, b in zip(train, plain[0]):  # the same events, entry for entry, with more candidates
        assert a.event == b.event and a.coarse_energy.numel() >= b.coarse_energy.numel()
        assert float(a.fine_energy.sum()) == pytest.approx(float(b.fine_energy.sum()), rel=1e-6)
    hit = lambda subset: float(torch.cat([e.fine_energy for e in subset]).gt(0).float().mean())  # noqa: E731
    assert hit(train) < 0.75 * hit(plain[0])  # a ratio drawn on [0, 2]: about 2x the candidates on average
    for a, b in ((val, plain[1]), (test, plain[2])):
        assert all(torch.equal(x.coarse_energy, y.coarse_energy) for x, y in zip(a, b))
    keys = {CocoaDataset(path, root=tmp_path / "cache", options=GraphOptions(layers=(0, 1, 2)), **extra).key
            for extra in ({}, {"noise_cells": NoiseCells(2.0)}, {"noise_cells": NoiseCells(1.0)})}
    assert len(keys) == 3  # the cache of the events as they are is kept apart


@pytest.mark.parametrize("generator", ["pyramid", "dense"])
def test_only_the_pyramid_trains_on_noise_cells(tmp_path, generator):
    path = tmp_path / "e.root"
    write_cocoa(path, simulate_events(SingleElectronGun(), 20, factor=2, seed=5, neighbour_branches=False))
    config = config_from_dict({
        "data": {"train": [str(path)], "cache": str(tmp_path / "cache"), "layers": [0, 1, 2]},
        "model": {"width": 8, "depth": 1, "coarse_depth": 1, "heads": 2, "context_tokens": 1, "generator": generator},
        "train": {"steps": 1, "batch_size": 4, "val_every": 1}, "sample": {"steps": 2, "ensemble": 2},
        "pyramid": {"noise_cells": 2.0}})
    train(config, tmp_path / "run", progress=False)
    # one cache for the events as they are (validation), one more with noise cells for the pyramid's training
    assert len(list((tmp_path / "cache" / "processed").iterdir())) == (2 if generator == "pyramid" else 1)
