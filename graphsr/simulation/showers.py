"""A parametric, vectorised electromagnetic shower model for electrons and photons in the COCOA calorimeter.

Each shower is cut into depth slices; each slice's energy is shared among many small deposits placed in 3D and
summed into fine cells. Every random step is drawn for all showers at once.

* Energy. The sampling fluctuation is a Poisson count of quanta of ``q = stochastic_term**2 * 1 GeV`` (10 MeV for
  10%/sqrt(E[GeV])): ``E_vis = q * Poisson(E / q)``, so ``sigma_E / E = stochastic_term / sqrt(E[GeV])`` exactly.
* Longitudinal. ``dE/dt = E b (bt)^(a-1) e^(-bt) / Gamma(a)`` in X0 (PDG, "Passage of particles through matter")
  with mean ``t_max = (a - 1)/b = ln(E/Ec) + C``, ``C = -0.5`` (electrons) / ``+0.5`` (photons) and mean
  ``b = 0.5``. Shower to shower, ``ln t_max`` and ``ln a`` fluctuate as correlated Gaussians with Grindhammer and
  Peters' widths and correlation for homogeneous media (hep-ex/0001020, eqs. 5-8): ``sigma(ln T) = 1 / (1.26 ln y -
  1.4)``, ``sigma(ln a) = 1 / (0.86 ln y - 0.58)``, ``rho = 0.705 - 0.023 ln y`` (y = E/Ec), means kept at the values
  above. The profile is integrated over slices of at most ``slice_x0`` X0 (exact, ``gammainc``); the slice
  energies then fluctuate around it as a Dirichlet draw of concentration ``E_slice / longitudinal_quantum``.
* Lateral. Grindhammer-Peters: ``f(r) = p f_C(r) + (1 - p) f_T(r)`` with ``f_i(r) = 2 r R_i^2 / (r^2 + R_i^2)^2``
  (r in Moliere radii), core radius ``R_C = z1 + z2 tau``, tail radius ``R_T = k1 (exp(k3 (tau - k2)) +
  exp(k4 (tau - k2)))`` and core weight ``p(tau) = p1 exp((p2 - tau)/p3 - exp((p2 - tau)/p3))``, where ``tau = t /
  t_max`` is the depth in units of this shower's maximum and z1, k4, p3 depend on ln E, z2, k1, p1, p2 on the
  mixture's Z: early slices are narrow and core-dominated, late ones wide, and a shower that starts late is narrow
  for longer. All radii of a shower are scaled by one log-normal factor (``lateral_spread``) and a global
  ``lateral_scale`` that puts 90% of a 50 GeV electron's energy inside one Moliere radius (95% inside two); the
  profile is truncated at ``max_radius``.
* Sub-shower structure. Each slice's energy centroid is displaced from the axis by a Gaussian offset of
  ``wander_sigma`` Moliere radii per coordinate, correlated from slice to slice (``wander_correlation``, an AR(1)
  in depth, clipped at 4 sigma): the early sub-showers that carry a shower's energy sideways, so the same coarse
  cells hide different fine patterns.
* Deposits. Each slice's energy is shared among three segments: the core and the tail of the profile above, and a
  wide halo (``halo_fraction`` of the energy, ``f(r)`` of radius ``halo_radius``: Geant4's soft photons far from
  the axis). A segment is carried by ``Poisson(E_segment / mean deposit)`` deposits (at least one) with
  exponentially distributed energies, normalised so that they sum to the segment's energy exactly; core and tail
  deposits average ``spot_energy``, halo deposits ``halo_spot_energy`` (light and many), so cell energies are
  continuous down to fractions of an MeV and the sparse tails are carried by many light deposits.
* Geometry. Depth runs along the line of flight from the front face (X0_ECAL mm per X0 in the ECAL). Slices beyond
  ECAL3 enter the 80 mm iron gap (X0 = 17.57 mm: 4.6 X0, dead, energy lost); deeper slices land in the HCAL, whose
  scintillator/iron mixture (volume 1.0 : 1.1) has X0 = 32.3 mm (the lateral spread there keeps the ECAL Moliere
  radius); what lies beyond HCAL3 leaks out. A transverse displacement s (mm) at transverse radius
  ``R_T = D / cosh(eta)``, ``D`` the distance from the origin at the slice's middle, moves a point by ``s / R_T`` in
  eta and in phi. Deposits at |eta| >= 3 are lost.

Deposits are COCOA's "scaled back" energies (sampling fraction already undone); noise is added elsewhere.

Left out: hadrons and hadronic showers, muons, the tracker and any material in front of the calorimeter, the
magnetic field (COCOA's SR samples use B = 0), the sampling structure of the absorber (COCOA drops each Geant4 step
with probability 1 - f and scales the rest by 1/f; here the exponential deposit energies play that role), and
cell-level non-uniformities (cracks; the barrel/endcap transition has no dead material).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.special import gammainc

from graphsr.detector.geometry import CRITICAL_ENERGY, ETA_MAX, MOLIERE_RADIUS, NUM_ECAL_LAYERS, X0_ECAL, Geometry
from graphsr.simulation.guns import Particles

X0_IRON = 17.57  # mm
# scintillator (X0 425 mm) : iron (17.57 mm) = 1.0 : 1.1 by volume, 1/X0 = sum of volume fraction / X0
X0_HCAL = 1.0 / (1.0 / 2.1 / 425.0 + 1.1 / 2.1 / X0_IRON)  # 32.3 mm
# mass-weighted Z of the ECAL mixture (LAr 0.319, Pb 0.681 by mass): the Z of Grindhammer-Peters' formulas
Z_ECAL = 0.319 * 18 + 0.681 * 82


@dataclass(frozen=True)
class ShowerModel:
    """Parameters of the EM shower model (see the module docstring).

    Args:
        stochastic_term: a in sigma_E / E = a / sqrt(E[GeV]).
        spot_energy: mean MeV per deposit; more deposits sample the tails better and cost time linearly.
        b: mean slope of the Gamma profile.
        c_electron, c_photon: C in t_max = ln(E / Ec) + C.
        critical_energy: Ec in MeV.
        z: atomic number in the Grindhammer-Peters lateral and fluctuation formulas.
        lateral_scale: factor on every lateral radius (tuned: 90% of a 50 GeV shower inside one Moliere radius).
        lateral_spread: shower-to-shower sigma of the log of the lateral scale.
        max_radius: lateral truncation, in Moliere radii.
        halo_fraction: energy fraction of the wide halo (soft photons far from the axis).
        halo_radius: R of the halo's ``f(r)``, in Moliere radii.
        halo_spot_energy: mean MeV per halo deposit (light and many: the halo makes many small cell energies).
            2 MeV reproduces the published sets' fraction of nonzero fine cells and the mean logit of the
            children's share of their parent (data/README.md); 1 MeV made too many faint hits.
        slice_x0: longest depth slice in the ECAL, in X0 (HCAL layers get at most ``hcal_slices`` each).
        hcal_slices: slices per HCAL layer.
        longitudinal_quantum: MeV; slice energies fluctuate like a Dirichlet of concentration E_slice / this.
        wander_sigma: standard deviation (Moliere radii, per coordinate) of each slice's centroid offset.
        wander_correlation: its correlation between consecutive slices.
        moliere_radius: mm.
    """

    stochastic_term: float = 0.10
    spot_energy: float = 10.0
    b: float = 0.5
    c_electron: float = -0.5
    c_photon: float = 0.5
    critical_energy: float = CRITICAL_ENERGY
    z: float = Z_ECAL
    lateral_scale: float = 0.75
    lateral_spread: float = 0.1
    max_radius: float = 8.0
    halo_fraction: float = 0.02
    halo_radius: float = 2.0
    halo_spot_energy: float = 2.0
    slice_x0: float = 2.0
    hcal_slices: int = 2
    longitudinal_quantum: float = 20.0
    wander_sigma: float = 0.1
    wander_correlation: float = 0.8
    moliere_radius: float = MOLIERE_RADIUS

    @property
    def quantum(self) -> float:
        """MeV per Poisson quantum of the sampling fluctuation."""
        return self.stochastic_term**2 * 1000.0

    def mean_shower_max(self, energy: np.ndarray, photon: np.ndarray) -> np.ndarray:
        """``ln(E / Ec) + C`` in X0, at least 0.5 X0 (the profile needs a > 1)."""
        c = np.where(photon, self.c_photon, self.c_electron)
        return np.maximum(np.log(np.maximum(energy, 1e-9) / self.critical_energy) + c, 0.5)

    def lateral(self, energy: np.ndarray, tau: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Grindhammer-Peters ``(R_C, R_T, p)`` (radii in Moliere radii, times ``lateral_scale``) at relative
        depth ``tau`` for showers of ``energy`` MeV; arrays broadcast."""
        log_e = np.log(np.maximum(energy, 1.0) / 1000.0)
        z = self.z
        r_core = (0.0251 + 0.00319 * log_e) + (0.1162 - 0.000381 * z) * tau
        k1, k2, k3, k4 = 0.659 - 0.00309 * z, 0.645, -2.59, 0.3585 + 0.0421 * log_e
        r_tail = k1 * (np.exp(k3 * (tau - k2)) + np.exp(k4 * (tau - k2)))
        p1, p2, p3 = 2.632 - 0.00094 * z, 0.401 + 0.00187 * z, 1.313 - 0.0686 * log_e
        x = (p2 - tau) / p3
        p = np.clip(p1 * np.exp(x - np.exp(x)), 0.0, 1.0)
        scale = self.lateral_scale
        return np.maximum(r_core, 0.01) * scale, np.maximum(r_tail, 0.05) * scale, p

    def containment(self, radius, energy, tau) -> np.ndarray:
        """Fraction of a slice's energy within ``radius`` Moliere radii of the axis (truncated profile)."""
        r_core, r_tail, p = self.lateral(energy, tau)
        return p * _truncated_cdf(radius, r_core, self.max_radius) + \
            (1 - p) * _truncated_cdf(radius, r_tail, self.max_radius)


