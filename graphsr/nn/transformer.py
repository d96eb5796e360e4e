"""The graph-transformer backbone, on a coarse-conditioned fine graph or on a single cell graph.

:class:`GraphTransformer` (the super-resolution network's) runs a coarse-graph encoder and fine-graph blocks that
read the coarse cells; :class:`CellTransformer` runs the same blocks on one set of cells per event (coarse cells,
fine cells or super-resolved cells), e.g. for particle reconstruction.

Per fine block (pre-norm, each sub-layer gated, DiT-style adaptive LayerNorm "adaLN-zero" from a conditioning
vector per event, e.g. the noise level):

1. self-attention over the fine graph (neighbours within a layer and in adjacent layers);
2. cross-attention to the coarse cells: the fine cell's parent and the parent's coarse neighbours;
3. event context: attention to a few learned pooled tokens of the whole event (long range, linear cost);
4. an MLP.

Geometry enters only through relative positions (delta eta, delta phi wrapped, delta layer) on edges, each fine
cell's position inside its parent (in fine-cell units), its layer and its |eta|-dependent eta: the network is
unchanged by rotations in phi and treats every event in a batch independently.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from graphsr import ops
from graphsr.detector.geometry import ETA_MAX, Geometry
from graphsr.nn import fused_attention
from graphsr.nn.attention import EventContext, GraphAttention, distinct_rows
from graphsr.nn.compiled import run_compiled

EDGE_DIM = 3  # delta eta, delta phi (in fine cells of the target's layer), delta layer
NUM_LAYERS = 6


def wrap_phi(dphi: torch.Tensor) -> torch.Tensor:
    return torch.remainder(dphi + math.pi, 2 * math.pi) - math.pi


def relative_positions(cell_size: torch.Tensor, pos_source: torch.Tensor, layer_source: torch.Tensor,
                       pos_target: torch.Tensor, layer_target: torch.Tensor) -> torch.Tensor:
    """Edge features ``[E, 3]``: (delta eta, delta phi) in cells of the target's layer (``cell_size`` per layer, in
    eta units; phi cells scaled to the same units), and delta layer."""
    size = cell_size.index_select(0, layer_target).unsqueeze(1)
    delta = pos_source - pos_target
    delta = torch.stack([delta[:, 0], wrap_phi(delta[:, 1]) * (ETA_MAX / math.pi)], dim=1) / size
    return torch.cat([delta, (layer_source - layer_target).unsqueeze(1).float()], dim=1)


def fine_cell_size(geometry: Geometry | None = None) -> torch.Tensor:
    """``[layers]`` fine cell size in eta of each layer of ``geometry`` (default COCOA's): the unit of edge features."""
    geometry = geometry or Geometry.cocoa()
    return 2 * ETA_MAX / torch.as_tensor(geometry.n, dtype=torch.float32)


def shared_rows(cond: torch.Tensor, share: bool = True) -> torch.Tensor:
    """``cond`` [B, F], or its first row [1, F] when every row is the same (a sampler's one noise level for all
    events): the modulations are then computed once and broadcast over the nodes instead of gathered per node."""
    if share and cond.size(0) > 1 and bool((cond == cond[:1]).all()):
        return cond[:1]
    return cond


def softmax_ranks(module: nn.Module, segments: dict) -> dict:
    """:func:`graphsr.ops.segment_rank` of each ``{name: (index, dim_size)}`` where the pure-torch softmax will run
    (compiled code, or no torch_scatter) and ``module.rank_tables`` is on; a name is left out where its table would
    hold over 8 times the rows (very uneven segments: the scatter maximum is then cheaper)."""
    if not module.rank_tables or not (module.compile_backbone or not ops.has_torch_scatter()):
        return {}
    ranks = {}
    for name, (index, dim_size) in segments.items():
        rank = ops.segment_rank(index)
        if dim_size * rank[1] <= 8 * max(index.numel(), 1):
            ranks[name] = rank
    return ranks


def attention_orders(module: nn.Module, segments: dict) -> dict:
    """:func:`graphsr.nn.fused_attention.csr` of each ``{name: (target, num_targets)}`` where the fused attention
    kernel will run: ``module.fused_attention`` on and the kernel available for the module's device and dtype."""
    attention = next((m for m in module.modules() if isinstance(m, GraphAttention)), None)
    if not module.fused_attention or attention is None or \
            not fused_attention.available(module.fine_cell_size, attention.heads, attention.head_dim):
        return {}
    return {name: fused_attention.csr(index, size) for name, (index, size) in segments.items()}


def context_graphs(module: nn.Module, csr: dict, batch: torch.Tensor, num_graphs: int) -> dict:
    """``{"context": fused_attention.event_graphs(...)}`` where the fused kernel runs (``csr``, from
    :func:`attention_orders`, not empty) and the module's blocks have an event context; else ``{}``."""
    tokens = next((m.tokens for m in module.modules() if isinstance(m, EventContext)), 0)
    return {"context": fused_attention.event_graphs(batch, num_graphs, tokens)} if csr and tokens else {}


def per_node(rows: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
    """Per-event rows [B, F] -> per node [N, F]; one row [1, F] stays one row (it broadcasts)."""
    return rows.index_select(0, batch) if rows.size(0) > 1 else rows


class NoiseEmbedding(nn.Module):
    """Scalar conditioning (c_noise per event) -> vector: fixed Fourier features, then an MLP."""

    def __init__(self, width: int, frequencies: int = 32, max_frequency: float = 64.0):
        super().__init__()
        self.register_buffer("freqs", torch.logspace(0, math.log10(max_frequency), frequencies) * math.pi)
        self.mlp = nn.Sequential(nn.Linear(2 * frequencies, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:
        angle = c_noise.float().unsqueeze(-1) * self.freqs
        return self.mlp(torch.cat([angle.cos(), angle.sin()], dim=-1))


class Block(nn.Module):
    """Transformer block on graphs with gated, adaptively normalised sub-layers (see the module docstring).

    ``edge_dim``: edge features of both attentions (0: none, e.g. between nodes without positions). ``gate``: initial
    gate of every sub-layer (0, adaLN-zero: the block starts as the identity, as diffusion models like; 1: a plain
    pre-norm block, which short trainings learn faster from).
    """

    def __init__(self, width: int, heads: int, cond_dim: int, *, cross: bool, context_tokens: int,
                 dropout: float = 0.0, edge_dim: int = EDGE_DIM, gate: float = 0.0):
        super().__init__()
        self.self_attention = GraphAttention(width, heads, edge_dim, dropout=dropout)
        self.cross_attention = GraphAttention(width, heads, edge_dim, dropout=dropout) if cross else None
        self.context = EventContext(width, heads, context_tokens) if context_tokens else None
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(4 * width, width))
        self.num_sublayers = 2 + (cross is True) + (context_tokens > 0)
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        # shift, scale, gate per sub-layer; zero-initialised (with gate=0) so every block starts as the identity
        self.modulation = nn.Linear(cond_dim, 3 * self.num_sublayers * width)
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)
        if gate:
            with torch.no_grad():
                self.modulation.bias.view(self.num_sublayers, 3, width)[:, 2] = gate

    def embed_edges(self, edge_attr, cross_attr=None):
        """Edge embeddings of the self- and cross-attention (they depend on the graph alone); each attribute is
        ``[E, edge_dim]`` or ``(distinct [R, edge_dim], index [E])`` (:meth:`GraphAttention.embed_edges`)."""
        def embed(attention, attr):
            return attention.embed_edges(*attr) if isinstance(attr, tuple) else attention.embed_edges(attr)
        cross = embed(self.cross_attention, cross_attr) if self.cross_attention is not None else None
        return embed(self.self_attention, edge_attr), cross

    def forward(self, x, edge_index, edge_embedding, batch, cond, num_graphs, coarse=None, ranks=None, csr=None):
        """x [N, W]; edge_embedding: of the self-attention (:meth:`embed_edges`); cond [num_graphs, cond_dim],
        or [1, cond_dim] when every event has the same (e.g. a sampler's noise level): the modulation is then one
        row for all nodes; coarse: (h_coarse, cross_edge_index, cross_edge_embedding); ranks: the
        :func:`softmax_ranks` of the ``"self"``, ``"cross"`` and ``"context"`` softmaxes; csr: the
        :func:`attention_orders` of the ``"self"`` and ``"cross"`` attentions and the :func:`context_graphs` as
        ``"context"`` (each optional)."""
        ranks, csr = ranks or {}, csr or {}
        mods = per_node(self.modulation(cond), batch).chunk(3 * self.num_sublayers, dim=-1)
        sub = iter(range(self.num_sublayers))

        def modulated(i):
            return self.norm(x) * (1 + mods[3 * i + 1]) + mods[3 * i], mods[3 * i + 2]

        h, gate = modulated(next(sub))
        x = x + gate * self.self_attention(h, h, edge_index, edge_embedding, ranks.get("self"), csr.get("self"))
        if self.cross_attention is not None:
            h, gate = modulated(next(sub))
            h_coarse, cross_index, cross_embedding = coarse
            x = x + gate * self.cross_attention(h_coarse, h, cross_index, cross_embedding, ranks.get("cross"),
                                                     csr.get("cross"))
        if self.context is not None:
            h, gate = modulated(next(sub))
            x = x + gate * self.context(h, batch, num_graphs, ranks.get("context"), csr.get("context"))
        h, gate = modulated(next(sub))
        return x + gate * self.mlp(h)


class GraphTransformer(nn.Module):
    """Coarse-conditioned fine-graph transformer: ``[Nf, fine_in]`` fine features -> ``[Nf, out]`` (and, with
    ``coarse_out``, ``[Nc, coarse_out]`` per coarse node, read from the coarse encoder's state and the mean final
    state of the node's children).

    Args:
        fine_in, coarse_in: input features per fine / coarse node.
        out: outputs per fine node.
        coarse_out: outputs per coarse node (0: none).
        width, depth, coarse_depth, heads: sizes of the fine blocks and the coarse encoder.
        context_tokens: pooled event tokens per block (0: none).
        cond_dim: size of the per-event conditioning vector (e.g. the noise embedding).
        geometry: the fine geometry (cell sizes for the relative positions; default COCOA's).
    """

    # the exact fast paths (same function, same weights; the bench's reference turns them off): edge networks on
    # the distinct relative positions, one modulation row when every event has the same conditioning, softmax
    # maxima over dense tables (softmax_ranks), graph attention as one fused CPU kernel (attention_orders)
    per_offset = True
    share_modulation = True
    rank_tables = True
    fused_attention = True
    compile_backbone = False  # graphsr.nn.use_compile

    def __init__(self, fine_in: int, coarse_in: int, out: int, width: int = 128, depth: int = 4,
                 coarse_depth: int = 2, heads: int = 4, context_tokens: int = 4, cond_dim: int | None = None,
                 dropout: float = 0.0, geometry: Geometry | None = None, coarse_out: int = 0):
        super().__init__()
        cond_dim = cond_dim or width
        self.register_buffer("fine_cell_size", fine_cell_size(geometry))
        self.fine_input = nn.Linear(fine_in + 3, width)  # + position inside the parent (2), eta (1)
        self.coarse_input = nn.Linear(coarse_in + 1, width)  # + eta
        self.layer_embedding = nn.Embedding(NUM_LAYERS, width)
        self.coarse_blocks = nn.ModuleList(Block(width, heads, cond_dim, cross=False, context_tokens=0,
                                                 dropout=dropout) for _ in range(coarse_depth))
        self.blocks = nn.ModuleList(Block(width, heads, cond_dim, cross=True, context_tokens=context_tokens,
                                          dropout=dropout) for _ in range(depth))
        self.final_norm = nn.LayerNorm(width, elementwise_affine=False)
        self.final_modulation = nn.Linear(cond_dim, 2 * width)
        self.head = nn.Linear(width, out)
        zero_init = [self.final_modulation, self.head]
        if coarse_out:
            self.coarse_modulation = nn.Linear(cond_dim, 2 * width)
            self.coarse_head = nn.Linear(2 * width, coarse_out)
            zero_init += [self.coarse_modulation, self.coarse_head]
        for layer in zero_init:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def relative(self, pos_source, layer_source, pos_target, layer_target):
        """Edge features: (delta eta, delta phi) in fine cells of the target's layer, and delta layer."""
        return relative_positions(self.fine_cell_size, pos_source, layer_source, pos_target, layer_target)

    def edge_features(self, pos_source, layer_source, pos_target, layer_target, edge_index):
        """:meth:`relative` of the edges ``edge_index`` (source, target) between two sets of cells."""
        source, target = edge_index
        return self.relative(pos_source.index_select(0, source), layer_source.index_select(0, source),
                             pos_target.index_select(0, target), layer_target.index_select(0, target))

    def cross_edges(self, data):
        """Coarse -> fine edges: each fine cell's parent and the parent's coarse neighbours."""
        parent = data.fine_parent
        num_coarse = data.coarse_layer.size(0)
        children = torch.bincount(parent, minlength=num_coarse)
        order = torch.argsort(parent, stable=True)
        first_child = torch.cumsum(children, 0) - children
        source, target = data.coarse_edge_index
        repeats = children.index_select(0, target)
        edge = torch.repeat_interleave(torch.arange(source.numel(), device=parent.device), repeats)
        offset = torch.arange(edge.numel(), device=parent.device) - \
            (torch.cumsum(repeats, 0) - repeats).index_select(0, edge)
        fine = order.index_select(0, first_child.index_select(0, target.index_select(0, edge)) + offset)
        fine_all = torch.arange(parent.numel(), device=parent.device)
        return torch.stack([torch.cat([parent, source.index_select(0, edge)]), torch.cat([fine_all, fine])])

    def prepare(self, data) -> dict:
        """Everything that depends on the events' cells alone, not on the inputs or the conditioning: the position
        of each fine cell in its parent, the cross edges and every block's edge embeddings. A sampler calls it once
        and passes the result to :meth:`forward` at every step (with the same weights: embeddings are weights')."""
        f_pos, c_pos = data.fine_pos, data.coarse_pos
        f_layer, c_layer = data.fine_layer, data.coarse_layer
        c_dst, f_dst = data.coarse_edge_index[1], data.fine_edge_index[1]
        cross = self.cross_edges(data)
        # index_select, not x[index]: a few times faster on CPU, and the graph work is a tenth of a training step
        c_attr = self.edge_features(c_pos, c_layer, c_pos, c_layer, data.coarse_edge_index)
        f_attr = self.edge_features(f_pos, f_layer, f_pos, f_layer, data.fine_edge_index)
        cross_attr = self.edge_features(c_pos, c_layer, f_pos, f_layer, cross)
        if self.per_offset:  # the edge networks on the distinct relative positions only
            c_attr, f_attr, cross_attr = (distinct_rows(a) for a in (c_attr, f_attr, cross_attr))
        num_fine, num_coarse = f_layer.numel(), c_layer.numel()
        segments = {"coarse": (c_dst, num_coarse), "fine": (f_dst, num_fine), "cross": (cross[1], num_fine)}
        csr = attention_orders(self, segments)
        ranks = softmax_ranks(self, {} if csr else {**segments, "context": (data.batch, data.num_graphs)})
        parent = data.fine_parent
        inside = self.relative(c_pos.index_select(0, parent), c_layer.index_select(0, parent), f_pos, f_layer)
        return {"inside": inside[:, :2],
                "cross": cross, "ranks": ranks, "csr": csr,
                "coarse_edges": [block.embed_edges(c_attr)[0] for block in self.coarse_blocks],
                "fine_edges": [block.embed_edges(f_attr, cross_attr) for block in self.blocks]}

    @staticmethod
    def repeat_prepared(prepared: dict, copies: int, num_fine: int, num_coarse: int) -> dict:
        """:meth:`prepare` of ``copies`` copies of a batch (``num_fine`` / ``num_coarse`` nodes), batched one after
        the other, from the batch's own: an ensemble's graph work done once."""
        def tiled(terms, parts=None):
            """Per-edge terms of every copy; ``parts``: the edges come in two parts (cross edges: each fine cell's
            parent, then the parent's neighbours), each tiled on its own, as the copies' batch orders them."""
            if terms is None:
                return None
            if isinstance(terms, tuple):  # (table, index): the table serves every copy
                return terms[0], tiled(terms[1], parts)
            if parts is not None:
                return torch.cat([tiled(terms[:parts]), tiled(terms[parts:])])
            return terms.repeat(copies, *[1] * (terms.dim() - 1))

        cross = prepared["cross"]
        offsets = torch.tensor([[num_coarse], [num_fine]], device=cross.device)  # nodes per copy
        copy = torch.arange(copies, device=cross.device)
        cross = torch.cat([part.repeat(1, copies) + copy.repeat_interleave(part.size(1)) * offsets
                           for part in (cross[:, :num_fine], cross[:, num_fine:])], dim=1)
        # a row's rank in its segment is the same in every copy
        ranks = {name: (tiled(rank, num_fine if name == "cross" else None), width)
                 for name, (rank, width) in prepared["ranks"].items()}
        csr = {name: fused_attention.tile_csr(*orders, copies, num_fine if name == "cross" else None)
               for name, orders in prepared.get("csr", {}).items()}
        return {"inside": prepared["inside"].repeat(copies, 1), "cross": cross, "ranks": ranks, "csr": csr,
                "coarse_edges": [tiled(terms) for terms in prepared["coarse_edges"]],
                "fine_edges": [(tiled(own), tiled(other, num_fine)) for own, other in prepared["fine_edges"]]}

    def forward(self, x_fine: torch.Tensor, x_coarse: torch.Tensor, data, cond: torch.Tensor,
                prepared: dict | None = None) -> torch.Tensor:
        """x_fine [Nf, fine_in], x_coarse [Nc, coarse_in], data: a (batched) PairData, cond [num_graphs, cond_dim];
        prepared: :meth:`prepare` of ``data`` (computed here when not given)."""
        prepared = self.prepare(data) if prepared is None else prepared
        # the event context's graphs: per batch (not in prepare, whose result an ensemble tiles), outside the
        # compiled code (their sizes depend on the data)
        prepared = {**prepared, "csr": {**prepared.get("csr", {}),
                                        **context_graphs(self, prepared.get("csr"), data.batch, cond.size(0))}}
        args = (self, x_fine, x_coarse, data, shared_rows(cond, self.share_modulation), prepared, cond.size(0))
        return run_compiled(GraphTransformer._forward, *args) if self.compile_backbone else \
            GraphTransformer._forward(*args)

    def _forward(self, x_fine, x_coarse, data, cond, prepared, num_graphs):
        batch, coarse_batch = data.batch, data.coarse_batch
        f_pos, c_pos = data.fine_pos, data.coarse_pos
        h = self.fine_input(torch.cat([x_fine, prepared["inside"], f_pos[:, :1] / ETA_MAX], dim=1)) + \
            self.layer_embedding(data.fine_layer)
        hc = self.coarse_input(torch.cat([x_coarse, c_pos[:, :1] / ETA_MAX], dim=1)) + \
            self.layer_embedding(data.coarse_layer)
        ranks, csr = prepared.get("ranks", {}), prepared.get("csr", {})
        coarse_ranks = {"self": ranks.get("coarse")}
        fine_ranks = {"self": ranks.get("fine"), "cross": ranks.get("cross"), "context": ranks.get("context")}
        fine_csr = {"self": csr.get("fine"), "cross": csr.get("cross"), "context": csr.get("context")}
        for block, edges in zip(self.coarse_blocks, prepared["coarse_edges"]):
            hc = block(hc, data.coarse_edge_index, edges, coarse_batch, cond, num_graphs, ranks=coarse_ranks,
                       csr={"self": csr.get("coarse")})
        cross = prepared["cross"]
        for block, (edges, cross_edges) in zip(self.blocks, prepared["fine_edges"]):
            h = block(h, data.fine_edge_index, edges, batch, cond, num_graphs, coarse=(hc, cross, cross_edges),
                      ranks=fine_ranks, csr=fine_csr)
        shift, scale = per_node(self.final_modulation(cond), batch).chunk(2, dim=-1)
        out = self.head(self.final_norm(h) * (1 + scale) + shift)
        if not hasattr(self, "coarse_head"):
            return out
        shift, scale = per_node(self.coarse_modulation(cond), coarse_batch).chunk(2, dim=-1)
        children = ops.scatter(h, data.fine_parent, hc.size(0), "mean")
        state = torch.cat([self.final_norm(hc), self.final_norm(children)], dim=1)
        return out, self.coarse_head(state * (1 + scale.repeat(1, 2)) + shift.repeat(1, 2))


class CellTransformer(nn.Module):
    """Graph transformer over one set of cells per event: ``[N, cell_in]`` cell features -> ``[N, out]``, or the
    final ``[N, width]`` features when ``out`` is None.

    The blocks of :class:`GraphTransformer`'s fine graph without the cross-attention: self-attention along the
    cells' edges (relative positions as edge features), event context, an MLP, each adaptively normalised from a
    conditioning vector per event. Cell eta and layer are inputs; the output does not change under a rotation in
    phi, and a permutation of the cells permutes it.

    Args:
        cell_in: input features per cell (eta is added here).
        out: outputs per cell (None: return the normalised features).
        width, depth, heads: sizes of the blocks.
        context_tokens: pooled event tokens per block (0: none).
        cond_dim: size of the per-event conditioning vector (default ``width``).
        gate: initial gate of the blocks' sub-layers (:class:`Block`).
        geometry: the fine geometry (cell sizes, the unit of relative positions; default COCOA's).
    """

    per_offset = True  # as GraphTransformer's
    share_modulation = True
    rank_tables = True
    fused_attention = True
    compile_backbone = False

    def __init__(self, cell_in: int, out: int | None = None, width: int = 64, depth: int = 3, heads: int = 4,
                 context_tokens: int = 4, cond_dim: int | None = None, dropout: float = 0.0, gate: float = 0.0,
                 geometry: Geometry | None = None):
        super().__init__()
        cond_dim = cond_dim or width
        self.register_buffer("fine_cell_size", fine_cell_size(geometry))
        self.cell_input = nn.Linear(cell_in + 1, width)  # + eta
        self.layer_embedding = nn.Embedding(NUM_LAYERS, width)
        self.blocks = nn.ModuleList(Block(width, heads, cond_dim, cross=False, context_tokens=context_tokens,
                                          dropout=dropout, gate=gate) for _ in range(depth))
        self.final_norm = nn.LayerNorm(width, elementwise_affine=False)
        self.final_modulation = nn.Linear(cond_dim, 2 * width)
        self.head = nn.Linear(width, out) if out else None
        for layer in (self.final_modulation, self.head):
            if layer is not None:
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, cells, cond: torch.Tensor) -> torch.Tensor:
        """x [N, cell_in]; cells: a :class:`~graphsr.graphs.CellGraph` (pos, layer, edge_index, batch);
        cond [num_graphs, cond_dim]."""
        source, target = cells.edge_index
        pos, layer = cells.pos, cells.layer
        attr = relative_positions(self.fine_cell_size, pos.index_select(0, source), layer.index_select(0, source),
                                  pos.index_select(0, target), layer.index_select(0, target))
        if self.per_offset:
            attr = distinct_rows(attr)
        csr = attention_orders(self, {"self": (target, x.size(0))})
        csr.update(context_graphs(self, csr, cells.batch, cond.size(0)))
        ranks = softmax_ranks(self, {} if csr else {"self": (target, x.size(0)), "context": (cells.batch,
                                                                                                cond.size(0))})
        args = (self, x, pos, layer, cells.edge_index, cells.batch, attr, shared_rows(cond, self.share_modulation),
                cond.size(0), ranks, csr)
        return run_compiled(CellTransformer._forward, *args) if self.compile_backbone else \
            CellTransformer._forward(*args)

    def _forward(self, x, pos, layer, edge_index, batch, attr, cond, num_graphs, ranks, csr):
        h = self.cell_input(torch.cat([x, pos[:, :1] / ETA_MAX], dim=1)) + self.layer_embedding(layer)
        for block in self.blocks:
            h = block(h, edge_index, block.embed_edges(attr)[0], batch, cond, num_graphs, ranks=ranks, csr=csr)
        shift, scale = per_node(self.final_modulation(cond), batch).chunk(2, dim=-1)
        h = self.final_norm(h) * (1 + scale) + shift
        return h if self.head is None else self.head(h)
