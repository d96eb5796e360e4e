"""Detector description: the COCOA calorimeter geometry."""

from graphsr.detector.geometry import (
    COCOA_LAYERS,
    CRITICAL_ENERGY,
    MOLIERE_RADIUS,
    NUM_ECAL_LAYERS,
    X0_ECAL,
    Geometry,
    Layer,
)

__all__ = ["COCOA_LAYERS", "CRITICAL_ENERGY", "MOLIERE_RADIUS", "NUM_ECAL_LAYERS", "X0_ECAL", "Geometry", "Layer"]
