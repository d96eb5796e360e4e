"""Noise-only coarse cells added to events: candidates whose children are all empty in truth.

The topoclusters keep coarse cells with signal, about 80% of whose children are hit in graphsr's simulator, so a
pyramid's stage 1 (:mod:`graphsr.models.occupancy`) trained on them has never seen an empty candidate: it marks
most children of a noise-only cell hit. A lower clustering threshold or a full-detector readout makes candidates of
cells that only hold noise; :func:`add_noise_cells` puts such cells into training events (``pyramid.noise_cells``)
and into the cost benchmark's diluted events (``bench/bench_pyramid.py``), so that stage 1 learns what one looks like.

A noise-only cell's measured energy is its layer's noise (Gaussian, the coarse geometry's sigma; signed, as the
topoclusters keep them) and each of its children is written with zero energy. Cells are placed ``around`` the
event's cells, ring by ring of grid neighbours (the last ring drawn at random), as a lower clustering threshold
would add them, or ``scattered`` uniformly over the kept layers, as a full-detector readout adds them. In truth a
cell around a shower holds some of its tail; here it holds none, which makes the added cells an augmentation that
teaches "noise-level cell, no signal", not a model of the tail.
"""

from __future__ import annotations

from dataclasses import dataclass

import awkward as ak
import numpy as np

from graphsr.detector import Geometry
from graphsr.detector.neighbours import neighbours
from graphsr.io.inspect import HIGH_TO_LOW, LOW_TO_HIGH

LAYOUTS = ("around", "scattered")


@dataclass(frozen=True)
class NoiseCells:
    """How many noise-only cells each event gets: ``ratio`` x (its coarse cells in the kept layers) at most, the
    fraction drawn uniformly per event, half the events each layout; ``seed`` makes it reproducible (with the file
    and entry of each chunk)."""

    ratio: float
    seed: int = 0

    def __post_init__(self):
        if not self.ratio >= 0:
            raise ValueError(f"noise_cells must be >= 0 (noise-only cells per coarse cell), got {self.ratio}")


