"""A parametric, vectorised electromagnetic shower model for electrons and photons in the COCOA calorimeter.

Each particle's visible energy is cut into equal energy "spots" placed in 3D and summed into fine cells.

* Energy. The sampling fluctuation is a Poisson count of quanta of ``q = stochastic_term**2 * 1 GeV`` (10 MeV for
  10%/sqrt(E[GeV])): ``E_vis = q * Poisson(E / q)``, so ``sigma_E / E = stochastic_term / sqrt(E[GeV])`` exactly.
  ``E_vis`` is then split into ``round(E_vis / spot_energy)`` spots of equal energy. With ``spot_energy = q`` this is
  the textbook one-spot-per-quantum model; a larger ``spot_energy`` (the default, 20 MeV) keeps the resolution and
  the mean shapes and halves the work, at the price of slightly coarser sampling of the far tails (fewer tiny
  deposits in cells far from the axis).
* Longitudinal. Spot depths t (in X0) follow the Gamma profile ``dE/dt = E b (bt)^(a-1) e^(-bt) / Gamma(a)``
  (PDG, "Passage of particles through matter") with ``b = 0.5`` and ``t_max = (a - 1)/b = ln(E/Ec) + C``,
  ``C = -0.5`` (electrons) / ``+0.5`` (photons), Ec = CRITICAL_ENERGY of the ECAL mixture. Shower-to-shower
  fluctuations: ``t_max`` of each shower is log-normal around that mean with ``sigma(ln t_max) = 1/(1.26 ln(E/Ec) -
  1.4)`` (Grindhammer & Peters, hep-ex/0001020, homogeneous media), its mean kept at ``ln(E/Ec) + C``.
* Lateral. A mixture of two Grindhammer-Peters shapes ``f(r) = 2 r R^2 / (r^2 + R^2)^2`` (a narrow core and a wide
  halo), each truncated at ``max_radius`` Moliere radii so that sampling is a closed-form inverse CDF. The defaults
  put 90% of the energy inside one R_M and 95% inside 2 R_M. The profile does not widen with depth (a
  simplification: real showers have a narrower core early and a wider halo late). Uniform azimuth.
* Geometry. Depth runs along the line of flight from the front face (X0_ECAL mm per X0 in the ECAL). Spots beyond
  ECAL3 enter the 80 mm iron gap (X0 = 17.57 mm: 4.6 X0, dead, energy lost); what goes deeper lands in the HCAL,
  whose scintillator/iron mixture (volume 1.0 : 1.1) has X0 = 32.3 mm (the lateral spread there keeps the ECAL
  Moliere radius). A transverse displacement s (mm) at transverse radius ``R_T = D / cosh(eta)``, ``D`` the distance
  from the origin, moves a point by ``s / R_T`` in eta and in phi. Spots at |eta| >= 3 are lost.

Deposits are COCOA's "scaled back" energies (sampling fraction already undone); noise is added elsewhere.

Left out: hadrons and hadronic showers, muons, the tracker and any material in front of the calorimeter, the
magnetic field (COCOA's SR samples use B = 0), longitudinal-lateral correlations, the energy dependence of the
lateral profile, and cell-level non-uniformities (cracks, the barrel/endcap transition has no dead material).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from graphsr.detector.geometry import CRITICAL_ENERGY, ETA_MAX, MOLIERE_RADIUS, NUM_ECAL_LAYERS, X0_ECAL, Geometry
from graphsr.simulation.guns import Particles

X0_IRON = 17.57  # mm
# scintillator (X0 425 mm) : iron (17.57 mm) = 1.0 : 1.1 by volume, 1/X0 = sum of volume fraction / X0
X0_HCAL = 1.0 / (1.0 / 2.1 / 425.0 + 1.1 / 2.1 / X0_IRON)  # 32.3 mm


@dataclass(frozen=True)
class ShowerModel:
    """Parameters of the EM shower model (see the module docstring).

    Args:
        stochastic_term: a in sigma_E / E = a / sqrt(E[GeV]).
        spot_energy: MeV per spot; more spots sample the tails better and cost time linearly.
        b: Gamma-profile slope parameter.
        c_electron, c_photon: C in t_max = ln(E / Ec) + C.
        critical_energy: Ec in MeV.
        core_fraction: energy fraction of the lateral core component.
        core_radius, halo_radius: R of the core and halo shapes, in Moliere radii.
        max_radius: lateral truncation, in Moliere radii.
        moliere_radius: mm.
    """

    stochastic_term: float = 0.10
    spot_energy: float = 20.0
    b: float = 0.5
    c_electron: float = -0.5
    c_photon: float = 0.5
    critical_energy: float = CRITICAL_ENERGY
    # solved for 90% within 1 R_M and 95% within 2 R_M given the core radius and truncation
    core_fraction: float = 0.88157
    core_radius: float = 0.10
    halo_radius: float = 2.18597
    max_radius: float = 4.0
    moliere_radius: float = MOLIERE_RADIUS

    @property
    def quantum(self) -> float:
        """MeV per Poisson quantum of the sampling fluctuation."""
        return self.stochastic_term**2 * 1000.0

    def mean_shower_max(self, energy: np.ndarray, photon: np.ndarray) -> np.ndarray:
        """``ln(E / Ec) + C`` in X0, at least 0.5 X0 (the profile needs a > 1)."""
        c = np.where(photon, self.c_photon, self.c_electron)
        return np.maximum(np.log(np.maximum(energy, 1e-9) / self.critical_energy) + c, 0.5)

    def containment(self, radius: np.ndarray | float) -> np.ndarray:
        """Fraction of the energy within ``radius`` (in Moliere radii) of the shower axis."""
        r = np.minimum(np.asarray(radius, dtype=np.float64), self.max_radius)
        cdf = lambda R: (r**2 / (r**2 + R**2)) / (self.max_radius**2 / (self.max_radius**2 + R**2))  # noqa: E731
        return self.core_fraction * cdf(self.core_radius) + (1 - self.core_fraction) * cdf(self.halo_radius)


@dataclass(frozen=True)
class Spots:
    """Energy spots of a batch of showers, spots of one particle consecutive.

    Attributes:
        particle: ``[S]`` int64 index of the particle (into the :class:`Particles` batch).
        depth: ``[S]`` float32 depth along the line of flight in X0 (ECAL X0 from the front face).
        dx, dy: ``[S]`` float32 transverse displacement from the axis in mm (dx along eta, dy along phi).
        energy: ``[P]`` float64 energy per spot of each particle (MeV).
        visible: ``[P]`` float64 visible energy of each particle, before any loss (MeV).
        shower_max: ``[P]`` float64 t_max of each shower in X0.
    """

    particle: np.ndarray
    depth: np.ndarray
    dx: np.ndarray
    dy: np.ndarray
    energy: np.ndarray
    visible: np.ndarray
    shower_max: np.ndarray


def sample_spots(particles: Particles, model: ShowerModel, rng: np.random.Generator) -> Spots:
    """Spots of every particle's shower, in the shower frame (depth, transverse displacement).

    Args:
        particles: the showering particles (electrons and photons; any other pdgid is treated as an electron).
        model: shower parameters.
        rng: random generator.
    """
    energy = particles.e
    photon = particles.pdgid == 22
    visible = model.quantum * rng.poisson(energy / model.quantum)
    num_spots = np.rint(visible / model.spot_energy).astype(np.int64)
    num_spots[(num_spots == 0) & (visible > 0)] = 1
    spot_energy = np.divide(visible, num_spots, out=np.zeros_like(visible), where=num_spots > 0)

    mean_max = model.mean_shower_max(energy, photon)
    log_y = np.log(np.maximum(energy / model.critical_energy, np.e**2))
    sigma = 1.0 / (1.26 * log_y - 1.4)
    shower_max = mean_max * np.exp(sigma * rng.standard_normal(len(energy)) - 0.5 * sigma**2)
    shape = (1.0 + model.b * shower_max).astype(np.float32)

    particle = np.repeat(np.arange(len(energy)), num_spots)
    n = len(particle)
    depth = rng.standard_gamma(shape[particle], dtype=np.float32)
    depth *= np.float32(1.0 / model.b)

    u = rng.random(n, dtype=np.float32)
    core = u < model.core_fraction
    radius_shape = np.where(core, np.float32(model.core_radius), np.float32(model.halo_radius))
    # inverse CDF of the truncated shape; u re-used within its component (it is uniform there)
    u = np.where(core, u / np.float32(model.core_fraction),
                 (u - np.float32(model.core_fraction)) / np.float32(1 - model.core_fraction))
    x2 = np.float32(model.max_radius**2)
    v = u * (x2 / (x2 + radius_shape**2))
    radius = radius_shape * np.sqrt(v / (1 - v)) * np.float32(model.moliere_radius)
    azimuth = rng.random(n, dtype=np.float32) * np.float32(2 * np.pi)
    return Spots(particle, depth, radius * np.cos(azimuth), radius * np.sin(azimuth), spot_energy, visible,
                 shower_max)


@dataclass(frozen=True)
class Deposits:
    """Energy per (particle, fine cell), rows of one particle consecutive.

    Attributes:
        particle: ``[K]`` int64 particle index.
        layer, ieta, iphi: ``[K]`` int64 fine cell.
        energy: ``[K]`` float64 MeV.
    """

    particle: np.ndarray
    layer: np.ndarray
    ieta: np.ndarray
    iphi: np.ndarray
    energy: np.ndarray


def depth_mm(depth_x0: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Depth along the line of flight in mm of a depth in ECAL X0; NaN inside the dead iron gap.

    Material is ECAL (X0_ECAL) down to the back of the last ECAL layer, then iron (X0_IRON) across the gap, then HCAL
    (X0_HCAL).
    """
    ecal_end = geometry.depth_out[NUM_ECAL_LAYERS - 1]
    hcal_start = geometry.depth_in[NUM_ECAL_LAYERS]
    t_ecal = ecal_end / X0_ECAL
    t_hcal = t_ecal + (hcal_start - ecal_end) / X0_IRON
    d = depth_x0 * np.float32(X0_ECAL)
    beyond = depth_x0 >= t_hcal
    d[beyond] = hcal_start + (depth_x0[beyond] - t_hcal) * np.float32(X0_HCAL)
    d[(depth_x0 >= t_ecal) & ~beyond] = np.nan
    return d


