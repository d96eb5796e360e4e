"""Awkward arrays of COCOA events -> paired coarse / fine graphs, for many events at once.

``build_storage`` turns a chunk of events (as read by :mod:`graphsr.io`) into PyG's collated in-memory form: one
:class:`PairData` holding every event's tensors end to end (indices local to their event) plus ``slices``, the
offsets of each event in each tensor, exactly what :class:`torch_geometric.data.InMemoryDataset` stores. Features
are assembled from awkward offsets in flat numpy / torch passes: there is no Python loop over events.
"""

from __future__ import annotations

from dataclasses import dataclass

import awkward as ak
import numpy as np
import torch
from torch_geometric.utils import coalesce

from graphsr import ops
from graphsr.detector import NUM_ECAL_LAYERS, Geometry, neighbours
from graphsr.graphs.data import PairData

from graphsr.units import MEV_PER_GEV  # noqa: E402,F401 (the unit every layer shares; importable from here too)
EDGES = ("grid", "knn", "radius")


@dataclass(frozen=True)
class GraphOptions:
    """What goes into a graph; every option changes processing, so its ``repr`` keys processed caches.

    Edges join cells of one event, within a layer and between adjacent kept layers, in both directions; the coarse
    and the fine graph are built the same way, each on its own grid.

    - ``"grid"`` (default): the cells of the same layer within a square of ``reach`` cells (``reach=1``: the 8
      around it, phi wrapping) and the cells of the adjacent kept layers that overlap the cell (one or, in a finer
      layer, ratio^2), found by index arithmetic on the (layer, ieta, iphi) grid (:mod:`graphsr.detector.neighbours`).
      Only cells present in the event are linked: unlike kNN, a cell at the rim of its cluster has fewer neighbours
      (at least its siblings in a fine graph, which always holds all children of a coarse cell) and an isolated cell
      none in its layer, instead of distant ones, so an edge always means "next to each other" and its relative
      position takes a few fixed values. Needs the regular grids of :class:`~graphsr.detector.Geometry`; cells
      known by their positions alone (:func:`neighbour_edges`) get kNN edges instead.
    - ``"knn"``: the ``k`` nearest cells of the same layer and, for each cell, the ``k_between`` nearest of each
      adjacent kept layer (linked both ways), in (eta, cos phi, sin phi): every cell gets ``k`` neighbours in its
      layer however far; works for irregular cell positions. The graphs of checkpoints written before "grid".
    - ``"radius"``: the cells of the same layer within ``radius`` in (eta, phi) units, at most ``k`` of them, and
      kNN links between layers.

    Args:
        layers: calorimeter layers to keep (default: the three ECAL layers, as the published study).
        edges: ``"grid"``, ``"knn"`` or ``"radius"``.
        k: neighbours per cell within its layer (knn, radius).
        k_between: neighbours per cell in each adjacent kept layer (knn, radius); 0 links no layers, also for grid.
        radius: neighbourhood radius in (eta, phi) for ``edges="radius"``.
        reach: in-layer reach in cells for ``edges="grid"``.
    """

    layers: tuple[int, ...] = tuple(range(NUM_ECAL_LAYERS))
    edges: str = "grid"
    k: int = 8
    k_between: int = 4
    radius: float = 0.1
    reach: int = 1

    def __post_init__(self):
        if self.edges not in EDGES:
            raise ValueError(f"edges must be one of {EDGES}, got {self.edges!r}")
        if self.reach < 1:
            raise ValueError(f"reach must be a positive number of cells, got {self.reach}")
        object.__setattr__(self, "layers", tuple(sorted(int(la) for la in self.layers)))


def _flat(array: ak.Array, dtype) -> np.ndarray:
    return np.asarray(ak.flatten(array, axis=1).to_numpy(), dtype=dtype)


def _offsets(counts: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(np.asarray(counts))]).astype(np.int64)


