"""Whole COCOA super-resolution events: particles -> fine deposits -> noisy coarse cells -> topoclusters -> trees.

The steps follow COCOA's super-resolution mode (see ``shared/reference/cocoa.md``):

1. the gun draws the particles, :mod:`graphsr.simulation.showers` deposits their energy in fine cells (noise-free);
2. coarse cells are sums of ``factor x factor`` fine cells; Gaussian noise (fine sigma x factor unless given) is
   added to the coarse cells around the signal (:func:`~graphsr.simulation.topoclustering.signal_halo`) and around
   the cells anywhere in the detector whose noise alone passes the seed threshold (noise-only clusters, as COCOA's
   noise on every cell makes them);
3. 4-2-0 topoclustering of the coarse cells decides which coarse cells are stored;
4. the fine tree holds every child of every stored coarse cell, zero-energy children included.

Cells are stored sorted by (layer, ieta, iphi); the mapping pairs are ordered by coarse cell, children of one
parent by (ieta, iphi). ``particle_to_node_weight`` is the fraction of the cell's noise-free energy that the
particle deposited (the incidence-matrix convention of particle-flow models), ``cell_parent_list`` lists the
particles above 1% of the cell's noise-free energy. Topocluster summary branches are empty, as in COCOA's SR files.
"""

from __future__ import annotations

from collections.abc import Sequence

import awkward as ak
import numpy as np
from scipy.stats import norm

from graphsr.detector.geometry import Geometry
from graphsr.detector.neighbours import cell_keys, lookup
from graphsr.io.branches import TOPO_BRANCHES
from graphsr.simulation.guns import PHOTON, Particles
from graphsr.simulation.showers import ShowerModel, simulate_showers
from graphsr.simulation.topoclustering import SEED_THRESHOLD, neighbour_edges, signal_halo, topoclusters

PARENT_THRESHOLD = 0.01  # a particle is listed as a cell parent above this fraction of the cell's energy


def _jagged(flat, counts):
    flat = flat if isinstance(flat, ak.Array) else np.asarray(flat)
    return ak.unflatten(flat, np.asarray(counts, dtype=np.int64))


def _offsets(counts):
    return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)


