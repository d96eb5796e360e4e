"""Attention on graphs: along edges (sparse), from nodes to per-event tokens, and from nodes to their event's tokens.

Everything is sparse over the batch's edge lists (memory linear in edges), with the softmax per target node done
by :func:`graphsr.ops.segment_softmax`; nothing is quadratic in the number of cells.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from graphsr import ops
from graphsr.nn import fused_attention


def distinct_rows(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(distinct [R, F], index [E])`` with ``distinct[index] == rows`` exactly (rows [E, F] of float32). By hashing
    where the fused attention kernel's library is loaded (CPU; distinct rows in order of first appearance), else by a
    sort (sorted rows)."""
    if rows.size(0) == 0:
        return rows, torch.zeros(0, dtype=torch.long, device=rows.device)
    hashed = fused_attention.distinct_rows(rows)
    if hashed is not None:
        return hashed
    # one sort of a 64-bit mix of each row's bits; checked, and in the (unlikely) case of a collision the exact
    # column-by-column way
    bits = rows.contiguous().view(torch.int32).long()
    key = torch.zeros(rows.size(0), dtype=torch.long, device=rows.device)
    for column in bits.unbind(1):
        key = key * 1_000_003 + column
    _, index = torch.unique(key, return_inverse=True)
    distinct = _first_of_each(rows, index)
    if not torch.equal(distinct.index_select(0, index), rows):
        index = torch.zeros(rows.size(0), dtype=torch.long, device=rows.device)
        for column in rows.unbind(1):  # the key stays below the number of rows: no overflow
            values, code = torch.unique(column, return_inverse=True)
            _, index = torch.unique(index * values.numel() + code, return_inverse=True)
        distinct = _first_of_each(rows, index)
    return distinct, index


