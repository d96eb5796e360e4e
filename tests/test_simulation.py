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
from graphsr.simulation.showers import depth_slices, sample_spots
from graphsr.simulation.topoclustering import neighbour_edges, topoclusters

FINE = Geometry.cocoa()


@pytest.fixture(scope="module")
def electrons():
    return simulate_events(SingleElectronGun(), 200, factor=2, seed=3)


@pytest.fixture(scope="module")
def multi():
    return simulate_events(MultiParticleGun(), 300, factor=4, seed=4)


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
def showering(pdgid, energy_mev, n=400):
    return Particles.make(np.full(n, pdgid), np.full(n, energy_mev), np.zeros(n), np.zeros(n), np.arange(n), n)


@pytest.mark.parametrize("pdgid,c", [(ELECTRON, -0.5), (PHOTON, 0.5)])
@pytest.mark.parametrize("energy", [5_000.0, 20_000.0, 50_000.0])
def test_mean_shower_depth_follows_ln_e_over_ec(pdgid, c, energy):
    model = ShowerModel()
    spots = sample_spots(showering(pdgid, energy), model, np.random.default_rng(int(energy) + pdgid))
    # Gamma profile: mean depth a / b = t_max + 1 / b, t_max = ln(E / Ec) + C, on average over showers
    expected = np.log(energy / model.critical_energy) + c + 1 / model.b
    assert np.mean(spots.alpha * spots.shower_max / (spots.alpha - 1)) == pytest.approx(expected, rel=0.03)
    # and the energy of the depth slices follows it (slice middles; the open-ended leakage slice counts 2 X0 deep)
    slices = depth_slices(FINE, model)
    middle = 0.5 * (slices["lo"] + np.minimum(slices["hi"], slices["lo"] + 4))
    assert np.average(np.broadcast_to(middle, spots.slice_energy.shape), weights=spots.slice_energy) == \
        pytest.approx(expected, rel=0.03)
    assert np.allclose(spots.slice_energy.sum(1), spots.visible)  # slices share the visible energy exactly


def test_longitudinal_and_lateral_fluctuations_are_correlated():
    # Grindhammer-Peters: ln t_max and ln a correlate positively (rho = 0.705 - 0.023 ln y)
    spots = sample_spots(showering(ELECTRON, 50_000.0, 2000), ShowerModel(), np.random.default_rng(5))
    rho = np.corrcoef(np.log(spots.shower_max), np.log(spots.alpha))[0, 1]
    assert rho == pytest.approx(0.705 - 0.023 * np.log(50_000 / ShowerModel().critical_energy), abs=0.06)
    # a shower that starts late is narrower at a given depth: its ECAL2 slices are at smaller t / t_max
    ecal2 = spots.layer == 1
    p, w, r2 = spots.particle[ecal2], spots.energy[ecal2], (spots.dx**2 + spots.dy**2)[ecal2]
    rms = np.sqrt(np.bincount(p, w * r2, minlength=2000) / np.bincount(p, w, minlength=2000))
    assert np.corrcoef(spots.shower_max, rms)[0, 1] < -0.3


def _containment(spots, model, select=slice(None)):
    r = np.hypot(spots.dx, spots.dy)[select] / model.moliere_radius
    w = spots.energy[select]
    return np.sum(w * (r < 1)) / w.sum(), np.sum(w * (r < 2)) / w.sum(), np.sqrt(np.sum(w * r**2) / w.sum())


def test_lateral_containment_and_depth_dependence():
    model = ShowerModel()
    spots = sample_spots(showering(ELECTRON, 50_000.0, 300), model, np.random.default_rng(0))
    # PDG: ~90% of the energy inside one Moliere radius, ~95% inside two
    within_1, within_2, _ = _containment(spots, model)
    assert within_1 == pytest.approx(0.90, abs=0.02) and within_2 == pytest.approx(0.96, abs=0.015)
    layer = spots.layer
    ecal1, ecal2, ecal3 = (_containment(spots, model, layer == la) for la in range(3))
    # every ECAL layer holds most of its energy inside 1 R_M except the late, wide ECAL3; the shower widens
    assert ecal1[0] > 0.9 and 0.85 < ecal2[0] < 0.95 and 0.5 < ecal3[0] < ecal2[0]
    assert ecal3[2] > 1.5 * ecal2[2] > 1.5 * ecal1[2]


