"""What a dataset holds, in numbers (``graphsr summary``)."""

from __future__ import annotations

import torch


def dataset_summary(dataset) -> dict:
    """Per-event statistics of a :class:`~graphsr.datasets.CocoaDataset`: cells, edges, ECAL energies (GeV) and the
    coarse cells none of whose children hold energy (noise only: boundary cells, noise-only topoclusters).

    Returns ``{"events", "coarse_cells", "fine_cells"`` (tensors per event), ``"fine_nonzero"`` (fraction),
    ``"fine_edges", "coarse_edges"`` (means per event), ``"coarse_energy", "fine_energy"`` (tensors per event),
    ``"noise_only_cells", "noise_only_energy"`` (per event)}``.
    """
    data, slices = dataset.storage()[0], dataset.slices
    events = len(slices["event"]) - 1
    fine, coarse = torch.diff(slices["fine_layer"]), torch.diff(slices["coarse_layer"])
    fine_owner = torch.arange(events).repeat_interleave(fine)
    coarse_owner = torch.arange(events).repeat_interleave(coarse)
    parent = data.fine_parent + slices["coarse_layer"][:-1][fine_owner]
    child_energy = torch.zeros(len(data.coarse_energy)).index_add_(0, parent, data.fine_energy.abs())
    empty = child_energy == 0
    return {"events": events, "coarse_cells": coarse.float(), "fine_cells": fine.float(),
            "fine_nonzero": float((data.fine_energy > 0).float().mean()),
            "fine_edges": float(torch.diff(slices["fine_edge_index"]).float().mean()),
            "coarse_edges": float(torch.diff(slices["coarse_edge_index"]).float().mean()),
            "coarse_energy": torch.zeros(events).index_add_(0, coarse_owner, data.coarse_energy),
            "fine_energy": torch.zeros(events).index_add_(0, fine_owner, data.fine_energy),
            "noise_only_cells": float(empty.sum() / events),
            "noise_only_energy": float(data.coarse_energy[empty].sum() / events)}