def _truncated_cdf(r, shape_radius, max_radius):
    """CDF of ``2 r R^2 / (r^2 + R^2)^2`` truncated at ``max_radius``."""
    r = np.minimum(r, max_radius)
    return (r**2 / (r**2 + shape_radius**2)) * ((max_radius**2 + shape_radius**2) / max_radius**2)


@lru_cache(maxsize=8)
def depth_slices(geometry: Geometry, model: ShowerModel) -> dict[str, np.ndarray]:
    """The depth slices of the calorimeter along the line of flight, in X0 of the materials crossed.

    Returns ``{"lo", "hi"}`` (X0), ``"layer"`` (-1 for the dead iron gap and the leakage beyond HCAL3) and
    ``"depth"`` (mm behind the front face at the slice's middle), ``[S]`` each, contiguous from 0 to infinity.
    """
    lo, hi, layer, depth = [], [], [], []
    t, d_prev = 0.0, 0.0
    for i in range(geometry.num_layers):
        d_in, d_out = float(geometry.depth_in[i]), float(geometry.depth_out[i])
        if d_in > d_prev:  # the gap in front of this layer (iron)
            lo.append(t), hi.append(t + (d_in - d_prev) / X0_IRON), layer.append(-1), depth.append(d_prev)
            t = hi[-1]
        x0 = X0_ECAL if i < NUM_ECAL_LAYERS else X0_HCAL
        thickness = (d_out - d_in) / x0
        n = max(1, int(np.ceil(thickness / model.slice_x0))) if i < NUM_ECAL_LAYERS else model.hcal_slices
        for k in range(n):
            lo.append(t + thickness * k / n), hi.append(t + thickness * (k + 1) / n), layer.append(i)
            depth.append(d_in + (d_out - d_in) * (k + 0.5) / n)
        t, d_prev = t + thickness, d_out
    lo.append(t), hi.append(np.inf), layer.append(-1), depth.append(d_prev)
    return {"lo": np.array(lo), "hi": np.array(hi), "layer": np.array(layer), "depth": np.array(depth)}


