"""The simulator: guns, shower physics, topoclustering and the COCOA super-resolution format it writes."""

from __future__ import annotations

import awkward as ak
import numpy as np
import pytest

from graphsr.detector import Geometry
from graphsr.graphs import GraphOptions, build_storage
from graphsr.io import check_roundtrip
from graphsr.simulation import MultiParticleGun, ShowerModel, SingleElectronGun, simulate_events, simulate_showers
from graphsr.simulation.guns import ELECTRON, PHOTON, FINE_D_ETA, Particles, wrap_phi
from graphsr.simulation.showers import sample_spots
from graphsr.simulation.topoclustering import neighbour_edges, topoclusters

FINE = Geometry.cocoa()


@pytest.fixture(scope="module")
def electrons():
    return simulate_events(SingleElectronGun(), 200, factor=2, seed=3)


@pytest.fixture(scope="module")
def multi():
    return simulate_events(MultiParticleGun(), 100, factor=4, seed=4)


def flat(a, dtype=np.float64):
    return ak.to_numpy(ak.flatten(a)).astype(dtype)


# ------------------------------------------------------------------------------------------------------- guns
def test_single_electron_gun_ranges():
    p = SingleElectronGun().sample(2000, 0)
    assert np.all(p.pdgid == ELECTRON) and np.all(p.counts == 1)
    assert p.pt.min() >= 50_000 and p.pt.max() <= 51_000 and np.abs(p.eta).max() < 0.01
    assert np.allclose(p.e, p.pt * np.cosh(p.eta))
    assert np.all((p.phi > -np.pi) & (p.phi <= np.pi)) and p.phi.std() > 1.5


def test_multi_particle_gun_composition_and_offsets():
    gun = MultiParticleGun()
    p = gun.sample(4000, 1)
    assert np.all(p.counts >= 1) and p.counts.max() <= 4
    first = p.offsets[:-1]
    has_electron = p.pdgid[first] == ELECTRON
    assert abs(has_electron.mean() - 0.75) < 0.03
    assert np.sum(p.pdgid == ELECTRON) == has_electron.sum()  # the electron, if any, comes first
    photon = p.pdgid == PHOTON
    ref = p.eta[first][p.event]  # electron (or first photon's reference) direction of the event
    with_e = has_electron[p.event] & photon
    offset = np.abs(p.eta[with_e] - ref[with_e]) / FINE_D_ETA
    assert abs(offset.mean() - 4.0) < 0.1 and abs(offset.std() - 1.0) < 0.1
    assert np.all((p.pt[photon] >= 5_000) & (p.pt[photon] <= 25_000))


def test_phi_wrap():
    assert np.allclose(wrap_phi(np.array([np.pi + 0.1, -np.pi - 0.1, 0.3])), [-np.pi + 0.1, np.pi - 0.1, 0.3])


def test_gun_rejects_bad_settings():
    with pytest.raises(ValueError, match="pt_min"):
        SingleElectronGun(pt_min=10, pt_max=5)
    with pytest.raises(ValueError, match="eta"):
        MultiParticleGun(eta_max=2.9)


# ------------------------------------------------------------------------------------------------ shower physics
def test_lateral_containment_matches_moliere_radius():
    model = ShowerModel()
    assert model.containment(1.0) == pytest.approx(0.90, abs=0.005)
    assert model.containment(2.0) == pytest.approx(0.95, abs=0.005)
    # and the sampled spots follow it
    spots = sample_spots(SingleElectronGun().sample(20, 0), model, np.random.default_rng(0))
    r = np.hypot(spots.dx, spots.dy) / model.moliere_radius
    assert (r < 1).mean() == pytest.approx(0.90, abs=0.01)


def showering(pdgid, energy_mev, n=400):
    return Particles.make(np.full(n, pdgid), np.full(n, energy_mev), np.zeros(n), np.zeros(n), np.arange(n), n)


@pytest.mark.parametrize("pdgid,c", [(ELECTRON, -0.5), (PHOTON, 0.5)])
@pytest.mark.parametrize("energy", [5_000.0, 20_000.0, 50_000.0])
def test_mean_shower_depth_follows_ln_e_over_ec(pdgid, c, energy):
    model = ShowerModel()
    spots = sample_spots(showering(pdgid, energy), model, np.random.default_rng(int(energy) + pdgid))
    # Gamma profile: mean depth a / b = t_max + 1 / b, t_max = ln(E / Ec) + C
    t_max = np.log(energy / model.critical_energy) + c
    assert spots.depth.mean() == pytest.approx(t_max + 1 / model.b, rel=0.03)


