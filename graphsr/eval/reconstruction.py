"""A simple particle reconstruction on calorimeter cells, to see what super-resolution changes downstream.

The published study measures its gain with a trained particle-flow model (cardinality accuracy, particle energy and
direction residuals; arXiv 2409.16052). graphsr has no such model. This stand-in is a deterministic clustering that
runs the same way on any cells (the fine truth, super-resolved cells, the baselines, or the coarse cells on their
own grid), so comparisons between inputs are fair; its absolute numbers are not the published model's.

1. Seeds: cells of the seed layer (ECAL2, where EM showers peak) above ``seed_threshold`` that are local maxima
   among their 8 in-layer neighbours. Neighbours of equal energy count as one plateau (the even split makes
   them): a plateau with no higher neighbour gives one seed.
2. Every cell joins the nearest seed of its event in (eta, phi) within ``radius``.
3. A particle's energy is the sum of its cells, its direction their energy-weighted centroid.
4. Reconstructed particles are matched to true ones greedily by smallest Delta R, below ``match_radius``.

Everything is vectorised over events: the loops run over seed ranks and matching rounds (a handful), not events.
"""

from __future__ import annotations

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from graphsr.detector import Geometry
from graphsr.detector.geometry import SEED_LAYER
from graphsr.eval.metrics import as_numpy
from graphsr.simulation.guns import wrap_phi
from graphsr.simulation.topoclustering import neighbour_edges

SEED_THRESHOLD = 1.0    # GeV in the seed cell
RADIUS = 0.1            # cells further than this from every seed (eta, phi) join no particle (~3.5 Moliere radii)
MATCH_RADIUS = 0.1      # largest Delta R of a reconstructed-true match


def find_particles(energy, cell, event, num_events: int, geometry: Geometry, *, seed_layer: int = SEED_LAYER,
                   seed_threshold: float = SEED_THRESHOLD, radius: float = RADIUS) -> dict[str, np.ndarray]:
    """Reconstructed particles of many events (see the module docstring).

    Args:
        energy: ``[C]`` cell energies (GeV); cell: ``[C]`` cell ids of ``geometry``; event: ``[C]`` event of each
            cell (0..num_events-1). Each (event, cell) at most once.
        geometry: the cells' geometry (fine or coarse).

    Returns:
        ``event``, ``energy`` (GeV), ``eta``, ``phi``: ``[R]`` arrays, particles of an event by decreasing seed
        energy; ``count``: ``[num_events]`` particles per event.
    """
    energy, cell = as_numpy(energy), np.asarray(as_numpy(cell), dtype=np.int64)
    event = np.asarray(as_numpy(event), dtype=np.int64)
    layer, ieta, iphi = geometry.cell_index(cell)
    eta, phi = geometry.cell_center(layer, ieta, iphi)

    # seeds: local maxima of the seed layer. Neighbours of equal energy form plateaus; a plateau none of whose cells
    # has a higher neighbour gives one seed, its lowest cell id
    candidate = np.flatnonzero((layer == seed_layer) & (energy > seed_threshold))
    start, end = neighbour_edges(event[candidate], layer[candidate], ieta[candidate], iphi[candidate], geometry)
    higher = energy[candidate[start]] > energy[candidate[end]]
    equal = energy[candidate[start]] == energy[candidate[end]]
    n = len(candidate)
    links = coo_matrix((np.ones(int(equal.sum()), dtype=np.int8), (start[equal], end[equal])), shape=(n, n))
    num_plateaus, plateau = connected_components(links.tocsr(), directed=False)
    beaten = np.bincount(plateau[end[higher]], minlength=num_plateaus) > 0
    order = np.lexsort((cell[candidate], plateau))
    lowest = candidate[order[np.unique(plateau[order], return_index=True)[1]]]  # lowest cell id of each plateau
    # a seed sits at its plateau's centre
    size = np.bincount(plateau, minlength=num_plateaus)
    plateau_eta = np.bincount(plateau, weights=eta[candidate], minlength=num_plateaus) / size
    plateau_phi = phi[lowest] + np.bincount(plateau, weights=wrap_phi(phi[candidate] - phi[lowest][plateau]),
                                            minlength=num_plateaus) / size
    kept = np.flatnonzero(~beaten)
    kept = kept[np.lexsort((-energy[lowest[kept]], event[lowest[kept]]))]
    seeds, seed_eta, seed_phi = lowest[kept], plateau_eta[kept], wrap_phi(plateau_phi[kept])
    count = np.bincount(event[seeds], minlength=num_events)
    first = np.concatenate([[0], np.cumsum(count)])[:-1]

    # each cell joins its nearest seed: one pass per seed rank
    owner = np.full(len(energy), -1)
    best = np.full(len(energy), radius)
    for rank in range(int(count.max()) if len(count) else 0):
        has = count[event] > rank
        s = first[event[has]] + rank
        dr = np.hypot(eta[has] - seed_eta[s], wrap_phi(phi[has] - seed_phi[s]))
        closer = dr < best[has]
        rows = np.flatnonzero(has)[closer]
        owner[rows], best[rows] = first[event[rows]] + rank, dr[closer]

    joined = np.flatnonzero(owner >= 0)
    o, e = owner[joined], energy[joined]
    w = np.clip(e, 0, None)
    total = np.bincount(o, weights=e, minlength=len(seeds))
    weight = np.bincount(o, weights=w, minlength=len(seeds))
    d_phi = wrap_phi(phi[joined] - seed_phi[o])
    with np.errstate(invalid="ignore", divide="ignore"):
        c_eta = np.bincount(o, weights=w * eta[joined], minlength=len(seeds)) / weight
        c_phi = seed_phi + np.bincount(o, weights=w * d_phi, minlength=len(seeds)) / weight
    c_eta = np.where(weight > 0, c_eta, seed_eta)
    c_phi = wrap_phi(np.where(weight > 0, c_phi, seed_phi))
    return {"event": event[seeds], "energy": total, "eta": c_eta, "phi": c_phi, "count": count}