@dataclass(frozen=True)
class Spots:
    """Energy deposits of a batch of showers, in segments: one segment per (particle, depth slice, lateral
    component), deposits of a segment consecutive, segments in (particle, slice, component) order.

    Attributes:
        segment_particle, segment_layer: ``[G]`` int64 particle index and calorimeter layer (-1: energy lost).
        The components are core, tail and halo (3 segments per slice).
        segment_depth: ``[G]`` float32 depth behind the front face of the segment's slice middle, mm.
        counts: ``[G]`` int64 deposits per segment.
        dx, dy: ``[N]`` float32 transverse displacement of each deposit from the axis in mm (dx along eta).
        energy: ``[N]`` float32 MeV.
        visible: ``[P]`` float64 visible energy of each particle, before any loss (MeV).
        shower_max: ``[P]`` float64 t_max of each shower in X0.
        alpha: ``[P]`` float64 shape a of each shower's Gamma profile (its slope is ``(alpha - 1) / shower_max``).
        slice_energy: ``[P, num_slices]`` float64 energy of each depth slice (:func:`depth_slices`), lost ones
            included.
    """

    segment_particle: np.ndarray
    segment_layer: np.ndarray
    segment_depth: np.ndarray
    counts: np.ndarray
    dx: np.ndarray
    dy: np.ndarray
    energy: np.ndarray
    visible: np.ndarray
    shower_max: np.ndarray
    alpha: np.ndarray
    slice_energy: np.ndarray

    @property
    def particle(self) -> np.ndarray:
        """``[N]`` particle of each deposit."""
        return np.repeat(self.segment_particle, self.counts)

    @property
    def layer(self) -> np.ndarray:
        """``[N]`` layer of each deposit."""
        return np.repeat(self.segment_layer, self.counts)