def test_fine_cell_energies_are_continuous_and_fluctuate_locally():
    d_eta, d_phi = 6 / 256, 2 * np.pi / 256
    # 300 showers on exactly the same axis: the middle of fine ECAL2 cell (128, 10)
    particles = showering(ELECTRON, 50_000.0, 300)
    particles = Particles.make(particles.pdgid, particles.pt, np.full(300, -3 + 128.5 * d_eta),
                               np.full(300, 10.5 * d_phi), particles.event, 300)
    deposits = simulate_showers(particles, np.random.default_rng(3))
    ecal = deposits.layer < 3
    assert np.mean(deposits.energy[ecal] < 1.0) > 0.05  # no energy quantum: many deposits below 1 MeV
    assert np.mean((deposits.energy[ecal] > 1) & (deposits.energy[ecal] < 20)) > 0.2
    # the next cell in phi: same mean position, but its energy differs from shower to shower by over 20%
    neighbour = (deposits.layer == 1) & (deposits.ieta == 128) & (deposits.iphi == 11)
    energy = np.bincount(deposits.particle[neighbour], deposits.energy[neighbour], minlength=300)
    assert energy.std() / energy.mean() > 0.2


def test_energy_resolution_falls_like_one_over_sqrt_e():
    model = ShowerModel()
    rng = np.random.default_rng(1)
    resolution = {e: (lambda v: v.std() / v.mean())(sample_spots(showering(ELECTRON, e, 2000), model, rng).visible)
                  for e in (2_000.0, 50_000.0)}
    assert resolution[50_000.0] == pytest.approx(0.10 / np.sqrt(50), rel=0.1)
    assert resolution[2_000.0] / resolution[50_000.0] == pytest.approx(5.0, rel=0.12)


def test_deposits_land_around_the_particle():
    n = 50
    eta = np.linspace(-2.2, 2.2, n)  # further out, the tails cross |eta| = 3 and are lost on one side
    phi = np.linspace(-3.1, 3.1, n)
    particles = Particles.make(np.full(n, ELECTRON), np.full(n, 20_000.0), eta, phi, np.arange(n), n)
    deposits = simulate_showers(particles, np.random.default_rng(2))
    cell_eta, cell_phi = FINE.cell_center(deposits.layer, deposits.ieta, deposits.iphi)
    w = deposits.energy
    mean_eta = np.bincount(deposits.particle, w * cell_eta) / np.bincount(deposits.particle, w)
    dphi = wrap_phi(cell_phi - phi[deposits.particle])
    mean_dphi = np.bincount(deposits.particle, w * dphi) / np.bincount(deposits.particle, w)
    # within half a fine cell (0.012): energy sits at cell centres and the shower wanders off its axis slice by slice
    assert np.abs(mean_eta - eta).max() < 0.012 and np.abs(mean_dphi).max() < 0.012
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
    # cells whose signal alone keeps them (the selection cuts noise-only cells below zero)
    strong = truth_low > 6 * sigma
    assert (noise / sigma)[strong].std() == pytest.approx(1.0, abs=0.15)
    assert abs((noise / sigma)[strong].mean()) < 0.15
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
    # COCOA's single-electron set: 63% of the fine ECAL cells are nonzero, Geant4's many small deposits
    energy_cells = ak.to_numpy(ak.flatten(high.cell_e[ecal]))
    assert 0.50 < np.mean(energy_cells > 0) < 0.75
    assert np.mean(energy_cells[energy_cells > 0] < 10.0) > 0.10
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


@pytest.mark.xfail(strict=True, reason="COCOA's single electrons keep 254 fine ECAL cells per event; ours keep ~157 "
                   "with COCOA's 2x config noise and ~199 with the fine sigmas the published set's energy residual "
                   "points to; the rest is not understood (data/README.md)")
def test_single_electron_cluster_size_matches_cocoa(electrons):
    high = electrons["High_Tree"]
    fine_cells = ak.num(high.cell_e[high.cell_layer < 3]).to_numpy()
    assert fine_cells.mean() == pytest.approx(254, rel=0.20)


def _coarse_minus_fine(events):
    low, high = events["Low_Tree"], events["High_Tree"]
    return ak.sum(low.cell_e[low.cell_layer < 3], axis=1).to_numpy() - \
        ak.sum(high.cell_e[high.cell_layer < 3], axis=1).to_numpy()


def test_published_single_electron_set_has_the_fine_noise(electrons):
    # the published single-electron test set (SuperResolutionHEP, performance_single_electron.ipynb): coarse minus
    # fine ECAL energy per event, i.e. the noise summed over the stored coarse cells, has mean 0.58 GeV and sd
    # 0.28 GeV. COCOA's 2x config noise (fine sigma x 2) gives far more; the fine sigmas unscaled reproduce it.
    fine_noise = _coarse_minus_fine(simulate_events(SingleElectronGun(), 300, factor=2, seed=5,
                                                    coarse_noise=FINE.noise))
    assert fine_noise.mean() == pytest.approx(580, rel=0.2) and fine_noise.std() == pytest.approx(280, rel=0.2)
    config_noise = _coarse_minus_fine(electrons)
    assert config_noise.mean() > 1.3 * 580 and config_noise.std() > 1.3 * 280


