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
        fraction: [N, K] the energy fractions of each event's first K particles in each cell, when known (the
            training targets of an incidence matrix; :func:`~graphsr.graphs.build.cell_fractions`), else None.
    """

    energy: torch.Tensor
    pos: torch.Tensor
    layer: torch.Tensor
    edge_index: torch.Tensor
    batch: torch.Tensor
    num_graphs: int
    fraction: torch.Tensor | None = None


def cell_graph(energy: torch.Tensor, pos: torch.Tensor, layer: torch.Tensor, batch: torch.Tensor, num_graphs: int,
               options: GraphOptions = GraphOptions(), threshold: float | None = None,
               fraction: torch.Tensor | None = None) -> CellGraph:
    """The cells above ``threshold`` (GeV; None: all) with kNN edges within each layer and to adjacent layers;
    ``fraction`` ([N, K] or None) goes with its cells.

    ``batch`` must be sorted (cells of an event consecutive), as in every graphsr batch.
    """
    if threshold is not None:
        keep = energy > threshold
        energy, pos, layer, batch = energy[keep], pos[keep], layer[keep], batch[keep]
        fraction = fraction[keep] if fraction is not None else None
    edges = neighbour_edges(pos[:, 0], pos[:, 1], layer, batch, options)
    return CellGraph(energy, pos, layer, edges, batch, num_graphs, fraction)


def cells_of(batch, which: str, options: GraphOptions = GraphOptions(), threshold: float | None = None) -> CellGraph:
    """The coarse or the fine cells of a batch of :class:`~graphsr.graphs.PairData` as a :class:`CellGraph`.

    ``which``: ``"coarse"`` (the measured cells) or ``"fine"`` (``fine_energy``: the truth, or super-resolved
    cells when the batch comes from a ``graphsr sample`` file).
    """
    if which == "coarse":
        return cell_graph(batch.coarse_energy, batch.coarse_pos, batch.coarse_layer, batch.coarse_batch,
                          batch.num_graphs, options, threshold, batch.get("coarse_fraction"))
    if which == "fine":
        if "fine_energy" not in batch:
            raise ValueError("the events have no fine cell energies (a file with coarse cells only)")
        return cell_graph(batch.fine_energy, batch.fine_pos, batch.fine_layer, batch.batch, batch.num_graphs,
                          options, threshold, batch.get("fine_fraction"))
    raise ValueError(f"unknown cell set {which!r}; choose one of {CELL_SETS}")
