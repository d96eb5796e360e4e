import numpy as np
import pytest

from graphsr.detector import Geometry
from graphsr.detector.neighbours import children_neighbour_table, neighbour_table, slot_layout
from graphsr.simulation import MultiParticleGun, simulate_events

FINE = Geometry.cocoa()
COARSE = FINE.coarsen(2)  # grids 128, 128, 64, 32, 32, 16


def pairs(table):
    """Set of (cell, neighbour) pairs of a neighbour table (negative entries: none)."""
    cell, slot = np.nonzero(table >= 0)
    return set(zip(cell.tolist(), table[cell, slot].tolist()))


def test_slot_layout_pairs_opposite_offsets():
    offsets, first, size = slot_layout(COARSE, reach=1)
    assert len(offsets) == 8 and (offsets[::-1] == -offsets).all()
    # below: up to 2 x 2 cells (ECAL2 under ECAL3, ECAL3 under HCAL1, HCAL2 under HCAL3); above: never finer
    assert first == {-1: 8, 1: 12} and size == 13
    assert slot_layout(COARSE, reach=2, between=False)[2] == 24


def test_hand_made_neighbours():
    # one event: ECAL1 (n=128) cells (5, 0), (5, 1), (6, 127) [phi wraps], (0, 3) [eta edge], (9, 9) [alone];
    # ECAL2 cell (5, 0) under ECAL1 (5, 0); ECAL3 (n=64) cell (2, 0) over ECAL2 cells (4..5, 0..1); another event
    cells = [(0, 5, 0), (0, 5, 1), (0, 6, 127), (0, 0, 3), (0, 9, 9), (1, 5, 0), (2, 2, 0)]
    layer, ieta, iphi = np.array(cells).T
    event = np.zeros(len(cells), dtype=np.int64)
    table = neighbour_table(event, layer, ieta, iphi, COARSE)
    expected = {(0, 1), (0, 2), (0, 5), (5, 6)}
    assert pairs(table) == expected | {(j, i) for i, j in expected}
    offsets, first, _ = slot_layout(COARSE)
    slot = {tuple(o): s for s, o in enumerate(offsets.tolist())}
    assert table[0, slot[(0, 1)]] == 1 and table[1, slot[(0, -1)]] == 0
    assert table[0, slot[(1, -1)]] == 2 and table[2, slot[(-1, 1)]] == 0
    assert table[5, first[1]] == 6  # ECAL2 -> the ECAL3 cell over it
    assert table[6, first[-1] + 1 * 2 + 0] == 5  # ECAL3 sees ECAL2 (5, 0) at place (1, 0) of its 2 x 2
    # the same cells in a second event, listed first and shuffled: positions count within each event
    order = np.random.default_rng(0).permutation(len(cells))
    both = neighbour_table(np.r_[event, event + 1], np.r_[layer, layer[order]], np.r_[ieta, ieta[order]],
                           np.r_[iphi, iphi[order]], COARSE)
    back = np.argsort(order)
    assert pairs(both[len(cells):]) == {(back[i], back[j]) for i, j in pairs(table)}


def brute_force(layer, ieta, iphi, geometry, reach):
    """Neighbour pairs from the definition, over all pairs of cells: same layer within Chebyshev distance ``reach``
    (phi circular), or adjacent layers whose (eta, phi) squares overlap (as fractions of the eta and phi ranges)."""
    n = geometry.n[layer]
    same = layer[:, None] == layer[None, :]
    d_phi = np.abs(iphi[:, None] - iphi[None, :])
    d_phi = np.minimum(d_phi, n[:, None] - d_phi)
    near = same & (np.maximum(np.abs(ieta[:, None] - ieta[None, :]), d_phi) <= reach)
    overlap = np.ones_like(same)
    for index in (ieta, iphi):
        low, high = index / n, (index + 1) / n
        overlap &= np.minimum(high[:, None], high[None, :]) > np.maximum(low[:, None], low[None, :])
    linked = (near | (overlap & (np.abs(layer[:, None] - layer[None, :]) == 1))) & ~np.eye(len(layer), dtype=bool)
    return set(zip(*(a.tolist() for a in np.nonzero(linked))))


@pytest.mark.parametrize("reach", [1, 2])
def test_tables_follow_the_definition_on_simulated_events(reach):
    # multi-particle 4x events, the cells of layers 0-4 within 0.3 in eta and phi of the hottest cell, and all
    # their children (grids of adjacent layers equal or twice as fine, phi wrapping in the tables)
    low = simulate_events(MultiParticleGun(), 3, factor=4, seed=11)["Low_Tree"]
    coarse = FINE.coarsen(4)
    for e in range(3):
        layer, eta, phi = (np.asarray(low[key][e]) for key in ("cell_layer", "cell_eta", "cell_phi"))
        hot = np.argmax(np.asarray(low.cell_e[e]))
        near = (np.abs(eta - eta[hot]) < 0.3) & (np.abs(np.remainder(phi - phi[hot] + np.pi, 2 * np.pi) - np.pi) < 0.3)
        layer = layer[near].astype(np.int64)
        ieta, iphi = coarse.cell_at(layer, eta[near], phi[near])
        event = np.zeros(len(layer), dtype=np.int64)
        table = neighbour_table(event, layer, ieta, iphi, coarse, reach=reach)
        assert pairs(table) == brute_force(layer, ieta, iphi, coarse, reach)
        children = children_neighbour_table(table, event, layer, ieta, iphi, FINE, 4, reach=reach)
        f_layer, f_ieta, f_iphi = (a.reshape(-1) for a in coarse.children(FINE, layer, ieta, iphi))
        assert pairs(children) == brute_force(f_layer, f_ieta, f_iphi, FINE, reach)


def test_children_of_two_neighbouring_cells():
    # ECAL1 cells (5, 0) and (5, 1) of the 2x grid: their 8 children form a 2 x 4 block of fine cells, whose
    # corners have 3 neighbours and the others 5; no cell of another layer
    layer, ieta, iphi = np.array([0, 0]), np.array([5, 5]), np.array([0, 1])
    event = np.zeros(2, dtype=np.int64)
    children = children_neighbour_table(neighbour_table(event, layer, ieta, iphi, COARSE), event, layer, ieta, iphi,
                                        FINE, 2)
    # children in Geometry.children order: (10, 0), (10, 1), (11, 0), (11, 1), then (10, 2), (10, 3), (11, 2), ...
    assert (children >= 0).sum(axis=1).tolist() == [3, 5, 3, 5, 5, 3, 5, 3]
    assert set(children[1][children[1] >= 0].tolist()) == {0, 2, 3, 4, 6}