def _longitudinal(energy, photon, model: ShowerModel, rng: np.random.Generator):
    """Per shower ``(t_max, a)`` with Grindhammer-Peters' correlated log-normal fluctuations, means kept."""
    mean_max = model.mean_shower_max(energy, photon)
    mean_alpha = 1.0 + model.b * mean_max
    log_y = np.log(np.maximum(energy / model.critical_energy, np.e**2))
    sigma_t = 1.0 / (1.26 * log_y - 1.4)
    sigma_a = 1.0 / (0.86 * log_y - 0.58)
    rho = np.clip(0.705 - 0.023 * log_y, -1, 1)
    z1, z2 = rng.standard_normal((2, len(energy)))
    z2 = rho * z1 + np.sqrt(1 - rho**2) * z2
    shower_max = mean_max * np.exp(sigma_t * z1 - 0.5 * sigma_t**2)
    alpha = np.maximum(mean_alpha * np.exp(sigma_a * z2 - 0.5 * sigma_a**2), 1.05)
    return shower_max, alpha


def _wander(num_particles: int, num_slices: int, model: ShowerModel, rng: np.random.Generator):
    """``[2, P, S]`` offsets (x, y; Moliere radii) of each slice's centroid from the axis, AR(1) along the slices."""
    rho = model.wander_correlation
    z = rng.standard_normal((2, num_particles, num_slices)) * model.wander_sigma
    for s in range(1, num_slices):
        z[:, :, s] = rho * z[:, :, s - 1] + np.sqrt(1 - rho**2) * z[:, :, s]
    return np.clip(z, -4 * model.wander_sigma, 4 * model.wander_sigma)