def match_particles(reco_event, reco_eta, reco_phi, true_event, true_eta, true_phi, *,
                    max_dr: float = MATCH_RADIUS) -> tuple[np.ndarray, np.ndarray]:
    """Greedy Delta R matching within events: the closest pair of an event first, each particle used once.

    Returns:
        ``(reco_index, true_index)``: matched pairs.
    """
    reco_event, true_event = (np.asarray(a, dtype=np.int64) for a in (reco_event, true_event))
    num_events = int(max(reco_event.max(initial=-1), true_event.max(initial=-1))) + 1
    true_order = np.argsort(true_event, kind="stable")
    true_count = np.bincount(true_event, minlength=num_events)
    true_first = np.concatenate([[0], np.cumsum(true_count)])[:-1]
    # every (reco, true) pair of the same event
    per_reco = true_count[reco_event]
    reco = np.repeat(np.arange(len(reco_event)), per_reco)
    slot = np.arange(len(reco)) - np.repeat(np.cumsum(per_reco) - per_reco, per_reco)
    true = true_order[true_first[reco_event[reco]] + slot]
    dr = np.hypot(reco_eta[reco] - true_eta[true], wrap_phi(reco_phi[reco] - true_phi[true]))
    keep = dr < max_dr
    reco, true, dr = reco[keep], true[keep], dr[keep]
    order = np.lexsort((dr, reco_event[reco]))
    reco, true = reco[order], true[order]
    matched_reco, matched_true = [], []
    while len(reco):  # each round takes the closest remaining pair of every event
        _, first_of_event = np.unique(reco_event[reco], return_index=True)
        r, t = reco[first_of_event], true[first_of_event]
        matched_reco.append(r)
        matched_true.append(t)
        free = ~np.isin(reco, r) & ~np.isin(true, t)
        reco, true = reco[free], true[free]
    if not matched_reco:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(matched_reco), np.concatenate(matched_true)


def particle_metrics(reco: dict[str, np.ndarray], true_count, true_energy, true_eta, true_phi, *,
                     max_dr: float = MATCH_RADIUS, max_count: int = 4) -> dict:
    """Cardinality accuracy per true particle count, events with more particles found than true ones (``excess``, split
    showers), efficiency, fakes, and residuals of matched particles.

    Args:
        reco: from :func:`find_particles`.
        true_count: ``[E]`` true particles per event; true_energy (GeV), true_eta, true_phi: ``[P]``, particles of
            an event consecutive.

    Returns:
        ``cardinality``: ``{n: (accuracy, error, events)}`` for n = 1..max_count; ``excess``: ``{n: (fraction,
        error, events)}``, the events of n true particles in which more than n are found (split showers, the
        super-resolution failure that the fine truth never shows); ``efficiency`` (true particles matched),
        ``fake_rate`` (reconstructed particles unmatched), ``energy`` (std of (E_reco - E_true) / E_true), ``eta``,
        ``phi`` (std of the differences), each ``(value, error)``.
    """
    true_count = np.asarray(as_numpy(true_count), dtype=np.int64)
    true_energy, true_eta, true_phi = (as_numpy(a) for a in (true_energy, true_eta, true_phi))
    true_event = np.repeat(np.arange(len(true_count)), true_count)
    r, t = match_particles(reco["event"], reco["eta"], reco["phi"], true_event, true_eta, true_phi, max_dr=max_dr)
    out = {"cardinality": {}, "excess": {}}
    for n in range(1, max_count + 1):
        sel = true_count == n
        if sel.any():
            for key, hit in (("cardinality", reco["count"][sel] == n), ("excess", reco["count"][sel] > n)):
                p = float(hit.mean())
                out[key][str(n)] = {"value": p, "error": float(np.sqrt(p * (1 - p) / sel.sum())),
                                    "events": int(sel.sum())}
    n_true, n_reco = len(true_event), len(reco["event"])
    out["efficiency"] = len(t) / max(n_true, 1)
    out["fake_rate"] = 1 - len(r) / max(n_reco, 1)

    def spread(x):
        n = len(x)
        if n < 2:
            return {"value": float("nan"), "error": float("nan")}
        s = float(np.std(x, ddof=1))
        return {"value": s, "error": s / np.sqrt(2 * (n - 1))}

    out["energy"] = spread((reco["energy"][r] - true_energy[t]) / true_energy[t])
    out["eta"] = spread(reco["eta"][r] - true_eta[t])
    out["phi"] = spread(wrap_phi(reco["phi"][r] - true_phi[t]))
    return out
