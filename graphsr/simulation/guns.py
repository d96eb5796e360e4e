"""Particle guns of the COCOA super-resolution datasets: single electrons and electron + photon events.

Particles are massless (E = pT cosh(eta)) and come from the origin. pdgid 11 (electron, always negative charge:
with no magnetic field and no tracker the sign changes nothing) and 22 (photon). Energies in MeV, angles in rad,
phi in (-pi, pi].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from graphsr.detector.geometry import ETA_MAX, COCOA_LAYERS

ELECTRON = 11
PHOTON = 22
# fine ECAL cell size, the unit of the photon offsets of the multi-particle gun
FINE_D_ETA = 2 * ETA_MAX / COCOA_LAYERS[0].n
FINE_D_PHI = 2 * np.pi / COCOA_LAYERS[0].n


def wrap_phi(phi: np.ndarray) -> np.ndarray:
    """phi mapped into (-pi, pi]."""
    return np.pi - np.mod(np.pi - phi, 2 * np.pi)


def _rng(seed: int | np.random.Generator | np.random.SeedSequence | None) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


@dataclass(frozen=True)
class Particles:
    """Flat particle arrays of a batch of events, particles of one event consecutive.

    Attributes:
        pdgid: ``[P]`` int32 PDG codes.
        e, pt: ``[P]`` float64 energy and transverse momentum, MeV.
        eta, phi: ``[P]`` float64 direction; phi in (-pi, pi].
        event: ``[P]`` int64 event index of each particle, non-decreasing.
        num_events: events in the batch (events may not be empty, but the count is explicit).
    """

    pdgid: np.ndarray
    e: np.ndarray
    pt: np.ndarray
    eta: np.ndarray
    phi: np.ndarray
    event: np.ndarray
    num_events: int

    def __len__(self) -> int:
        return len(self.pdgid)

    @property
    def counts(self) -> np.ndarray:
        """``[num_events]`` particles per event."""
        return np.bincount(self.event, minlength=self.num_events)

    @property
    def offsets(self) -> np.ndarray:
        """``[num_events + 1]`` first particle of each event, then the total."""
        return np.concatenate([[0], np.cumsum(self.counts)])

    @property
    def charged(self) -> np.ndarray:
        return self.pdgid != PHOTON

    @classmethod
    def make(cls, pdgid, pt, eta, phi, event, num_events: int) -> Particles:
        """Particles from pT (MeV), eta, phi, massless; phi is wrapped into (-pi, pi]."""
        pt, eta = np.asarray(pt, dtype=np.float64), np.asarray(eta, dtype=np.float64)
        return cls(np.asarray(pdgid, dtype=np.int32), pt * np.cosh(eta), pt, eta,
                   wrap_phi(np.asarray(phi, dtype=np.float64)), np.asarray(event, dtype=np.int64), int(num_events))


@dataclass(frozen=True)
class SingleElectronGun:
    """One electron per event, flat in pT, |eta| and phi (the SR paper's single-electron set).

    Args:
        pt_min, pt_max: pT range, MeV.
        eta_min, eta_max: eta_min <= |eta| < eta_max, flat in eta (both signs).
    """

    pt_min: float = 50_000.0
    pt_max: float = 51_000.0
    eta_max: float = 0.01
    eta_min: float = 0.0

    def __post_init__(self):
        if not 0 < self.pt_min <= self.pt_max:
            raise ValueError(f"need 0 < pt_min <= pt_max, got {self.pt_min}, {self.pt_max}")
        if not 0 <= self.eta_min <= self.eta_max < ETA_MAX:
            raise ValueError(f"need 0 <= eta_min <= eta_max < {ETA_MAX}, got {self.eta_min}, {self.eta_max}")

    def sample(self, num_events: int, rng: int | np.random.Generator | None = None) -> Particles:
        """``num_events`` events of one electron each."""
        rng = _rng(rng)
        pt = rng.uniform(self.pt_min, self.pt_max, num_events)
        eta = rng.uniform(self.eta_min, self.eta_max, num_events) * rng.choice([-1.0, 1.0], num_events) \
            if self.eta_min > 0 else rng.uniform(-self.eta_max, self.eta_max, num_events)
        phi = rng.uniform(-np.pi, np.pi, num_events)
        return Particles.make(np.full(num_events, ELECTRON), pt, eta, phi, np.arange(num_events), num_events)


@dataclass(frozen=True)
class MultiParticleGun:
    """An electron (probability ``electron_prob``) plus 0-``max_photons`` photons close to it.

    Each photon is offset from the electron (or, in events without one, from a random direction drawn like the
    electron's) by ``N(offset_mean, offset_sd)`` fine ECAL cells in eta and, independently, in phi, each with a random
    sign. Events that would be empty (no electron, no photon) draw their photon count again from ``1..max_photons``,
    so every event has at least one particle. Photons pushed to |eta| >= 3 (possible only if ``eta_max`` is close to
    3) are refused at construction: the defaults keep them within |eta| < 2.5 + 10 sd-offsets of fine cells < 2.8.

    Args:
        electron_prob: probability of an electron in the event.
        electron_pt_min, electron_pt_max: electron pT range, MeV.
        eta_max: |eta| of the electron (or the reference direction), flat.
        max_photons: photon count is uniform in ``0..max_photons``.
        photon_pt_min, photon_pt_max: photon pT range, MeV.
        offset_mean, offset_sd: photon offset in fine cells (6/256 in eta, 2 pi/256 in phi).
    """

    electron_prob: float = 0.75
    electron_pt_min: float = 20_000.0
    electron_pt_max: float = 50_000.0
    eta_max: float = 2.5
    max_photons: int = 3
    photon_pt_min: float = 5_000.0
    photon_pt_max: float = 25_000.0
    offset_mean: float = 4.0
    offset_sd: float = 1.0

    def __post_init__(self):
        if not 0 <= self.electron_prob <= 1:
            raise ValueError(f"electron_prob must lie in [0, 1], got {self.electron_prob}")
        if self.max_photons < 1 and self.electron_prob < 1:
            raise ValueError("events without an electron need max_photons >= 1")
        for lo, hi in ((self.electron_pt_min, self.electron_pt_max), (self.photon_pt_min, self.photon_pt_max)):
            if not 0 < lo <= hi:
                raise ValueError(f"need 0 < pt_min <= pt_max, got {lo}, {hi}")
        reach = self.eta_max + (abs(self.offset_mean) + 10 * self.offset_sd) * FINE_D_ETA
        if reach >= ETA_MAX:
            raise ValueError(f"photons could reach |eta| = {reach:.2f} >= {ETA_MAX}: lower eta_max or the offsets")

    def sample(self, num_events: int, rng: int | np.random.Generator | None = None) -> Particles:
        """``num_events`` events; the electron (if any) first, then the photons."""
        rng = _rng(rng)
        has_electron = rng.random(num_events) < self.electron_prob
        num_photons = rng.integers(0, self.max_photons + 1, num_events)
        empty = ~has_electron & (num_photons == 0)
        num_photons[empty] = rng.integers(1, self.max_photons + 1, int(empty.sum()))
        axis_eta = rng.uniform(-self.eta_max, self.eta_max, num_events)
        axis_phi = rng.uniform(-np.pi, np.pi, num_events)
        electron_pt = rng.uniform(self.electron_pt_min, self.electron_pt_max, num_events)

        counts = has_electron + num_photons
        event = np.repeat(np.arange(num_events), counts)
        first = np.concatenate([[0], np.cumsum(counts)[:-1]])
        is_electron = np.zeros(len(event), dtype=bool)
        is_electron[first[has_electron]] = True
        num_gamma = int(num_photons.sum())
        offset = rng.normal(self.offset_mean, self.offset_sd, (2, num_gamma))
        offset *= rng.choice([-1.0, 1.0], (2, num_gamma))
        gamma_event = event[~is_electron]

        pt, eta, phi = (np.empty(len(event)) for _ in range(3))
        pt[is_electron] = electron_pt[has_electron]
        eta[is_electron], phi[is_electron] = axis_eta[has_electron], axis_phi[has_electron]
        pt[~is_electron] = rng.uniform(self.photon_pt_min, self.photon_pt_max, num_gamma)
        eta[~is_electron] = axis_eta[gamma_event] + offset[0] * FINE_D_ETA
        phi[~is_electron] = axis_phi[gamma_event] + offset[1] * FINE_D_PHI
        pdgid = np.where(is_electron, ELECTRON, PHOTON)
        return Particles.make(pdgid, pt, eta, phi, event, num_events)
