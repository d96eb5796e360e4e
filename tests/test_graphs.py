import awkward as ak
import numpy as np
import pytest
import torch
from torch_geometric.data import Batch
from torch_geometric.data.separate import separate

from graphsr.detector import Geometry
from graphsr.graphs import GraphLoader, GraphOptions, PairData, build_storage, collate_events, concat_storages
from graphsr.graphs.transforms import SignedLog

from conftest import TOY_CELLS, make_toy_events


def events_of(storage):
    data, slices = storage
    return [separate(PairData, data, i, slices, decrement=False) for i in range(len(slices["event"]) - 1)]


def test_build_selects_ecal_and_orders_children_in_blocks(toy_chunk):
    low, high = toy_chunk
    first, empty, last = events_of(build_storage(low, high))
    assert first.num_coarse_nodes == 5 and first.num_nodes == 20  # the HCAL cell is left out
    assert empty.num_nodes == 0 and empty.num_coarse_nodes == 0
    assert last.num_coarse_nodes == 3 and last.num_nodes == 12
    for event, cells in zip((first, last), (TOY_CELLS[0][:5], TOY_CELLS[2])):
        assert torch.equal(event.fine_parent, torch.arange(len(cells)).repeat_interleave(4))
        coarse = Geometry.cocoa().coarsen(2)
        layer, ieta, iphi = (torch.tensor(a) for a in np.array(cells).T)
        assert torch.equal(event.coarse_cell, coarse.cell_id(layer, ieta, iphi))
        # each fine node is a child of its parent, in (ieta, iphi) block order
        children = coarse.children(Geometry.cocoa(), layer, ieta, iphi)
        assert torch.equal(event.fine_cell, Geometry.cocoa().cell_id(*children).reshape(-1))


def test_fine_energies_follow_the_mapping(toy_chunk):
    low, high = toy_chunk
    first = events_of(build_storage(low, high))[0]
    # toy: fine cells are stored sorted by cell, so the mapping reorders them; energies must travel with cells
    order = torch.argsort(first.fine_cell)  # = the stored order; the 4 HCAL children come last in the file
    stored_energy = torch.tensor(high.cell_e[0].to_numpy()[: len(order)], dtype=torch.float32) / 1000
    assert torch.allclose(first.fine_energy[order], stored_energy)


def test_the_order_of_the_mapping_does_not_matter(toy_chunk):
    low, high = toy_chunk
    shuffled = ak.to_list(low)
    for event in shuffled:  # list each event's (coarse, fine) pairs in another order
        order = np.random.default_rng(1).permutation(len(event["low_cell_to_high_cell_edge"]))
        for key in ("low_cell_to_high_cell_edge", "high_cell_to_low_cell_edge"):
            event[key] = [event[key][i] for i in order]
    for edges in ("grid", "knn"):
        expected, slices = build_storage(low, high, GraphOptions(edges=edges))
        data, _ = build_storage(ak.Array(shuffled), high, GraphOptions(edges=edges))
        for key, value in expected:
            assert torch.equal(value, data[key]), (edges, key)


def test_coarse_only_input_builds_the_same_fine_cells(toy_chunk):
    low, high = toy_chunk
    with_fine = build_storage(low, high)[0]
    coarse_only = build_storage(low, None, factor=2)[0]
    assert torch.equal(with_fine.fine_cell, coarse_only.fine_cell)
    assert torch.allclose(with_fine.fine_pos, coarse_only.fine_pos, atol=1e-6)
    assert "fine_energy" not in coarse_only
    with pytest.raises(ValueError, match="factor"):
        build_storage(low, None)


@pytest.mark.parametrize("edges", ["grid", "knn", "radius"])
def test_edges_stay_inside_events_and_adjacent_layers(toy_chunk, edges):
    low, high = toy_chunk
    options = GraphOptions(edges=edges, k=3, k_between=2, radius=0.05)
    for event in events_of(build_storage(low, high, options)):
        for pos, layer, edge_index in ((event.fine_pos, event.fine_layer, event.fine_edge_index),
                                       (event.coarse_pos, event.coarse_layer, event.coarse_edge_index)):
            if edge_index.numel() == 0:
                continue
            assert edge_index.min() >= 0 and edge_index.max() < len(layer)
            assert (edge_index[0] != edge_index[1]).all()
            assert (layer[edge_index[0]] - layer[edge_index[1]]).abs().max() <= 1
            if edges == "radius":
                d_eta = pos[edge_index[0], 0] - pos[edge_index[1], 0]
                d_phi = torch.remainder(pos[edge_index[0], 1] - pos[edge_index[1], 1] + torch.pi, 2 * torch.pi) - torch.pi
                same = layer[edge_index[0]] == layer[edge_index[1]]
                assert (torch.hypot(d_eta, d_phi)[same] < 0.051).all()


def test_knn_wraps_phi():
    # cells 63 and 64 sit at phi = +-(pi - 0.025): nearest to each other only if phi wraps (cell 0 is at phi 0.025)
    low, high = make_toy_events([[(0, 60, 63), (0, 60, 64), (0, 60, 0)]])
    event = events_of(build_storage(low, high, GraphOptions(edges="knn", k=1, k_between=0)))[0]
    src, dst = event.coarse_edge_index
    pairs = set(zip(src.tolist(), dst.tolist()))
    assert (0, 1) in pairs and (1, 0) in pairs


def undirected(edge_index):
    return {tuple(sorted(pair)) for pair in edge_index.t().tolist()}


