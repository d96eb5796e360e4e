"""A fast parametric simulator of COCOA electromagnetic showers that writes COCOA's super-resolution ROOT format."""

from graphsr.simulation.events import simulate_events
from graphsr.simulation.guns import ELECTRON, PHOTON, MultiParticleGun, Particles, SingleElectronGun
from graphsr.simulation.showers import ShowerModel, simulate_showers

__all__ = ["ELECTRON", "PHOTON", "MultiParticleGun", "Particles", "ShowerModel", "SingleElectronGun",
           "simulate_events", "simulate_showers"]