def neighbour_edges(eta, phi, layer, event, options: GraphOptions) -> torch.Tensor:
    """``"knn"`` or ``"radius"`` edges among cells of many events known by their positions alone: neighbours within
    each layer plus links between adjacent kept layers.

    Cells must be sorted by ``event``. Distances are taken on (eta, cos phi, sin phi), which wraps phi. Grid edges
    need the cells' grid indices (:func:`grid_edges`, :func:`cell_grid_edges`): from positions alone, ``"grid"``
    options give kNN edges (``k``, ``k_between``), as for the cell subsets of :mod:`graphsr.graphs.cells`.

    Returns:
        [2, E] edge_index (source, target) over the given cells, coalesced and sorted by source.
    """
    # float64: float32 cos / sin differ in their last bit between CPU and GPU, which would flip neighbours that
    # kNN ranks exactly (ops.knn)
    eta, phi = eta.double(), phi.double()
    points = torch.stack([eta, torch.cos(phi), torch.sin(phi)], dim=1)
    # segments = (event, layer); torch_cluster wants them sorted
    segment = event * (max(options.layers) + 1) + layer
    order = torch.argsort(segment, stable=True)
    if options.edges == "radius":
        within = ops.radius_graph(points[order], options.radius, segment[order], max_num_neighbors=options.k)
    else:
        within = ops.knn_graph(points[order], options.k, segment[order])
    parts = [order[within]]
    for inner, outer in zip(options.layers[:-1], options.layers[1:]):
        if outer != inner + 1 or options.k_between == 0:
            continue
        a, b = torch.nonzero(layer == inner).squeeze(1), torch.nonzero(layer == outer).squeeze(1)
        for query, found in ((a, b), (b, a)):
            q, f = ops.knn(points[found], points[query], options.k_between, event[found], event[query])
            parts.append(torch.stack([found[f], query[q]]))
            parts.append(torch.stack([query[q], found[f]]))
    return coalesce(torch.cat(parts, dim=1), num_nodes=len(eta))


def grid_edges(event, layer, ieta, iphi, ptr, geometry: Geometry, factor: int, options: GraphOptions):
    """The ``"grid"`` edges (:class:`GraphOptions`) of coarse cells and of their children, with indices local to
    each event.

    Args:
        event, layer, ieta, iphi: ``[Nc]`` coarse cells on ``geometry.coarsen(factor)``, sorted by ``event``.
        ptr: ``[num_events + 1]`` offsets of each event's coarse cells.
        geometry: the fine geometry.
        factor: fine cells per coarse cell per side.
        options: ``layers``, ``reach`` and ``k_between`` (0: no links between layers).

    Returns:
        ``((coarse_edges, coarse_edge_ptr), (fine_edges, fine_edge_ptr))``: [2, E] edge_index (source, target) sorted
        by source, over the coarse cells and over their ``factor^2`` children each (in the order of
        :meth:`~graphsr.detector.Geometry.children`), and the offsets of each event's edges.
    """
    coarse = geometry.coarsen(factor)
    smallest = int(coarse.n[list(options.layers)].min())
    if 2 * options.reach >= smallest:
        raise ValueError(f"grid reach {options.reach} wraps around a layer of {smallest} cells per side "
                         f"(coarse geometry, factor {factor}): use a smaller reach")
    shape = {"reach": options.reach, "between": options.k_between > 0}
    table = neighbours.neighbour_table(event, layer, ieta, iphi, coarse, **shape)
    children = neighbours.children_neighbour_table(table, event, layer, ieta, iphi, geometry, factor, **shape)
    local = np.arange(len(event)) - ptr[event]
    fine_local = (local[:, None] * factor**2 + np.arange(factor**2)).reshape(-1)
    return _table_edges(table, local, ptr), _table_edges(children, fine_local, ptr * factor**2)


