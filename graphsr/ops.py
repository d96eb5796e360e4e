"""Segment reductions and nearest-neighbour search, the one place graphsr touches torch_scatter / torch_cluster.

torch_scatter and torch_cluster are compiled extensions: GPU hosts often have torch and PyG but not these two, and
PyG 2.8's own ``knn_graph`` needs pyg-lib, which cannot be installed everywhere. Every function here uses the
extension when it is importable and a pure-torch implementation otherwise; both give the same results (the tests
compare them). kNN ranks neighbours exactly (:func:`knn`): equidistant neighbours, which every regular cell grid
has, are broken by index, so graphs do not depend on the backend or the device. ``use_extensions(False)`` forces
the pure-torch path, e.g. to test it on a host that has both.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

try:
    import torch_scatter
except ImportError:  # pragma: no cover - depends on the host
    torch_scatter = None
try:
    import torch_cluster
except ImportError:  # pragma: no cover - depends on the host
    torch_cluster = None

_use_extensions = True


@contextmanager
def use_extensions(enabled: bool):
    """Context manager: ``enabled=False`` makes every op take its pure-torch path."""
    global _use_extensions
    previous, _use_extensions = _use_extensions, enabled
    try:
        yield
    finally:
        _use_extensions = previous


def has_torch_scatter() -> bool:
    return torch_scatter is not None and _use_extensions


def has_torch_cluster() -> bool:
    return torch_cluster is not None and _use_extensions


# ------------------------------------------------------------------------------------------------ segment reductions
def scatter(src: torch.Tensor, index: torch.Tensor, dim_size: int | None = None, reduce: str = "sum") -> torch.Tensor:
    """Reduce rows of ``src`` ([N, ...]) into ``dim_size`` segments given by ``index`` ([N]).

    Args:
        reduce: ``"sum"``, ``"mean"``, ``"max"`` or ``"min"``. Empty segments give 0.
    """
    if dim_size is None:
        dim_size = int(index.max()) + 1 if index.numel() else 0
    if has_torch_scatter():
        return torch_scatter.scatter(src, index, dim=0, dim_size=dim_size, reduce=reduce)
    out = src.new_zeros((dim_size, *src.shape[1:]))
    if reduce in ("sum", "mean"):  # index_add: compiled code fuses it (a scatter_reduce mean runs unfused)
        total = out.index_add(0, index, src)
        if reduce == "sum":
            return total
        count = src.new_zeros(dim_size).index_add(0, index, src.new_ones(index.numel())).clamp(min=1)
        return total / count.view(-1, *([1] * (src.dim() - 1)))
    expanded = index.view(-1, *([1] * (src.dim() - 1))).expand_as(src)
    torch_reduce = {"max": "amax", "min": "amin"}[reduce]
    return out.scatter_reduce(0, expanded, src, reduce=torch_reduce, include_self=False)


def segment_rank(index: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``(rank [N], width)``: each row's position among the rows of its segment ``index`` ([N]), in row order, and
    the size of the largest segment (:func:`segment_softmax` takes them)."""
    if index.numel() == 0:
        return index.new_zeros(0), 0
    if bool((index[1:] >= index[:-1]).all()):  # sorted, as PyG batches and kNN graphs come: no sort needed
        rank = _rank_within(index)
    else:
        order = torch.sort(index, stable=True).indices
        rank = torch.empty_like(index)
        rank[order] = _rank_within(index[order])
    return rank, int(rank.max()) + 1


def segment_softmax(src: torch.Tensor, index: torch.Tensor, dim_size: int | None = None,
                    rank: tuple[torch.Tensor, int] | None = None) -> torch.Tensor:
    """Softmax of ``src`` ([N, ...]) over the rows that share a segment ``index`` ([N]).

    ``rank``: :func:`segment_rank` of ``index``. The pure-torch path then takes each segment's maximum (the shift
    that keeps ``exp`` finite) as a dense maximum over a ``[dim_size, width]`` table, which ``torch.compile`` fuses
    into its loops; its scatter maximum runs as a separate, unfused kernel. The same result either way."""
    if dim_size is None:
        dim_size = int(index.max()) + 1 if index.numel() else 0
    if has_torch_scatter():
        return torch_scatter.scatter_softmax(src, index, dim=0, dim_size=dim_size)
    if rank is None:
        maximum = scatter(src.detach(), index, dim_size, "max")
    else:
        rank, width = rank
        table = src.new_full((dim_size * width, *src.shape[1:]), float("-inf"))
        maximum = table.index_put((index * width + rank,), src.detach()).view(dim_size, width, *src.shape[1:]).amax(1)
    shifted = src - maximum[index]
    exp = shifted.exp()
    return exp / scatter(exp, index, dim_size, "sum")[index]