class _Cells:
    """Flat cells of a batch, sorted by (event, cell id), with the per-particle contributions of each."""

    def __init__(self, event, cell, geometry: Geometry, num_events: int):
        self.event, self.cell, self.geometry = event, cell, geometry
        self.layer, self.ieta, self.iphi = geometry.cell_index(cell)
        self.counts = np.bincount(event, minlength=num_events)
        self.ptr = _offsets(self.counts)

    def local(self):
        """Index of each cell within its event."""
        return np.arange(len(self.cell)) - self.ptr[self.event]

    def branches(self, energy, che, nue, topo, contrib_cell, contrib_particle, contrib_energy, particle_ptr,
                 edges: bool = True):
        """The cell and graph branches of this tree, jagged per event.

        ``contrib_*``: one row per (cell, particle) deposit, sorted by cell; particle indices are batch-global.
        """
        x, y, z = self.geometry.cell_position(self.layer, self.ieta, self.iphi)
        eta, phi = self.geometry.cell_center(self.layer, self.ieta, self.iphi)
        truth = che + nue
        local_particle = contrib_particle - particle_ptr[self.event[contrib_cell]]
        # main parent: the particle with the largest deposit in the cell
        best = np.lexsort((-contrib_energy, contrib_cell))
        first = np.ones(len(best), dtype=bool)
        first[1:] = contrib_cell[best][1:] != contrib_cell[best][:-1]
        parent_idx = np.full(len(self.cell), -1, dtype=np.int32)
        parent_idx[contrib_cell[best][first]] = local_particle[best][first]
        listed = contrib_energy > PARENT_THRESHOLD * truth[contrib_cell]
        per_cell = np.bincount(contrib_cell[listed], minlength=len(self.cell))

        local = self.local()
        f32 = lambda a: np.asarray(a, dtype=np.float32)  # noqa: E731
        jag = lambda a: _jagged(a, self.counts)  # noqa: E731
        out = {
            "cell_layer": jag(self.layer.astype(np.int32)),
            "cell_x": jag(f32(x)), "cell_y": jag(f32(y)), "cell_z": jag(f32(z)),
            "cell_eta": jag(f32(eta)), "cell_phi": jag(f32(phi)),
            "cell_e": jag(f32(energy)), "cell_che": jag(f32(che)), "cell_nue": jag(f32(nue)),
            "cell_topo_idx": jag(topo.astype(np.int32)),
            "cell_parent_idx": jag(parent_idx),
            "cell_parent_list": jag(_jagged(f32(local_particle[listed]), per_cell)),
            "cell_parent_energy": jag(_jagged(f32(contrib_energy[listed]), per_cell)),
        }
        if edges:
            start, end = neighbour_edges(self.event, self.layer, self.ieta, self.iphi, self.geometry)
            edge_counts = np.bincount(self.event[end], minlength=len(self.counts))
            out["cell_to_cell_edge_start"] = _jagged(local[start].astype(np.int32), edge_counts)
            out["cell_to_cell_edge_end"] = _jagged(local[end].astype(np.int32), edge_counts)
        return out

    def particle_to_node(self, contrib_cell, contrib_particle, contrib_energy, truth, num_particles, p_counts):
        """``particle_to_node_idx`` / ``_weight``: per particle, its cells and their energy fractions."""
        order = np.lexsort((contrib_cell, contrib_particle))
        cell, particle = contrib_cell[order], contrib_particle[order]
        weight = contrib_energy[order] / truth[cell]
        per_particle = np.bincount(particle, minlength=num_particles)
        nest = lambda a: _jagged(_jagged(a, per_particle), p_counts)  # noqa: E731
        # COCOA stores these cell indices as floats (graphsr.io.branches)
        return {"particle_to_node_idx": nest(self.local()[cell].astype(np.float32)),
                "particle_to_node_weight": nest(weight.astype(np.float32))}