def test_coarse_noise_needs_one_sigma_per_layer():
    with pytest.raises(ValueError, match="one positive sigma"):
        simulate_events(SingleElectronGun(), 2, coarse_noise=[13.0, 34.0, 41.0])


def test_multi_particle_statistics_match_cocoa(multi):
    high = multi["High_Tree"]
    ecal = high.cell_layer < 3
    # COCOA's multi-particle set: 648 fine ECAL cells per event (sd 322), 49% nonzero
    assert ak.num(high.cell_e[ecal]).to_numpy().mean() == pytest.approx(648, rel=0.25)
    assert 0.35 < np.mean(ak.to_numpy(ak.flatten(high.cell_e[ecal])) > 0) < 0.65


def _mean_logit_share(events):
    """The published SR model's target normalisation, computed as its TargetTransformation does: the mean over
    nonzero fine ECAL cells of logit(clip(E_child / (1.2 E_parent measured), 0, 1)), alpha = 1e-6, zero shares
    left out."""
    low, high = events["Low_Tree"], events["High_Tree"]
    n_low, n_high = ak.num(low.cell_e).to_numpy(), ak.num(high.cell_e).to_numpy()
    pairs = ak.num(low.low_cell_to_high_cell_edge).to_numpy()
    parent = flat(low.low_cell_to_high_cell_edge, np.int64) + np.repeat(np.cumsum(n_low) - n_low, pairs)
    child = flat(low.high_cell_to_low_cell_edge, np.int64) + np.repeat(np.cumsum(n_high) - n_high, pairs)
    ecal = flat(high.cell_layer, np.int64)[child] < 3
    share = np.clip(flat(high.cell_e)[child] / (1.2 * flat(low.cell_e)[parent]), 0, 1)[ecal]
    share = 1e-6 + (1 - 2e-6) * share[share > 0]
    return np.mean(np.log(share / (1 - share)))


def test_childrens_shares_match_the_published_training_sets(electrons, multi):
    # SuperResolutionHEP's saved checkpoints (config_mv.yml, "computed ignoring the zero ratios") give the mean of
    # this logit over their training sets: -1.142 (single electron 2x) and -3.507 (multi-particle 4x). It falls
    # with every faint child, so it measures how the shower's energy spreads over the children: 1 MeV halo deposits
    # gave -1.81 and -3.90
    assert _mean_logit_share(electrons) == pytest.approx(-1.142, abs=0.45)
    assert _mean_logit_share(multi) == pytest.approx(-3.507, abs=0.45)


def test_noise_alone_makes_clusters_at_the_gaussian_tail_rate():
    # COCOA draws noise on every coarse cell: a cell far from any particle seeds a cluster with P(z > 4.6)
    # = 2.1e-6; on the 2x grid's 39,168 cells, 0.0828 clusters per event
    num = 2000
    events = simulate_events(SingleElectronGun(), num, factor=2, seed=11)
    low, high = events["Low_Tree"], events["High_Tree"]
    truth = flat(low.cell_che) + flat(low.cell_nue)
    event = np.repeat(np.arange(num), ak.num(low.cell_e).to_numpy())
    cluster = event * 1000 + flat(low.cell_topo_idx, np.int64)
    labels, inverse = np.unique(cluster, return_inverse=True)
    noise_only = np.bincount(inverse, weights=truth) == 0
    expected = 39168 * 2.1125e-6 * num  # 165.5, Poisson sd 12.9
    assert abs(noise_only.sum() - expected) < 4 * np.sqrt(expected)
    # their cells carry no particle, and their children are stored, all empty
    cells = noise_only[inverse]
    assert np.all(flat(low.cell_parent_idx, np.int64)[cells] == -1)
    high_event = np.repeat(np.arange(num), ak.num(high.cell_e).to_numpy())
    high_cluster = high_event * 1000 + flat(high.cell_topo_idx, np.int64)
    in_noise = np.isin(high_cluster, labels[noise_only])
    assert in_noise.sum() == 4 * cells.sum() and np.all(flat(high.cell_e)[in_noise] == 0)


def test_written_file_reads_back_and_builds_graphs(electrons, tmp_path):
    path = tmp_path / "e.root"
    trees = check_roundtrip(path, electrons)  # raises listing any branch that differs
    data, slices = build_storage(trees["Low_Tree"], trees["High_Tree"], GraphOptions())
    fine_ecal = ak.num(electrons["High_Tree"].cell_e[electrons["High_Tree"].cell_layer < 3]).to_numpy()
    assert np.array_equal(np.diff(slices["fine_layer"].numpy()), fine_ecal)
    assert float(data.fine_energy.sum()) == pytest.approx(
        float(ak.sum(electrons["High_Tree"].cell_e[electrons["High_Tree"].cell_layer < 3])) / 1000, rel=1e-5)
