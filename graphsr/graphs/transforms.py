"""Invertible energy transforms, as PyG transforms on :class:`~graphsr.graphs.PairData` events or batches.

Each transform reads ``key``, writes ``out_key`` (default: ``key``, in place) and has ``inverse(data, value)`` that
maps values of ``out_key`` back to values of ``key``, so generated targets can be turned back into energies.
Chain them with :class:`InvertibleCompose`. Their ``repr`` names every parameter (PyG uses it to tell whether a
processed cache is stale).
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


class FractionOfParent(EnergyTransform):
    r"""Each fine cell's energy as a fraction of ``margin`` times its parent's measured energy, in logit space.

    ``f = clamp(E_fine / (margin * max(E_parent, floor)), 0, 1)`` and ``y = logit(eps + (1 - 2 eps) f)``, as the
    published model (arXiv 2409.16052) with margin 1.2: children need not sum to the parent, so a model may also
    remove the coarse noise. The inverse is exact for fractions in [0, 1].

    Args:
        margin: headroom above the parent energy.
        floor: smallest parent energy (GeV) used, for parents that noise made tiny or negative.
        eps: keeps the logit finite for empty children and full parents.
    """

    def __init__(self, key: str = "fine_energy", out_key: str | None = None, margin: float = 1.2,
                 floor: float = 1e-3, eps: float = 1e-4):
        super().__init__(key, out_key)
        self.margin, self.floor, self.eps = margin, floor, eps

    def parent_scale(self, data) -> torch.Tensor:
        return self.margin * data.coarse_energy.clamp_min(self.floor)[data.fine_parent]

    def apply(self, data, value):
        fraction = (value / self.parent_scale(data)).clamp(0.0, 1.0)
        return torch.logit(self.eps + (1 - 2 * self.eps) * fraction)

    def inverse(self, data, value):
        fraction = ((torch.sigmoid(value) - self.eps) / (1 - 2 * self.eps)).clamp(0.0, 1.0)
        return fraction * self.parent_scale(data)

    def _params(self):
        return f"{super()._params()}, margin={self.margin}, floor={self.floor}, eps={self.eps}"


class Standardize(EnergyTransform):
    """``(x - mean) / std`` with constants fitted on training data (``fit``)."""

    def __init__(self, key: str = "fine_energy", out_key: str | None = None, mean: float = 0.0, std: float = 1.0):
        super().__init__(key, out_key)
        self.mean, self.std = float(mean), float(std)

    def fit(self, values: torch.Tensor) -> "Standardize":
        self.mean, self.std = float(values.mean()), float(values.std().clamp_min(1e-12))
        return self

    def apply(self, data, value):
        return (value - self.mean) / self.std

    def inverse(self, data, value):
        return value * self.std + self.mean

    def _params(self):
        return f"{super()._params()}, mean={self.mean!r}, std={self.std!r}"


class InvertibleCompose(BaseTransform):
    """Apply transforms in order; ``inverse`` applies their inverses in reverse order.

    The transforms must form a chain: each one reads the key the previous one wrote.
    """

    def __init__(self, transforms: list[EnergyTransform]):
        self.transforms = list(transforms)

    def forward(self, data):
        for transform in self.transforms:
            data = transform(data)
        return data

    def inverse(self, data, value: torch.Tensor) -> torch.Tensor:
        for transform in reversed(self.transforms):
            value = transform.inverse(data, value)
        return value

    def __repr__(self) -> str:
        return f"{type(self).__name__}([{', '.join(map(repr, self.transforms))}])"
