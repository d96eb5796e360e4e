"""Keep some cells of COCOA events, and every other branch consistent with them."""

from __future__ import annotations

import awkward as ak
import numpy as np

from graphsr.io.writer import counter_name

# parallel pairs of branches that hold indices of cells
CELL_EDGES = ("cell_to_cell_edge_start", "cell_to_cell_edge_end")
TRACK_EDGES = ("track_to_cell_edge_start", "track_to_cell_edge_end")
PARTICLE_NODES = ("particle_to_node_idx", "particle_to_node_weight")


def _unflatten(values: np.ndarray, keep: np.ndarray, owner: np.ndarray, num_owners: int) -> ak.Array:
    """Values where ``keep``, regrouped into ``num_owners`` lists (``owner``: the list of each value)."""
    return ak.unflatten(values[keep], np.bincount(owner[keep], minlength=num_owners))


def select_cells(events: ak.Array, keep: ak.Array) -> ak.Array:
    """The events with only the cells where ``keep`` holds, cell indices renumbered.

    Per-cell branches (``cell_*`` counted by ``ncell``) keep the chosen cells in their order. Branches that point at
    cells are renumbered and lose the entries that point at a removed cell: ``cell_to_cell_edge_start/_end``
    (edges with both ends kept), ``track_to_cell_edge_start/_end`` (edges to kept cells) and
    ``particle_to_node_idx/_weight`` (COCOA numbers a particle's tracks after the cells: those indices shift by the
    number of cells removed). Every other branch is kept as it is.

    Args:
        events: ``[num_events]`` records of one tree, with ``cell_*`` branches.
        keep: ``[num_events, var]`` bool per cell.
    """
    counts = ak.to_numpy(ak.num(keep, axis=1))
    flat_keep = ak.to_numpy(ak.flatten(keep))
    cell_offsets = np.concatenate([[0], np.cumsum(counts)])
    kept = np.bincount(np.repeat(np.arange(len(counts)), counts), weights=flat_keep,
                       minlength=len(counts)).astype(np.int64)
    kept_offsets = np.concatenate([[0], np.cumsum(kept)])
    new_index = np.cumsum(flat_keep) - 1  # global index among kept cells; local after subtracting kept_offsets

    def flat(name: str) -> tuple[np.ndarray, np.ndarray]:
        """The values of a list branch end to end, and the event of each."""
        values = ak.to_numpy(ak.flatten(events[name], axis=None))
        return values, np.repeat(np.arange(len(events)), ak.to_numpy(ak.num(events[name], axis=1)))

    fields = ak.fields(events)
    out = {}
    for name in fields:
        if counter_name(name) == "ncell":
            out[name] = events[name][keep]
    for pair, cell_ends in ((CELL_EDGES, CELL_EDGES), (TRACK_EDGES, TRACK_EDGES[1:])):
        present = [name for name in pair if name in fields]
        if not present:
            continue
        event = flat(present[0])[1]
        ok = np.ones(len(event), dtype=bool)
        renumbered = {}
        for name in present:
            values = flat(name)[0]
            if name in cell_ends:
                index = values.astype(np.int64) + cell_offsets[event]
                ok &= flat_keep[index]
                values = (new_index[index] - kept_offsets[event]).astype(values.dtype)
            renumbered[name] = values
        for name, values in renumbered.items():
            out[name] = _unflatten(values, ok, event, len(events))
    present = [name for name in PARTICLE_NODES if name in fields]
    if present:
        nodes = events[present[0]]
        per_particle = ak.to_numpy(ak.flatten(ak.num(nodes, axis=2)))
        particles = ak.to_numpy(ak.num(nodes, axis=1))
        particle_event = np.repeat(np.arange(len(events)), particles)
        owner = np.repeat(np.arange(len(per_particle)), per_particle)
        event = particle_event[owner]
        ok = np.ones(len(owner), dtype=bool)
        if "particle_to_node_idx" in fields:
            index = flat("particle_to_node_idx")[0].astype(np.int64)
            is_cell = index < counts[event]
            cell = index[is_cell] + cell_offsets[event[is_cell]]  # (a chunk of events without cells has none)
            ok = ~is_cell
            ok[is_cell] = flat_keep[cell]
            renumbered = index - counts[event] + kept[event]
            renumbered[is_cell] = new_index[cell] - kept_offsets[event[is_cell]]
        for name in present:
            values = flat(name)[0]
            if name == "particle_to_node_idx":
                values = renumbered.astype(values.dtype)
            inner = _unflatten(values, ok, owner, len(per_particle))
            out[name] = ak.unflatten(inner, particles)
    return ak.zip({name: out.get(name, events[name]) for name in fields}, depth_limit=1)