def sample_spots(particles: Particles, model: ShowerModel, rng: np.random.Generator,
                 geometry: Geometry | None = None) -> Spots:
    """Deposits of every particle's shower, in the shower frame (layer, depth, transverse displacement).

    Args:
        particles: the showering particles (electrons and photons; any other pdgid is treated as an electron).
        model: shower parameters.
        rng: random generator.
        geometry: sets the depth slices (default COCOA's).
    """
    geometry = geometry or Geometry.cocoa()
    energy = particles.e
    num = len(energy)
    photon = particles.pdgid == 22
    visible = model.quantum * rng.poisson(energy / model.quantum)
    shower_max, alpha = _longitudinal(energy, photon, model, rng)
    beta = (alpha - 1.0) / shower_max

    # slice energies: the Gamma profile integrated per slice, then Dirichlet fluctuations around it
    slices = depth_slices(geometry, model)
    num_slices = len(slices["layer"])
    cdf_hi = gammainc(alpha[:, None], beta[:, None] * np.minimum(slices["hi"], 1e6)[None, :])
    cdf_lo = gammainc(alpha[:, None], beta[:, None] * slices["lo"][None, :])
    mean_slice = visible[:, None] * np.clip(cdf_hi - cdf_lo, 0.0, None)
    draw = rng.standard_gamma(np.maximum(mean_slice / model.longitudinal_quantum, 1e-6))
    slice_energy = visible[:, None] * draw / np.maximum(draw.sum(1, keepdims=True), 1e-300)

    # lateral shape per (particle, slice) at the slice's relative depth
    tau = 0.5 * (slices["lo"] + np.minimum(slices["hi"], slices["lo"] + 2 * model.slice_x0))[None, :] / \
        shower_max[:, None]
    r_core, r_tail, p_core = model.lateral(energy[:, None], tau)
    shower_scale = np.exp(model.lateral_spread * rng.standard_normal(num) - 0.5 * model.lateral_spread**2)
    r_core, r_tail = r_core * shower_scale[:, None], r_tail * shower_scale[:, None]

    # segments (particle, slice, component): core, tail and halo, each with its share of the slice's energy
    halo = model.halo_fraction
    share = np.stack([p_core * (1 - halo), (1 - p_core) * (1 - halo), np.full_like(p_core, halo)], axis=-1)
    radii = np.stack([r_core, r_tail, np.broadcast_to(model.halo_radius * shower_scale[:, None], r_core.shape)],
                     axis=-1)
    segment_energy = slice_energy[:, :, None] * share
    mean_deposit = np.array([model.spot_energy, model.spot_energy, model.halo_spot_energy])
    in_detector = (slices["layer"] >= 0)[None, :, None]
    counts = np.where(in_detector, rng.poisson(segment_energy / mean_deposit), 0)
    counts[(counts == 0) & (segment_energy > 0) & in_detector] = 1
    counts = counts.ravel()
    rep = lambda a: np.repeat(np.asarray(a, dtype=np.float32).ravel(), counts)  # noqa: E731  segment -> deposit
    n = int(counts.sum())

    # radii by the inverse CDF of each segment's truncated component
    r2max = np.float32(model.max_radius**2)
    v = rng.random(n, dtype=np.float32) * rep(r2max / (r2max + radii**2))
    r2 = rep(radii**2) * v / (1 - v)
    azimuth = rng.random(n, dtype=np.float32) * np.float32(2 * np.pi)
    radius = np.sqrt(r2) * np.float32(model.moliere_radius)
    # the slice's energy centroid wanders off the axis (AR(1) in depth), the same for its three components
    wander = np.repeat(_wander(num, num_slices, model, rng), 3, axis=-1) * np.float32(model.moliere_radius)
    dx = radius * np.cos(azimuth) + rep(wander[0])
    dy = radius * np.sin(azimuth) + rep(wander[1])
    weight = rng.standard_exponential(n, dtype=np.float32)
    # each segment's deposits share exactly its energy
    has = counts > 0
    sums = np.zeros(len(counts))
    sums[has] = np.add.reduceat(weight, (np.cumsum(counts) - counts)[has])
    weight *= rep(segment_energy.ravel() / np.maximum(sums, 1e-30))

    segment_particle = np.repeat(np.arange(num), 3 * num_slices)
    segment_slice = np.tile(np.repeat(np.arange(num_slices), 3), num)
    return Spots(segment_particle, slices["layer"][segment_slice], slices["depth"].astype(np.float32)[segment_slice],
                 counts, dx, dy, weight, visible, shower_max, alpha, slice_energy)


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