def cell_grid_edges(event: torch.Tensor, layer: torch.Tensor, ieta: torch.Tensor, iphi: torch.Tensor,
                    geometry: Geometry, options: GraphOptions) -> torch.Tensor:
    """The ``"grid"`` edges (:class:`GraphOptions`: ``reach``, ``k_between``) among some cells of many events known
    by their grid indices on ``geometry``, e.g. the pyramid's hit cells: the edges the full grid's graph has between
    them, and no others (a cell none of whose neighbours is among them has none).

    Args:
        event, layer, ieta, iphi: ``[C]`` cells, sorted by event, each cell at most once per event.

    Returns:
        [2, E] edge_index (source, target) over the given cells, sorted by source, on their device.
    """
    event_np = event.cpu().numpy()
    table = neighbours.neighbour_table(event_np, layer.cpu().numpy(), ieta.cpu().numpy(), iphi.cpu().numpy(),
                                       geometry, reach=options.reach, between=options.k_between > 0)
    source, slot = np.nonzero(table >= 0)
    target = table[source, slot] + np.searchsorted(event_np, event_np)[source]  # local to its event -> global
    return torch.from_numpy(np.stack([source, target]).astype(np.int64)).to(event.device)


def _table_edges(table: np.ndarray, local: np.ndarray, ptr: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Edges (cell -> neighbour: the relation is symmetric) of a neighbour table whose rows are cells sorted by
    event (``local``: their positions in their events; ``ptr``: each event's first row), and each event's first
    edge."""
    valid = table >= 0
    count = valid.sum(axis=1)
    first = _offsets(count)
    edges = np.empty((2, int(first[-1])), dtype=np.int64)
    # sources: each row's position, count times; written as steps and summed in place, as fresh memory for a
    # temporary (np.repeat) costs more than the arithmetic
    rows = np.flatnonzero(count)
    source = edges[0]
    source.fill(0)
    source[first[rows]] = np.diff(local[rows], prepend=0)
    np.cumsum(source, out=source)
    edges[1] = table[valid]
    return torch.from_numpy(edges), torch.from_numpy(first[ptr])


def _check_children(c_event, c_ieta, c_iphi, f_ieta, f_iphi, factor: int, first_event: int) -> None:
    """Grid edges derive the fine graph from the coarse one: the fine cells must be all children of every coarse
    cell, in block order."""
    n = factor**2
    if len(f_ieta) != n * len(c_ieta):
        raise ValueError(f"{len(f_ieta)} fine cells under {len(c_ieta)} coarse cells: grid edges need the {n} "
                         "children of every coarse cell (GraphOptions(edges='knn') does not)")
    place_eta, place_phi = np.divmod(np.arange(n), factor)
    bad = ((f_ieta.reshape(-1, n) != c_ieta[:, None] * factor + place_eta)
           | (f_iphi.reshape(-1, n) != c_iphi[:, None] * factor + place_phi)).any(axis=1)
    if bad.any():
        raise ValueError(f"event {first_event + int(c_event[np.argmax(bad)])}: fine cells do not lie inside their "
                         "coarse cells; grid edges need them to (GraphOptions(edges='knn') does not)")


def _local_edges(edges: torch.Tensor, node_event: torch.Tensor, node_ptr: torch.Tensor, num_events: int):
    """Global edges (sorted by source) -> indices local to their event, and per-event edge offsets."""
    edge_event = node_event[edges[0]]
    local = edges - node_ptr[edge_event]
    return local, torch.cat([torch.zeros(1, dtype=torch.long), torch.bincount(edge_event, minlength=num_events)
                             .cumsum(0)])


def _pairs(low: ak.Array, high: ak.Array, keep_c: np.ndarray, c_ptr: np.ndarray, factor: int | None,
           geometry: Geometry) -> tuple[np.ndarray, np.ndarray, int]:
    """The (coarse, fine) cell pairs of the trees' mapping whose coarse cell is kept, as flat indices, in block
    order: children grouped by parent, parents in stored order, each parent's children by (ieta, iphi) as
    Geometry.children orders them (graphsr's simulator stores them so already); and the factor (inferred from the
    mapping when None)."""
    num_events = len(low)
    pair_count = ak.num(low.low_cell_to_high_cell_edge, axis=1).to_numpy()
    pair_event = np.repeat(np.arange(num_events), pair_count)
    pair_c = _flat(low.low_cell_to_high_cell_edge, np.int64) + c_ptr[pair_event]
    pair_f = _flat(low.high_cell_to_low_cell_edge, np.int64) + _offsets(ak.num(high.cell_layer, axis=1))[pair_event]
    if factor is None:
        factor = int(round(np.sqrt(len(pair_c) / max(len(keep_c), 1)))) or 1
    keep_pair = keep_c[pair_c]
    parent, fine = pair_c[keep_pair], pair_f[keep_pair]
    f_layer = _flat(high.cell_layer, np.int64)[fine]
    f_ieta, f_iphi = geometry.cell_at(f_layer, _flat(high.cell_eta, np.float64)[fine],
                                      _flat(high.cell_phi, np.float64)[fine])
    block = parent * factor**2 + (f_ieta % factor) * factor + f_iphi % factor
    if np.any(block[1:] < block[:-1]):
        order = np.argsort(block, kind="stable")
        parent, fine = parent[order], fine[order]
    return parent, fine, factor


def _add_particles(data: PairData, slices: dict, low: ak.Array) -> None:
    """The true particles of the events: ``num_particles`` [B], ``particle_kin`` [P, 3] (GeV, eta, phi),
    ``particle_pdgid`` [P]."""
    p_count = ak.num(low.particle_e, axis=1).to_numpy()
    offsets = torch.as_tensor(_offsets(p_count), dtype=torch.long)
    data.num_particles = torch.as_tensor(p_count, dtype=torch.long)
    data.particle_kin = torch.as_tensor(np.stack([_flat(low.particle_e, np.float32) / MEV_PER_GEV,
                                                  _flat(low.particle_eta, np.float32),
                                                  _flat(low.particle_phi, np.float32)], axis=1), dtype=torch.float32)
    data.particle_pdgid = torch.as_tensor(_flat(low.particle_pdgid, np.int64), dtype=torch.long)
    slices.update(num_particles=slices["event"], particle_kin=offsets, particle_pdgid=offsets.clone())


def _children(low: ak.Array, keep_c: np.ndarray, c_layer: np.ndarray, factor: int, geometry: Geometry):
    """Without fine cells in the file: the ``factor x factor`` children of every kept coarse cell, from the
    geometry: ``(parent, layer, ieta, iphi)``, parent as a flat coarse index."""
    coarse_geometry = geometry.coarsen(factor)
    kept = np.nonzero(keep_c)[0]
    c_ieta, c_iphi = coarse_geometry.cell_at(c_layer[kept], _flat(low.cell_eta, np.float64)[kept],
                                             _flat(low.cell_phi, np.float64)[kept])
    f_layer, f_ieta, f_iphi = (a.reshape(-1) for a in coarse_geometry.children(geometry, c_layer[kept], c_ieta,
                                                                               c_iphi))
    return np.repeat(kept, factor * factor), f_layer, f_ieta, f_iphi


def _local_neighbour_edges(eta, phi, layer, event: torch.Tensor, ptr: torch.Tensor, options: GraphOptions):
    """kNN / radius edges (:func:`neighbour_edges`) of flat cells, local to their event, with per-event offsets."""
    def t(a, dtype=torch.float32):
        return torch.as_tensor(np.ascontiguousarray(a), dtype=dtype)
    edges = neighbour_edges(t(eta), t(phi), t(layer, torch.long), event, options)
    return _local_edges(edges, event, ptr, len(ptr) - 1)


def _fine_cells(low, high, keep_c, c_ptr, c_layer, factor, geometry: Geometry, fractions: int):
    """The fine cells of the kept coarse cells, from the file's fine tree or (``high`` None) from the geometry:
    ``(factor, parent, (layer, eta, phi, ieta, iphi), values)``, parent as a flat coarse index, ``values`` the
    file's ``fine_energy`` (GeV) and, with ``fractions``, ``fine_fraction``."""
    if high is None:
        if factor is None:
            raise ValueError("factor is required to build fine cells from coarse cells alone")
        parent, f_layer, f_ieta, f_iphi = _children(low, keep_c, c_layer, factor, geometry)
        return factor, parent, (f_layer, *geometry.cell_center(f_layer, f_ieta, f_iphi), f_ieta, f_iphi), {}
    parent, fine, factor = _pairs(low, high, keep_c, c_ptr, factor, geometry)
    f_layer = _flat(high.cell_layer, np.int64)[fine]
    f_eta, f_phi = _flat(high.cell_eta, np.float64)[fine], _flat(high.cell_phi, np.float64)[fine]
    values = {"fine_energy": _flat(high.cell_e, np.float32)[fine] / MEV_PER_GEV}
    if fractions:
        values["fine_fraction"] = cell_fractions(high, fractions)[fine]
    return factor, parent, (f_layer, f_eta, f_phi, *geometry.cell_at(f_layer, f_eta, f_phi)), values


def _cell_tensors(kind: str, eta, phi, layer, cell) -> dict[str, torch.Tensor]:
    """``{kind}_pos`` [N, 2] (eta, phi), ``{kind}_layer`` and ``{kind}_cell`` (the geometry's cell id) tensors."""
    return {f"{kind}_pos": torch.as_tensor(np.stack([eta, phi], axis=1), dtype=torch.float32),
            f"{kind}_layer": torch.as_tensor(layer, dtype=torch.long),
            f"{kind}_cell": torch.as_tensor(cell, dtype=torch.long)}


def _edges(options: GraphOptions, geometry: Geometry, factor: int, first_event: int, coarse: tuple, fine: tuple):
    """The coarse and fine cell graphs' edges, local to their events, with per-event offsets: on the grid by index
    arithmetic, else kNN / radius. ``coarse``, ``fine``: the cells' (event, layer, eta, phi, ieta, iphi, offsets)."""
    if options.edges == "grid":
        (c_event, c_layer, _, _, c_ieta, c_iphi, c_ptr), (_, _, _, _, f_ieta, f_iphi, _) = coarse, fine
        _check_children(c_event, c_ieta, c_iphi, f_ieta, f_iphi, factor, first_event)
        return grid_edges(c_event, c_layer, c_ieta, c_iphi, c_ptr.numpy(), geometry, factor, options)
    return tuple(_local_neighbour_edges(eta, phi, layer, torch.as_tensor(event, dtype=torch.long), ptr, options)
                 for event, layer, eta, phi, _, _, ptr in (coarse, fine))


def build_storage(
    low: ak.Array,
    high: ak.Array | None = None,
    options: GraphOptions = GraphOptions(),
    *,
    factor: int | None = None,
    geometry: Geometry | None = None,
    first_event: int = 0,
    drop_empty: bool = False,
    fractions: int = 0,
) -> tuple[PairData, dict[str, torch.Tensor]]:
    """Collated graphs of a chunk of events.

    Args:
        low: coarse cells per event (``Low_Tree`` or ``Out_Tree``): ``cell_layer``, ``cell_eta``, ``cell_phi``,
            ``cell_e`` (MeV) and, with ``high``, the mapping pair ``low_cell_to_high_cell_edge`` /
            ``high_cell_to_low_cell_edge``; ``particle_e``/``_eta``/``_phi``/``_pdgid`` when present.
        high: fine cells per event (``High_Tree``), or None when only coarse cells exist: the fine nodes are then
            the ``factor x factor`` children of each coarse cell, placed by ``geometry``, with no ``fine_energy``.
        options: layers and edges.
        factor: fine cells per coarse cell per side; inferred from the mapping when ``high`` is given.
        geometry: the fine geometry (default COCOA's), used for cell ids and, without ``high``, fine cell centres.
        first_event: entry number of the chunk's first event in its file (stored as ``event``).
        drop_empty: leave out events with no kept cells.
        fractions: with ``K`` > 0, store ``coarse_fraction`` [Nc, K] and (with ``high``) ``fine_fraction`` [Nf, K]:
            the fraction of each cell's noise-free energy that each of the event's first ``K`` particles deposited
            (:func:`cell_fractions`; the trees' ``particle_to_node_idx`` / ``_weight``), the targets of a
            particle-flow model's incidence matrix.

    Returns:
        ``(data, slices)`` as stored by :class:`~torch_geometric.data.InMemoryDataset`.
    """
    geometry = geometry or Geometry.cocoa()
    num_events = len(low)
    c_count = ak.num(low.cell_layer, axis=1).to_numpy()
    c_ptr = _offsets(c_count)
    c_event = np.repeat(np.arange(num_events), c_count)
    c_layer = _flat(low.cell_layer, np.int64)
    keep_c = np.isin(c_layer, options.layers)

    factor, parent, (f_layer, f_eta, f_phi, f_ieta, f_iphi), fine_values = _fine_cells(
        low, high, keep_c, c_ptr, c_layer, factor, geometry, fractions)
    coarse_geometry = geometry.coarsen(factor)

    # renumber kept coarse cells; every kept coarse cell has its children in the fine list
    new_index = np.cumsum(keep_c) - 1
    c_event, kept_c = c_event[keep_c], np.nonzero(keep_c)[0]
    f_event = c_event[new_index[parent]]
    nf = np.bincount(f_event, minlength=num_events)
    nc_ptr, nf_ptr = _offsets(np.bincount(c_event, minlength=num_events)), _offsets(nf)
    fine_parent = new_index[parent] - nc_ptr[f_event]

    c_eta, c_phi = (_flat(values, np.float64)[kept_c] for values in (low.cell_eta, low.cell_phi))
    c_layer = c_layer[kept_c]
    c_ieta, c_iphi = coarse_geometry.cell_at(c_layer, c_eta, c_phi)

    t = lambda a, dtype=torch.float32: torch.as_tensor(np.ascontiguousarray(a), dtype=dtype)  # noqa: E731
    c_ptr_t, f_ptr_t = t(nc_ptr, torch.long), t(nf_ptr, torch.long)
    (coarse_edges, coarse_edge_ptr), (fine_edges, fine_edge_ptr) = _edges(
        options, geometry, factor, first_event, (c_event, c_layer, c_eta, c_phi, c_ieta, c_iphi, c_ptr_t),
        (f_event, f_layer, f_eta, f_phi, f_ieta, f_iphi, f_ptr_t))

    data = PairData(event=torch.arange(first_event, first_event + num_events),
                    **_cell_tensors("coarse", c_eta, c_phi, c_layer, coarse_geometry.cell_id(c_layer, c_ieta, c_iphi)),
                    coarse_energy=t(_flat(low.cell_e, np.float32)[kept_c] / MEV_PER_GEV),
                    coarse_batch=torch.zeros(len(c_layer), dtype=torch.long), coarse_edge_index=coarse_edges,
                    **_cell_tensors("fine", f_eta, f_phi, f_layer, geometry.cell_id(f_layer, f_ieta, f_iphi)),
                    fine_parent=t(fine_parent, torch.long), fine_edge_index=fine_edges)
    slices = {key: c_ptr_t if key.startswith("coarse_") else f_ptr_t for key in data.keys()}
    slices.update(coarse_edge_index=coarse_edge_ptr, fine_edge_index=fine_edge_ptr,
                  event=torch.arange(num_events + 1))
    for key, values in fine_values.items():  # fine_energy, fine_fraction: where the file has fine cells
        data[key], slices[key] = t(values), f_ptr_t
    if {"particle_e", "particle_eta", "particle_phi", "particle_pdgid"} <= set(low.fields):
        _add_particles(data, slices, low)
    if fractions:
        data.coarse_fraction, slices["coarse_fraction"] = t(cell_fractions(low, fractions)[kept_c]), c_ptr_t
    if drop_empty:
        data, slices = select_events(data, slices, torch.nonzero(torch.as_tensor(nf) > 0).squeeze(1))
    return data, slices


def cell_fractions(tree: ak.Array, k: int) -> np.ndarray:
    """``[N, k]`` the fraction of each cell's noise-free energy that each of its event's first ``k`` particles
    deposited, cells of all events flat in stored order, from COCOA's ``particle_to_node_idx`` (per event and
    particle, the indices of its cells in the event's cell list) and ``particle_to_node_weight`` (those fractions).
    Later particles and cells no particle reached count nowhere: their rows sum to less than 1."""
    cells_per_particle = ak.num(tree.particle_to_node_idx, axis=2)
    particles = ak.num(cells_per_particle, axis=1).to_numpy()
    per_particle = _flat(cells_per_particle, np.int64)
    event = np.repeat(np.arange(len(particles)), particles)
    local_particle = np.arange(len(per_particle)) - np.repeat(_offsets(particles)[:-1], particles)
    cell_ptr = _offsets(ak.num(tree.cell_layer, axis=1).to_numpy())
    # COCOA stores the cell indices as floats (graphsr.io.branches)
    cell = np.asarray(ak.flatten(tree.particle_to_node_idx, axis=None), dtype=np.int64) + \
        np.repeat(cell_ptr[event], per_particle)
    particle = np.repeat(local_particle, per_particle)
    weight = np.asarray(ak.flatten(tree.particle_to_node_weight, axis=None), dtype=np.float32)
    first = particle < k
    out = np.zeros((cell_ptr[-1], k), dtype=np.float32)
    np.add.at(out, (cell[first], particle[first]), weight[first])
    return out


def _segment_index(ptr: np.ndarray, events: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions (along the cat dim) of the given events' segments, and each segment's length."""
    start, count = ptr[events], ptr[events + 1] - ptr[events]
    return np.arange(count.sum()) + np.repeat(start - (np.cumsum(count) - count), count), count


def select_events(data: PairData, slices: dict[str, torch.Tensor], events):
    """The collated storage of a subset of events (indices stay local to their events).

    Gathers with numpy (single-threaded: many small gathers, where torch's threads cost more than they save) and
    computes the positions once for all keys that share their offsets.
    """
    events = torch.as_tensor(events).numpy()
    out, out_slices, positions = PairData(), {}, {}
    for key, ptr in slices.items():
        shared = (ptr.data_ptr(), ptr.numel())
        if shared not in positions:
            index, count = _segment_index(ptr.numpy(), events)
            positions[shared] = index, torch.from_numpy(_offsets(count))
        index, out_slices[key] = positions[shared]
        value = data[key]
        out[key] = torch.from_numpy(np.take(value.numpy(), index, axis=data.__cat_dim__(key, value)))
    return out, out_slices


def concat_storages(parts: list[tuple[PairData, dict[str, torch.Tensor]]]):
    """Join collated storages of consecutive chunks into one."""
    if len(parts) == 1:
        return parts[0]
    data, slices = PairData(), {}
    for key in parts[0][1]:
        value = parts[0][0][key]
        data[key] = torch.cat([d[key] for d, _ in parts], dim=parts[0][0].__cat_dim__(key, value))
        shifts = np.cumsum([0] + [int(s[key][-1]) for _, s in parts[:-1]])
        slices[key] = torch.cat([parts[0][1][key][:1]] + [s[key][1:] + int(shift) for (_, s), shift
                                                           in zip(parts, shifts)])
    return data, slices