def segment_log_softmax(src: torch.Tensor, index: torch.Tensor, dim_size: int | None = None) -> torch.Tensor:
    """Log of :func:`segment_softmax`, computed without its underflow to -inf."""
    if dim_size is None:
        dim_size = int(index.max()) + 1 if index.numel() else 0
    shifted = src - scatter(src.detach(), index, dim_size, "max")[index]
    return shifted - scatter(shifted.exp(), index, dim_size, "sum").log()[index]


# ------------------------------------------------------------------------------------------ nearest neighbours
LATTICE = 1e-6  # step on which kNN compares positions (their own units; graphsr's are eta and cos / sin phi)


def knn(
    x: torch.Tensor,
    y: torch.Tensor,
    k: int,
    batch_x: torch.Tensor | None = None,
    batch_y: torch.Tensor | None = None,
    resolution: float = LATTICE,
) -> torch.Tensor:
    """For each point of ``y`` its ``k`` nearest points of ``x`` in the same segment (Euclidean).

    The order is exact and the same everywhere: positions are rounded to a lattice of step ``resolution`` and their
    squared distances computed in integers, so that equidistant neighbours (every regular cell grid has them) are
    true ties, broken by the lower index of ``x``. With or without torch_cluster, on CPU or GPU, the same positions
    give the same neighbours; a model trained on one host sees the same graphs on another. Pass float64 positions
    where they come out of functions (cos, sin) whose last bit differs between devices.

    Args:
        x: [Nx, D] points searched; y: [Ny, D] query points.
        batch_x, batch_y: sorted segment ids of x and y (default: one segment).

    Returns:
        [2, E] pairs ``(index into y, index into x)``, as ``torch_cluster.knn``, by query then nearness. Segments
        with fewer than ``k`` points of ``x`` give fewer pairs.
    """
    if batch_x is None:
        batch_x = x.new_zeros(x.size(0), dtype=torch.long)
    if batch_y is None:
        batch_y = y.new_zeros(y.size(0), dtype=torch.long)
    if x.numel() == 0 or y.numel() == 0 or k < 1:
        return torch.empty(2, 0, dtype=torch.long, device=x.device)
    # integers held in float64: squared distances exact in both backends below 2**53 (3-D points: |x| < 27 here)
    x, y = torch.round(x.double() / resolution), torch.round(y.double() / resolution)
    found, queries, slack = [], torch.arange(y.size(0), device=y.device), 8
    while queries.numel():
        # candidates: the k + slack nearest by either backend, one row per query, ranked exactly by (distance, index)
        width = k + slack
        if has_torch_cluster():
            q, s = torch_cluster.knn(x, y[queries], width, batch_x, batch_y[queries])
        else:
            q, s = _knn_dense(x, y[queries], width, batch_x, batch_y[queries])
        order = torch.sort(q, stable=True).indices
        q, s = q[order], s[order]
        index = torch.full((queries.numel(), width), x.size(0), dtype=torch.long, device=x.device)
        index[q, _rank_within(q)] = s
        index = torch.sort(index, dim=1).values  # padding (x.size(0)) last
        distance = ((x[index.clamp(max=x.size(0) - 1)] - y[queries].unsqueeze(1)) ** 2).sum(2)
        distance[index == x.size(0)] = float("inf")
        distance, order = torch.sort(distance, dim=1, stable=True)
        index = torch.gather(index, 1, order)
        # a query whose last candidate ties its k-th may have tied points that did not come back: ask again
        again = torch.isfinite(distance[:, -1]) & (distance[:, -1] == distance[:, k - 1])
        rows = torch.nonzero(~again).squeeze(1)
        pairs = torch.stack([queries[rows].unsqueeze(1).expand(-1, k), index[rows, :k]]).reshape(2, -1)
        found.append(pairs[:, pairs[1] < x.size(0)])
        queries, slack = queries[again], slack * 4
    if len(found) == 1:
        return found[0]
    pairs = torch.cat(found, 1)
    return pairs[:, torch.sort(pairs[0], stable=True).indices]