def _ranked(event: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A random order of the items, grouped by event, and each item's rank within its event in that order."""
    order = rng.permutation(len(event))
    order = order[np.argsort(event[order], kind="stable")]
    grouped = event[order]
    first = np.searchsorted(grouped, grouped, side="left")
    return order, np.arange(len(order)) - first


def _take(keys: np.ndarray, remaining: np.ndarray, num_cells: int, rng: np.random.Generator) -> np.ndarray:
    """Up to ``remaining[event]`` of the (unique) keys of each event, drawn at random."""
    event = keys // num_cells
    order, rank = _ranked(event, rng)
    return keys[order[rank < remaining[event[order]]]]


def pick_noise_cells(event: np.ndarray, cell: np.ndarray, counts: np.ndarray, coarse: Geometry, layers,
                     layout: str, rng: np.random.Generator, max_rounds: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """Coarse cells to add, ``counts[e]`` per event ``e`` (fewer where its layers run out), none already present.

    Args:
        event, cell: ``[C]`` the events' present coarse cells (event index, ``coarse.cell_id``).
        counts: ``[num_events]`` int, cells wanted per event.
        coarse: the coarse geometry.
        layers: layers the added cells may lie in.
        layout: ``"around"`` (ring by ring of grid neighbours of the present cells) or ``"scattered"``.

    Returns:
        ``(event, cell)`` of the added cells, sorted by (event, cell).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}: {' or '.join(LAYOUTS)}")
    num_cells = coarse.num_cells
    remaining = np.asarray(counts, dtype=np.int64).copy()
    taken = np.unique(np.asarray(event, dtype=np.int64) * num_cells + cell)
    chosen = np.empty(0, dtype=np.int64)
    layers = np.asarray(layers)
    if layout == "scattered":  # every cell of the layers
        universe = np.concatenate([coarse.cell_id(np.full(coarse.n[la] ** 2, la),
                                                  *np.divmod(np.arange(coarse.n[la] ** 2), coarse.n[la]))
                                   for la in layers])
    frontier = taken
    for _ in range(max_rounds):
        if not remaining.any() or (layout == "around" and not len(frontier)):
            break
        if layout == "around":
            row, layer, ieta, iphi = neighbours(*coarse.cell_index(frontier % num_cells), coarse)
            ring = (frontier // num_cells)[row] * num_cells + coarse.cell_id(layer, ieta, iphi)
            ring = ring[np.isin(layer, layers)]
        else:  # twice the cells still wanted, uniformly over the layers' cells
            wanted = np.nonzero(remaining)[0]
            draws = np.repeat(wanted, 2 * remaining[wanted])
            ring = draws * num_cells + universe[rng.integers(0, len(universe), len(draws))]
        ring = np.setdiff1d(ring, np.concatenate([taken, chosen]))
        ring = ring[remaining[ring // num_cells] > 0]
        added = _take(ring, remaining, num_cells, rng)
        remaining -= np.bincount(added // num_cells, minlength=len(remaining))
        chosen = np.concatenate([chosen, added])
        frontier = added
    chosen.sort()
    return chosen // num_cells, chosen % num_cells


def add_noise_cells(low: ak.Array, high: ak.Array, counts: np.ndarray, factor: int, layers, layout: str,
                    rng: np.random.Generator, geometry: Geometry | None = None) -> tuple[ak.Array, ak.Array]:
    """Events with noise-only coarse cells added (:func:`pick_noise_cells`), their children in ``high`` with zero
    energy and the mapping pair extended, ready for :func:`~graphsr.graphs.build_storage`.

    Args:
        low: ``Low_Tree`` records with ``cell_layer``, ``cell_eta``, ``cell_phi``, ``cell_e`` (MeV) and the mapping
            pair; other fields are kept as they are.
        high: ``High_Tree`` records with ``cell_layer``, ``cell_eta``, ``cell_phi``, ``cell_e``.
        counts: ``[len(low)]`` cells to add per event.
        factor: fine cells per coarse cell per side.
        layers, layout, rng: as :func:`pick_noise_cells`.
        geometry: the fine geometry (default COCOA's).
    """
    geometry = geometry or Geometry.cocoa()
    coarse = geometry.coarsen(factor)
    num_events = len(low)
    c_count = ak.num(low.cell_layer, axis=1).to_numpy()
    c_layer = ak.flatten(low.cell_layer).to_numpy().astype(np.int64)
    c_ieta, c_iphi = coarse.cell_at(c_layer, ak.flatten(low.cell_eta).to_numpy().astype(np.float64),
                                    ak.flatten(low.cell_phi).to_numpy().astype(np.float64))
    inside = coarse.contains(c_layer, c_ieta)
    c_event = np.repeat(np.arange(num_events), c_count)
    event, cell = pick_noise_cells(c_event[inside], coarse.cell_id(c_layer, c_ieta, c_iphi)[inside], counts, coarse,
                                   layers, layout, rng)
    layer, ieta, iphi = coarse.cell_index(cell)
    eta, phi = coarse.cell_center(layer, ieta, iphi)
    added = np.bincount(event, minlength=num_events)
    f_layer, f_ieta, f_iphi = (a.reshape(-1) for a in coarse.children(geometry, layer, ieta, iphi))
    f_eta, f_phi = geometry.cell_center(f_layer, f_ieta, f_iphi)
    per = factor * factor

    def extend(records, values: dict, count: np.ndarray):
        for name, value in values.items():
            dtype = ak.flatten(records[name]).to_numpy().dtype
            records = ak.with_field(records, ak.concatenate(
                [records[name], ak.unflatten(np.asarray(value, dtype=dtype), count)], axis=1), name)
        return records

    # the new cells' positions in their event: after the event's own coarse / fine cells
    local = np.arange(len(event)) - np.searchsorted(event, event)
    h_count = ak.num(high.cell_layer, axis=1).to_numpy()
    f_local = np.arange(len(event) * per) - np.searchsorted(np.repeat(event, per), np.repeat(event, per))
    low = extend(low, {"cell_layer": layer, "cell_eta": eta, "cell_phi": phi,
                       "cell_e": rng.normal(0.0, coarse.noise[layer])}, added)
    low = extend(low, {LOW_TO_HIGH: np.repeat(c_count[event] + local, per),
                       HIGH_TO_LOW: h_count[np.repeat(event, per)] + f_local}, added * per)
    high = extend(high, {"cell_layer": f_layer, "cell_eta": f_eta, "cell_phi": f_phi,
                         "cell_e": np.zeros(len(f_layer))}, added * per)
    return low, high


def dilute(low: ak.Array, high: ak.Array, noise: NoiseCells, factor: int, layers, rng: np.random.Generator,
           geometry: Geometry | None = None) -> tuple[ak.Array, ak.Array]:
    """Training events with noise-only cells (``pyramid.noise_cells``): each event gets a uniform fraction of
    ``noise.ratio`` x its cells in ``layers``, ``around`` them or ``scattered`` (half the events each)."""
    kept = np.isin(ak.flatten(low.cell_layer).to_numpy(), layers)
    kept = np.bincount(np.repeat(np.arange(len(low)), ak.num(low.cell_layer, axis=1).to_numpy()), weights=kept,
                       minlength=len(low))
    counts = np.rint(rng.uniform(0.0, noise.ratio, len(low)) * kept).astype(np.int64)
    around = rng.random(len(low)) < 0.5
    for layout, events in (("around", around), ("scattered", ~around)):
        low, high = add_noise_cells(low, high, np.where(events, counts, 0), factor, layers, layout, rng, geometry)
    return low, high