def deposit(spots: Spots, particles: Particles, model: ShowerModel, geometry: Geometry) -> Deposits:
    """Sum deposits into fine cells, per particle.

    Deposits are binned in a window of cells around each particle's axis per layer, wide enough for the lateral
    truncation, so one ``bincount`` replaces sorting millions of keys. The window's cells are placed with
    ``geometry.cell_at``; a deposit's cell within it is found with the same floor arithmetic, relative to the axis.
    Everything that depends on the segment alone (window, scale from mm to cells) is computed per segment and
    repeated over its deposits.

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

    # window per (particle, layer): the furthest a deposit can land in cells, plus one for the floor
    front = geometry.front_distance(particles.eta)
    cosh = np.cosh(particles.eta)
    farthest = (model.max_radius + 4 * np.sqrt(2) * model.wander_sigma) * model.moliere_radius
    reach = farthest * cosh[:, None] / (front[:, None] + geometry.depth_in[None, :])
    half_eta = (np.ceil(reach / d_eta) + 1).astype(np.int64)
    half_phi = (np.ceil(reach / d_phi) + 1).astype(np.int64)
    width_phi = 2 * half_phi + 1
    if np.any(width_phi > n):
        raise ValueError("the lateral truncation spans a full turn in phi: use a smaller max_radius")
    layers = np.broadcast_to(np.arange(num_layers), (num_particles, num_layers))
    centre_eta, centre_phi = geometry.cell_at(layers, particles.eta[:, None], particles.phi[:, None])
    base_eta, base_phi = centre_eta - half_eta, centre_phi - half_phi
    start = np.concatenate([[0], np.cumsum(((2 * half_eta + 1) * width_phi).ravel())])

    # per segment: mm -> cells of its layer, the axis in window cells, the window's first bin and row width
    counts = spots.counts  # segments of lost energy (layer -1) hold no deposits
    p, layer = spots.segment_particle, np.maximum(spots.segment_layer, 0)
    pl = p * num_layers + layer
    inv_transverse = cosh[p] / (front[p] + spots.segment_depth)
    axis_eta = (particles.eta[p] + ETA_MAX) / d_eta[layer] - base_eta.ravel()[pl]
    axis_phi = np.mod(particles.phi[p], 2 * np.pi) / d_phi[layer] - base_phi.ravel()[pl]
    rep = lambda a, dtype=np.float32: np.repeat(np.asarray(a, dtype=dtype), counts)  # noqa: E731
    local_eta = np.floor(spots.dx * rep(inv_transverse / d_eta[layer]) + rep(axis_eta)).astype(np.int64)
    local_phi = np.floor(spots.dy * rep(inv_transverse / d_phi[layer]) + rep(axis_phi)).astype(np.int64)
    bins = rep(start[pl], np.int64) + local_eta * rep(width_phi.ravel()[pl], np.int64) + local_phi
    summed = np.bincount(bins, weights=spots.energy, minlength=int(start[-1]))
    hit = np.flatnonzero(summed)

    pl_hit = np.searchsorted(start, hit, side="right") - 1
    local = hit - start[pl_hit]
    w = width_phi.ravel()[pl_hit]
    out_layer = pl_hit % num_layers
    out_ieta = local // w + base_eta.ravel()[pl_hit]
    out_iphi = np.mod(local % w + base_phi.ravel()[pl_hit], n[out_layer])
    real = (out_ieta >= 0) & (out_ieta < n[out_layer])  # window rows beyond |eta| = 3 hold lost energy
    return Deposits(pl_hit[real] // num_layers, out_layer[real], out_ieta[real], out_iphi[real], summed[hit][real])


def simulate_showers(particles: Particles, rng: np.random.Generator, model: ShowerModel | None = None,
                     geometry: Geometry | None = None) -> Deposits:
    """Fine-cell deposits of every particle: :func:`sample_spots` then :func:`deposit`."""
    model = model or ShowerModel()
    geometry = geometry or Geometry.cocoa()
    return deposit(sample_spots(particles, model, rng, geometry), particles, model, geometry)