def knn_graph(x: torch.Tensor, k: int, batch: torch.Tensor | None = None, loop: bool = False) -> torch.Tensor:
    """Directed kNN graph: edges ``(j -> i)`` from each point's ``k`` nearest neighbours ``j`` in its segment, in
    :func:`knn`'s exact order (the same on every host).

    Returns:
        ``edge_index`` [2, E] in PyG's source-to-target convention (row 0 source j, row 1 target i).
    """
    if batch is None:
        batch = x.new_zeros(x.size(0), dtype=torch.long)
    if x.numel() == 0:
        return torch.empty(2, 0, dtype=torch.long, device=x.device)
    target, source = knn(x, x, k + (0 if loop else 1), batch, batch)
    if not loop:
        # the point itself is among its k + 1 nearest unless k + 1 others share its position: keep k others
        keep = source != target
        target, source = target[keep], source[keep]
        rank = _rank_within(target)
        target, source = target[rank < k], source[rank < k]
    return torch.stack([source, target])


def radius_graph(
    x: torch.Tensor, r: float, batch: torch.Tensor | None = None, max_num_neighbors: int = 32
) -> torch.Tensor:
    """Directed graph linking each point to its neighbours within distance ``r`` in its segment (no self loops).

    At most ``max_num_neighbors`` neighbours per point, the nearest ones. Returns ``edge_index`` [2, E] (source j,
    target i).
    """
    if batch is None:
        batch = x.new_zeros(x.size(0), dtype=torch.long)
    edge_index = knn_graph(x, max_num_neighbors, batch)
    source, target = edge_index
    return edge_index[:, (x[source] - x[target]).norm(dim=1) <= r]


def _rank_within(group: torch.Tensor) -> torch.Tensor:
    """Position of each element among the (consecutive) elements of its group."""
    start = torch.zeros_like(group)
    first = torch.ones_like(group, dtype=torch.bool)
    first[1:] = group[1:] != group[:-1]
    start[first] = torch.arange(group.numel(), device=group.device)[first]
    start = torch.cummax(start, 0).values
    return torch.arange(group.numel(), device=group.device) - start


def _knn_dense(x, y, k, batch_x, batch_y, max_elements: int = 1 << 24):
    """Exact kNN by padded per-segment distance matrices, processed in groups of segments to bound memory."""
    num_segments = int(max(batch_x.max(), batch_y.max())) + 1
    count_x = torch.bincount(batch_x, minlength=num_segments)
    count_y = torch.bincount(batch_y, minlength=num_segments)
    start_x = torch.cumsum(count_x, 0) - count_x
    start_y = torch.cumsum(count_y, 0) - count_y
    pos_x = torch.arange(x.size(0), device=x.device) - start_x[batch_x]
    pos_y = torch.arange(y.size(0), device=y.device) - start_y[batch_y]
    rows, cols = [], []
    cx, cy = count_x.tolist(), count_y.tolist()
    segment = 0
    while segment < num_segments:
        # grow the group while the padded [segments, max_y, max_x] block stays small
        end, m_x, m_y = segment + 1, cx[segment], cy[segment]
        while end < num_segments and (end + 1 - segment) * max(m_y, cy[end]) * max(m_x, cx[end]) <= max_elements:
            m_x, m_y = max(m_x, cx[end]), max(m_y, cy[end])
            end += 1
        in_x = (batch_x >= segment) & (batch_x < end)
        in_y = (batch_y >= segment) & (batch_y < end)
        n_seg = end - segment
        if m_x and m_y:
            dense_x = x.new_full((n_seg, m_x, x.size(1)), float("inf"))
            dense_x[batch_x[in_x] - segment, pos_x[in_x]] = x[in_x]
            dense_y = y.new_zeros((n_seg, m_y, y.size(1)))
            dense_y[batch_y[in_y] - segment, pos_y[in_y]] = y[in_y]
            dist = torch.cdist(dense_y, dense_x.nan_to_num(posinf=0.0))
            dist.masked_fill_(torch.isinf(dense_x[..., 0]).unsqueeze(1), float("inf"))
            k_eff = min(k, m_x)
            dist_k, nearest = dist.topk(k_eff, dim=2, largest=False)
            seg_y, slot_y = batch_y[in_y] - segment, pos_y[in_y]
            valid = torch.isfinite(dist_k[seg_y, slot_y])
            query = torch.nonzero(in_y).squeeze(1).unsqueeze(1).expand(-1, k_eff)
            found = nearest[seg_y, slot_y] + start_x[batch_y[in_y]].unsqueeze(1)
            rows.append(query[valid])
            cols.append(found[valid])
        segment = end
    if not rows:
        return torch.empty(2, 0, dtype=torch.long, device=x.device)
    return torch.stack([torch.cat(rows), torch.cat(cols)])
