"""Keeping some cells of COCOA events: per-cell branches follow, cell indices are renumbered."""

from __future__ import annotations

import awkward as ak
import numpy as np

from graphsr.io.select import select_cells


def test_select_cells_renumbers_every_branch_that_points_at_cells():
    f32, i32 = np.float32, np.int32
    events = ak.zip({
        "cell_e": ak.values_astype(ak.Array([[1, 2, 3], [], [4, 5]]), f32),
        "cell_parent_list": ak.values_astype(ak.Array([[[0], [1], []], [], [[0], [0]]]), f32),
        "cell_to_cell_edge_start": ak.values_astype(ak.Array([[0, 1, 2], [], [0]]), i32),
        "cell_to_cell_edge_end": ak.values_astype(ak.Array([[2, 0, 0], [], [1]]), i32),
        "track_to_cell_edge_start": ak.values_astype(ak.Array([[0, 0], [], []]), i32),
        "track_to_cell_edge_end": ak.values_astype(ak.Array([[1, 2], [], []]), i32),
        # particle 0 of event 0: cells 0 and 1, and its track (index 3 = number of cells + track 0)
        "particle_to_node_idx": ak.values_astype(ak.Array([[[0, 1, 3], [2]], [[]], [[1]]]), f32),
        "particle_to_node_weight": ak.values_astype(ak.Array([[[0.5, 0.3, 0.2], [1]], [[]], [[1]]]), f32),
        "particle_e": ak.values_astype(ak.Array([[10, 20], [30], [40]]), f32),
        "topo_jet_pt": ak.values_astype(ak.Array([[7], [], [8, 9]]), f32),
    }, depth_limit=1)
    keep = ak.Array([[True, False, True], [], [True, True]])
    out = select_cells(events, keep)
    assert out.fields == events.fields
    assert ak.to_list(out.cell_e) == [[1, 3], [], [4, 5]]
    assert ak.to_list(out.cell_parent_list) == [[[0], []], [], [[0], [0]]]
    # edge 0->2 becomes 0->1; 1->0 loses its start; 2->0 becomes 1->0
    assert ak.to_list(out.cell_to_cell_edge_start) == [[0, 1], [], [0]]
    assert ak.to_list(out.cell_to_cell_edge_end) == [[1, 0], [], [1]]
    assert ak.to_list(out.track_to_cell_edge_start) == [[0], [], []]
    assert ak.to_list(out.track_to_cell_edge_end) == [[1], [], []]
    # the track now follows 2 cells: index 2
    assert ak.to_list(out.particle_to_node_idx) == [[[0, 2], [1]], [[]], [[1]]]
    assert np.allclose(ak.to_numpy(ak.flatten(out.particle_to_node_weight, axis=None)), [0.5, 0.2, 1, 1])
    assert ak.to_list(out.particle_e) == [[10, 20], [30], [40]] and ak.to_list(out.topo_jet_pt) == [[7], [], [8, 9]]
    for name in events.fields:  # types kept
        assert str(out[name].type.content) == str(events[name].type.content), name
