"""The downstream particle reconstruction on hand-made cells with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from graphsr.detector import Geometry
from graphsr.eval.reconstruction import find_particles, match_particles, particle_metrics

FINE = Geometry.cocoa()
COARSE = FINE.coarsen(4)


def blob(event, ieta, iphi, energy, geometry=FINE, layer=1):
    """A 3 x 3 shower in ``layer``: ``energy`` / 2 in the centre, the rest shared by the 8 neighbours."""
    d = np.array([(a, b) for a in (-1, 0, 1) for b in (-1, 0, 1)])
    e = np.where((d == 0).all(1), energy / 2, energy / 16)
    n = geometry.n[layer]
    cell = geometry.cell_id(np.full(9, layer), ieta + d[:, 0], (iphi + d[:, 1]) % n)
    return np.full(9, event), cell, e


def cells(*blobs):
    event, cell, energy = (np.concatenate(parts) for parts in zip(*blobs))
    # sum overlapping cells, as a calorimeter would
    keys, inverse = np.unique(event * FINE.num_cells + cell, return_inverse=True)
    return keys // FINE.num_cells, keys % FINE.num_cells, np.bincount(inverse.ravel(), weights=energy)


def test_two_separated_showers_give_two_particles_at_their_centres():
    event, cell, energy = cells(blob(0, 128, 10, 20.0), blob(0, 128, 20, 8.0), blob(1, 60, 255, 30.0))
    reco = find_particles(energy, cell, event, 2, FINE)
    assert list(reco["count"]) == [2, 1]
    assert np.allclose(reco["energy"], [20.0, 8.0, 30.0])
    eta, phi = FINE.cell_center(np.array([1, 1, 1]), np.array([128, 128, 60]), np.array([10, 20, 255]))
    assert np.allclose(reco["eta"], eta, atol=1e-9)
    # the shower across the phi = pi line keeps its centre there (no wrap-around average towards phi = 0)
    assert np.allclose(np.abs(reco["phi"]), np.abs(phi), atol=1e-9)


def test_below_threshold_and_other_layers_seed_nothing():
    event, cell, energy = cells(blob(0, 100, 50, 1.5), blob(0, 100, 80, 30.0))
    layer0 = blob(0, 120, 5, 50.0, layer=0)
    reco = find_particles(np.concatenate([energy, layer0[2]]), np.concatenate([cell, layer0[1]]),
                          np.concatenate([event, layer0[0]]), 1, FINE, seed_threshold=1.0)
    assert reco["count"][0] == 1 and reco["energy"][0] == pytest.approx(30.0)


def test_even_split_plateau_gives_one_seed():
    # one coarse cell's energy spread evenly over its 16 children: equal neighbours, one seed
    children = np.stack(COARSE.children(FINE, np.array([1]), np.array([30]), np.array([7])), 0).reshape(3, -1)
    cell = FINE.cell_id(*children)
    reco = find_particles(np.full(16, 2.0), cell, np.zeros(16, dtype=np.int64), 1, FINE)
    assert reco["count"][0] == 1 and reco["energy"][0] == pytest.approx(32.0)


def test_a_lower_plateau_beside_a_higher_one_seeds_nothing():
    # two neighbouring coarse cells split evenly: only the higher plateau is a maximum, wherever its cells touch
    layer, ieta, iphi = np.array([1, 1]), np.array([30, 30]), np.array([7, 8])
    cell = FINE.cell_id(*(a.reshape(-1) for a in COARSE.children(FINE, layer, ieta, iphi)))
    energy = np.repeat([3.0, 2.0], 16)
    reco = find_particles(energy, cell, np.zeros(32, dtype=np.int64), 1, FINE, radius=0.2)
    assert reco["count"][0] == 1 and reco["energy"][0] == pytest.approx(80.0)
    # the seed sits at the higher plateau's centre: the far side of the lower one is beyond a 0.1 radius
    assert find_particles(energy, cell, np.zeros(32, dtype=np.int64), 1, FINE)["energy"][0] < 80.0


def test_showers_two_fine_cells_apart_merge_on_the_coarse_grid():
    event, cell, energy = cells(blob(0, 129, 9, 20.0), blob(0, 129, 13, 10.0))
    assert find_particles(energy, cell, event, 1, FINE)["count"][0] == 2
    coarse = FINE.parent_id(COARSE, cell)
    keys, inverse = np.unique(coarse, return_inverse=True)
    merged = np.bincount(inverse.ravel(), weights=energy)
    reco = find_particles(merged, keys, np.zeros(len(keys), dtype=np.int64), 1, COARSE)
    assert reco["count"][0] == 1 and reco["energy"][0] == pytest.approx(30.0)


def test_matching_is_greedy_by_distance_and_one_to_one():
    reco_event, reco_eta, reco_phi = np.array([0, 0, 1]), np.array([0.0, 0.05, 1.0]), np.zeros(3)
    true_event, true_eta, true_phi = np.array([0, 0, 1]), np.array([0.04, 0.5, 1.2]), np.zeros(3)
    r, t = match_particles(reco_event, reco_eta, reco_phi, true_event, true_eta, true_phi, max_dr=0.1)
    # reco 1 is closest to true 0; reco 0 then has nothing within 0.1; event 1 is too far apart
    assert list(zip(r, t)) == [(1, 0)]


def test_particle_metrics_known_residuals_and_cardinality():
    # 4 events with one particle each; the reconstruction finds them with +-10% energy, and a fake in event 3
    true_count = np.array([1, 1, 1, 1])
    true_e, true_eta, true_phi = np.full(4, 50.0), np.array([0.0, 0.5, 1.0, 1.5]), np.zeros(4)
    reco = {"event": np.array([0, 1, 2, 3, 3]), "energy": np.array([55.0, 45.0, 55.0, 45.0, 3.0]),
            "eta": np.array([0.0, 0.5, 1.0, 1.5, 2.5]), "phi": np.zeros(5), "count": np.array([1, 1, 1, 2])}
    out = particle_metrics(reco, true_count, true_e, true_eta, true_phi)
    assert out["cardinality"]["1"]["value"] == pytest.approx(0.75) and out["cardinality"]["1"]["events"] == 4
    # one of the four events has more particles found than true (the fake): 1/4 +- sqrt(1/4 * 3/4 / 4)
    assert out["excess"]["1"]["value"] == pytest.approx(0.25)
    assert out["excess"]["1"]["error"] == pytest.approx(np.sqrt(0.25 * 0.75 / 4))
    assert out["efficiency"] == 1.0 and out["fake_rate"] == pytest.approx(0.2)
    assert out["energy"]["value"] == pytest.approx(np.std([0.1, -0.1, 0.1, -0.1], ddof=1))
    assert out["eta"]["value"] == 0.0


def test_excess_counts_events_with_more_found_than_true_per_true_count():
    # two-particle events found with 1, 2, 3 and 5 particles; a three-particle event with 2: by hand, 2 of the 4
    # two-particle events have more found than true, the three-particle event none
    true_count = np.array([2, 2, 2, 2, 3])
    reco = {"count": np.array([1, 2, 3, 5, 2]), "event": np.repeat(np.arange(5), [1, 2, 3, 5, 2]),
            "energy": np.ones(13), "eta": np.zeros(13), "phi": np.zeros(13)}
    out = particle_metrics(reco, true_count, np.ones(11), np.zeros(11), np.zeros(11))
    assert out["excess"]["2"] == {"value": 0.5, "error": pytest.approx(0.25), "events": 4}
    assert out["excess"]["3"]["value"] == 0.0 and out["cardinality"]["2"]["value"] == 0.25
    assert "1" not in out["excess"]
