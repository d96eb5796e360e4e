"""SR3-style conditional super-resolution of fine-cell energies (Saharia et al., arXiv 2104.07636).

The energy model factorises each coarse cell's children into their true total and their shares (as CaloScore v2
does for calorimeter images), and the diffusion generates both at once, given the measured coarse cells:

* totals: per coarse cell, the noise realisation ``z = (E_measured - T) / sigma`` in units of the cell's known
  noise sigma, where ``T`` is the true (noise-free) total of its children. A priori z is exactly a standard normal
  whatever T, so the model only learns how the event's other cells move it; a sample gives
  ``T = max(E_measured - sigma z, 0)``, a draw from the total's posterior given the measurement. The measurement
  enters once, through this posterior.
* shares: per fine cell, ``log((E + floor) / sum over siblings of (E + floor))``, standardised; a sample's shares
  are the per-parent softmax of the generated values, so they lie on the simplex and the children sum exactly to
  the sampled total. ``floor`` (0.01 MeV) keeps empty children finite; a child generated at the floor gets a
  negligible energy.

Every truth can be represented (no clipping of children above their parent, no cap on noise-low parents), and
the model's own samples are unbiased when the model is right: there is no post-hoc energy scale.

Modes: ``posterior`` (the above) or ``conserving`` (the generated shares of the measured energy: children sum to
the measurement exactly, noise included).

The regression baseline (``parameterisation: regression``) is trained in energy space instead: it predicts each
child's energy (in units of the training set's fine-energy spread) with a mean-squared error, so its prediction is
the conditional mean of the energy itself, not a transform of it.

:class:`SR3Network` is the raw network F; :class:`graphsr.diffusion.Denoiser` wraps it into D(x; sigma), with the
state ``x`` holding the fine targets first, then the coarse ones.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from graphsr import ops
from graphsr.config import ModelConfig
from graphsr.detector import Geometry
from graphsr.units import MEV_PER_GEV
from graphsr.graphs.transforms import SignedLog
from graphsr.nn import GraphTransformer, NoiseEmbedding

COARSE_INPUT = SignedLog("coarse_energy", "coarse_input", scale=0.01)
SHARE_FLOOR = 1e-5  # GeV added to every child before taking log-shares
SNR_SCALE = 10.0    # measured energy / noise sigma is fed to the network divided by this
MODES = ("posterior", "conserving")


def noise_sigma(data, factor: int) -> torch.Tensor:
    """``[Nc]`` noise sigma (GeV) of each coarse cell of ``data`` at the coarse granularity ``factor``."""
    table = torch.as_tensor(Geometry.cocoa().coarsen(factor).noise / MEV_PER_GEV, dtype=data.coarse_energy.dtype,
                            device=data.coarse_energy.device)
    return table[data.coarse_layer]


def add_inputs(batch, factor: int):
    """Add the network's inputs: ``coarse_input`` (signed log of the measured energy), ``coarse_noise`` (sigma, GeV)
    and ``coarse_snr`` (measured energy / sigma)."""
    batch = COARSE_INPUT(batch)
    batch.coarse_noise = noise_sigma(batch, factor)
    batch.coarse_snr = batch.coarse_energy / batch.coarse_noise
    return batch


def parent_sums(energy: torch.Tensor, data) -> torch.Tensor:
    """Sum of the children of every coarse cell; ``energy`` is ``[..., Nf]``."""
    flat = energy.reshape(math.prod(energy.shape[:-1]), energy.size(-1))  # -1 is ambiguous for empty events
    out = flat.new_zeros(flat.size(0), data.coarse_energy.size(0))
    out.index_add_(1, data.fine_parent, flat)
    return out.reshape(*energy.shape[:-1], -1)


class EnergyModel:
    """Fine energies <-> diffusion targets (the module docstring): shares and totals, or plain energies.

    Args:
        kind: ``"shares"`` (the generative model) or ``"energy"`` (the regression baseline).
        mean, std: standardisation of the fine target (log-shares, or energies in GeV with mean 0).
    """

    def __init__(self, kind: str = "shares", mean: float = 0.0, std: float = 1.0):
        if kind not in ("shares", "energy"):
            raise ValueError(f"unknown energy model {kind!r}; choose 'shares' or 'energy'")
        self.kind, self.mean, self.std = kind, float(mean), float(std)

    @classmethod
    def fit(cls, kind: str, data) -> EnergyModel:
        """Standardisation constants from the fine cells of ``data`` (training events)."""
        raw = cls(kind)._fine_raw(data)
        return cls(kind, float(raw.mean()) if kind == "shares" else 0.0, float(raw.std().clamp_min(1e-12)))

    def state(self) -> dict:
        return {"kind": self.kind, "mean": self.mean, "std": self.std}

    def _fine_raw(self, data) -> torch.Tensor:
        if self.kind == "energy":
            return data.fine_energy
        padded = data.fine_energy.clamp_min(0) + SHARE_FLOOR
        return padded.log() - ops.scatter(padded, data.fine_parent, data.coarse_energy.size(0), "sum")[
            data.fine_parent].log()

    def encode(self, data) -> tuple[torch.Tensor, torch.Tensor]:
        """``(fine [Nf], coarse [Nc])`` targets of events whose fine truth is known (``add_inputs`` first)."""
        fine = (self._fine_raw(data) - self.mean) / self.std
        total = ops.scatter(data.fine_energy, data.fine_parent, data.coarse_energy.size(0), "sum")
        return fine, (data.coarse_energy - total) / data.coarse_noise

    def totals(self, data, coarse: torch.Tensor, mode: str = "posterior") -> torch.Tensor:
        """``[..., Nc]`` totals of each coarse cell's children from generated coarse targets."""
        if mode == "conserving":
            return data.coarse_energy.expand_as(coarse)
        return (data.coarse_energy - data.coarse_noise * coarse).clamp_min(0)

    def decode(self, data, fine: torch.Tensor, coarse: torch.Tensor, mode: str = "posterior",
               totals: torch.Tensor | None = None) -> torch.Tensor:
        """``[..., Nf]`` fine energies (GeV) from generated targets (fine ``[..., Nf]``, coarse ``[..., Nc]``; the
        leading dimensions are e.g. ensemble members); ``totals`` replaces :meth:`totals` of ``coarse``."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose one of {MODES}")
        if self.kind == "energy":
            return (fine * self.std + self.mean).clamp_min(0)
        shares = ops.segment_softmax((fine * self.std).movedim(-1, 0), data.fine_parent,
                                     data.coarse_energy.size(0)).movedim(0, -1)
        totals = self.totals(data, coarse, mode) if totals is None else totals
        return shares * totals[..., data.fine_parent]


class SR3Network(nn.Module):
    """The network of the denoiser: (noisy targets, noise level, coarse event) -> one value per fine and per coarse
    cell, in the state layout ``[fine nodes, coarse nodes]``.

    Fine nodes see their noisy share and their parent's measured energy; coarse nodes their noisy noise realisation,
    measured energy and signal-to-noise ratio; both see positions and layers (added by the backbone) and the noise
    level through adaptive LayerNorm.

    Args:
        config: widths and depths (:class:`~graphsr.config.ModelConfig`).
    """

    def __init__(self, config: ModelConfig = ModelConfig()):
        super().__init__()
        self.noise_embedding = NoiseEmbedding(config.width)
        self.backbone = GraphTransformer(
            fine_in=2, coarse_in=3, out=1, coarse_out=1, width=config.width, depth=config.depth,
            coarse_depth=config.coarse_depth, heads=config.heads, context_tokens=config.context_tokens,
            cond_dim=config.width, dropout=config.dropout)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, batch: torch.Tensor, data,
                prepared: dict | None = None) -> torch.Tensor:
        """x: [Nf + Nc, 1] noisy (scaled) targets; c_noise: [B] noise conditioning; data: the batch of events;
        prepared: ``self.backbone.prepare(data)``, to reuse across sampling steps."""
        num_fine = data.fine_parent.size(0)
        x_fine = torch.cat([x[:num_fine], data.coarse_input[data.fine_parent].unsqueeze(1)], dim=1)
        x_coarse = torch.cat([x[num_fine:], data.coarse_input.unsqueeze(1),
                              (data.coarse_snr / SNR_SCALE).unsqueeze(1)], dim=1)
        fine, coarse = self.backbone(x_fine, x_coarse, data, self.noise_embedding(c_noise), prepared)
        return torch.cat([fine, coarse])


def state_batch(data) -> torch.Tensor:
    """``[Nf + Nc]`` event of each state node (fine nodes, then coarse nodes)."""
    return torch.cat([data.batch, data.coarse_batch])


def node_weights(data, coarse_weight: float = 1.0) -> torch.Tensor:
    """``[Nf + Nc]`` loss weight of each state node: each event's fine nodes share weight 1 and its coarse nodes
    ``coarse_weight``, so neither the event's size nor the 4 or 16 children per parent tilt the loss."""
    num_graphs = int(data.num_graphs)
    fine_count = torch.bincount(data.batch, minlength=num_graphs).clamp_min(1)
    coarse_count = torch.bincount(data.coarse_batch, minlength=num_graphs).clamp_min(1)
    return torch.cat([1.0 / fine_count[data.batch].float(), coarse_weight / coarse_count[data.coarse_batch].float()])
