"""Samplers that integrate the reverse diffusion from pure noise, for any :class:`~.preconditioning.Denoiser`.

All run on a decreasing grid of noise levels ``sigmas`` (last one 0, e.g. :func:`karras_sigmas`) and call
``denoiser(x, sigma_per_graph, batch, **extra_args)``:

* ``ddim``: DDIM (Song et al. 2021, arXiv 2010.02502) with stochasticity ``eta``: ``eta = 0`` is deterministic
  DDIM, in sigma form the Euler method on the probability-flow ODE; ``eta = 1`` is ancestral DDPM.
* ``ddpm``: ancestral sampling (the stochastic DDPM / SR3 sampler), i.e. ``ddim`` with ``eta = 1``.
* ``heun``: EDM's 2nd-order Heun method (Karras et al. 2022, algorithm 1 without churn); 2 evaluations per step
  except the last.
* ``dpmpp_2m``: DPM-Solver++(2M) (Lu et al. 2022), 2nd order with one evaluation per step.
* ``rk45``: adaptive Dormand-Prince 5(4) on the probability-flow ODE in ln(sigma), from the grid's first level to
  its last non-zero one, then a last step to 0 (the denoised value); the grid only sets the first step size, the
  tolerances (``rtol``, ``atol``) the rest. The published flow-matching model samples with an adaptive solver.

``num_graphs`` (default: ``batch.max() + 1``) counts the events, including trailing events without nodes.
Every sampler draws its noise from ``generator`` only, so a seed fixes the samples (on CPU, bit for bit).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from tqdm import tqdm


def karras_sigmas(n: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
                  device=None) -> torch.Tensor:
    """``n`` noise levels spaced as in EDM (eq. 5), from sigma_max down to sigma_min, then a final 0."""
    if n < 1:
        raise ValueError(f"need at least one sampling step, got {n}")
    ramp = torch.linspace(0, 1, n, device=device, dtype=torch.float64)
    inv_rho = 1 / rho
    sigmas = (sigma_max**inv_rho + ramp * (sigma_min**inv_rho - sigma_max**inv_rho)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)]).float()


def _run(step_fn, denoiser, x, sigmas, batch, extra_args, callback, disable, num_graphs):
    """Apply ``step_fn(denoise, x, sigmas, i, state) -> (x_next, denoised)`` for every step of the grid."""
    if num_graphs is None:
        num_graphs = int(batch.max()) + 1 if batch.numel() else 0
    extra_args = extra_args or {}

    def denoise(x, sigma):  # one noise level for every event
        return denoiser(x, sigma.expand(num_graphs).to(x.dtype), batch, **extra_args)

    state = {}
    for i in tqdm(range(len(sigmas) - 1), disable=disable, desc="sampling", leave=False):
        x, denoised = step_fn(denoise, x, sigmas, i, state)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "denoised": denoised})
    return x


@torch.no_grad()
def sample_ddim(denoiser, x, sigmas, *, batch, extra_args=None, callback=None, generator=None, disable=True,
                num_graphs=None, eta: float = 0.0):
    def step(denoise, x, sigmas, i, state):
        s, s_next = sigmas[i], sigmas[i + 1]
        denoised = denoise(x, s)
        # split the step into a deterministic part down to sigma_down and fresh noise of size sigma_up
        # (eta = 1: the DDPM posterior's noise; eta = 0: none)
        sigma_up = (eta * torch.sqrt(s_next**2 * (s**2 - s_next**2) / s**2)).clamp_max(s_next)
        sigma_down = torch.sqrt(s_next**2 - sigma_up**2)
        x = x + (x - denoised) / s * (sigma_down - s)
        if eta > 0 and s_next > 0:
            x = x + torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator) * sigma_up
        return x, denoised
    return _run(step, denoiser, x, sigmas, batch, extra_args, callback, disable, num_graphs)


def sample_ddpm(denoiser, x, sigmas, *, batch, extra_args=None, callback=None, generator=None, disable=True,
                num_graphs=None):
    return sample_ddim(denoiser, x, sigmas, batch=batch, extra_args=extra_args, callback=callback,
                       generator=generator, disable=disable, num_graphs=num_graphs, eta=1.0)


@torch.no_grad()
def sample_heun(denoiser, x, sigmas, *, batch, extra_args=None, callback=None, generator=None, disable=True,
                num_graphs=None):
    def step(denoise, x, sigmas, i, state):
        s, s_next = sigmas[i], sigmas[i + 1]
        denoised = denoise(x, s)
        d = (x - denoised) / s
        x_next = x + d * (s_next - s)
        if s_next > 0:  # 2nd-order correction, except on the final step to sigma = 0
            d_next = (x_next - denoise(x_next, s_next)) / s_next
            x_next = x + (d + d_next) / 2 * (s_next - s)
        return x_next, denoised
    return _run(step, denoiser, x, sigmas, batch, extra_args, callback, disable, num_graphs)


@torch.no_grad()
def sample_dpmpp_2m(denoiser, x, sigmas, *, batch, extra_args=None, callback=None, generator=None, disable=True,
                num_graphs=None):
    def step(denoise, x, sigmas, i, state):
        s, s_next = sigmas[i], sigmas[i + 1]
        denoised = denoise(x, s)
        if s_next == 0:
            return denoised, denoised
        t, t_next = -s.log(), -s_next.log()
        h = t_next - t
        if "old" in state:
            r = state["h"] / h
            d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * state["old"]
        else:
            d = denoised
        state["old"], state["h"] = denoised, h
        return (s_next / s) * x - torch.expm1(-h) * d, denoised
    return _run(step, denoiser, x, sigmas, batch, extra_args, callback, disable, num_graphs)


# Dormand-Prince 5(4): the stages' nodes and weights, the 5th-order solution's weights and the error estimate's
_DOPRI_A = [[], [1 / 5], [3 / 40, 9 / 40], [44 / 45, -56 / 15, 32 / 9],
            [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729],
            [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656],
            [35 / 384, 0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84]]
_DOPRI_C = [0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1, 1]
_DOPRI_E = [71 / 57600, 0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40]


@torch.no_grad()
def sample_rk45(denoiser, x, sigmas, *, batch, extra_args=None, callback=None, generator=None, disable=True,
                num_graphs=None, rtol: float = 1e-3, atol: float = 1e-3, stats: dict | None = None):
    """Adaptive Dormand-Prince 5(4) (see the module docstring); ``stats``, when given, receives the accepted and
    rejected steps and the denoiser evaluations."""
    if num_graphs is None:
        num_graphs = int(batch.max()) + 1 if batch.numel() else 0
    extra_args = extra_args or {}
    low = sigmas[sigmas > 0][-1]
    u, end = float(sigmas[0].log()), float(low.log())
    h = (float(sigmas[1].clamp_min(low).log()) - u) if len(sigmas) > 2 else end - u  # the grid's first step
    counts = {"accepted": 0, "rejected": 0, "evaluations": 0}

    def slope(x, u):  # dx / d(ln sigma) = x - D(x; sigma)
        counts["evaluations"] += 1
        sigma = torch.tensor(math.exp(u), device=x.device).expand(num_graphs).to(x.dtype)
        return x - denoiser(x, sigma, batch, **extra_args)

    k_first = slope(x, u)
    while u > end + 1e-12:
        h = max(h, end - u)  # h < 0: towards lower noise; do not step past the end
        stages = [k_first]
        for a, c in zip(_DOPRI_A[1:], _DOPRI_C[1:]):
            stages.append(slope(x + h * sum(w * k for w, k in zip(a, stages) if w), u + c * h))
        x_new = x + h * sum(w * k for w, k in zip(_DOPRI_A[6], stages) if w)
        error = h * sum(w * k for w, k in zip(_DOPRI_E, stages) if w)
        scale = atol + rtol * torch.maximum(x.abs(), x_new.abs())
        norm = float((error / scale).pow(2).mean().sqrt()) if x.numel() else 0.0
        if norm <= 1.0:
            x, u, k_first = x_new, u + h, stages[-1]  # first same as last: the 7th stage is the next's 1st
            counts["accepted"] += 1
            if callback is not None:
                callback({"x": x, "i": counts["accepted"] - 1, "sigma": math.exp(u), "denoised": x - k_first})
        else:
            counts["rejected"] += 1
        h *= min(5.0, max(0.2, 0.9 * (norm if norm > 0 else 1e-10) ** -0.2))
    denoised = x - k_first  # the last step, to sigma = 0, lands on the denoised value
    if stats is not None:
        stats.update(counts)
    return denoised


SAMPLERS: dict[str, Callable] = {"ddpm": sample_ddpm, "ddim": sample_ddim, "heun": sample_heun,
                                 "dpmpp_2m": sample_dpmpp_2m, "rk45": sample_rk45}


def get_sampler(name: str) -> Callable:
    """The sampler called ``name`` (one of :data:`SAMPLERS`)."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {sorted(SAMPLERS)}")
    return SAMPLERS[name]


def evaluations(name: str, steps: int) -> int | None:
    """Denoiser evaluations a sampler makes for ``steps`` steps (Heun: 2 per step but the last; rk45: None, as
    many as its tolerances take, which its ``stats`` reports)."""
    if name == "rk45":
        return None
    return 2 * steps - 1 if name == "heun" else steps
