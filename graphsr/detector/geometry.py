"""The COCOA calorimeter as data: layers, (eta, phi) grids, cell ids and positions.

Every layer is an ``N x N`` grid in (eta, phi) with eta in [-3, 3] and phi in (-pi, pi]. COCOA's default grid is the
fine ("truth") grid of the super-resolution studies; a coarse geometry merges ``factor x factor`` fine cells and its
noise per cell grows by ``factor`` (Gaussian noise of the merged cells added in quadrature).

Depth is measured along the particle's line of flight from the calorimeter front face, the same for every eta, as
COCOA places its cells: the distance of a point at depth ``d`` from the origin is ``D_front(eta) + d`` with
``D_front = R0 cosh(eta)`` in the barrel (|eta| <= 1.5) and ``R0 sinh(1.5) / |cos(theta)|`` in the endcaps.

All conversions accept numpy arrays or torch tensors and return the same kind (on the same device).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property

import numpy as np
import torch

ETA_MAX = 3.0
BARREL_ETA = 1.5
R0 = 1500.0  # mm, inner radius of the calorimeter
X0_ECAL = 23.53  # mm, radiation length of the LAr/Pb mixture
LAMBDA_HCAL = 265.7  # mm, interaction length of the scintillator/Fe mixture
MOLIERE_RADIUS = 46.0  # mm, ECAL mixture (Es X0 / Ec with the PDG values)
CRITICAL_ENERGY = 10.8  # MeV, effective critical energy of the ECAL mixture


@dataclass(frozen=True)
class Layer:
    """One calorimeter layer.

    Args:
        name: ``"ECAL1"`` ... ``"HCAL3"``.
        r_in, r_out: radial extent in mm (barrel), i.e. depth ``r - R0`` along the line of flight.
        n: cells per side of the (eta, phi) grid.
        noise: Gaussian noise sigma of one cell in MeV.
    """

    name: str
    r_in: float
    r_out: float
    n: int
    noise: float

    @property
    def is_ecal(self) -> bool:
        return self.name.startswith("ECAL")

    @property
    def r_mid(self) -> float:
        return 0.5 * (self.r_in + self.r_out)


# COCOA's default (fine) layers: reference/cocoa.md.
COCOA_LAYERS = (
    Layer("ECAL1", 1500.00, 1594.11, 256, 13.0),
    Layer("ECAL2", 1594.11, 1970.56, 256, 34.0),
    Layer("ECAL3", 1970.56, 2017.62, 128, 41.0),
    Layer("HCAL1", 2097.62, 2496.17, 64, 75.0),
    Layer("HCAL2", 2496.17, 3585.57, 64, 50.0),
    Layer("HCAL3", 3585.57, 4063.84, 32, 25.0),
)
NUM_ECAL_LAYERS = 3
LAYER_NAMES = tuple(layer.name for layer in COCOA_LAYERS)
SEED_LAYER = 1  # ECAL2, the deepest-resolution ECAL layer: its local maxima seed showers in both reconstructions


def _namespace(x):
    return torch if isinstance(x, torch.Tensor) else np


@dataclass(frozen=True)
class Geometry:
    """A COCOA calorimeter at some granularity.

    ``Geometry.cocoa()`` is COCOA's default (the fine grid); ``Geometry.cocoa().coarsen(2)`` the 2x coarse grid of the
    super-resolution studies. Cells have a global id ``offset[layer] + ieta * n + iphi``.

    Args:
        layers: the layers, innermost first.
        factor: how many fine cells per side one cell of this geometry merges (1 for COCOA's default).
    """

    layers: tuple[Layer, ...] = COCOA_LAYERS
    factor: int = 1
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def cocoa(cls) -> "Geometry":
        return cls()

    def coarsen(self, factor: int) -> "Geometry":
        """The geometry that merges ``factor x factor`` cells of this one; noise per cell grows by ``factor``."""
        factor = int(factor)
        if factor < 1:
            raise ValueError(f"coarsening factor must be a positive integer, got {factor}")
        bad = [layer.name for layer in self.layers if layer.n % factor]
        if bad:
            raise ValueError(f"factor {factor} does not divide the grids of layers {bad}")
        layers = tuple(replace(la, n=la.n // factor, noise=la.noise * factor) for la in self.layers)
        return Geometry(layers, self.factor * factor)

    def scale_to(self, fine: "Geometry") -> int:
        """The integer factor between this (coarse) geometry and ``fine``; raises if the grids do not nest."""
        ratios = {fine_layer.n / layer.n for layer, fine_layer in zip(self.layers, fine.layers)}
        if len(self.layers) != len(fine.layers) or len(ratios) != 1:
            raise ValueError(f"geometries do not nest: {self.grid_sizes} vs {fine.grid_sizes}")
        (ratio,) = ratios
        if ratio != int(ratio) or ratio < 1:
            raise ValueError(f"granularity ratio {ratio} between {self.grid_sizes} and {fine.grid_sizes} "
                             "is not a positive integer")
        return int(ratio)

    # ---------------------------------------------------------------------------------------------------- tables
    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def grid_sizes(self) -> tuple[int, ...]:
        return tuple(layer.n for layer in self.layers)

    @cached_property
    def n(self) -> np.ndarray:
        """Cells per side, per layer."""
        return np.array(self.grid_sizes, dtype=np.int64)

    @cached_property
    def noise(self) -> np.ndarray:
        """Noise sigma per cell in MeV, per layer."""
        return np.array([layer.noise for layer in self.layers], dtype=np.float64)

    @cached_property
    def offsets(self) -> np.ndarray:
        """First global cell id of each layer, plus the total number of cells at the end."""
        return np.concatenate([[0], np.cumsum(self.n**2)]).astype(np.int64)

    @property
    def num_cells(self) -> int:
        return int(self.offsets[-1])

    @cached_property
    def depth_in(self) -> np.ndarray:
        """Depth of each layer's front face along the line of flight (mm)."""
        return np.array([layer.r_in - R0 for layer in self.layers])

    @cached_property
    def depth_out(self) -> np.ndarray:
        return np.array([layer.r_out - R0 for layer in self.layers])

    def _table(self, name: str, like):
        """Per-layer table ``name`` as the array kind of ``like``."""
        values = getattr(self, name)
        if isinstance(like, torch.Tensor):
            key = (name, like.device)
            if key not in self._cache:
                self._cache[key] = torch.as_tensor(values, device=like.device)
            return self._cache[key]
        return values

    # ---------------------------------------------------------------------------------------------- cell indices
    def cell_id(self, layer, ieta, iphi):
        """Global cell id of (layer, ieta, iphi)."""
        n = self._table("n", layer)[layer]
        return self._table("offsets", layer)[layer] + ieta * n + iphi

    def cell_index(self, cell_id):
        """(layer, ieta, iphi) of global cell ids; raises on ids outside the detector."""
        xp = _namespace(cell_id)
        if len(cell_id) and (int(cell_id.min()) < 0 or int(cell_id.max()) >= self.num_cells):
            raise ValueError(f"cell ids outside [0, {self.num_cells})")
        offsets = self._table("offsets", cell_id)
        layer = xp.searchsorted(offsets, cell_id, side="right") - 1
        local = cell_id - offsets[layer]
        n = self._table("n", cell_id)[layer]
        return layer, local // n, local % n

    # ------------------------------------------------------------------------------------------- eta, phi <-> cell
    def cell_center(self, layer, ieta, iphi):
        """(eta, phi) of cell centres; phi in (-pi, pi]."""
        xp = _namespace(layer)
        n = self._table("n", layer)[layer]
        eta = -ETA_MAX + (ieta + 0.5) * (2 * ETA_MAX / n)
        phi = (iphi + 0.5) * (2 * np.pi / n)
        phi = xp.where(phi > np.pi, phi - 2 * np.pi, phi)
        return eta, phi

    def cell_at(self, layer, eta, phi):
        """(ieta, iphi) of the cell of ``layer`` that contains (eta, phi), COCOA's recovery formula.

        Points with |eta| >= 3 get ieta outside [0, n): check ``self.contains(layer, ieta)``.
        """
        xp = _namespace(eta)
        n = self._table("n", layer)[layer]
        ieta = xp.floor((eta + ETA_MAX) / (2 * ETA_MAX) * n)
        iphi = xp.floor((phi % (2 * np.pi)) / (2 * np.pi) * n)
        # phi % 2pi can round up to exactly 2pi for phi just below 0
        iphi = xp.where(iphi >= n, iphi - n, iphi)
        if xp is torch:
            return ieta.long(), iphi.long()
        return ieta.astype(np.int64), iphi.astype(np.int64)

    def contains(self, layer, ieta):
        n = self._table("n", layer)[layer]
        return (ieta >= 0) & (ieta < n)

    # ------------------------------------------------------------------------------------------------ positions
    @staticmethod
    def front_distance(eta):
        """Distance (mm) from the origin to the calorimeter front face along the direction eta."""
        xp = _namespace(eta)
        abs_eta = xp.abs(eta)
        barrel = R0 * xp.cosh(eta)
        # endcap face at z = R0 sinh(1.5); clip keeps the unused branch finite at eta = 0
        endcap = R0 * np.sinh(BARREL_ETA) * xp.cosh(eta) / xp.sinh(xp.clip(abs_eta, BARREL_ETA, None))
        return xp.where(abs_eta <= BARREL_ETA, barrel, endcap)

    def position(self, eta, phi, depth):
        """Cartesian (x, y, z) in mm of the point at ``depth`` mm behind the front face along (eta, phi)."""
        xp = _namespace(eta)
        distance = self.front_distance(eta) + depth
        r_transverse = distance / xp.cosh(eta)
        return r_transverse * xp.cos(phi), r_transverse * xp.sin(phi), distance * xp.tanh(eta)

    def cell_position(self, layer, ieta, iphi):
        """Cartesian centre (x, y, z) in mm of cells, at the middle of their layer's depth."""
        eta, phi = self.cell_center(layer, ieta, iphi)
        depth = 0.5 * (self._table("depth_in", layer)[layer] + self._table("depth_out", layer)[layer])
        return self.position(eta, phi, depth)

    # --------------------------------------------------------------------------------------- fine <-> coarse map
    def parent(self, coarse: "Geometry", layer, ieta, iphi):
        """(ieta, iphi) in ``coarse`` of the cells (layer, ieta, iphi) of this (fine) geometry."""
        scale = coarse.scale_to(self)
        return ieta // scale, iphi // scale

    def parent_id(self, coarse: "Geometry", cell_id):
        """Global coarse-cell id of the parent of each fine cell id."""
        layer, ieta, iphi = self.cell_index(cell_id)
        return coarse.cell_id(layer, *self.parent(coarse, layer, ieta, iphi))

    def children(self, fine: "Geometry", layer, ieta, iphi):
        """Children of coarse cells (of this geometry) in ``fine``, as arrays of shape ``[..., scale**2]``.

        Children of one parent are ordered by (ieta, iphi), the block order the readers use.
        """
        xp = _namespace(layer)
        scale = self.scale_to(fine)
        offset = xp.arange(scale * scale)
        if xp is torch:
            offset = offset.to(layer.device)
        d_eta, d_phi = offset // scale, offset % scale
        expand = lambda a: a[..., None]  # noqa: E731
        return (expand(layer) + 0 * offset, expand(ieta) * scale + d_eta, expand(iphi) * scale + d_phi)
