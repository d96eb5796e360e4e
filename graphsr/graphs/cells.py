"""One set of cells per event as a graph: coarse cells, fine truth or super-resolved cells, for models that read a
single cell graph (the particle-flow model of :mod:`graphsr.reco`).

A :class:`CellGraph` holds a batch of events' cells above an energy threshold with their own kNN edges (built as
the paired graphs' edges are, :func:`~graphsr.graphs.neighbour_edges`), so the same function turns a batch of
:class:`~graphsr.graphs.PairData` or flat arrays of generated cells into the model's input.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from graphsr.graphs.build import GraphOptions, neighbour_edges

CELL_SETS = ("coarse", "fine")


class CellGraph(NamedTuple):
    """Cells of a batch of events, cells of an event consecutive.

    Attributes:
        energy: [N] GeV; pos: [N, 2] (eta, phi); layer: [N].
        edge_index: [2, E] (source, target), within events.
        batch: [N] event of each cell, sorted; num_graphs: events (some may have no cells).
    """

    energy: torch.Tensor
    pos: torch.Tensor
    layer: torch.Tensor
    edge_index: torch.Tensor
    batch: torch.Tensor
    num_graphs: int


def cell_graph(energy: torch.Tensor, pos: torch.Tensor, layer: torch.Tensor, batch: torch.Tensor, num_graphs: int,
               options: GraphOptions = GraphOptions(), threshold: float | None = None) -> CellGraph:
    """The cells above ``threshold`` (GeV; None: all) with kNN edges within each layer and to adjacent layers.

    ``batch`` must be sorted (cells of an event consecutive), as in every graphsr batch.
    """
    if threshold is not None:
        keep = energy > threshold
        energy, pos, layer, batch = energy[keep], pos[keep], layer[keep], batch[keep]
    edges = neighbour_edges(pos[:, 0], pos[:, 1], layer, batch, options)
    return CellGraph(energy, pos, layer, edges, batch, num_graphs)


def cells_of(batch, which: str, options: GraphOptions = GraphOptions(), threshold: float | None = None) -> CellGraph:
    """The coarse or the fine cells of a batch of :class:`~graphsr.graphs.PairData` as a :class:`CellGraph`.

    ``which``: ``"coarse"`` (the measured cells) or ``"fine"`` (``fine_energy``: the truth, or super-resolved
    cells when the batch comes from a ``graphsr sample`` file).
    """
    if which == "coarse":
        return cell_graph(batch.coarse_energy, batch.coarse_pos, batch.coarse_layer, batch.coarse_batch,
                          batch.num_graphs, options, threshold)
    if which == "fine":
        if "fine_energy" not in batch:
            raise ValueError("the events have no fine cell energies (a file with coarse cells only)")
        return cell_graph(batch.fine_energy, batch.fine_pos, batch.fine_layer, batch.batch, batch.num_graphs,
                          options, threshold)
    raise ValueError(f"unknown cell set {which!r}; choose one of {CELL_SETS}")
