"""The generator, its loss and its graphs as a config asks for them: what training, sampling and distillation build."""

from __future__ import annotations

from graphsr.config import Config
from graphsr.diffusion import Denoiser, DiffusionLoss
from graphsr.graphs import GraphOptions
from graphsr.models.pyramid import Pyramid
from graphsr.models.sr3 import SR3Network


def graph_options(config: Config) -> GraphOptions:
    """The :class:`~graphsr.graphs.GraphOptions` a config's ``data`` section asks for."""
    d = config.data
    return GraphOptions(layers=tuple(d.layers), edges=d.edges, k=d.k, k_between=d.k_between, reach=d.reach)


def build_denoiser(config: Config) -> Denoiser:
    """The model of ``config.model.generator``: the dense denoiser, or the pyramid
    (:class:`~graphsr.models.pyramid.Pyramid`)."""
    if config.model.generator == "pyramid":
        return Pyramid(config, graph_options(config))
    if config.model.generator != "dense":
        raise ValueError(f"unknown generator {config.model.generator!r}; choose 'dense' or 'pyramid'")
    d = config.diffusion
    return Denoiser(SR3Network(config.model), parameterisation=d.parameterisation, sigma_data=d.sigma_data,
                    schedule=d.schedule)


def build_loss(config: Config) -> DiffusionLoss:
    """The training loss of the config's parameterisation (``coarse_weight`` enters through the trainer's per-node
    weights)."""
    d = config.diffusion
    return DiffusionLoss(parameterisation=d.parameterisation, schedule=d.schedule, sigma_data=d.sigma_data,
                         p_mean=d.p_mean, p_std=d.p_std, min_snr_gamma=d.min_snr_gamma)