def _first_of_each(rows: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """The first row of each group ``index`` (0..R-1, every group present)."""
    count = int(index.max()) + 1
    first = torch.full((count,), rows.size(0), dtype=torch.long, device=rows.device).scatter_reduce_(
        0, index, torch.arange(rows.size(0), device=rows.device), "amin")
    return rows.index_select(0, first)


class GraphAttention(nn.Module):
    """Multi-head attention of target nodes over their incoming edges, with edge features added to keys and values.

    Args:
        width: features of targets and output; source_width: features of sources (default ``width``).
        heads: attention heads (``width`` divisible by it).
        edge_dim: edge features (0: none).
    """

    def __init__(self, width: int, heads: int, edge_dim: int = 0, source_width: int | None = None,
                 dropout: float = 0.0):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads, self.head_dim = heads, width // heads
        self.query = nn.Linear(width, width)
        self.key_value = nn.Linear(source_width or width, 2 * width)
        self.edge = nn.Sequential(nn.Linear(edge_dim, width), nn.SiLU(), nn.Linear(width, 2 * width)) \
            if edge_dim else None
        self.out = nn.Linear(width, width)
        self.dropout = nn.Dropout(dropout)

    def embed_edges(self, edge_attr: torch.Tensor | None, index: torch.Tensor | None = None):
        """The terms added to keys and values (None without edge_dim). They depend on the graph alone: a sampler
        computes them once and reuses them at every step.

        ``edge_attr`` [E, edge_dim] -> [E, 2 width]; or, with ``index`` [E], ``edge_attr`` holds the distinct
        features [R, edge_dim] (:func:`distinct_rows`) and the terms are ``(table [R, 2 width], index)``: on a cell
        grid the relative positions of edges take a few dozen values, so the network runs on those alone."""
        if self.edge is None:
            return None
        return self.edge(edge_attr) if index is None else (self.edge(edge_attr), index)

    def forward(self, x_source: torch.Tensor, x_target: torch.Tensor, edge_index: torch.Tensor,
                edge_embedding: torch.Tensor | tuple | None = None, rank: tuple | None = None,
                csr: tuple | None = None) -> torch.Tensor:
        """x_source [Ns, F_s], x_target [Nt, width], edge_index [2, E] (source, target), edge_embedding from
        :meth:`embed_edges` (per edge or per distinct feature), rank: :func:`graphsr.ops.segment_rank` of the
        targets (optional: a faster softmax in compiled code), csr: :func:`graphsr.nn.fused_attention.csr` of the
        targets (optional: the fused CPU kernel, where :func:`~graphsr.nn.fused_attention.available`) ->
        [Nt, width].

        Targets without incoming edges get zeros.
        """
        source, target = edge_index
        num_edges, h, d = source.numel(), self.heads, self.head_dim
        if csr is not None and not (self.training and self.dropout.p > 0):  # the kernel has no dropout
            if isinstance(edge_embedding, tuple):
                table, row = edge_embedding
            elif edge_embedding is not None:
                table, row = edge_embedding, torch.arange(num_edges, device=source.device)
            else:
                table = row = None
            if x_source is x_target:  # self-attention: queries, keys and values in one matmul
                weight = torch.cat([self.query.weight, self.key_value.weight])
                query, key_value = nn.functional.linear(x_target, weight, torch.cat([self.query.bias,
                                                        self.key_value.bias])).split([h * d, 2 * h * d], dim=1)
            else:
                query, key_value = self.query(x_target), self.key_value(x_source)
            out = fused_attention.edge_attention(query, key_value, table, row, source, *csr, h)
            return self.out(out)
        key_value = self.key_value(x_source).index_select(0, source)  # index_select: cheap backward on CPU
        if isinstance(edge_embedding, tuple):
            table, index = edge_embedding
            key_value = key_value + table.index_select(0, index)
        elif edge_embedding is not None:
            key_value = key_value + edge_embedding
        key, value = key_value.view(num_edges, 2, h, d).unbind(1)
        query = self.query(x_target).index_select(0, target).view(-1, h, d)
        logits = (query * key).sum(-1) / math.sqrt(d)
        weight = self.dropout(ops.segment_softmax(logits, target, x_target.size(0), rank))
        out = ops.scatter(weight.unsqueeze(-1) * value, target, x_target.size(0), "sum")
        return self.out(out.reshape(-1, h * d))


class EventContext(nn.Module):
    """Long-range context: ``tokens`` learned queries pool each event's nodes, then every node reads its event's tokens.

    Linear in the number of nodes (each node sees ``tokens`` summaries of the whole event instead of all its cells).
    """

    def __init__(self, width: int, heads: int, tokens: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.tokens, self.heads, self.head_dim = tokens, heads, width // heads
        self.queries = nn.Parameter(torch.randn(tokens, width) / math.sqrt(width))
        self.pool_key_value = nn.Linear(width, 2 * width)
        self.read_query = nn.Linear(width, width)
        self.read_key_value = nn.Linear(width, 2 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, batch: torch.Tensor, num_graphs: int, rank: tuple | None = None,
                graphs: dict | None = None) -> torch.Tensor:
        """x [N, width], batch [N] (sorted), rank: :func:`graphsr.ops.segment_rank` of ``batch`` (optional: a
        faster softmax in compiled code), graphs: :func:`graphsr.nn.fused_attention.event_graphs` of ``batch``
        (optional: both attentions in the fused CPU kernel, where it is available) -> [N, width]."""
        n, t, h, d = x.size(0), self.tokens, self.heads, self.head_dim
        # the pooling's keys and values and the read's queries in one matmul
        weight = torch.cat([self.pool_key_value.weight, self.read_query.weight])
        bias = torch.cat([self.pool_key_value.bias, self.read_query.bias])
        key_value, query = nn.functional.linear(x, weight, bias).split([2 * h * d, h * d], dim=1)
        if graphs is not None:  # the same two softmaxes, each target's edges in one pass of the kernel
            pooled = fused_attention.edge_attention(self.queries.repeat(num_graphs, 1), key_value, None, None,
                                                    *graphs["pool"], h)
            out = fused_attention.edge_attention(query, self.read_key_value(pooled), None, None, *graphs["read"], h)
            return self.out(out)
        key, value = key_value.reshape(n, 2, h, d).unbind(1)
        logits = torch.einsum("nhd,thd->nth", key, self.queries.view(t, h, d)) / math.sqrt(d)
        segment = (batch.unsqueeze(1) * t + torch.arange(t, device=x.device)).reshape(-1)  # (event, token)
        if rank is not None:  # a node's rank in its event is its rank in each of its (event, token) segments
            rank = (rank[0].unsqueeze(1).expand(n, t).reshape(-1), rank[1])
        weight = ops.segment_softmax(logits.reshape(n * t, h), segment, num_graphs * t, rank)
        pooled = ops.scatter(weight.unsqueeze(-1) * value.unsqueeze(1).expand(n, t, h, d).reshape(n * t, h, d),
                             segment, num_graphs * t, "sum").view(num_graphs, t, h * d)
        token_key, token_value = self.read_key_value(pooled).view(num_graphs, t, 2, h, d).unbind(2)
        query = query.reshape(n, h, d)
        scores = torch.einsum("nhd,nthd->nht", query, token_key.index_select(0, batch)) / math.sqrt(d)
        out = torch.einsum("nht,nthd->nhd", scores.softmax(-1), token_value.index_select(0, batch))
        return self.out(out.reshape(n, h * d))
