"""Shared fixtures: tiny hand-made COCOA-style events with known content."""

from __future__ import annotations

import os

import awkward as ak
import numpy as np
import pytest
import torch

# one thread per process, here and in the subprocesses tests start: torch's default of one per core spins badly
# when cores are shared (measured: a tiny training step 10-25x slower on a loaded 2-core machine)
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

from graphsr.detector import Geometry


def make_toy_events(cells_per_event, factor: int = 2, seed: int = 0):
    """Low/High awkward arrays for events whose stored coarse cells are given as (layer, ieta, iphi) lists.

    Fine cells are stored sorted by (layer, ieta, iphi), not in block order, so readers must use the mapping.
    Coarse energy = sum of children + Gaussian noise (10 MeV).
    """
    rng = np.random.default_rng(seed)
    fine_geometry = Geometry.cocoa()
    coarse_geometry = fine_geometry.coarsen(factor)
    lows, highs = [], []
    for cells in cells_per_event:
        layer, ieta, iphi = np.array(cells, dtype=np.int64).reshape(-1, 3).T
        f_layer, f_ieta, f_iphi = (a.reshape(-1) for a in coarse_geometry.children(fine_geometry, layer, ieta, iphi))
        f_energy = rng.exponential(100.0, len(f_layer)).astype(np.float32)
        order = np.lexsort((f_iphi, f_ieta, f_layer))
        stored_at = np.empty_like(order)
        stored_at[order] = np.arange(len(order))
        c_energy = f_energy.reshape(-1, factor * factor).sum(1) + rng.normal(0, 10, len(layer))
        c_eta, c_phi = coarse_geometry.cell_center(layer, ieta, iphi)
        f_eta, f_phi = fine_geometry.cell_center(f_layer, f_ieta, f_iphi)
        lows.append(dict(
            cell_layer=layer.astype(np.int32), cell_eta=c_eta.astype(np.float32), cell_phi=c_phi.astype(np.float32),
            cell_e=c_energy.astype(np.float32),
            low_cell_to_high_cell_edge=np.repeat(np.arange(len(layer)), factor * factor).astype(np.int32),
            high_cell_to_low_cell_edge=stored_at.astype(np.int32),
            particle_e=np.array([5e4], np.float32), particle_pt=np.array([5e4], np.float32), particle_eta=np.array([0.0], np.float32),
            particle_phi=np.array([0.1], np.float32), particle_pdgid=np.array([11], np.int32)))
        highs.append(dict(cell_layer=f_layer[order].astype(np.int32), cell_eta=f_eta[order].astype(np.float32),
                          cell_phi=f_phi[order].astype(np.float32), cell_e=f_energy[order]))
    return ak.Array(lows), ak.Array(highs)


# three events: ECAL cells (one pair across the phi wrap) plus an HCAL cell; an empty event; a small one
TOY_CELLS = [
    [(0, 60, 0), (0, 60, 1), (0, 61, 127), (1, 60, 0), (1, 61, 0), (3, 15, 0)],
    [],
    [(2, 30, 5), (1, 60, 10), (1, 60, 11)],
]


@pytest.fixture
def toy_chunk():
    return make_toy_events(TOY_CELLS)


@pytest.fixture(scope="session")
def electron_file(tmp_path_factory):
    """60 simulated single-electron events (2x), written as a COCOA file: small trainings end to end."""
    from graphsr.io import write_cocoa
    from graphsr.simulation import SingleElectronGun, simulate_events

    path = tmp_path_factory.mktemp("electrons") / "e.root"
    write_cocoa(path, simulate_events(SingleElectronGun(), 60, factor=2, seed=5, neighbour_branches=False))
    return path