def deposit(spots: Spots, particles: Particles, model: ShowerModel, geometry: Geometry) -> Deposits:
    """Sum spots into fine cells, per particle.

    Spots are binned in a window of cells around each particle's axis per layer, wide enough for the lateral
    truncation, so one ``bincount`` replaces sorting millions of keys. The window's cells are placed with
    ``geometry.cell_at``; a spot's cell within it is found with the same floor arithmetic, relative to the axis.

    Args:
        spots: from :func:`sample_spots` for ``particles``.
        particles: the particles.
        model: shower parameters (the lateral truncation sets the window).
        geometry: the fine geometry.

    Raises:
        ValueError: if the lateral truncation spans more than a full turn in phi of some layer.
    """
    num_layers = geometry.num_layers
    num_particles = len(particles)
    n = geometry.n
    d_eta, d_phi = 2 * ETA_MAX / n, 2 * np.pi / n

    # window per (particle, layer): the furthest a spot can land in cells, plus one for the floor
    front = geometry.front_distance(particles.eta)
    cosh = np.cosh(particles.eta)
    reach = model.max_radius * model.moliere_radius * cosh[:, None] / (front[:, None] + geometry.depth_in[None, :])
    half_eta = (np.ceil(reach / d_eta) + 1).astype(np.int64)
    half_phi = (np.ceil(reach / d_phi) + 1).astype(np.int64)
    width_phi = 2 * half_phi + 1
    if np.any(width_phi > n):
        raise ValueError("the lateral truncation spans a full turn in phi: use a smaller max_radius")
    layers = np.broadcast_to(np.arange(num_layers), (num_particles, num_layers))
    centre_eta, centre_phi = geometry.cell_at(layers, particles.eta[:, None], particles.phi[:, None])
    base_eta, base_phi = centre_eta - half_eta, centre_phi - half_phi
    # axis position relative to the window's lower edges, in cells
    axis_eta = (particles.eta[:, None] + ETA_MAX) / d_eta - base_eta
    axis_phi = np.mod(particles.phi[:, None], 2 * np.pi) / d_phi - base_phi
    # local eta rows that hold real cells (0 <= ieta < n); others go to a discarded bin
    valid_lo, valid_hi = -base_eta, n - base_eta
    size = (2 * half_eta + 1) * width_phi
    start = np.concatenate([[0], np.cumsum(size.ravel())])
    trash = int(start[-1])

    depth = depth_mm(spots.depth, geometry)
    layer = np.searchsorted(geometry.depth_out.astype(np.float32), depth, side="right")  # NaN (gap) sorts last
    inside = layer < num_layers
    p, layer, depth = spots.particle[inside], layer[inside], depth[inside]
    pl = p * num_layers + layer
    inv_transverse = (cosh[p] / (front[p] + depth)).astype(np.float32)
    f32 = lambda a: a.astype(np.float32).ravel()  # noqa: E731
    local_eta = np.floor(spots.dx[inside] * inv_transverse * f32(1 / d_eta)[layer] + f32(axis_eta)[pl])
    local_phi = np.floor(spots.dy[inside] * inv_transverse * f32(1 / d_phi)[layer] + f32(axis_phi)[pl])
    local_eta = local_eta.astype(np.int64)
    bins = start[pl] + local_eta * width_phi.ravel()[pl] + local_phi.astype(np.int64)
    bins[(local_eta < valid_lo.ravel()[pl]) | (local_eta >= valid_hi.ravel()[pl])] = trash
    summed = np.bincount(bins, weights=spots.energy[p], minlength=trash + 1)[:trash]
    hit = np.flatnonzero(summed)

    pl_hit = np.searchsorted(start, hit, side="right") - 1
    local = hit - start[pl_hit]
    w = width_phi.ravel()[pl_hit]
    out_layer = pl_hit % num_layers
    out_ieta = local // w + base_eta.ravel()[pl_hit]
    out_iphi = np.mod(local % w + base_phi.ravel()[pl_hit], n[out_layer])
    return Deposits(pl_hit // num_layers, out_layer, out_ieta, out_iphi, summed[hit])


def simulate_showers(particles: Particles, rng: np.random.Generator, model: ShowerModel | None = None,
                     geometry: Geometry | None = None) -> Deposits:
    """Fine-cell deposits of every particle: :func:`sample_spots` then :func:`deposit`."""
    model = model or ShowerModel()
    geometry = geometry or Geometry.cocoa()
    return deposit(sample_spots(particles, model, rng), particles, model, geometry)
