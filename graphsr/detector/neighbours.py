"""Neighbours of cells on the detector's (layer, ieta, iphi) grids, found by index arithmetic for many events at once.

The neighbours of a cell are the cells within a square of ``reach`` cells around it in its layer (phi wraps around,
eta does not) and, with ``between``, the cells of the adjacent layers (index +-1, so ECAL3 and HCAL1 are adjacent
across the iron gap) that overlap it. Grids of adjacent layers differ by an integer ratio r: a cell overlaps r^2
cells of a finer neighbour layer, one of a coarser one. The relation is symmetric. With ``reach=1`` it is COCOA's
topoclustering neighbourhood (:mod:`graphsr.simulation.topoclustering`).

Every neighbour has a *slot* (:func:`slot_layout`): its in-layer offset (d_eta, d_phi), or its place among the
overlapping cells of the layer below or above. :func:`neighbour_table` finds, among a set of cells, each cell's
neighbour at every slot (a dense ``[cells, slots]`` table) with binary searches for half of the slots, one slot at a
time over sorted queries, and fills the opposite half from the symmetry. :func:`children_neighbour_table` derives
the table of the fine cells inside coarse cells from the coarse cells' table by arithmetic alone, without searching
among the (factor^2 times more) fine cells.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from graphsr.detector.geometry import Geometry


def cell_keys(event: np.ndarray, layer: np.ndarray, ieta: np.ndarray, iphi: np.ndarray,
              geometry: Geometry) -> np.ndarray:
    """One int64 per (event, cell), increasing in (event, layer, ieta, iphi)."""
    return np.asarray(event, dtype=np.int64) * geometry.num_cells + geometry.cell_id(layer, ieta, iphi)


def lookup(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Position of each key in ``sorted_keys``, -1 where absent."""
    if not len(sorted_keys):
        return np.full(len(keys), -1, dtype=np.int64)
    pos = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    return np.where(sorted_keys[pos] == keys, pos, -1)


