"""A learned particle-flow model on one cell graph per event: how many particles, and each one's energy, direction
and class.

Built like the published particle-flow model of arXiv 2409.16052 (its public code: pflow/), on graphsr's backbone:

1. Encoder: a :class:`~graphsr.nn.CellTransformer` over the event's cells (coarse, fine truth or super-resolved),
   conditioned (adaLN) on the event's cell energy sum and cell count. Besides its energy, each cell's position in
   the event's frame (relative to the energy-weighted axis) is an input, so the model knows where a cell lies in
   its event but not where the event lies in phi.
2. Seeds: a score per cell, trained to mark each true particle's nearest cell of the seed layer (ECAL2). Each event's
   N_max best-scored cells seed its particle queries; a cell beaten by a neighbour ranks lower (soft
   non-maximum suppression: one seed per shower first).
3. Kinematics: the seeded queries (a learned embedding per rank plus the seed's features) pass decoder blocks
   (:class:`~graphsr.nn.Block`: self-attention among an event's queries, cross-attention to its cells, MLP). An
   incidence matrix, for each cell a softmax over the queries and an "unassigned" slot (from features, the cell's
   distance to each query's centre, and each query's existence probability), splits the cell's energy among the
   particles: a particle's energy is its share of the cell energies (times a learned correction in [0.82, 1.22]),
   its eta / phi the energy-weighted mean of its cells. Each query also gives an existence logit and an electron /
   photon class.
4. Cardinality: an MLP on the mean- and max-pooled cells, the decoded queries and the sum of seed probabilities ->
   logits of 0..N_max particles. Predictions keep the argmax count of queries with the highest existence.
5. Training (:func:`set_loss`): cross-entropy on the count and on the seeds; queries are matched to the true
   particles by the Hungarian algorithm (:func:`hungarian_match`), the matched queries learn energy, direction and
   class, all queries whether they are matched (existence), and the unmatched ones give their energy up. When the
   cells carry their true particle fractions (``CellGraph.fraction``), the incidence matrix learns them as the
   published model's does (:func:`incidence_loss`): a matched query each cell's fraction of its particle, the
   unassigned slot the noise.

Nothing depends on where the event is in phi, or on the order of the cells.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn
from torch_geometric.utils import to_dense_batch

from graphsr import ops
from graphsr.detector.geometry import SEED_LAYER
from graphsr.graphs.cells import CellGraph
from graphsr.nn import Block, CellTransformer
from graphsr.nn.transformer import wrap_phi
from graphsr.reco.config import ParticleFlowConfig

PDG_CLASSES = (11, 22)     # class index -> PDG id: electron, photon
ENERGY_SCALE = 0.01        # GeV: cell energies enter as asinh(E / ENERGY_SCALE)
DIRECTION_SCALE = 0.01     # the unit of eta / phi errors in the loss and the matching cost
MIN_WEIGHT = 1e-3          # GeV: a particle with less cell energy has no meaningful direction
LOCAL_SCALE = 0.1          # unit of cell positions in the event's frame (a particle's cells lie within ~0.05)
SEED_WEIGHT = 10.0         # weight of the seed cells in the seed loss
SUPPRESSION = 5.0          # subtracted from the seed score (a logit) of cells that a neighbour beats


def particle_classes(pdgid: torch.Tensor) -> torch.Tensor:
    """PDG ids -> class indices of :data:`PDG_CLASSES` (electrons and positrons are one class)."""
    pdgid = pdgid.abs()
    classes = torch.full_like(pdgid, -1)
    for i, code in enumerate(PDG_CLASSES):
        classes[pdgid == code] = i
    if (classes < 0).any():
        unknown = sorted(set(pdgid[classes < 0].tolist()))
        raise ValueError(f"particles of PDG ids {unknown}: the particle-flow model knows {PDG_CLASSES} only")
    return classes


def hungarian_match(cost: torch.Tensor, rows, cols) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The assignment of least total cost per event (``scipy.optimize.linear_sum_assignment``).

    Args:
        cost: ``[B, R, C]`` cost of pairing row r with column c in event b (e.g. queries x true particles).
        rows, cols: ``[B]`` rows and columns of each event that take part (the first ones); an event pairs
            ``min(rows, cols)`` of them.

    Returns:
        ``(event, row, col)``: LongTensors of the pairs, on ``cost``'s device.
    """
    values = cost.detach().float().cpu().numpy()
    rows, cols = np.asarray(rows).tolist(), np.asarray(cols).tolist()
    pairs = [(b, *linear_sum_assignment(values[b, :r, :c])) for b, (r, c) in enumerate(zip(rows, cols)) if r and c]
    if not pairs:
        empty = torch.zeros(0, dtype=torch.long, device=cost.device)
        return empty, empty, empty
    event = np.concatenate([np.full(len(r), b) for b, r, _ in pairs])
    row = np.concatenate([r for _, r, _ in pairs])
    col = np.concatenate([c for _, _, c in pairs])
    return tuple(torch.as_tensor(a, dtype=torch.long, device=cost.device) for a in (event, row, col))


