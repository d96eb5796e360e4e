"""graphsr.ops: the torch_scatter / torch_cluster paths and the pure-torch fallbacks give the same results."""

from __future__ import annotations

import pytest
import torch

from graphsr import ops

needs_scatter = pytest.mark.skipif(not ops.has_torch_scatter(), reason="torch_scatter not installed")
needs_cluster = pytest.mark.skipif(not ops.has_torch_cluster(), reason="torch_cluster not installed")


def both(fn):
    """fn() with the extensions, then with the pure-torch path."""
    with_ext = fn()
    with ops.use_extensions(False):
        assert not ops.has_torch_scatter() and not ops.has_torch_cluster()
        pure = fn()
    return with_ext, pure


def points(seed=0, sizes=(7, 1, 30, 12)):
    g = torch.Generator().manual_seed(seed)
    batch = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    return torch.randn(len(batch), 2, generator=g), batch


def edge_set(edge_index):
    return set(map(tuple, edge_index.t().tolist()))


@needs_scatter
@pytest.mark.parametrize("reduce", ["sum", "mean", "max", "min"])
def test_scatter_paths_agree(reduce):
    src = torch.randn(50, 3, generator=torch.Generator().manual_seed(1))
    index = torch.randint(0, 8, (50,), generator=torch.Generator().manual_seed(2))
    index[index == 5] = 6  # an empty segment: 0 on both paths
    a, b = both(lambda: ops.scatter(src, index, 9, reduce))
    assert torch.allclose(a, b, atol=1e-6)
    assert torch.all(b[5] == 0) and torch.all(b[8] == 0)


def test_scatter_pure_matches_loop():
    src, index = torch.arange(6.0).view(6, 1), torch.tensor([0, 0, 2, 2, 2, 0])
    with ops.use_extensions(False):
        assert ops.scatter(src, index, 3).view(-1).tolist() == [0 + 1 + 5, 0, 2 + 3 + 4]
        assert ops.scatter(src, index, 3, "max").view(-1).tolist() == [5, 0, 4]


@needs_scatter
def test_segment_softmax_paths_agree_and_normalise():
    src = torch.randn(40, 4, generator=torch.Generator().manual_seed(3)) * 30  # large logits: needs the max shift
    index = torch.sort(torch.randint(0, 6, (40,), generator=torch.Generator().manual_seed(4))).values
    a, b = both(lambda: ops.segment_softmax(src, index, 6))
    assert torch.allclose(a, b, atol=1e-6)
    assert torch.allclose(ops.scatter(b, index, 6)[index.unique()], torch.ones(len(index.unique()), 4), atol=1e-5)


def test_segment_rank_by_hand():
    rank, width = ops.segment_rank(torch.tensor([2, 0, 2, 1, 0, 2]))  # unsorted: ranks in row order
    assert rank.tolist() == [0, 0, 1, 0, 1, 2] and width == 3
    rank, width = ops.segment_rank(torch.tensor([0, 0, 1, 3, 3, 3, 3]))  # sorted
    assert rank.tolist() == [0, 1, 0, 0, 1, 2, 3] and width == 4
    assert ops.segment_rank(torch.zeros(0, dtype=torch.long))[1] == 0


def test_segment_softmax_with_rank_tables_is_each_segments_softmax():
    """The dense-table maximum (rank given) against torch.softmax over each segment's rows, with logits far
    beyond exp's range (1e3: no overflow, no all-zero segment) and an empty segment."""
    generator = torch.Generator().manual_seed(5)
    src = torch.randn(30, 3, generator=generator) * 1000
    index = torch.randint(0, 5, (30,), generator=generator)
    index[index == 3] = 4  # segment 3 empty
    with ops.use_extensions(False):
        out = ops.segment_softmax(src, index, 6, ops.segment_rank(index))
    for segment in index.unique():
        rows = index == segment
        assert torch.allclose(out[rows], torch.softmax(src[rows], 0), atol=1e-6)
    assert torch.isfinite(out).all()


