"""The generator, its loss and its graphs as a config asks for them: what training, sampling and distillation build.

Both generators show training one interface (:class:`DenseGenerator` and :class:`~graphsr.models.pyramid.Pyramid`):
``fit(batch)`` fits what is standardised on the training events before the first step, ``loss(loss_fn, batch,
generator, factor, coarse_weight, energy_model=..., sigma=..., noise=...)`` is the loss of a batch, and
``draws_whole_batch`` says whether the trainer draws the batch's noise levels and noise itself (so that ranks of a
distributed run draw what one process would).
"""

from __future__ import annotations

import torch

from graphsr.config import Config
from graphsr.diffusion import Denoiser, DiffusionLoss
from graphsr.diffusion.schedule import LearnedSchedule
from graphsr.graphs import GraphOptions
from graphsr.models.boosted import BoostedVelocity, child_slots
from graphsr.models.pyramid import Pyramid
from graphsr.models.sr3 import EnergyModel, SR3Network, add_inputs, node_weights, state_batch


class DenseGenerator(Denoiser):
    """The dense generator: the denoiser of every child of every coarse cell (and of each coarse cell's total),
    with the training interface it shares with the pyramid (the module docstring). Its weights are the
    :class:`~graphsr.diffusion.Denoiser`'s: checkpoints load either way."""

    draws_whole_batch = True

    def fit(self, batch) -> None:
        """A learned noise schedule starts at the objective's own density of noise levels
        (:meth:`~graphsr.diffusion.schedule.LearnedSchedule.start_at_base`); nothing else to fit (the energy
        model's standardisation lives beside the weights, ``energy_model``)."""
        if self.learned_schedule is not None:
            self.learned_schedule.start_at_base()

    def prepare(self, batch, copies: int = 1) -> dict:
        """What depends on the graphs alone (edges and their embeddings), computed once and passed to every call
        on the same batch as ``prepared``: a sampler's steps, a distillation teacher's two steps. With ``copies``
        > 1: of that many copies of ``batch`` batched one after the other (an ensemble), from ``batch``'s own."""
        prepared = self.net.backbone.prepare(batch)
        if copies == 1:
            return prepared
        return self.net.backbone.repeat_prepared(prepared, copies, batch.fine_parent.numel(),
                                                 batch.coarse_layer.numel())

    def loss(self, loss_fn, batch, generator, factor: int, coarse_weight: float = 1.0, *,
             energy_model: EnergyModel, sigma: torch.Tensor | None = None,
             noise: torch.Tensor | None = None) -> torch.Tensor:
        """The loss of a batch: fine and coarse targets in one state, each event's two parts weighted per
        :func:`~graphsr.models.sr3.node_weights` (the regression baseline has no coarse target); ``sigma`` and
        ``noise`` fix the noise level of each event and the noise of each node."""
        batch = add_inputs(batch, factor)
        fine, coarse = energy_model.encode(batch)
        weight = node_weights(batch, coarse_weight if energy_model.kind == "shares" else 0.0)
        return loss_fn(self, torch.cat([fine, coarse]).unsqueeze(1), batch=state_batch(batch),
                       num_graphs=batch.num_graphs, generator=generator, data=batch, node_weight=weight, sigma=sigma,
                       noise=noise)


class BoostedGenerator(DenseGenerator):
    """The boosted-tree flow-matching baseline (:mod:`graphsr.models.boosted`) behind the dense generator's
    interface: the same targets, loss (for validation), samplers and calibration; trained by
    :func:`graphsr.training.boosted.train_boosted`, not by gradient steps."""

    def prepare(self, batch, copies: int = 1) -> dict:
        """Each fine cell's slot among its siblings (:func:`~graphsr.models.boosted.child_slots`), for ``copies``
        copies of ``batch``."""
        slot, inside, most = child_slots(batch, self.net.cell_size)
        return {"slots": (slot.repeat(copies), inside.repeat(copies, 1), most)}


def graph_options(config: Config) -> GraphOptions:
    """The :class:`~graphsr.graphs.GraphOptions` a config's ``data`` section asks for."""
    d = config.data
    return GraphOptions(layers=tuple(d.layers), edges=d.edges, k=d.k, k_between=d.k_between, reach=d.reach)


def build_denoiser(config: Config) -> Denoiser:
    """The model of ``config.model.generator``: the dense denoiser, the pyramid
    (:class:`~graphsr.models.pyramid.Pyramid`) or the boosted trees (:class:`BoostedGenerator`)."""
    d = config.diffusion
    if config.sample.grid not in ("karras", "learned"):
        raise ValueError(f"unknown sample.grid {config.sample.grid!r}; choose 'karras' or 'learned'")
    if config.sample.grid == "learned" and not d.learned_schedule:
        raise ValueError("sample.grid: learned needs a learned schedule (diffusion.learned_schedule: true)")
    if d.learned_schedule and config.model.generator != "dense":
        raise ValueError(f"diffusion.learned_schedule is built for the dense generator, not {config.model.generator}")
    if config.model.generator == "pyramid":
        return Pyramid(config, graph_options(config))
    if config.model.generator == "boosted":
        if d.parameterisation != "cfm":
            raise ValueError("the boosted generator learns the flow-matching velocity: set "
                             f"diffusion.parameterisation: cfm (not {d.parameterisation!r})")
        return BoostedGenerator(BoostedVelocity(config.boosted), parameterisation="cfm")
    if config.model.generator != "dense":
        raise ValueError(f"unknown generator {config.model.generator!r}; choose 'dense', 'pyramid' or 'boosted'")
    learned = LearnedSchedule(d.sigma_min, d.sigma_max, base=build_loss(config).gamma_quantile) \
        if d.learned_schedule else None
    return DenseGenerator(SR3Network(config.model), parameterisation=d.parameterisation, sigma_data=d.sigma_data,
                          schedule=d.schedule, learned_schedule=learned)


def build_loss(config: Config) -> DiffusionLoss:
    """The training loss of the config's parameterisation (``coarse_weight`` enters through the trainer's per-node
    weights)."""
    d = config.diffusion
    return DiffusionLoss(parameterisation=d.parameterisation, schedule=d.schedule, sigma_data=d.sigma_data,
                         p_mean=d.p_mean, p_std=d.p_std, min_snr_gamma=d.min_snr_gamma)