def _ratio(geometry: Geometry, this: int, other: int) -> int:
    """Cells per side of layer ``other`` inside one cell of ``this`` when ``other`` is finer or equal (>= 1); minus
    the cells per side of ``this`` inside one cell of ``other`` when ``other`` is coarser."""
    n = geometry.n
    return int(n[other] // n[this]) if n[other] >= n[this] else -int(n[this] // n[other])


def slot_layout(geometry: Geometry, reach: int = 1, between: bool = True) -> tuple[np.ndarray, dict[int, int], int]:
    """Where each neighbour goes in a neighbour table: ``(offsets, first, size)``.

    ``offsets`` [K, 2]: the in-layer (d_eta, d_phi) of slots 0 .. K-1, the square of ``reach`` without its centre in
    lexicographic order, so that slots k and K-1-k are opposite. ``first``: with ``between``, the first slot of the
    layer below (-1) and of the layer above (+1); a cell's overlapping cells in a finer or equal layer (ratio r) take
    r^2 slots in (eta, phi) order, the one overlapping cell of a coarser layer one slot. ``size``: slots in all.
    """
    steps = np.arange(-reach, reach + 1)
    d_eta, d_phi = (a.ravel() for a in np.meshgrid(steps, steps, indexing="ij"))
    centre = (d_eta == 0) & (d_phi == 0)
    offsets = np.stack([d_eta[~centre], d_phi[~centre]], axis=1)
    first, size = {}, len(offsets)
    for direction in (-1, 1) if between else ():
        ratios = [_ratio(geometry, la, la + direction) for la in range(geometry.num_layers)
                  if 0 <= la + direction < geometry.num_layers]
        first[direction] = size
        size += max([max(r, 1) ** 2 for r in ratios], default=0)
    return offsets, first, size


def candidates(layer: np.ndarray, ieta: np.ndarray, iphi: np.ndarray, geometry: Geometry, *, reach: int = 1,
               between: bool = True, forward: bool = False) -> Iterator[tuple]:
    """The neighbour of every cell at every slot of :func:`slot_layout`, one slot at a time.

    Args:
        layer, ieta, iphi: ``[C]`` int cells.
        geometry: their geometry.
        reach, between: the neighbourhood (module docstring).
        forward: only the slots of positive offsets and of the layer above, whose opposites give the rest.

    Yields:
        ``(slot, rows, layer, ieta, iphi, back)``: the neighbour (layer, ieta, iphi) of each cell ``rows`` at
        ``slot``, and the slot at which the neighbour has the cell (an int, or one per row); neighbours outside the
        eta range are left out, phi wraps.
    """
    layer, ieta, iphi = (np.asarray(a, dtype=np.int64) for a in (layer, ieta, iphi))
    offsets, first, _ = slot_layout(geometry, reach, between)
    n_cell = geometry.n[layer]
    rows = np.arange(len(layer))
    for slot in range(len(offsets) // 2 if forward else 0, len(offsets)):
        d_eta, d_phi = offsets[slot]
        eta, phi = ieta + d_eta, iphi + d_phi
        phi = np.where(phi < 0, phi + n_cell, np.where(phi >= n_cell, phi - n_cell, phi))
        inside = (eta >= 0) & (eta < n_cell)
        yield slot, rows[inside], layer[inside], eta[inside], phi[inside], len(offsets) - 1 - slot
    for direction, base in first.items():
        if forward and direction < 0:
            continue
        for this in range(geometry.num_layers):
            other = this + direction
            mine = np.flatnonzero(layer == this) if 0 <= other < geometry.num_layers else ()
            if not len(mine):
                continue
            to, back = np.full(len(mine), other), first[-direction]
            ratio = _ratio(geometry, this, other)
            if ratio > 0:  # finer or equal: ratio^2 overlapped cells; each sees this one cell at its one slot
                for s in range(ratio * ratio):
                    yield (base + s, mine, to, ieta[mine] * ratio + s // ratio, iphi[mine] * ratio + s % ratio,
                           back)
            else:  # coarser: one overlapping cell, which sees this cell at this cell's place inside it
                place = (ieta[mine] % -ratio) * -ratio + iphi[mine] % -ratio
                yield base, mine, to, ieta[mine] // -ratio, iphi[mine] // -ratio, back + place


def neighbours(layer: np.ndarray, ieta: np.ndarray, iphi: np.ndarray, geometry: Geometry, *,
               in_layer: int = 1) -> tuple[np.ndarray, ...]:
    """Every neighbour of every cell: in-layer cells within ``in_layer`` steps, and overlapping adjacent-layer cells.

    Args:
        layer, ieta, iphi: ``[C]`` int cells.
        geometry: their geometry.
        in_layer: in-layer reach (0: none; 1: the 8 surrounding cells; 2: the 24 cells of the 5 x 5 square).

    Returns:
        ``(row, layer, ieta, iphi)``, ``[M]`` int64 each: neighbour cell of cell ``row``; cells outside the eta range
        are left out, phi wraps.
    """
    parts = [found[1:5] for found in candidates(layer, ieta, iphi, geometry, reach=in_layer)]
    if not parts:
        return tuple(np.empty(0, dtype=np.int64) for _ in range(4))
    return tuple(np.concatenate(column) for column in zip(*parts))


def neighbour_table(event: np.ndarray, layer: np.ndarray, ieta: np.ndarray, iphi: np.ndarray, geometry: Geometry,
                    *, reach: int = 1, between: bool = True) -> np.ndarray:
    """Each cell's neighbour at every slot of :func:`slot_layout`, among the cells of its event.

    Args:
        event, layer, ieta, iphi: ``[C]`` int cells, sorted by event, each cell at most once per event; sorted
            by (event, layer, ieta, iphi), the lookups are faster.
        geometry: their geometry.
        reach, between: the neighbourhood (module docstring). A grid with no more than ``2 * reach`` cells per side
            wraps phi offsets onto one cell, which then fills several slots (or is its own neighbour).

    Returns:
        ``[C, S]`` int32: position of the neighbour among its event's cells, -1 where it is not among them.
    """
    event = np.asarray(event, dtype=np.int64)
    keys = cell_keys(event, layer, ieta, iphi, geometry)
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    local = order - np.searchsorted(event, event[order])  # position of each sorted cell in its event
    table = np.full((slot_layout(geometry, reach, between)[2], len(keys)), -1, dtype=np.int32)
    for slot, rows, *neighbour, back in candidates(layer, ieta, iphi, geometry, reach=reach, between=between,
                                                   forward=True):
        pos = lookup(sorted_keys, cell_keys(event[rows], *neighbour, geometry))
        found = pos >= 0
        cell, pos = rows[found], pos[found]
        table[slot, cell] = local[pos]
        table[back if np.isscalar(back) else back[found], order[pos]] = cell - (order[pos] - local[pos])
    return np.ascontiguousarray(table.T)


def children_neighbour_table(table: np.ndarray, event: np.ndarray, layer: np.ndarray, ieta: np.ndarray,
                             iphi: np.ndarray, geometry: Geometry, factor: int, *, reach: int = 1,
                             between: bool = True) -> np.ndarray:
    """:func:`neighbour_table` of all the children of some cells, from the cells' own table.

    A neighbour of a child lies in the child's parent or in one of the parent's neighbours (in-layer within
    ``ceil(reach / factor)`` cells, or overlapping in an adjacent layer), at a place that follows from the child's
    place in its parent: the table is made by gathers, with no search among the children.

    Args:
        table: ``[P, S]`` :func:`neighbour_table` of the parent cells, on ``geometry.coarsen(factor)``, with the
            same ``reach`` and ``between``.
        event, layer, ieta, iphi: ``[P]`` int parent cells (on the coarse geometry), sorted by event.
        geometry: the children's (fine) geometry.
        factor: children per parent per side.

    Returns:
        ``[P * factor^2, S]`` int32: the table of the children in the order of :meth:`Geometry.children` (parent by
        parent, each parent's children by (ieta, iphi)); a negative entry where there is no neighbour.
    """
    event, layer, ieta, iphi = (np.asarray(a, dtype=np.int64) for a in (event, layer, ieta, iphi))
    f, f2 = int(factor), int(factor) ** 2
    num_parents, num_slots = table.shape
    offsets, first, _ = slot_layout(geometry, reach, between)
    # child j of parent q is child q * f2 + j of their event: the parents' neighbours scaled, the parent itself
    # (its position in its event), and a column for none
    itself, nothing = num_slots, num_slots + 1
    scaled = np.empty((num_parents, num_slots + 2), dtype=np.int32)
    scaled[:, :num_slots] = np.where(table >= 0, table * f2, -f2)
    scaled[:, itself] = (np.arange(num_parents) - np.searchsorted(event, event)) * f2
    scaled[:, nothing] = -f2
    parent_slot = {tuple(offset): slot for slot, offset in enumerate(offsets.tolist())}
    parent_slot[(0, 0)] = itself
    a, b = np.divmod(np.arange(f2), f)  # each child's place (ieta, iphi) in its parent
    # via[child, slot]: the column of ``scaled`` that holds the neighbour's parent; place: where in that parent.
    # In-layer slots are the same in every layer: gathered for all parents at once (no temporaries, which cost
    # more than the arithmetic); the slots between layers, by layer, below
    via, place = np.full((f2, num_slots), nothing), np.zeros((f2, num_slots), dtype=np.int32)
    for slot, (d_eta, d_phi) in enumerate(offsets):
        e, p = a + d_eta, b + d_phi
        via[:, slot] = [parent_slot[key] for key in zip((e // f).tolist(), (p // f).tolist())]
        place[:, slot] = (e % f) * f + p % f
    out = np.take(scaled, via, axis=1)
    out += place
    for direction, base in first.items():
        for this in np.unique(layer):
            other = this + direction
            ratio = _ratio(geometry, this, other) if 0 <= other < geometry.num_layers else 0
            rows = np.flatnonzero(layer == this)
            if ratio > 0:  # the overlapped children of a finer layer, in the parent's overlapped parents
                s = np.arange(ratio * ratio)
                e, p = a[:, None] * ratio + s // ratio, b[:, None] * ratio + s % ratio
                found = np.take(scaled[rows], base + (e // f) * ratio + p // f, axis=1)
                out[rows, :, base:base + ratio * ratio] = found + (e % f) * f + p % f
            elif ratio < 0:  # the one overlapping child of a coarser layer: its place depends on the parent's
                e, p = (ieta[rows, None] * f + a) // -ratio, (iphi[rows, None] * f + b) // -ratio
                out[rows, :, base] = scaled[rows, base, None] + (e % f) * f + p % f
    return out.reshape(num_parents * f2, num_slots)
