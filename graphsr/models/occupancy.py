"""Stage 1 of the pyramid generator: which children of each parent cell carry energy.

A parent's occupancy is ``factor**2`` bits, one per child (in the order of
:meth:`~graphsr.detector.Geometry.children`), generated on the parents' graph: one node per parent, so the cost
grows with the parents, not with their children. Two generators, on the project's graph-transformer backbone:

* ``analog_bits`` (Chen, Zhang & Hinton, "Analog Bits", arXiv 2208.04202): each bit is the real number -1 or +1,
  noised, denoised and sampled like any continuous target by the project's preconditioning, loss and samplers, and
  thresholded at zero at the end. With self-conditioning (their section 3.3) the network also sees its own previous
  estimate of the clean bits: zeros at the first sampling step, then the last estimate; in training, for a random
  fraction of the events, a first estimate made without gradients. Samples are drawn jointly for every child of
  the event, so an ensemble expresses the uncertainty of the occupancy.
* ``bernoulli`` (the baseline): the same network, without noise, predicts each bit's probability in one pass
  (binary cross-entropy) and every bit is drawn independently.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from graphsr import ops
from graphsr.config import Config
from graphsr.detector import Geometry
from graphsr.diffusion import Denoiser, get_sampler
from graphsr.graphs.data import PairData
from graphsr.models.sr3 import SNR_SCALE
from graphsr.nn import GraphTransformer, NoiseEmbedding

KINDS = ("analog_bits", "bernoulli")


def encode_bits(bits: torch.Tensor) -> torch.Tensor:
    """Analog bits: ``{0, 1}`` -> ``{-1, +1}`` (float)."""
    return bits.float() * 2 - 1


def decode_bits(analog: torch.Tensor) -> torch.Tensor:
    """Analog bits back to ``{0, 1}`` (bool): the sign."""
    return analog > 0


def parent_view(parents: PairData) -> PairData:
    """The parents as the backbone's fine graph, each its own parent: the coarse-conditioned graph transformer then
    runs on the parents' graph alone (its cross-attention reads each parent and the parent's neighbours)."""
    view = PairData(**{key: parents[key] for key in parents.keys() if key.startswith("coarse_")})
    view.fine_pos, view.fine_layer, view.batch = parents.coarse_pos, parents.coarse_layer, parents.coarse_batch
    view.fine_edge_index = parents.coarse_edge_index
    view.fine_parent = torch.arange(parents.coarse_layer.numel(), device=parents.coarse_layer.device)
    view.num_graphs = parents.num_graphs
    return view


class OccupancyNetwork(nn.Module):
    """(noisy bits, own previous estimate, noise level, parents) -> ``bits`` values per parent.

    Each parent node sees its noisy bits, the previous estimate (self-conditioning; zeros when not given), its
    measured (or generated) energy and signal-to-noise ratio; positions and layers enter through the backbone, the
    noise level through adaptive LayerNorm. ``data`` is :func:`parent_view` of the parents (with the inputs of
    :func:`~graphsr.models.sr3.add_inputs`). The backbone's blocks already run on the parents' graph, so it has no
    separate coarse encoder (``model.coarse_depth`` applies to stage 2 only).

    Args:
        config: the run's config (``model`` sizes).
        bits: children per parent.
        geometry: the parents' geometry (its cell size is the unit of the relative positions).
    """

    def __init__(self, config: Config, bits: int, geometry: Geometry):
        super().__init__()
        m = config.model
        self.bits = bits
        self.noise_embedding = NoiseEmbedding(m.width)
        self.backbone = GraphTransformer(
            fine_in=2 * bits + 2, coarse_in=2, out=bits, width=m.width, depth=m.depth, coarse_depth=0,
            heads=m.heads, context_tokens=m.context_tokens, cond_dim=m.width, dropout=m.dropout, geometry=geometry)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, batch: torch.Tensor, data: PairData,
                prepared: dict | None = None, self_cond: torch.Tensor | None = None) -> torch.Tensor:
        measured = torch.stack([data.coarse_input, data.coarse_snr / SNR_SCALE], dim=1)
        previous = torch.zeros_like(x) if self_cond is None else self_cond
        return self.backbone(torch.cat([x, previous, measured], dim=1), measured, data,
                             self.noise_embedding(c_noise), prepared)


class SelfConditioning:
    """A denoiser that is also given its own previous estimate of the clean state (keyword ``self_cond``).

    Sampling (``probability`` None): the estimate of the previous call (zeros at the first). Training: for each event
    with probability ``probability``, an estimate made first at the same noisy state without gradients, else zeros
    (Chen et al., algorithm 1), drawn from ``generator``.
    """

    def __init__(self, denoiser: Denoiser, probability: float | None = None,
                 generator: torch.Generator | None = None):
        self.denoiser, self.probability, self.generator = denoiser, probability, generator
        self.previous: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, batch: torch.Tensor, **kwargs) -> torch.Tensor:
        previous = torch.zeros_like(x) if self.previous is None else self.previous
        if self.probability is not None:
            with torch.no_grad():
                first = self.denoiser(x, sigma, batch, self_cond=previous, **kwargs)
            use = torch.rand(sigma.shape, device=x.device, generator=self.generator) < self.probability
            previous = first * use[batch].unsqueeze(-1)
        estimate = self.denoiser(x, sigma, batch, self_cond=previous, **kwargs)
        if self.probability is None:
            self.previous = estimate
        return estimate


class Occupancy(nn.Module):
    """Stage 1 of a pyramid level: the occupancy bits of every parent's children (module docstring).

    Args:
        config: the run's config: ``pyramid.occupancy`` picks the generator, ``diffusion`` the preconditioning.
        bits: children per parent.
        geometry: the parents' geometry.
    """

    def __init__(self, config: Config, bits: int, geometry: Geometry):
        super().__init__()
        self.kind, self.self_condition = config.pyramid.occupancy, config.pyramid.self_condition
        if self.kind not in KINDS:
            raise ValueError(f"unknown occupancy generator {self.kind!r}; choose one of {KINDS}")
        d = config.diffusion
        self.denoiser = Denoiser(OccupancyNetwork(config, bits, geometry), parameterisation=d.parameterisation,
                                 sigma_data=d.sigma_data, schedule=d.schedule)

    def _logits(self, view: PairData, prepared: dict | None = None) -> torch.Tensor:
        """The Bernoulli head: one pass at a fixed conditioning, no noisy input."""
        zeros = torch.zeros(view.num_graphs, device=view.coarse_energy.device)
        x = view.coarse_energy.new_zeros(view.coarse_energy.numel(), self.denoiser.net.bits)
        return self.denoiser.net(x, zeros, view.batch, view, prepared)

    def loss(self, loss_fn, view: PairData, bits: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Training loss on true ``bits`` ([Np, bits] bool) of the parents of ``view``, averaged per event.

        ``loss_fn``: the run's :class:`~graphsr.diffusion.DiffusionLoss` (analog bits)."""
        if self.kind == "bernoulli":
            error = F.binary_cross_entropy_with_logits(self._logits(view), bits.float(), reduction="none")
            return ops.scatter(error.mean(-1), view.batch, view.num_graphs, "mean").mean()
        denoiser = SelfConditioning(self.denoiser, self.self_condition, generator)
        return loss_fn(denoiser, encode_bits(bits), batch=view.batch, num_graphs=view.num_graphs,
                       generator=generator, data=view)

    @torch.no_grad()
    def sample(self, view: PairData, sigmas: torch.Tensor, generator: torch.Generator, sampler: str = "heun",
               **options) -> torch.Tensor:
        """``[Np, bits]`` bool occupancy of the parents of ``view``; ``sigmas``, ``sampler`` and ``options`` (e.g.
        ``eta``) drive the analog bits' sampler."""
        prepared = self.denoiser.net.backbone.prepare(view)
        if self.kind == "bernoulli":
            return sample_bernoulli(self._logits(view, prepared), generator)
        return sample_analog_bits(self.denoiser, (view.coarse_energy.numel(), self.denoiser.net.bits), view.batch,
                                  sigmas, generator, sampler, num_graphs=view.num_graphs,
                                  extra_args={"data": view, "prepared": prepared}, **options)


def sample_bernoulli(logits: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Independent bits, each 1 with probability ``sigmoid(logits)``."""
    p = torch.sigmoid(logits)
    return torch.rand(p.shape, device=p.device, generator=generator) < p


@torch.no_grad()
def sample_analog_bits(denoiser, shape: tuple[int, int], batch: torch.Tensor, sigmas: torch.Tensor,
                       generator: torch.Generator, sampler: str = "heun", **sampler_args) -> torch.Tensor:
    """Bits ``shape`` ([nodes, bits], bool) from a self-conditioned denoiser ``D(x, sigma, batch, self_cond=...,
    **extra_args)``: pure noise at ``sigmas[0]``, the project's ``sampler`` down to 0, then the sign."""
    x = torch.randn(shape, device=sigmas.device, generator=generator) * sigmas[0]
    return decode_bits(get_sampler(sampler)(SelfConditioning(denoiser), x, sigmas, batch=batch, generator=generator,
                                            disable=True, **sampler_args))
