"""COCOA's 4-2-0 topological clustering of coarse cells, the noise halo it needs, and the cell neighbour graph.

Neighbours of a cell: the 8 cells around it in its layer (phi wraps around, eta does not) and the cells of the
adjacent layers (index +-1, so ECAL3 and HCAL1 are adjacent across the iron gap) that overlap it. Grids of adjacent
layers differ by an integer ratio r: a cell overlaps r^2 cells of a finer neighbour layer, one of a coarser one.

Clustering (ATLAS-style 4-2-0, arXiv:1603.02934, as COCOA configures it): cells with E > 4.6 sigma seed clusters;
cells with E > 2 sigma grow them (connected growing cells form one cluster, kept if it holds a seed); then every
neighbour of a cluster's growing cells with E > 0 joins it (signed energies, as COCOA's
``cluster_negative_energy_cells: false``: a neighbour with noise only joins half the time). A boundary cell next to
two clusters joins the one of its most energetic growing neighbour. Clusters whose summed energy is not positive are
dropped, and the rest numbered from 1 per event in order of decreasing energy. COCOA's later splitting of clusters
at local maxima (400 MeV) does not change which cells are kept and is not modelled.

Noise is drawn only for cells within a halo of the cells with signal (:func:`signal_halo`: 2 cells in-layer and
the cells overlapping those in adjacent layers), enough for every cluster that contains signal: a cluster can only
reach further through a chain of two or more noise-only cells above 2 sigma (probability ~0.02^2 per chain), whose
far boundary cells are then missed. Noise-only clusters far from any particle come from noise seeds drawn directly
(``graphsr.simulation.events``): P(z > 4.6) = 2.1e-6 per cell gives ~0.08 such clusters per event on the 2x coarse
grid (39168 cells) and ~0.02 on the 4x grid (9792 cells), each of roughly 7 cells.
"""

from __future__ import annotations

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from graphsr.detector.geometry import Geometry
from graphsr.detector.neighbours import cell_keys, neighbours
from graphsr.detector.neighbours import lookup as _lookup

SEED_THRESHOLD = 4.6
GROW_THRESHOLD = 2.0
BOUNDARY_THRESHOLD = 0.0


