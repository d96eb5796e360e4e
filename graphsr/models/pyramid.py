"""The sparse two-stage "pyramid" generator: first which children are hit, then their energies, level by level.

The dense generator (:class:`~graphsr.models.sr3.SR3Network`) generates every child of every coarse cell, empty
ones included, so its cost grows with the candidate cells. The pyramid splits each super-resolution level into:

1. occupancy (:mod:`graphsr.models.occupancy`): for every parent, which of its ``factor**2`` children carry
   energy (truth above ``pyramid.threshold``), generated on the parents' graph;
2. energies on the hit children only: the graph holds the hits (edges among them, built like the dataset's) and
   the parents that have one (edges among them; the backbone's cross-attention reads each hit's parent and the
   parent's neighbours), and the dense path's :class:`~graphsr.models.sr3.EnergyModel` and
   :class:`~graphsr.models.sr3.SR3Network` run on it: each parent's hit children share its total on the simplex.

Cost then grows with the parents (stage 1) and the hits (stage 2). A factor-4 super-resolution runs as two factor-2
levels (``pyramid.levels: [2, 2]``): coarse -> intermediate (the detector's geometry coarsened by 2) -> fine; the
hit cells of one level, with their generated energies, are the parents of the next. Each level is its own
:class:`PyramidLevel` (one class for every level, one set of weights per level: the levels differ in cell size, in
what a parent is and in how its total is known).

Totals. The first level's parents are the measured coarse cells: as in the dense path, their total is generated
from its posterior given the measurement (``posterior`` mode) or is the measurement (``conserving``). A parent that
stage 1 leaves without a hit child gets no energy and is left out of stage 2: with the default threshold (hit:
truth > 0) such a parent is exactly empty in truth; with a positive threshold the pyramid drops at most
``factor**2 x threshold`` per parent. Parents of later levels are generated, noise-free cells: their children share
exactly the generated energy (``conserving``), and their noise-realisation target is zero and not trained. Such a
parent above ``factor**2 x threshold`` must have a child above the threshold, so its stage 1 gives it one (its
most likely child) where a draw has none (:func:`~graphsr.models.occupancy.at_least_one_hit`): no generated
parent above that bound loses its energy between levels.

Training is teacher-forced: each level's parents, occupancy and hit graph come from the truth.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch_geometric.utils import subgraph

from graphsr import ops
from graphsr.config import Config
from graphsr.detector import Geometry
from graphsr.diffusion import Denoiser, get_sampler
from graphsr.graphs import GraphOptions
from graphsr.graphs.build import cell_grid_edges, neighbour_edges
from graphsr.graphs.data import PairData
from graphsr.models.occupancy import Occupancy
from graphsr.models.sr3 import EnergyModel, SR3Network, add_inputs, node_weights, state_batch

FINE = Geometry.cocoa()


def measured_parents(batch, factor: int) -> PairData:
    """The coarse cells of a (dense) batch as the first level's parents, with the network's inputs."""
    parents = PairData(**{key: batch[key] for key in ("coarse_pos", "coarse_layer", "coarse_cell", "coarse_energy",
                                                       "coarse_edge_index", "coarse_batch")})
    parents.num_graphs = int(batch.num_graphs)
    return add_inputs(parents, factor)


def candidates(parents: PairData, parent_factor: int, child_factor: int):
    """(layer, ieta, iphi) of every child of every parent in the geometry of ``child_factor``: ``[Np, scale**2]``
    each, children in :meth:`~graphsr.detector.Geometry.children` order."""
    parent_geometry = FINE.coarsen(parent_factor)
    return parent_geometry.children(FINE.coarsen(child_factor), *parent_geometry.cell_index(parents.coarse_cell))


def hit_graph(parents: PairData, hits: torch.Tensor, parent_factor: int, child_factor: int,
              options: GraphOptions) -> PairData:
    """The graph of one level over its hit children alone.

    Args:
        parents: the level's parents (coarse nodes: positions, layers, cell ids, energies, edges, inputs).
        hits: ``[Np, scale**2]`` bool, which children of each parent are hit (:func:`candidates` order).
        parent_factor, child_factor: granularity of parents and children (fine cells per side).
        options: how fine edges are built (as the dataset's graphs): ``"grid"`` links the hits that are grid
            neighbours (:func:`~graphsr.graphs.build.cell_grid_edges`), the others kNN among the hits.

    Returns:
        PairData with the hit children as fine nodes (``fine_parent``, ``fine_cell`` in the children's geometry,
        ``batch``; edges among the hits of each event only) and, as coarse nodes, the parents that have a hit child
        (edges among them): nothing in it grows with the empty cells.
    """
    geometry = FINE.coarsen(child_factor)
    layer, ieta, iphi = candidates(parents, parent_factor, child_factor)
    parent, slot = hits.nonzero(as_tuple=True)  # row-major: children grouped by parent, parents (and events) in order
    layer, ieta, iphi = layer[parent, slot], ieta[parent, slot], iphi[parent, slot]
    eta, phi = geometry.cell_center(layer, ieta, iphi)
    kept = hits.any(dim=1)  # parents without a hit child get no energy: they leave the graph
    graph = PairData(**{key: parents[key][kept] for key in parents.keys()
                        if key.startswith("coarse_") and key != "coarse_edge_index"})
    graph.coarse_edge_index = subgraph(kept, parents.coarse_edge_index, relabel_nodes=True,
                                       num_nodes=kept.numel())[0]
    graph.fine_pos = torch.stack([eta, phi], dim=1).float()
    graph.fine_layer, graph.fine_cell = layer, geometry.cell_id(layer, ieta, iphi)
    graph.fine_parent = (torch.cumsum(kept, 0) - 1)[parent]
    graph.batch = parents.coarse_batch[parent]
    if options.edges == "grid":  # the grid graph's edges among the hits: what the dense path's graph has
        graph.fine_edge_index = cell_grid_edges(graph.batch, layer, ieta, iphi, geometry, options)
    else:
        graph.fine_edge_index = neighbour_edges(graph.fine_pos[:, 0], graph.fine_pos[:, 1], layer, graph.batch,
                                                options)
    graph.num_graphs = parents.num_graphs
    return graph


def next_parents(graph: PairData, energy: torch.Tensor, factor: int) -> PairData:
    """The hit children of a level, with their energies, as the parents of the next level."""
    parents = PairData(coarse_pos=graph.fine_pos, coarse_layer=graph.fine_layer, coarse_cell=graph.fine_cell,
                       coarse_energy=energy, coarse_edge_index=graph.fine_edge_index, coarse_batch=graph.batch)
    parents.num_graphs = graph.num_graphs
    return add_inputs(parents, factor)


def _cell_keys(graph_index: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
    return graph_index * FINE.num_cells + cell


def truth_at(batch, factor: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The true energy of every cell at granularity ``factor`` under the batch's fine cells: sorted keys
    (event * cells + cell id) and energies, sums of their fine cells."""
    cell = batch.fine_cell if factor == 1 else FINE.parent_id(FINE.coarsen(factor), batch.fine_cell)
    keys, owner = torch.unique(_cell_keys(batch.batch, cell), return_inverse=True)
    return keys, batch.fine_energy.new_zeros(keys.numel()).index_add_(0, owner, batch.fine_energy)


def lookup(keys: torch.Tensor, values: torch.Tensor, query: torch.Tensor, where: str) -> torch.Tensor:
    """``values`` at the ``query`` keys (``keys`` sorted); raises naming ``where`` when a key is absent."""
    position = torch.searchsorted(keys, query).clamp_max(max(keys.numel() - 1, 0))
    if query.numel() and (keys.numel() == 0 or not torch.equal(keys[position], query)):
        raise ValueError(f"{where}: cells outside the input's fine cells")
    return values[position]


class PyramidLevel(nn.Module):
    """One level: stage 1 (:class:`~graphsr.models.occupancy.Occupancy` on the parents) and stage 2 (the dense
    path's network on the hit children), with the standardisation of this level's log-shares.

    Args:
        config: the run's config.
        parent_factor, child_factor: granularity of the level's parents and children (fine cells per side).
    """

    def __init__(self, config: Config, parent_factor: int, child_factor: int):
        super().__init__()
        self.parent_factor, self.child_factor = parent_factor, child_factor
        scale = parent_factor // child_factor
        self.occupancy = Occupancy(config, scale * scale, FINE.coarsen(parent_factor))
        d = config.diffusion
        self.energy = Denoiser(SR3Network(config.model), parameterisation=d.parameterisation,
                               sigma_data=d.sigma_data, schedule=d.schedule)
        self.register_buffer("share_stats", torch.tensor([0.0, 1.0]))  # mean, std (EnergyModel)

    @property
    def energy_model(self) -> EnergyModel:
        mean, std = self.share_stats.tolist()
        return EnergyModel("shares", mean, std)


class Pyramid(nn.Module):
    """The pyramid generator: one :class:`PyramidLevel` per factor of ``config.pyramid.levels``, coarsest first.

    ``loss`` trains every level at once (teacher-forced), ``sample`` generates fine energies level by level; both take
    the usual (dense) batches of :class:`~graphsr.graphs.PairData`, so the datasets and loaders are unchanged.

    Args:
        config: the run's config (``pyramid``, ``model`` and ``diffusion`` sections).
        options: how hit graphs are built (those of the dataset's graphs).
    """

    draws_whole_batch = False  # each level draws its own noise (trained on one process only)

    def __init__(self, config: Config, options: GraphOptions = GraphOptions()):
        super().__init__()
        p = config.pyramid
        self.options = options
        if config.diffusion.parameterisation == "regression":
            raise ValueError("the pyramid generator needs a diffusion parameterisation (edm, eps or v), not regression")
        if not p.levels or any(int(f) < 2 for f in p.levels):
            raise ValueError(f"pyramid.levels must list factors of at least 2, got {p.levels}")
        self.factor, self.threshold = math.prod(p.levels), p.threshold
        bounds = [self.factor // math.prod(p.levels[:i]) for i in range(len(p.levels) + 1)]
        self.levels = nn.ModuleList(PyramidLevel(config, a, b) for a, b in zip(bounds[:-1], bounds[1:]))

    def check_factor(self, factor: int) -> None:
        if factor != self.factor:
            raise ValueError(f"the data merge {factor}x{factor} fine cells per coarse cell; pyramid.levels multiply "
                             f"to {self.factor}")

    def teacher_forced(self, batch):
        """For each level, from the truth of a (dense) batch: ``(parents, occupancy bits, hit graph with
        fine_energy)``; the parents of the first level are the measured coarse cells."""
        parents = measured_parents(batch, self.factor)
        for level in self.levels:
            keys, energy = truth_at(batch, level.child_factor)
            layer, ieta, iphi = candidates(parents, level.parent_factor, level.child_factor)
            cells = FINE.coarsen(level.child_factor).cell_id(layer, ieta, iphi)
            truth = lookup(keys, energy, _cell_keys(parents.coarse_batch.unsqueeze(1), cells), "training batch")
            bits = truth > self.threshold
            graph = hit_graph(parents, bits, level.parent_factor, level.child_factor, self.options)
            graph.fine_energy = truth[bits]
            yield parents, bits, graph
            parents = next_parents(graph, graph.fine_energy, level.child_factor)

    def fit(self, batch) -> None:
        """Fit each level's log-share standardisation on training events (a dense batch)."""
        for level, (_, _, graph) in zip(self.levels, self.teacher_forced(batch)):
            model = EnergyModel.fit("shares", graph)
            level.share_stats.copy_(torch.tensor([model.mean, model.std]))

    def loss(self, loss_fn, batch, generator: torch.Generator | None, factor: int,
             coarse_weight: float = 1.0, **dense_only) -> torch.Tensor:
        """Sum over levels of the occupancy loss and the energy loss (each averaged per event), teacher-forced.

        ``loss_fn``: the run's :class:`~graphsr.diffusion.DiffusionLoss`; ``coarse_weight`` weights the first
        level's totals as in the dense path (later levels have none to learn). The dense generator's
        ``energy_model``, ``sigma`` and ``noise`` do not apply: each level has its own standardisation
        (:meth:`fit`) and draws its own noise."""
        self.check_factor(factor)
        total = 0.0
        for i, (level, (parents, bits, graph)) in enumerate(zip(self.levels, self.teacher_forced(batch))):
            total = total + level.occupancy.loss(loss_fn, parents, bits, generator)
            fine, coarse = level.energy_model.encode(graph)
            weight = node_weights(graph, coarse_weight if i == 0 else 0.0)
            total = total + loss_fn(level.energy, torch.cat([fine, coarse]).unsqueeze(1), batch=state_batch(graph),
                                    num_graphs=graph.num_graphs, generator=generator, data=graph, node_weight=weight)
        return total

    @torch.no_grad()
    def sample(self, batch, factor: int, *, sigmas: torch.Tensor, generator: torch.Generator,
               sampler: str = "heun", mode: str = "posterior", record_steps: bool = False,
               occupancy_sigmas: torch.Tensor | None = None, **sampler_options) -> dict:
        """Generate the fine energies of a (dense) batch, level by level.

        Args:
            batch: events (ensemble copies as separate events), every child of every coarse cell as fine nodes.
            factor: the batch's fine cells per coarse cell per side.
            sigmas, generator, sampler, sampler_options: the sampler's noise levels, noise and settings (both
                stages of every level).
            mode: ``posterior`` or ``conserving``, for the first level's totals.
            record_steps: also return the last level's decoded estimate after every step of its sampler.
            occupancy_sigmas: stage 1's noise levels, when not ``sigmas`` (``pyramid.occupancy_steps``).

        Returns:
            ``energy`` ([Nf] GeV, the batch's fine cells: zero where no hit), ``log_shares`` ([Nf]: each hit's
            log-share of its coarse cell's total, the sum of its ancestors' log-shares over the levels; -inf where no
            hit), ``totals`` ([Nc]: the first level's totals, zero for a coarse cell without a hit; ``energy`` is
            ``exp(log_shares)`` times its coarse cell's total), ``levels`` (per level: ``parents``, ``bits``,
            ``graph`` and its ``energy``) and optionally ``trajectory`` ([steps, Nf]).
        """
        self.check_factor(factor)
        parents, levels, trajectory = measured_parents(batch, self.factor), [], []
        totals = batch.coarse_energy.new_zeros(batch.coarse_energy.numel())
        for i, level in enumerate(self.levels):
            # a generated parent (later levels) above scale^2 x threshold has a child above the threshold
            required = (None if i == 0 else
                        parents.coarse_energy > (level.parent_factor // level.child_factor) ** 2 * self.threshold)
            bits = level.occupancy.sample(parents, sigmas if occupancy_sigmas is None else occupancy_sigmas,
                                          generator, sampler, required=required, **sampler_options)
            graph = hit_graph(parents, bits, level.parent_factor, level.child_factor, self.options)
            nodes = state_batch(graph)
            x = torch.randn(nodes.numel(), 1, device=sigmas.device, generator=generator) * sigmas[0]
            steps = []
            callback = (lambda info: steps.append(info["denoised"][:, 0])) if record_steps else None
            target = get_sampler(sampler)(level.energy, x, sigmas, batch=nodes, callback=callback,
                                          generator=generator, disable=True, num_graphs=graph.num_graphs,
                                          extra_args={"data": graph,
                                                      "prepared": level.energy.net.backbone.prepare(graph)},
                                          **sampler_options)[:, 0]
            num_fine = graph.fine_parent.numel()
            level_mode = mode if i == 0 else "conserving"
            energy = level.energy_model.decode(graph, target[:num_fine], target[num_fine:], level_mode)
            log_share = ops.segment_log_softmax(target[:num_fine] * level.energy_model.std, graph.fine_parent,
                                                graph.coarse_energy.numel())
            kept = bits.any(dim=1).nonzero().squeeze(1)  # the parent of each of the graph's coarse nodes
            if i == 0:
                totals[kept] = level.energy_model.totals(graph, target[num_fine:], level_mode)
            else:
                log_share = log_share + ancestry[kept[graph.fine_parent]]
            ancestry = log_share
            levels.append({"parents": parents, "bits": bits, "graph": graph, "energy": energy})
            trajectory = [level.energy_model.decode(graph, s[:num_fine], s[num_fine:], level_mode) for s in steps]
            parents = next_parents(graph, energy, level.child_factor)
        graph = levels[-1]["graph"]
        into = lookup(*torch.sort(_cell_keys(batch.batch, batch.fine_cell)), _cell_keys(graph.batch, graph.fine_cell),
                      "pyramid output")

        def dense(values, empty=0.0):
            return batch.fine_pos.new_full((batch.fine_cell.numel(),), empty).index_copy_(0, into, values)

        out = {"energy": dense(levels[-1]["energy"]), "log_shares": dense(ancestry, -math.inf), "totals": totals,
               "levels": levels}
        if record_steps:
            out["trajectory"] = torch.stack([dense(t) for t in trajectory])
        return out