def test_energy_resolution_falls_like_one_over_sqrt_e():
    model = ShowerModel()
    rng = np.random.default_rng(1)
    resolution = {e: (lambda v: v.std() / v.mean())(sample_spots(showering(ELECTRON, e, 2000), model, rng).visible)
                  for e in (2_000.0, 50_000.0)}
    assert resolution[50_000.0] == pytest.approx(0.10 / np.sqrt(50), rel=0.1)
    assert resolution[2_000.0] / resolution[50_000.0] == pytest.approx(5.0, rel=0.12)


def test_deposits_land_around_the_particle():
    n = 50
    eta = np.linspace(-2.4, 2.4, n)
    phi = np.linspace(-3.1, 3.1, n)
    particles = Particles.make(np.full(n, ELECTRON), np.full(n, 20_000.0), eta, phi, np.arange(n), n)
    deposits = simulate_showers(particles, np.random.default_rng(2))
    cell_eta, cell_phi = FINE.cell_center(deposits.layer, deposits.ieta, deposits.iphi)
    w = deposits.energy
    mean_eta = np.bincount(deposits.particle, w * cell_eta) / np.bincount(deposits.particle, w)
    dphi = wrap_phi(cell_phi - phi[deposits.particle])
    mean_dphi = np.bincount(deposits.particle, w * dphi) / np.bincount(deposits.particle, w)
    assert np.abs(mean_eta - eta).max() < 0.01 and np.abs(mean_dphi).max() < 0.01
    # most of the energy is in the ECAL, the rest leaks into the HCAL or the gap
    ecal = np.bincount(deposits.particle, w * (deposits.layer < 3)) / particles.e
    assert np.all(ecal > 0.9) and np.all(ecal < 1.05)


# ------------------------------------------------------------------------------------------------ topoclustering
def test_topoclustering_4_2_0():
    coarse = FINE.coarsen(2)
    # a row of cells in ECAL2: seed (5 sigma), grower (3 sigma), quiet cell (0.5 sigma), then an isolated 3 sigma cell
    s = coarse.noise[1]
    ieta = np.array([10, 11, 12, 20, 21])
    energy = np.array([5, 3, 0.5, 3, 0.2]) * s
    layer, iphi, event = np.full(5, 1), np.full(5, 7), np.zeros(5, dtype=np.int64)
    topo = topoclusters(event, layer, ieta, iphi, energy, np.full(5, s), coarse)
    # seed + grower + boundary cell form cluster 1; the unseeded 3 sigma cell and its neighbour are dropped
    assert topo.tolist() == [1, 1, 1, 0, 0]


def test_neighbour_edges_cross_layers_and_wrap_phi():
    coarse = FINE.coarsen(2)
    # ECAL2 cell (n=128) overlaps ECAL3 cell (n=64) at half the index; phi wraps from n-1 to 0
    layer, ieta, iphi = np.array([1, 2, 1]), np.array([10, 5, 10]), np.array([0, 0, 127])
    start, end = neighbour_edges(np.zeros(3, dtype=np.int64), layer, ieta, iphi, coarse)
    pairs = set(zip(start.tolist(), end.tolist()))
    assert pairs == {(0, 1), (1, 0), (0, 2), (2, 0)}


# ------------------------------------------------------------------------------------------------ whole events
def test_same_seed_same_events(electrons):
    again = simulate_events(SingleElectronGun(), 200, factor=2, seed=3)
    for tree in ("Low_Tree", "High_Tree"):
        assert ak.all(electrons[tree].cell_e == again[tree].cell_e)
    lean = simulate_events(SingleElectronGun(), 200, factor=2, seed=3, neighbour_branches=False)
    assert "cell_to_cell_edge_start" not in lean["High_Tree"].fields
    assert ak.all(lean["High_Tree"].cell_e == electrons["High_Tree"].cell_e)
    other = simulate_events(SingleElectronGun(), 200, factor=2, seed=4)
    assert not ak.all(ak.num(other["Low_Tree"].cell_e) == ak.num(electrons["Low_Tree"].cell_e))