def padded_particles(count: torch.Tensor, values: torch.Tensor, max_count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Particles of a batch (``values`` [P, ...], ``count`` [B] per event, consecutive) -> ``[B, M, ...]`` padded
    with zeros and the ``[B, M]`` mask of real ones, M = min(largest count, max_count); extra particles are left out."""
    first = torch.cumsum(count, 0) - count
    width = int(count.clamp(max=max_count).max()) if count.numel() else 0
    slot = torch.arange(width, device=count.device)
    mask = slot < count.clamp(max=max_count).unsqueeze(1)
    index = (first.unsqueeze(1) + slot).clamp(max=max(values.size(0) - 1, 0))
    padded = values[index] if values.size(0) else values.new_zeros((len(count), width, *values.shape[1:]))
    return padded * mask.view(*mask.shape, *([1] * (values.dim() - 1))), mask


class ParticleFlow(nn.Module):
    """Cells of a batch of events (:class:`~graphsr.graphs.CellGraph`) -> particle count and N_max particle
    candidates (see the module docstring).

    Args:
        config: sizes (:class:`~graphsr.reco.config.ParticleFlowConfig`).
    """

    def __init__(self, config: ParticleFlowConfig = ParticleFlowConfig()):
        super().__init__()
        w, q = config.width, config.max_particles
        self.max_particles, self.width = q, w
        self.event_embedding = nn.Sequential(nn.Linear(2, w), nn.SiLU(), nn.Linear(w, w))
        # short CPU trainings learn much faster from open gates than from adaLN-zero's closed ones
        self.encoder = CellTransformer(4, None, width=w, depth=config.depth, heads=config.heads,
                                       context_tokens=config.context_tokens, cond_dim=w, dropout=config.dropout,
                                       gate=1.0)
        self.seed_score = nn.Linear(w, 1)
        self.queries = nn.Parameter(torch.randn(q, w) / math.sqrt(w))
        self.seed_input = nn.Linear(w + 1, w)
        self.decoder = nn.ModuleList(Block(w, config.heads, w, cross=True, context_tokens=0, dropout=config.dropout,
                                           edge_dim=0, gate=1.0) for _ in range(config.decoder_depth))
        self.decoder_norm = nn.LayerNorm(w)
        self.cardinality = nn.Sequential(nn.Linear((2 + q) * w + 1, 2 * w), nn.SiLU(), nn.Linear(2 * w, w),
                                         nn.SiLU(), nn.Linear(w, q + 1))
        self.cell_key, self.query_key, self.unassigned = nn.Linear(w, w), nn.Linear(w, w), nn.Linear(w, 1)
        self.query_centre = nn.Linear(w, 2)  # shift from the seed, LOCAL_SCALE units
        self.log_radius = nn.Parameter(torch.tensor(math.log(0.5)))  # of a particle's cells, LOCAL_SCALE units
        self.query_out = nn.Linear(w, 4)  # existence logit, energy correction, class logits (2)
        for layer in (self.query_centre, self.query_out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, cells: CellGraph) -> dict[str, torch.Tensor]:
        """Returns ``cardinality`` [B, N_max + 1] logits, ``seed_score`` [N] (logit: the cell is the one nearest to
        a particle in the seed layer), per query [B, N_max]: ``seeded`` (the event had a cell to seed it),
        ``existence`` (logit), ``energy`` (GeV), ``eta``, ``phi``, ``class_logits`` [B, N_max, 2]; and
        ``log_incidence`` [N, N_max + 1]: the log of each cell's shares of the queries and the unassigned slot."""
        b, q, w = cells.num_graphs, self.max_particles, self.width
        energy, batch = cells.energy, cells.batch
        total = ops.scatter(energy, batch, b, "sum")
        count = ops.scatter(torch.ones_like(energy), batch, b, "sum")
        local, axis_eta, axis_phi = event_frame(cells)
        x = torch.cat([torch.asinh(energy / ENERGY_SCALE).unsqueeze(1) / 5,
                       (energy / total.clamp_min(MIN_WEIGHT)[batch]).unsqueeze(1), local / LOCAL_SCALE], 1)
        cond = self.event_embedding(torch.stack([torch.log1p(total.clamp_min(0)) / 4, torch.log1p(count) / 6], 1))
        h = self.encoder(x, cells, cond)

        # each event's N_max most seed-like cells seed its queries, in order of their score, lowered for cells that
        # a neighbour beats (soft non-maximum suppression: one seed per shower, unless little else looks like one;
        # two particles may share a coarse cell or sit in adjacent ones)
        score = self.seed_score(h).squeeze(1)
        source, target = cells.edge_index
        beaten = ops.scatter((score[source] > score[target]).float(), target, len(score), "max")
        dense, present = to_dense_batch(score.detach() - beaten * SUPPRESSION, batch, fill_value=-torch.inf,
                                        batch_size=b)
        if dense.size(1) < q:
            dense = F.pad(dense, (0, q - dense.size(1)), value=-torch.inf)
        top, slot = dense.topk(q, dim=1)
        valid = torch.isfinite(top)
        first = torch.cumsum(count.long(), 0) - count.long()
        seed = torch.where(valid, first.unsqueeze(1) + slot, 0).reshape(-1)
        seed_features = torch.cat([h[seed], torch.sigmoid(score[seed]).unsqueeze(1)], 1) if len(h) else \
            h.new_zeros(b * q, w + 1)
        z = self.queries.repeat(b, 1) + self.seed_input(seed_features) * valid.view(-1, 1)

        # the queries read each other and every cell of their event
        device = energy.device
        q_slot = torch.arange(q, device=device)
        q_first = (torch.arange(b, device=device) * q).view(b, 1, 1)
        query_edges = torch.stack([(q_first + q_slot.view(1, q, 1)).expand(b, q, q).reshape(-1),
                                   (q_first + q_slot.view(1, 1, q)).expand(b, q, q).reshape(-1)])
        cross_edges = torch.stack([torch.arange(energy.numel(), device=device).repeat_interleave(q),
                                   (batch.unsqueeze(1) * q + q_slot).reshape(-1)])
        query_batch = torch.arange(b, device=device).repeat_interleave(q)
        for block in self.decoder:
            z = block(z, query_edges, None, query_batch, cond, b, coarse=(h, cross_edges, None))
        z = self.decoder_norm(z)
        soft_count = ops.scatter(torch.sigmoid(score), batch, b).unsqueeze(1) / q
        cardinality = self.cardinality(torch.cat([ops.scatter(h, batch, b, "mean"), ops.scatter(h, batch, b, "max"),
                                                  z.view(b, q * w), soft_count], 1))

        # incidence: each cell's energy shared among the queries of its event (and an unassigned slot), from
        # features and from the cell's distance to each query's centre (its seed, moved)
        seed_local = local[seed].view(b, q, 2) * valid.unsqueeze(-1) if len(h) else local.new_zeros(b, q, 2)
        centre = (seed_local / LOCAL_SCALE + self.query_centre(z).view(b, q, 2))[batch]      # [N, q, 2]
        distance = (local.unsqueeze(1) / LOCAL_SCALE - centre).square().sum(-1)
        logits = (self.cell_key(h).unsqueeze(1) * self.query_key(z).view(b, q, w)[batch]).sum(-1) / math.sqrt(w) - \
            distance * torch.exp(-2 * self.log_radius) / 2
        out = self.query_out(z).view(b, q, 4)
        # a query takes cells in proportion to its existence probability: candidates that are no particle take none
        logits = (logits + F.logsigmoid(out[..., 0])[batch]).masked_fill(~valid[batch], -torch.inf)
        incidence = torch.cat([logits, self.unassigned(h)], 1)
        share, log_incidence = incidence.softmax(1)[:, :q], incidence.log_softmax(1)
        particle_energy = ops.scatter(share * energy.unsqueeze(1), batch, b) * torch.exp(0.2 * torch.tanh(out[..., 1]))
        weight = share * energy.clamp_min(0).unsqueeze(1)
        norm = ops.scatter(weight, batch, b).clamp_min(MIN_WEIGHT)
        # energy-weighted means of the particle's cells, in the event's frame: no wrap-around inside an event
        offset = torch.stack([ops.scatter(weight * local[:, i:i + 1], batch, b) for i in range(2)], -1) / \
            norm.unsqueeze(-1)
        return {"cardinality": cardinality, "seed_score": score, "seeded": valid,
                "existence": out[..., 0].masked_fill(~valid, -1e4), "energy": particle_energy,
                "eta": axis_eta.unsqueeze(1) + offset[..., 0], "phi": wrap_phi(axis_phi.unsqueeze(1) + offset[..., 1]),
                "class_logits": out[..., 2:], "log_incidence": log_incidence}

    @staticmethod
    def particles(out: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        """Predicted particles: the argmax count of each event (at most its seeded queries), taken from its queries
        of highest existence.

        Returns numpy arrays: ``count`` [B]; ``event``, ``energy`` (GeV), ``eta``, ``phi``, ``pdgid`` [R], particles
        of an event consecutive, by decreasing existence.
        """
        count = torch.minimum(out["cardinality"].argmax(1), out["seeded"].sum(1))
        rank = out["existence"].argsort(1, descending=True)
        keep = torch.arange(rank.size(1), device=rank.device) < count.unsqueeze(1)
        event = torch.arange(rank.size(0), device=rank.device).unsqueeze(1).expand_as(rank)[keep]
        query = rank[keep]
        pdgid = torch.as_tensor(PDG_CLASSES, device=rank.device)[out["class_logits"][event, query].argmax(-1)]
        result = {"count": count, "event": event, "pdgid": pdgid,
                  **{key: out[key][event, query] for key in ("energy", "eta", "phi")}}
        return {k: v.detach().cpu().numpy() for k, v in result.items()}


def event_frame(cells: CellGraph) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cell positions relative to their event's energy-weighted axis (``[N, 2]``: eta, wrapped phi), and the axis
    (``[B]`` eta, ``[B]`` phi): where a cell lies in its event, whatever the event's phi."""
    b, batch, e_pos, pos = cells.num_graphs, cells.batch, cells.energy.clamp_min(0), cells.pos
    axis_eta = ops.scatter(e_pos * pos[:, 0], batch, b) / ops.scatter(e_pos, batch, b).clamp_min(MIN_WEIGHT)
    axis_phi = torch.atan2(ops.scatter(e_pos * pos[:, 1].sin(), batch, b),
                           ops.scatter(e_pos * pos[:, 1].cos(), batch, b))
    local = torch.stack([pos[:, 0] - axis_eta[batch], wrap_phi(pos[:, 1] - axis_phi[batch])], 1)
    return local, axis_eta, axis_phi


def seed_targets(cells: CellGraph, count: torch.Tensor, kinematics: torch.Tensor, max_count: int,
                 seed_layer: int = SEED_LAYER) -> torch.Tensor:
    """``[N]`` 1 for each true particle's nearest cell (in eta, phi) of the seed layer, 0 elsewhere."""
    pos, present = to_dense_batch(cells.pos, cells.batch, batch_size=cells.num_graphs)
    layer, _ = to_dense_batch(cells.layer, cells.batch, batch_size=cells.num_graphs)
    target, mask = padded_particles(count, kinematics, max_count)
    distance = torch.hypot(pos[:, None, :, 0] - target[:, :, None, 1],
                           wrap_phi(pos[:, None, :, 1] - target[:, :, None, 2]))
    distance = distance.masked_fill(~(present & (layer == seed_layer)).unsqueeze(1), torch.inf)
    nearest, slot = distance.min(-1) if distance.size(-1) else (distance.new_full(mask.shape, torch.inf), None)
    labels = torch.zeros_like(cells.energy)
    found = mask & torch.isfinite(nearest)
    if found.any():
        first = torch.cumsum(present.sum(1), 0) - present.sum(1)
        labels[(first.unsqueeze(1) + slot)[found]] = 1.0
    return labels


def set_loss(out: dict[str, torch.Tensor], cells: CellGraph, count: torch.Tensor, kinematics: torch.Tensor,
             classes: torch.Tensor, incidence_weight: float = 0.0) -> tuple[torch.Tensor, dict[str, float]]:
    """Cardinality cross-entropy, the seed cells' cross-entropy (:func:`seed_targets`), the set loss of the
    Hungarian-matched queries and, when the cells carry their particles' energy fractions (``cells.fraction``), the
    incidence loss (:func:`incidence_loss`) times ``incidence_weight``.

    Args:
        out: :meth:`ParticleFlow.forward` of ``cells``.
        count: ``[B]`` true particles per event; kinematics: ``[P, 3]`` (energy GeV, eta, phi) and classes ``[P]``
            (:func:`particle_classes`), particles of an event consecutive. Counts above N_max are learned as N_max,
            with the event's first N_max particles.

    Returns:
        the loss and its parts (floats).
    """
    q = out["energy"].size(1)
    target, mask = padded_particles(count, torch.cat([kinematics, classes.unsqueeze(1).to(kinematics)], 1), q)
    t_energy, t_eta, t_phi, t_class = target.unbind(-1)
    t_energy = t_energy.clamp_min(MIN_WEIGHT)
    # cost of query i for particle j: relative energy error + angular distance in DIRECTION_SCALE units
    d_eta = out["eta"].unsqueeze(2) - t_eta.unsqueeze(1)
    d_phi = wrap_phi(out["phi"].unsqueeze(2) - t_phi.unsqueeze(1))
    cost = (out["energy"].unsqueeze(2) - t_energy.unsqueeze(1)).abs() / t_energy.unsqueeze(1) + \
        torch.hypot(d_eta, d_phi) / DIRECTION_SCALE
    event, query, particle = hungarian_match(cost, [q] * len(count), mask.sum(1).cpu())

    parts = {"cardinality": F.cross_entropy(out["cardinality"], count.clamp(max=q))}
    # seed cells are rare (one per particle among tens to hundreds of cells): weigh them up
    parts["seed"] = F.binary_cross_entropy_with_logits(out["seed_score"], seed_targets(cells, count, kinematics, q),
                                                       pos_weight=out["seed_score"].new_tensor(SEED_WEIGHT))
    matched = torch.zeros_like(out["existence"])
    matched[event, query] = 1.0
    parts["existence"] = F.binary_cross_entropy_with_logits(out["existence"], matched)
    # energy the unmatched queries took, as a fraction of what all queries took: spurious particles
    taken = out["energy"].clamp_min(0)
    parts["unmatched_energy"] = ((taken * (1 - matched)).sum(1) / taken.sum(1).clamp_min(MIN_WEIGHT)).mean()
    if len(event):
        relative = (out["energy"][event, query] - t_energy[event, particle]) / t_energy[event, particle]
        parts["energy"] = F.smooth_l1_loss(relative / 0.05, torch.zeros_like(relative))
        parts["direction"] = F.smooth_l1_loss(d_eta[event, query, particle] / DIRECTION_SCALE,
                                              torch.zeros_like(relative)) + \
            F.smooth_l1_loss(d_phi[event, query, particle] / DIRECTION_SCALE, torch.zeros_like(relative))
        parts["class"] = F.cross_entropy(out["class_logits"][event, query], t_class[event, particle].long())
    if cells.fraction is not None and incidence_weight > 0:
        parts["incidence"] = incidence_weight * incidence_loss(out["log_incidence"], cells, event, query, particle)
    loss = sum(parts.values())
    return loss, {k: float(v.detach()) for k, v in parts.items()}


def incidence_loss(log_incidence: torch.Tensor, cells: CellGraph, event: torch.Tensor, query: torch.Tensor,
                   particle: torch.Tensor) -> torch.Tensor:
    """How far each cell's split among the queries is from the true split of its energy among the particles, as
    the published model's incidence loss: the KL divergence of the predicted shares from the true fractions,
    averaged over cells weighted by their energy.

    The query matched to particle j (``event, query, particle``: :func:`hungarian_match`) should take the fraction
    of the cell's noise-free energy that j deposited (``cells.fraction``); unmatched queries none; the unassigned
    slot the rest (noise, particles beyond N_max). In super-resolved cells the fractions are the truth's at the
    same fine cell, so energy generated where no particle deposited any belongs to nobody.

    Args:
        log_incidence: ``[N, q + 1]`` :meth:`ParticleFlow.forward`'s ``log_incidence``.
        cells: the cells, with ``fraction`` ``[N, K]`` (particle columns in the event's order).
    """
    n, q = log_incidence.size(0), log_incidence.size(1) - 1
    column = torch.full((cells.num_graphs, q), -1, dtype=torch.long, device=log_incidence.device)
    column[event, query] = particle
    column = column[cells.batch]                                                     # [N, q]
    known = (column >= 0) & (column < cells.fraction.size(1))
    target = torch.where(known, cells.fraction.gather(1, column.clamp(0, cells.fraction.size(1) - 1)), 0.0)
    target = torch.cat([target, (1 - target.sum(1, keepdim=True)).clamp_min(0)], 1)
    # a query with no seed has share 0 (log -inf); clamping keeps its term finite where a particle is matched to it
    kl = (torch.xlogy(target, target) - target * log_incidence.clamp_min(-30)).sum(1)
    weight = cells.energy.clamp_min(0)
    return (weight * kl).sum() / weight.sum().clamp_min(MIN_WEIGHT) if n else log_incidence.sum() * 0
