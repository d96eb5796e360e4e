"""Generated events as COCOA super-resolution trees (``Low_Tree`` + ``High_Tree``)."""

from __future__ import annotations

import awkward as ak
import numpy as np
import torch

from graphsr.detector import Geometry
from graphsr.io.select import select_cells
from graphsr.io.writer import MAPPING_BRANCHES
from graphsr.simulation.topoclustering import neighbour_edges
from graphsr.units import MEV_PER_GEV


def _unflatten(values: torch.Tensor, counts: np.ndarray, dtype) -> ak.Array:
    return ak.unflatten(np.asarray(values.detach().cpu().numpy(), dtype=dtype), counts)


def output_trees(data, slices, estimate: torch.Tensor, mean: torch.Tensor, spread: torch.Tensor,
                 geometry: Geometry | None = None, inputs: ak.Array | None = None, layers=None) -> dict:
    """COCOA super-resolution trees of generated events: ``Low_Tree`` the coarse cells used, ``High_Tree`` the
    generated fine cells in block order (MeV: ``cell_e`` the :func:`point_estimate`, ``cell_e_mean`` the ensemble
    mean, ``cell_e_spread`` the ensemble standard deviation) and their neighbour graph
    (``cell_to_cell_edge_start/_end``, as COCOA writes it), with the mapping between them. Readable by
    :func:`graphsr.io.iter_cocoa` like any COCOA file.

    ``inputs``: the input's coarse-tree events, whose branches ``Low_Tree`` keeps, restricted to the coarse cells
    of ``layers`` (those used: :func:`graphsr.io.select.select_cells`); graphsr's own coarse branches then only
    fill in what the input lacks, and the mapping is always the new one.
    """
    geometry = geometry or Geometry.cocoa()
    nc = np.diff(slices["coarse_layer"].numpy())
    nf = np.diff(slices["fine_layer"].numpy())
    factor = round(np.sqrt(len(data.fine_layer) / max(len(data.coarse_layer), 1))) or 1
    coarse_geometry = geometry.coarsen(factor)

    def cells(cell_ids, geom, counts, energy, edges=False):
        layer, ieta, iphi = geom.cell_index(cell_ids.numpy())
        eta, phi = geom.cell_center(layer, ieta, iphi)
        x, y, z = geom.cell_position(layer, ieta, iphi)
        columns = {"cell_layer": (layer, np.int32), "cell_x": (x, np.float32), "cell_y": (y, np.float32),
                   "cell_z": (z, np.float32), "cell_eta": (eta, np.float32), "cell_phi": (phi, np.float32)}
        out = {name: ak.unflatten(np.asarray(v, dtype=dt), counts) for name, (v, dt) in columns.items()}
        out["cell_e"] = _unflatten(energy * MEV_PER_GEV, counts, np.float32)
        if edges:  # COCOA's cell neighbour graph: per event, (neighbour, cell) pairs of in-event cell indices
            event = np.repeat(np.arange(len(counts)), counts)
            start, end = neighbour_edges(event, layer, ieta, iphi, geom)
            first = np.cumsum(counts) - counts
            per_event = np.bincount(event[end], minlength=len(counts))
            out["cell_to_cell_edge_start"] = ak.unflatten((start - first[event[start]]).astype(np.int32), per_event)
            out["cell_to_cell_edge_end"] = ak.unflatten((end - first[event[end]]).astype(np.int32), per_event)
        return out

    low = cells(data.coarse_cell, coarse_geometry, nc, data.coarse_energy)
    low["low_cell_to_high_cell_edge"] = _unflatten(data.fine_parent, nf, np.int32)
    fine_ptr = slices["fine_layer"]
    owner = torch.arange(len(nf)).repeat_interleave(torch.as_tensor(nf))
    low["high_cell_to_low_cell_edge"] = _unflatten(torch.arange(int(fine_ptr[-1])) - fine_ptr[owner], nf, np.int32)
    if "particle_kin" in data:
        counts = np.diff(slices["particle_kin"].numpy())
        e, eta, phi = data.particle_kin.T
        for name, value in (("particle_e", e * MEV_PER_GEV), ("particle_pt", e * MEV_PER_GEV / torch.cosh(eta)),
                            ("particle_eta", eta), ("particle_phi", phi)):
            low[name] = _unflatten(value, counts, np.float32)
        low["particle_pdgid"] = _unflatten(data.particle_pdgid, counts, np.int32)
    high = cells(data.fine_cell, geometry, nf, estimate, edges=True)
    high["cell_e_mean"] = _unflatten(mean * MEV_PER_GEV, nf, np.float32)
    high["cell_e_spread"] = _unflatten(spread * MEV_PER_GEV, nf, np.float32)
    if inputs is not None:
        used = np.isin(ak.to_numpy(ak.flatten(inputs.cell_layer)), layers)
        kept = select_cells(inputs, ak.unflatten(used, ak.num(inputs.cell_layer)))
        low = {**low, **{name: kept[name] for name in kept.fields if name not in MAPPING_BRANCHES}}
    return {"Low_Tree": ak.zip(low, depth_limit=1), "High_Tree": ak.zip(high, depth_limit=1)}