def _contributions(keys, energy, particle):
    """Sum deposits per (cell key, particle); returns unique cell keys and the (cell, particle, energy) rows."""
    keys, particle = np.asarray(keys, dtype=np.int64), np.asarray(particle, dtype=np.int64)
    stride = int(particle.max()) + 1 if len(particle) else 1
    # one int64 key per pair, ordered by (cell key, particle): a 1-D unique instead of a row-wise one
    pairs, inverse = np.unique(keys * stride + particle, return_inverse=True)
    summed = np.bincount(inverse.ravel(), weights=energy)
    cells, cell_of_pair = np.unique(pairs // stride, return_inverse=True)
    return cells, cell_of_pair.ravel(), pairs % stride, summed


def _with_noise_clusters(halo_keys, halo_noise, coarse: Geometry, sigma, num_events: int,
                         rng: np.random.Generator):
    """Add the cells that noise alone can make into a topocluster, anywhere in the detector.

    COCOA draws noise on every coarse cell, so a cell far from any particle seeds a cluster when its noise exceeds
    the seed threshold: ``P(z > 4.6) = 2.1e-6`` per cell, ~0.08 clusters per event on the 2x grid. Instead of
    drawing noise on all cells, draw the seeds (Poisson per event and layer, uniform over the layer, values from
    the Gaussian tail beyond the threshold) and plain noise on the cells around them (:func:`signal_halo`), where
    their clusters grow. Seeds that fall where the signal's noise is already drawn are dropped: that noise holds
    its own seeds.

    Args:
        halo_keys: ``[C]`` sorted keys (event x coarse cells + cell id) of the cells around the signal.
        halo_noise: ``[C]`` their noise, MeV.
        coarse: the coarse geometry.
        sigma: ``[L]`` noise sigma per layer, MeV.
        num_events: events in the batch.
        rng: generator for the seeds and their surroundings.

    Returns:
        ``(keys, noise)``: every cell with noise, sorted by key.
    """
    tail = norm.sf(SEED_THRESHOLD)
    per_layer = rng.poisson(coarse.n**2 * tail, size=(num_events, coarse.num_layers))
    seed_event = np.repeat(np.arange(num_events), per_layer.sum(1))
    seed_layer = np.repeat(np.tile(np.arange(coarse.num_layers), num_events), per_layer.ravel())
    seed_ieta, seed_iphi = np.floor(rng.random((2, len(seed_event))) * coarse.n[seed_layer]).astype(np.int64)
    seed_keys = cell_keys(seed_event, seed_layer, seed_ieta, seed_iphi, coarse)
    seed_keys, first = np.unique(seed_keys, return_index=True)
    fresh = lookup(halo_keys, seed_keys) < 0
    seed_keys, first = seed_keys[fresh], first[fresh]
    if not len(seed_keys):
        return halo_keys, halo_noise
    around = signal_halo(seed_event[first], seed_layer[first], seed_ieta[first], seed_iphi[first], coarse,
                         num_events)
    keys = cell_keys(*around, coarse)
    keys = keys[lookup(halo_keys, keys) < 0]
    layer = coarse.cell_index(keys % coarse.num_cells)[0]
    extra = sigma[layer] * rng.standard_normal(len(keys))
    is_seed = np.searchsorted(keys, seed_keys)
    # the seeds' noise: the Gaussian beyond the threshold, by inverting its tail
    extra[is_seed] = sigma[layer[is_seed]] * norm.isf(tail * rng.random(len(seed_keys)))
    keys, noise = np.concatenate([halo_keys, keys]), np.concatenate([halo_noise, extra])
    order = np.argsort(keys, kind="stable")
    return keys[order], noise[order]


def _fine_cells(low: _Cells, coarse: Geometry, geometry: Geometry, factor: int, num_events: int, fine_keys, f_row,
                f_particle, f_energy, charged):
    """Every child of every stored coarse cell, sorted by (event, cell id), with the fine deposits that fall in
    them (deposits outside stored cells are dropped): ``(high, parent of each, sort order of the children,
    child_parent, charged energy, neutral energy, (cell, particle, energy) contributions)``."""
    children = coarse.children(geometry, low.layer, low.ieta, low.iphi)
    child_id = geometry.cell_id(*children).ravel()
    child_parent = np.repeat(np.arange(len(low.cell)), factor * factor)
    child_keys = low.event[child_parent] * geometry.num_cells + child_id
    order = np.argsort(child_keys, kind="stable")
    high = _Cells(low.event[child_parent][order], child_id[order], geometry, num_events)
    high_parent = child_parent[order]
    fine_pos = np.searchsorted(child_keys[order], fine_keys)  # fine hits outside stored cells are dropped
    stored = fine_pos < len(order)
    stored[stored] = child_keys[order][fine_pos[stored]] == fine_keys[stored]
    f_che = np.zeros(len(high.cell))
    f_nue = np.zeros(len(high.cell))
    row_stored = stored[f_row]
    np.add.at(f_che, fine_pos[f_row[row_stored]], (f_energy * charged)[row_stored])
    np.add.at(f_nue, fine_pos[f_row[row_stored]], (f_energy * ~charged)[row_stored])
    f_contrib = (fine_pos[f_row[row_stored]], f_particle[row_stored], f_energy[row_stored])
    return high, high_parent, order, child_parent, f_che, f_nue, f_contrib


def _particle_branches(particles: Particles, deposits, num_events: int) -> dict:
    """The particle branches of both trees (the gun's particles, their deposited energy) and COCOA's topocluster
    branches, left empty."""
    p_counts = particles.counts
    dep = np.bincount(deposits.particle, weights=deposits.energy, minlength=len(particles))
    jag = lambda a, dtype=np.float32: _jagged(np.asarray(a, dtype=dtype), p_counts)  # noqa: E731
    empty = _jagged(np.zeros(0, dtype=np.float32), np.zeros(num_events, dtype=np.int64))
    return {
        "particle_pdgid": jag(particles.pdgid, np.int32), "particle_pt": jag(particles.pt),
        "particle_e": jag(particles.e), "particle_eta": jag(particles.eta), "particle_phi": jag(particles.phi),
        "particle_prod_x": jag(np.zeros(len(particles))), "particle_prod_y": jag(np.zeros(len(particles))),
        "particle_prod_z": jag(np.zeros(len(particles))), "particle_dep_energy": jag(dep),
        "particle_track_idx": jag(np.full(len(particles), -1), np.int32),
        **{name: empty for name in TOPO_BRANCHES},  # all float in COCOA, topo_idx included
    }


def _mapping(low: _Cells, high: _Cells, order, child_parent, factor: int) -> dict:
    """COCOA's coarse-fine map: pairs ordered by coarse cell, the children of a parent in (ieta, iphi) order (as
    Geometry.children lists them), as indices local to the event."""
    inverse_order = np.empty_like(order)
    inverse_order[order] = np.arange(len(order))
    fine_index = (inverse_order - high.ptr[high.event[inverse_order]])
    mapping_counts = low.counts * factor * factor
    low_local = low.local()
    mapping = {"low_cell_to_high_cell_edge": _jagged(low_local[child_parent].astype(np.int32), mapping_counts),
               "high_cell_to_low_cell_edge": _jagged(fine_index.astype(np.int32), mapping_counts)}
    return mapping


def _noisy_coarse_cells(c_keys_hit, coarse: Geometry, noise, num_events: int, rng: np.random.Generator):
    """The coarse cells that hold noise: the halo around the cells with signal, and noise-only clusters elsewhere
    (:func:`_with_noise_clusters`); ``(keys, noise)`` sorted by key."""
    hit_event, hit_cell = np.divmod(c_keys_hit, coarse.num_cells)
    halo = signal_halo(hit_event, *coarse.cell_index(hit_cell), coarse, num_events)
    halo_keys = cell_keys(*halo, coarse)
    halo_noise = noise[halo[1]] * rng.standard_normal(len(halo_keys))
    # the noise-only clusters come from a child generator, so the signal and its noise stay what they were
    return _with_noise_clusters(halo_keys, halo_noise, coarse, noise, num_events, rng.spawn(1)[0])


def _coarse_noise(coarse: Geometry, coarse_noise) -> np.ndarray:
    """The coarse cells' noise sigma per layer (MeV): as given, or the geometry's."""
    noise = coarse.noise if coarse_noise is None else np.asarray(coarse_noise, dtype=np.float64)
    if noise.shape != (coarse.num_layers,) or not np.all(noise > 0):
        raise ValueError(f"coarse_noise must hold one positive sigma (MeV) per layer ({coarse.num_layers}), "
                         f"got {coarse_noise!r}")
    return noise


def simulate_events(gun, num_events: int, *, factor: int = 2,
                    seed: int | np.random.Generator | None = None, model: ShowerModel | None = None,
                    geometry: Geometry | None = None, neighbour_branches: bool = True,
                    coarse_noise: Sequence[float] | None = None) -> dict[str, ak.Array]:
    """Simulate events in COCOA's super-resolution format.

    Args:
        gun: a particle gun (:class:`~graphsr.simulation.guns.SingleElectronGun`, ``MultiParticleGun``) with
            ``sample(num_events, rng) -> Particles``.
        num_events: events to simulate.
        factor: fine cells per coarse cell per side (2 or 4 in the SR studies).
        seed: seed or generator; the same seed gives the same events.
        model: shower parameters (default :class:`ShowerModel`).
        geometry: the fine geometry (default COCOA's).
        neighbour_branches: write ``cell_to_cell_edge_start/_end`` (COCOA's cell neighbour graph). graphsr builds
            its own edges and does not read them; leaving them out makes simulation about twice as fast.
        coarse_noise: noise sigma of the coarse cells per layer, MeV. Default: the fine sigma x ``factor``, as
            COCOA's super-resolution configs set it (``config_superres.json``, ``config_superres_4x.json``). The
            published single-electron set's coarse-minus-fine energy looks made with the fine sigmas unscaled
            (``geometry.noise``; data/README.md).

    Returns:
        ``{"Low_Tree": ..., "High_Tree": ...}``: awkward records, one per event, with COCOA's branches (MeV, mm,
        rad), ready for :func:`graphsr.io.write_cocoa`.

    Raises:
        ValueError: if ``coarse_noise`` does not hold one positive sigma per layer.
    """
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    geometry = geometry or Geometry.cocoa()
    coarse = geometry.coarsen(factor)
    noise = _coarse_noise(coarse, coarse_noise)
    particles: Particles = gun.sample(num_events, rng)
    deposits = simulate_showers(particles, rng, model, geometry)

    # fine cells with signal, and their contributions per particle
    fine_keys = particles.event[deposits.particle] * geometry.num_cells + geometry.cell_id(
        deposits.layer, deposits.ieta, deposits.iphi)
    fine_keys, f_row, f_particle, f_energy = _contributions(fine_keys, deposits.energy, deposits.particle)
    fine_event_hit, fine_cell_hit = np.divmod(fine_keys, geometry.num_cells)

    # coarse cells: signal sums, noise in the halo, noise-only seeds elsewhere, topoclusters
    parent_id = geometry.parent_id(coarse, fine_cell_hit)
    c_keys_hit, c_row_of_fine = np.unique(fine_event_hit * coarse.num_cells + parent_id, return_inverse=True)
    c_keys, c_noise = _noisy_coarse_cells(c_keys_hit, coarse, noise, num_events, rng)
    c_event, c_cell = np.divmod(c_keys, coarse.num_cells)
    c_layer, c_ieta, c_iphi = coarse.cell_index(c_cell)
    c_of_row = np.searchsorted(c_keys, c_keys_hit)[c_row_of_fine[f_row]]  # the coarse cell of each contribution
    charged = particles.pdgid[f_particle] != PHOTON
    c_che = np.bincount(c_of_row, weights=f_energy * charged, minlength=len(c_keys))
    c_nue = np.bincount(c_of_row, weights=f_energy * ~charged, minlength=len(c_keys))
    c_energy = c_che + c_nue + c_noise
    topo = topoclusters(c_event, c_layer, c_ieta, c_iphi, c_energy, noise[c_layer], coarse)
    kept = np.flatnonzero(topo > 0)
    low = _Cells(c_event[kept], coarse.cell_id(c_layer[kept], c_ieta[kept], c_iphi[kept]), coarse, num_events)
    # low's cells are the kept rows in key order, so row r of low is kept[r]
    kept_pos = np.full(len(c_keys), -1)
    kept_pos[kept] = np.arange(len(kept))

    high, high_parent, order, child_parent, f_che, f_nue, f_contrib = _fine_cells(
        low, coarse, geometry, factor, num_events, fine_keys, f_row, f_particle, f_energy, charged)

    # coarse contributions: fine contributions summed per (coarse kept cell, particle)
    c_of_contrib = kept_pos[c_of_row]
    in_low = c_of_contrib >= 0
    c_cells, *c_contrib = _contributions(c_of_contrib[in_low], f_energy[in_low], f_particle[in_low])
    c_contrib[0] = c_cells[c_contrib[0]]  # the row of each contribution -> its cell
    p_counts, p_ptr = particles.counts, particles.offsets
    particle_branches = _particle_branches(particles, deposits, num_events)
    mapping = _mapping(low, high, order, child_parent, factor)
    low_truth, high_truth = c_che[kept] + c_nue[kept], f_che + f_nue
    low_tree = {**low.branches(c_energy[kept], c_che[kept], c_nue[kept], topo[kept], *c_contrib, p_ptr,
                               neighbour_branches),
                **particle_branches, **mapping,
                **low.particle_to_node(*c_contrib, low_truth, len(particles), p_counts)}
    high_tree = {**high.branches(high_truth, f_che, f_nue, topo[kept][high_parent], *f_contrib, p_ptr,
                                 neighbour_branches),
                 **particle_branches,
                 **high.particle_to_node(*f_contrib, high_truth, len(particles), p_counts)}
    return {"Low_Tree": ak.zip(low_tree, depth_limit=1), "High_Tree": ak.zip(high_tree, depth_limit=1)}