@needs_cluster
@pytest.mark.parametrize("loop", [False, True])
def test_knn_graph_paths_agree(loop):
    x, batch = points()
    a, b = both(lambda: ops.knn_graph(x, 4, batch, loop=loop))
    assert edge_set(a) == edge_set(b)
    source, target = b
    assert torch.all(batch[source] == batch[target])  # never across events
    assert loop or torch.all(source != target)


@needs_cluster
def test_knn_bipartite_paths_agree():
    x, batch_x = points(5)
    y, batch_y = points(6)
    a, b = both(lambda: ops.knn(x, y, 3, batch_x, batch_y))
    assert edge_set(a) == edge_set(b)


def test_knn_graph_pure_is_exact():
    x, batch = points(7)
    with ops.use_extensions(False):
        source, target = ops.knn_graph(x, 3, batch)
    for i in range(len(x)):
        same = torch.nonzero(batch == batch[i]).squeeze(1)
        same = same[same != i]
        dist = (x[same] - x[i]).norm(dim=1)
        expected = set(same[dist.argsort()[:3]].tolist())
        assert set(source[target == i].tolist()) == expected


def test_radius_graph_keeps_only_close_pairs():
    x, batch = points(8)
    with ops.use_extensions(False):
        source, target = ops.radius_graph(x, 0.5, batch)
    assert torch.all((x[source] - x[target]).norm(dim=1) <= 0.5)
    assert len(source) > 0


def test_knn_dense_chunks_like_one_block():
    x, batch = points(9, sizes=(20, 25, 3, 40))
    with ops.use_extensions(False):
        whole = ops._knn_dense(x, x, 4, batch, batch)
        chunked = ops._knn_dense(x, x, 4, batch, batch, max_elements=500)  # forces one segment per block
    assert edge_set(whole) == edge_set(chunked)


def grid(n=5, step=0.01):
    """n x n points of a regular grid, row by row (index = row * n + column)."""
    row, col = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    return torch.stack([row.flatten(), col.flatten()], 1).double() * step


@pytest.mark.parametrize("extensions", [True, False])
def test_knn_breaks_grid_ties_by_index(extensions):
    """The centre of a 5 x 5 grid has 4 neighbours at one step and 4 at sqrt(2) steps: k = 6 takes the 4 sides and
    the two diagonals of lowest index (6 and 8 of 6, 8, 16, 18), whichever backend."""
    with ops.use_extensions(extensions):
        source, target = ops.knn_graph(grid(), 6)
    assert sorted(source[target == 12].tolist()) == [6, 7, 8, 11, 13, 17]


@pytest.mark.parametrize("extensions", [True, False])
def test_knn_ties_beyond_the_candidates(extensions):
    """12 points at exactly 5 units from the query ((+-5, 0), (0, +-5), (+-3, +-4), (+-4, +-3)) and 3 further away:
    more ties than the first round of candidates (k + 8) holds; k = 2 must still give the two of lowest index."""
    ring = [(5, 0), (0, 5), (-5, 0), (0, -5), (3, 4), (4, 3), (-3, 4), (-4, 3), (3, -4), (4, -3), (-3, -4), (-4, -3)]
    far = [(9, 9), (-9, 9), (9, -9)]
    order = torch.randperm(15, generator=torch.Generator().manual_seed(3))
    x = torch.tensor(far + ring, dtype=torch.float64)[order] * 1e-3  # the 12 ring points at shuffled indices
    on_ring = torch.nonzero(order >= 3).squeeze(1)
    with ops.use_extensions(extensions):
        query, found = ops.knn(x, torch.zeros(1, 2, dtype=torch.float64), 2)
    assert query.tolist() == [0, 0]
    assert found.tolist() == on_ring[:2].tolist()


def test_knn_ignores_last_bit_noise():
    """Positions that differ in their last bits (float32 cos / sin on a CPU and on a GPU do) give the same graph:
    without the lattice, the noise would decide between the equidistant neighbours of every grid point."""
    x = grid(7)
    noisy = x + 1e-12 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert edge_set(ops.knn_graph(x, 6)) == edge_set(ops.knn_graph(noisy, 6))
    with ops.use_extensions(False):
        assert edge_set(ops.knn_graph(noisy, 6)) == edge_set(ops.knn_graph(x, 6))