def neighbour_edges(event: np.ndarray, layer: np.ndarray, ieta: np.ndarray, iphi: np.ndarray,
                    geometry: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """Neighbour pairs among a set of cells (both directions), as COCOA's ``cell_to_cell_edge_start/_end``.

    Args:
        event, layer, ieta, iphi: ``[C]`` int cells, each (event, cell) at most once, in any order.
        geometry: their geometry.

    Returns:
        ``(start, end)``, ``[E]`` int64 indices into the input: ``start`` the source neighbour j, ``end`` the
        destination i, sorted by (end, start); neighbours are only ever in the same event.
    """
    keys = cell_keys(event, layer, ieta, iphi, geometry)
    order = np.argsort(keys, kind="stable")
    row, nb_layer, nb_eta, nb_phi = neighbours(layer, ieta, iphi, geometry)
    pos = _lookup(keys[order], cell_keys(np.asarray(event)[row], nb_layer, nb_eta, nb_phi, geometry))
    found = pos >= 0
    end, start = row[found], order[pos[found]]
    sort = np.argsort(end * len(keys) + start)  # by (end, start) in one int64 sort
    return start[sort], end[sort]


def signal_halo(event: np.ndarray, layer: np.ndarray, ieta: np.ndarray, iphi: np.ndarray, geometry: Geometry,
                num_events: int, *, width: int = 2) -> tuple[np.ndarray, ...]:
    """Cells that need noise: the cells given, those within ``width`` cells in-layer, and cells overlapping those.

    Args:
        event, layer, ieta, iphi: ``[C]`` int cells with signal (repeats allowed).
        geometry: their geometry.
        num_events: events in the batch (``event < num_events``).
        width: in-layer reach.

    Returns:
        ``(event, layer, ieta, iphi)`` int64, unique and sorted by (event, layer, ieta, iphi).
    """
    event = np.asarray(event, dtype=np.int64)
    size = num_events * geometry.num_cells
    row, nb_layer, nb_eta, nb_phi = neighbours(layer, ieta, iphi, geometry, in_layer=width)
    keys = _union(size, cell_keys(event, layer, ieta, iphi, geometry),
                  cell_keys(event[row], nb_layer, nb_eta, nb_phi, geometry))
    in_layer = _split(keys, geometry)
    row, nb_layer, nb_eta, nb_phi = neighbours(*in_layer[1:], geometry, in_layer=0)
    return _split(_union(size, keys, cell_keys(in_layer[0][row], nb_layer, nb_eta, nb_phi, geometry)), geometry)


def _union(size: int, *keys: np.ndarray) -> np.ndarray:
    """Sorted unique keys in [0, size): a dense mark when the candidates are many (cheaper than sorting their many
    duplicates), a sort when they are few (a few seeds in a large batch)."""
    if sum(len(k) for k in keys) * 64 < size:
        return np.unique(np.concatenate(keys))
    mark = np.zeros(size, dtype=bool)
    for k in keys:
        mark[k] = True
    return np.flatnonzero(mark)


def _split(keys: np.ndarray, geometry: Geometry) -> tuple[np.ndarray, ...]:
    event, cell = np.divmod(keys, geometry.num_cells)
    return (event, *geometry.cell_index(cell))


def topoclusters(event: np.ndarray, layer: np.ndarray, ieta: np.ndarray, iphi: np.ndarray, energy: np.ndarray,
                 sigma: np.ndarray, geometry: Geometry, *, seed_threshold: float = SEED_THRESHOLD,
                 grow_threshold: float = GROW_THRESHOLD, boundary_threshold: float = BOUNDARY_THRESHOLD,
                 ) -> np.ndarray:
    """Topocluster of each cell, 4-2-0 style (see the module docstring).

    Args:
        event, layer, ieta, iphi: ``[C]`` int candidate cells, each (event, cell) at most once.
        energy: ``[C]`` cell energy with noise, MeV.
        sigma: ``[C]`` noise sigma of each cell, MeV.
        geometry: the cells' geometry.
        seed_threshold, grow_threshold: E > threshold x sigma seeds / grows a cluster.
        boundary_threshold: neighbours with E > threshold x sigma join (signed, as COCOA: at 0, a noise-only
            neighbour joins half the time).

    Returns:
        ``[C]`` int64 cluster index, from 1 per event in order of decreasing cluster energy; 0 outside clusters.
    """
    event = np.asarray(event, dtype=np.int64)
    energy, sigma = np.asarray(energy, dtype=np.float64), np.asarray(sigma, dtype=np.float64)
    num_cells = len(energy)
    topo = np.zeros(num_cells, dtype=np.int64)
    grow = np.flatnonzero(energy > grow_threshold * sigma)
    if not len(grow):
        return topo
    start, end = neighbour_edges(event[grow], layer[grow], ieta[grow], iphi[grow], geometry)
    graph = coo_matrix((np.ones(len(start), dtype=np.int8), (start, end)), shape=(len(grow), len(grow)))
    _, label = connected_components(graph.tocsr(), directed=False)
    seeded = np.bincount(label, weights=energy[grow] > seed_threshold * sigma[grow]) > 0
    kept = seeded[label]
    grow, label = grow[kept], label[kept]
    cluster = np.full(num_cells, -1, dtype=np.int64)
    cluster[grow] = label

    # boundary: neighbours of kept growing cells that are not growing cells themselves
    keys = cell_keys(event, layer, ieta, iphi, geometry)
    order = np.argsort(keys, kind="stable")
    row, nb_layer, nb_eta, nb_phi = neighbours(layer[grow], ieta[grow], iphi[grow], geometry)
    pos = _lookup(keys[order], cell_keys(event[grow][row], nb_layer, nb_eta, nb_phi, geometry))
    found = pos >= 0
    source, target = grow[row[found]], order[pos[found]]
    free = (cluster[target] < 0) & (energy[target] > boundary_threshold * sigma[target])
    source, target = source[free], target[free]
    best = np.lexsort((-energy[source], target))
    first = np.ones(len(best), dtype=bool)
    first[1:] = target[best][1:] != target[best][:-1]
    cluster[target[best][first]] = cluster[source[best][first]]

    # clusters with a net energy <= 0 are dropped (COCOA does), the rest numbered per event by decreasing energy
    member = np.flatnonzero(cluster >= 0)
    labels, inverse = np.unique(cluster[member], return_inverse=True)
    cluster_energy = np.bincount(inverse, weights=energy[member])
    positive = cluster_energy[inverse] > 0
    member = member[positive]
    labels, inverse = np.unique(cluster[member], return_inverse=True)
    cluster_energy = np.bincount(inverse, weights=energy[member])
    cluster_event = np.zeros(len(labels), dtype=np.int64)
    cluster_event[inverse] = event[member]
    rank_order = np.lexsort((-cluster_energy, cluster_event))
    first_of_event = np.searchsorted(cluster_event[rank_order], cluster_event[rank_order])
    rank = np.empty(len(labels), dtype=np.int64)
    rank[rank_order] = np.arange(len(labels)) - first_of_event + 1
    topo[member] = rank[inverse]
    return topo