def test_grid_edges_link_neighbouring_cells(toy_chunk):
    low, high = toy_chunk
    first, empty, last = events_of(build_storage(low, high))
    # first event, 2x grid (128 x 128 in ECAL1-2): 0 = (0, 60, 0), 1 = (0, 60, 1), 2 = (0, 61, 127) next to 0 across
    # the phi wrap, 3 = (1, 60, 0) under 0, 4 = (1, 61, 0) next to 3; each pair both ways
    assert undirected(first.coarse_edge_index) == {(0, 1), (0, 2), (0, 3), (3, 4)}
    assert first.coarse_edge_index.size(1) == 8
    # last event: ECAL3 (2, 30, 5) is over ECAL2 (60..61, 10..11), which holds (1, 60, 10) and (1, 60, 11)
    assert undirected(last.coarse_edge_index) == {(0, 1), (0, 2), (1, 2)}
    # fine ECAL1 cells: 0-3 = (120, 0) (120, 1) (121, 0) (121, 1), children of (0, 60, 0); 4-7 = (120, 2) (120, 3)
    # (121, 2) (121, 3); 8-11 = (122, 254) (122, 255) (123, 254) (123, 255), of which (122, 255) touches (121, 0)
    fine = first.fine_edge_index
    same = first.fine_layer[fine[0]] == first.fine_layer[fine[1]]
    in_layer = torch.bincount(fine[1][same], minlength=first.num_nodes)
    assert in_layer[:12].tolist() == [3, 5, 4, 5, 5, 3, 5, 3, 3, 4, 3, 3]
    # between layers: ECAL1 children of (0, 60, 0) over those of (1, 60, 0), one each
    between = {(int(a), int(b)) for a, b in fine.t() if first.fine_layer[a] != first.fine_layer[b]}
    assert between == {(i, 12 + i) for i in range(4)} | {(12 + i, i) for i in range(4)}
    assert empty.fine_edge_index.numel() == 0


def test_grid_needs_the_children_of_coarse_cells(toy_chunk):
    low, high = toy_chunk
    moved = ak.to_list(high)
    moved[2]["cell_eta"][0] += 0.1  # a fine cell of the last event now lies outside its coarse cell
    with pytest.raises(ValueError, match="event 2: fine cells do not lie inside their coarse cells"):
        build_storage(low, ak.Array(moved))
    build_storage(low, ak.Array(moved), GraphOptions(edges="knn"))
    with pytest.raises(ValueError, match="edges must be one of"):
        GraphOptions(edges="delaunay")
    with pytest.raises(ValueError, match="wraps around"):
        build_storage(low, high, GraphOptions(reach=16, layers=(0, 1, 2, 3, 4, 5)), factor=2)


def test_layers_option_and_drop_empty(toy_chunk):
    low, high = toy_chunk
    data, slices = build_storage(low, high, GraphOptions(layers=(0, 1, 2, 3)), drop_empty=True)
    assert data.event.tolist() == [0, 2]
    assert int(slices["coarse_layer"][1]) == 6  # the HCAL cell is kept now
    assert repr(GraphOptions(layers=(0, 1, 2, 3))) != repr(GraphOptions())


def test_collate_events_matches_pyg_batching(toy_chunk):
    low, high = toy_chunk
    storage = build_storage(low, high)
    events = torch.tensor([2, 0, 1])
    reference = Batch.from_data_list([events_of(storage)[i] for i in events])
    fast = collate_events(*storage, events)
    for key in reference.keys():
        assert torch.equal(reference[key], fast[key]), key
    assert torch.equal(fast.coarse_batch, torch.tensor([0, 0, 0, 1, 1, 1, 1, 1]))
    # fine_parent indexes the batch's coarse nodes
    assert torch.equal(fast.coarse_batch[fast.fine_parent], fast.batch)
    for back, original in zip(fast.to_data_list(), [events_of(storage)[i] for i in events]):
        for key in original.keys():
            assert torch.equal(back[key], original[key]), key


def test_concat_storages_equals_one_chunk(toy_chunk):
    low, high = toy_chunk
    whole = build_storage(low, high)
    parts = concat_storages([build_storage(low[:2], high[:2]), build_storage(low[2:], high[2:], first_event=2)])
    for key, value in whole[0]:
        assert torch.equal(value, parts[0][key]), key
        assert torch.equal(whole[1][key], parts[1][key]), key


def test_graph_loader_shuffles_reproducibly(toy_chunk):
    low, high = toy_chunk
    storage = build_storage(low, high)
    order = lambda seed: [b.event.tolist() for b in GraphLoader(storage, 2, shuffle=True,  # noqa: E731
                                                              generator=torch.Generator().manual_seed(seed))]
    assert order(0) == order(0)
    assert sorted(sum(order(0), [])) == [0, 1, 2]
    assert len(GraphLoader(storage, 2, drop_last=True)) == 1


def test_signed_log_inverts():
    signed = SignedLog(out_key="coarse_input")
    noisy = torch.tensor([-0.05, 0.0, 0.002, 40.0])
    assert torch.allclose(signed.inverse(None, signed.apply(None, noisy)), noisy, rtol=1e-5)
    # linear near zero, logarithmic far above the scale (0.01 GeV)
    assert signed.apply(None, torch.tensor(1e-4)) == pytest.approx(1e-2, rel=1e-3)
    assert signed.apply(None, torch.tensor(40.0)) == pytest.approx(np.log(2 * 4000), rel=1e-6)
    assert "scale=0.01" in repr(signed)
