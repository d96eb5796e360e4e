"""Stage 1 of the pyramid generator: which children of each parent cell carry energy.

A parent's occupancy is ``factor**2`` bits, one per child (in the order of
:meth:`~graphsr.detector.Geometry.children`), generated on the parents' graph: one node per parent, so the cost
grows with the parents, not with their children. Two generators, on the project's graph-transformer backbone (its
blocks on a single cell graph, :class:`~graphsr.nn.CellTransformer`):

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
from graphsr.graphs import CellGraph, PairData
from graphsr.models.sr3 import SNR_SCALE
from graphsr.nn import CellTransformer, NoiseEmbedding

KINDS = ("analog_bits", "bernoulli")


def encode_bits(bits: torch.Tensor) -> torch.Tensor:
    """Analog bits: ``{0, 1}`` -> ``{-1, +1}`` (float)."""
    return bits.float() * 2 - 1


def decode_bits(analog: torch.Tensor) -> torch.Tensor:
    """Analog bits back to ``{0, 1}`` (bool): the sign."""
    return analog > 0


def parent_cells(parents: PairData) -> CellGraph:
    """The parents (coarse nodes of ``parents``) as the single cell graph stage 1 runs on."""
    return CellGraph(parents.coarse_energy, parents.coarse_pos, parents.coarse_layer, parents.coarse_edge_index,
                     parents.coarse_batch, parents.num_graphs)


class OccupancyNetwork(nn.Module):
    """(noisy bits, own previous estimate, noise level, parents) -> ``bits`` values per parent.

    A :class:`~graphsr.nn.CellTransformer` (the backbone's blocks on a single cell graph) over the parents' graph:
    each parent sees its noisy bits, the previous estimate (self-conditioning; zeros when not given), its measured
    (or generated) energy and signal-to-noise ratio; positions and layers enter through the backbone, the noise level
    through adaptive LayerNorm. ``data``: the parents as coarse nodes, with the inputs of
    :func:`~graphsr.models.sr3.add_inputs`.

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
        self.backbone = CellTransformer(2 * bits + 2, bits, width=m.width, depth=m.depth, heads=m.heads,
                                        context_tokens=m.context_tokens, cond_dim=m.width, dropout=m.dropout,
                                        geometry=geometry)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, batch: torch.Tensor, data: PairData,
                self_cond: torch.Tensor | None = None) -> torch.Tensor:
        measured = torch.stack([data.coarse_input, data.coarse_snr / SNR_SCALE], dim=1)
        previous = torch.zeros_like(x) if self_cond is None else self_cond
        return self.backbone(torch.cat([x, previous, measured], dim=1), parent_cells(data),
                             self.noise_embedding(c_noise))


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

    def _logits(self, parents: PairData) -> torch.Tensor:
        """The Bernoulli head: one pass at a fixed conditioning, no noisy input."""
        zeros = torch.zeros(parents.num_graphs, device=parents.coarse_energy.device)
        x = parents.coarse_energy.new_zeros(parents.coarse_energy.numel(), self.denoiser.net.bits)
        return self.denoiser.net(x, zeros, parents.coarse_batch, parents)

    def loss(self, loss_fn, parents: PairData, bits: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Training loss on the true ``bits`` ([Np, bits] bool) of the coarse nodes of ``parents``, averaged per
        event. ``loss_fn``: the run's :class:`~graphsr.diffusion.DiffusionLoss` (analog bits)."""
        if self.kind == "bernoulli":
            error = F.binary_cross_entropy_with_logits(self._logits(parents), bits.float(), reduction="none")
            return ops.scatter(error.mean(-1), parents.coarse_batch, parents.num_graphs, "mean").mean()
        denoiser = SelfConditioning(self.denoiser, self.self_condition, generator)
        return loss_fn(denoiser, encode_bits(bits), batch=parents.coarse_batch, num_graphs=parents.num_graphs,
                       generator=generator, data=parents)

    @torch.no_grad()
    def sample(self, parents: PairData, sigmas: torch.Tensor, generator: torch.Generator, sampler: str = "heun",
               required: torch.Tensor | None = None, **options) -> torch.Tensor:
        """``[Np, bits]`` bool occupancy of the coarse nodes of ``parents``; ``sigmas``, ``sampler`` and ``options``
        (e.g. ``eta``) drive the analog bits' sampler. ``required``: ``[Np]`` bool, parents that must have a hit
        (:func:`at_least_one_hit`)."""
        if self.kind == "bernoulli":
            scores = self._logits(parents)
            bits = sample_bernoulli(scores, generator)
        else:
            scores = analog_bit_values(self.denoiser, (parents.coarse_energy.numel(), self.denoiser.net.bits),
                                       parents.coarse_batch, sigmas, generator, sampler, num_graphs=parents.num_graphs,
                                       extra_args={"data": parents}, **options)
            bits = decode_bits(scores)
        return bits if required is None else at_least_one_hit(bits, scores, required)


def at_least_one_hit(bits: torch.Tensor, scores: torch.Tensor, required: torch.Tensor) -> torch.Tensor:
    """``bits`` ([Np, bits] bool) where every ``required`` row that has no hit gets one, at its highest ``scores``
    (the generated value or logit of each bit). A parent of a later pyramid level whose generated energy exceeds
    ``factor**2 x threshold`` has a child above the threshold (the children sum to it), so a draw without one would
    drop the parent's energy."""
    empty = (required & ~bits.any(dim=1)).nonzero().squeeze(1)
    if not len(empty):
        return bits
    bits = bits.clone()
    bits[empty, scores[empty].argmax(dim=1)] = True
    return bits


def sample_bernoulli(logits: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Independent bits, each 1 with probability ``sigmoid(logits)``."""
    p = torch.sigmoid(logits)
    return torch.rand(p.shape, device=p.device, generator=generator) < p


@torch.no_grad()
def sample_analog_bits(denoiser, shape: tuple[int, int], batch: torch.Tensor, sigmas: torch.Tensor,
                       generator: torch.Generator, sampler: str = "heun", **sampler_args) -> torch.Tensor:
    """Bits ``shape`` ([nodes, bits], bool) from a self-conditioned denoiser ``D(x, sigma, batch, self_cond=...,
    **extra_args)``: pure noise at ``sigmas[0]``, the project's ``sampler`` down to 0, then the sign."""
    return decode_bits(analog_bit_values(denoiser, shape, batch, sigmas, generator, sampler, **sampler_args))


def analog_bit_values(denoiser, shape: tuple[int, int], batch: torch.Tensor, sigmas: torch.Tensor,
                      generator: torch.Generator, sampler: str = "heun", **sampler_args) -> torch.Tensor:
    """The real values :func:`sample_analog_bits` thresholds at zero (how sure each bit is, beside its sign)."""
    x = torch.randn(shape, device=sigmas.device, generator=generator) * sigmas[0]
    return get_sampler(sampler)(SelfConditioning(denoiser), x, sigmas, batch=batch, generator=generator,
                                disable=True, **sampler_args)