@pytest.mark.parametrize("name,factor", [("electrons", 2), ("multi", 4)])
def test_super_resolution_format(name, factor, request):
    events = request.getfixturevalue(name)
    low, high = events["Low_Tree"], events["High_Tree"]
    coarse = FINE.coarsen(factor)
    n_low, n_high = ak.num(low.cell_e).to_numpy(), ak.num(high.cell_e).to_numpy()
    assert np.all(n_high == n_low * factor**2)  # every child of every stored coarse cell
    # mapping: pairs ordered by coarse cell, each coarse cell has exactly factor^2 children, all different
    low_idx, high_idx = low.low_cell_to_high_cell_edge, low.high_cell_to_low_cell_edge
    assert ak.all(low_idx[:, 1:] >= low_idx[:, :-1])
    assert ak.all(ak.sort(high_idx) == ak.local_index(high.cell_e))
    # the fine cells of a pair lie inside their coarse cell, and sum to its noise-free energy
    offsets_low = np.concatenate([[0], np.cumsum(n_low)])[:-1]
    offsets_high = np.concatenate([[0], np.cumsum(n_high)])[:-1]
    counts = ak.num(low_idx).to_numpy()
    c = flat(low_idx, np.int64) + np.repeat(offsets_low, counts)
    f = flat(high_idx, np.int64) + np.repeat(offsets_high, counts)
    c_layer, f_layer = flat(low.cell_layer, np.int64)[c], flat(high.cell_layer, np.int64)[f]
    assert np.all(c_layer == f_layer)
    c_ieta, c_iphi = coarse.cell_at(c_layer, flat(low.cell_eta)[c], flat(low.cell_phi)[c])
    f_ieta, f_iphi = FINE.cell_at(f_layer, flat(high.cell_eta)[f], flat(high.cell_phi)[f])
    assert np.all(f_ieta // factor == c_ieta) and np.all(f_iphi // factor == c_iphi)
    truth_low = flat(low.cell_che) + flat(low.cell_nue)
    sums = np.bincount(c, weights=flat(high.cell_e)[f], minlength=len(truth_low))
    assert np.allclose(sums, truth_low, rtol=1e-4, atol=1e-2)
    # fine cells are noise-free; coarse noise has the coarse sigma
    assert np.allclose(flat(high.cell_e), flat(high.cell_che) + flat(high.cell_nue), atol=1e-3)
    noise = flat(low.cell_e) - truth_low
    sigma = coarse.noise[flat(low.cell_layer, np.int64)]
    assert (noise / sigma).std() == pytest.approx(1.0, abs=0.15)
    # every stored coarse cell is in a topocluster; fine cells inherit it
    assert ak.all(low.cell_topo_idx >= 1)
    assert np.all(flat(high.cell_topo_idx, np.int64)[f] == flat(low.cell_topo_idx, np.int64)[c])
    # incidence weights: fractions of each cell's energy, summing to one over the particles
    w = flat(ak.flatten(high.particle_to_node_weight, axis=2))
    idx = flat(ak.flatten(high.particle_to_node_idx, axis=2), np.int64)
    per_particle = ak.num(high.particle_to_node_idx, axis=2)
    ev = np.repeat(np.repeat(np.arange(len(high)), ak.num(per_particle).to_numpy()), flat(per_particle, np.int64))
    cell_total = np.bincount(idx + offsets_high[ev], weights=w, minlength=int(n_high.sum()))
    hit = flat(high.cell_e) > 0
    assert np.allclose(cell_total[hit], 1, atol=1e-4) and np.all(cell_total[~hit] == 0)


def test_single_electron_statistics_match_cocoa(electrons):
    low, high = electrons["Low_Tree"], electrons["High_Tree"]
    ecal = high.cell_layer < 3
    fine_cells = ak.num(high.cell_e[ecal]).to_numpy()
    # COCOA's single-electron set: 254 fine ECAL cells per event on average
    assert 200 < fine_cells.mean() < 310
    energy = ak.sum(high.cell_e[ecal], axis=1).to_numpy()
    particle = ak.flatten(low.particle_e).to_numpy()
    assert 0.95 < (energy / particle).mean() < 1.0
    # the fine cells hold the deposited energy, less the little outside topoclusters and in the HCAL / iron gap
    deposited = ak.flatten(low.particle_dep_energy).to_numpy()
    all_fine = ak.sum(high.cell_e, axis=1).to_numpy()
    assert np.all(all_fine <= deposited * (1 + 1e-5)) and (all_fine / deposited).mean() > 0.99
    # the noise on the summed coarse cells makes the coarse ECAL energy worse than the fine one
    coarse = ak.sum(low.cell_e[low.cell_layer < 3], axis=1).to_numpy()
    assert 0.003 < ((coarse - energy) / energy).std() < 0.03


def test_written_file_reads_back_and_builds_graphs(electrons, tmp_path):
    path = tmp_path / "e.root"
    trees = check_roundtrip(path, electrons)  # raises listing any branch that differs
    data, slices = build_storage(trees["Low_Tree"], trees["High_Tree"], GraphOptions())
    fine_ecal = ak.num(electrons["High_Tree"].cell_e[electrons["High_Tree"].cell_layer < 3]).to_numpy()
    assert np.array_equal(np.diff(slices["fine_layer"].numpy()), fine_ecal)
    assert float(data.fine_energy.sum()) == pytest.approx(
        float(ak.sum(electrons["High_Tree"].cell_e[electrons["High_Tree"].cell_layer < 3])) / 1000, rel=1e-5)
