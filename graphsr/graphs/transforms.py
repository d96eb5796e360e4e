"""Invertible energy transforms, as PyG transforms on :class:`~graphsr.graphs.PairData` events or batches.

Each transform reads ``key``, writes ``out_key`` (default: ``key``, in place) and has ``inverse(data, value)`` that
maps values of ``out_key`` back to values of ``key``. Their ``repr`` names every parameter (PyG uses it to tell
whether a processed cache is stale). The diffusion targets themselves are made by
:class:`graphsr.models.sr3.EnergyModel`.
"""

from __future__ import annotations

import torch
from torch_geometric.transforms import BaseTransform


class EnergyTransform(BaseTransform):
    """Base class: ``forward`` maps ``data[key]`` to ``data[out_key]``; ``inverse`` undoes it."""

    def __init__(self, key: str = "fine_energy", out_key: str | None = None):
        self.key, self.out_key = key, out_key or key

    def forward(self, data):
        data[self.out_key] = self.apply(data, data[self.key])
        return data

    def apply(self, data, value: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def inverse(self, data, value: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _params(self) -> str:
        return f"key={self.key!r}, out_key={self.out_key!r}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._params()})"


class SignedLog(EnergyTransform):
    """``asinh(E / scale)``: logarithmic for ``|E| >> scale``, linear near zero, defined for the negative energies
    that noise gives coarse cells.

    Args:
        scale: energy (GeV) where the map turns from linear to logarithmic.
    """

    def __init__(self, key: str = "coarse_energy", out_key: str | None = None, scale: float = 0.01):
        super().__init__(key, out_key)
        self.scale = scale

    def apply(self, data, value):
        return torch.asinh(value / self.scale)

    def inverse(self, data, value):
        return torch.sinh(value) * self.scale

    def _params(self):
        return f"{super()._params()}, scale={self.scale}"
