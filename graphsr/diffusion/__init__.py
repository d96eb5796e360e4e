"""Diffusion: denoiser preconditioning, training loss, noise schedules and samplers."""

from graphsr.diffusion.preconditioning import PARAMETERISATIONS, Denoiser, DiffusionLoss, vp_sigma
from graphsr.diffusion.samplers import SAMPLERS, evaluations, get_sampler, karras_sigmas

__all__ = ["PARAMETERISATIONS", "SAMPLERS", "Denoiser", "DiffusionLoss", "evaluations", "get_sampler",
           "karras_sigmas", "vp_sigma"]
