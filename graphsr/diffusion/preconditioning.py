"""Denoisers D(x; sigma) and their training loss, in the sigma ("variance exploding") form of Karras et al. 2022.

A noisy sample is ``x = x0 + sigma * n``. Every parameterisation wraps a raw network F as

    D(x; sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, c_noise(sigma))

* ``edm``: EDM preconditioning (arXiv 2206.00364, table 1) with data std ``sigma_data``.
* ``eps``: F predicts the noise (DDPM / SR3): c_skip = 1, c_out = -sigma, c_in = 1 / sqrt(1 + sigma^2).
* ``v``: F predicts v (Salimans & Ho 2022) for unit-variance data: c_skip = 1/(1 + sigma^2),
  c_out = -sigma / sqrt(1 + sigma^2), c_in = 1 / sqrt(1 + sigma^2).
* ``cfm``: conditional flow matching (Lipman et al. 2023; the published graph super-resolution model's objective):
  straight paths ``x_t = (1 - t) x0 + t n`` from the data (t = 0) to unit Gaussian noise (t = 1), F predicts the
  velocity ``n - x0``. It is this family re-timed, ``sigma = t / (1 - t)`` and ``x = x_t / (1 - t)``: c_skip = 1 /
  (1 + sigma), c_out = -sigma / (1 + sigma), c_in = 1 / (1 + sigma), so that D = x_t - t F; the samplers integrate
  its ODE as any other's (DDIM's step is exactly the flow's Euler step).
* ``regression``: the deterministic baseline on the same network: c_skip = 0, c_out = 1, c_in = 0, so D is F of
  the conditioning alone (a "blurry mean"), trained with plain MSE at sigma = 1 and "sampled" in one step.

A VP model (``x_t = sqrt(a) x0 + sqrt(1 - a) n``) is the same model at sigma = sqrt((1 - a) / a), up to the input
scaling c_in, so one set of samplers serves all three. c_noise = ln(sigma) / 4 throughout.

Noise levels are per event (graph): ``sigma`` is ``[num_graphs]`` and ``batch`` maps nodes to graphs.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from graphsr import ops
from graphsr.diffusion.schedule import LearnedSchedule, VarianceGradient

PARAMETERISATIONS = ("edm", "eps", "v", "cfm", "regression")
SCHEDULES = ("cosine", "linear")
CFM_T_GAP = 1e-5  # flow matching trains on t <= 1 - CFM_T_GAP (sigma <= 1e5), as the published model's sigma_min


def vp_sigma(t: torch.Tensor, schedule: str = "cosine") -> torch.Tensor:
    """sigma of a VP schedule at time t in (0, 1]: cosine (Nichol & Dhariwal 2021) or linear beta (DDPM)."""
    if schedule == "cosine":
        s = 0.008
        alpha_bar = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2 / math.cos(s / (1 + s) * math.pi / 2) ** 2
    elif schedule == "linear":
        beta_min, beta_max = 0.1, 20.0  # DDPM's 1e-4 .. 0.02 over 1000 steps, as a continuous-time integral
        alpha_bar = torch.exp(-(beta_min * t + 0.5 * (beta_max - beta_min) * t**2))
    else:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {SCHEDULES}")
    alpha_bar = alpha_bar.clamp(1e-8, 1.0)
    return torch.sqrt((1 - alpha_bar) / alpha_bar)


def _check(parameterisation: str, schedule: str):
    if parameterisation not in PARAMETERISATIONS:
        raise ValueError(f"unknown parameterisation {parameterisation!r}; choose one of {PARAMETERISATIONS}")
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {SCHEDULES}")


class Denoiser(nn.Module):
    """D(x; sigma) from a raw network ``net(x_in, c_noise, batch, **kwargs)`` (see the module docstring).

    Args:
        net: the network F; called with ``[N, C]`` scaled inputs, ``[num_graphs]`` c_noise, ``batch`` and the
            extra keyword arguments given to :meth:`forward`.
        parameterisation: ``"edm"``, ``"eps"`` or ``"v"``.
        sigma_data: data std for ``edm`` (the ``eps`` and ``v`` forms assume 1).
        schedule: the VP schedule used to draw training noise levels for ``eps`` / ``v`` (kept for the loss).
        learned_schedule: a :class:`~graphsr.diffusion.schedule.LearnedSchedule` that draws the training noise levels
            instead (VDM), trained with the network.
    """

    def __init__(self, net: nn.Module, parameterisation: str = "edm", sigma_data: float = 1.0,
                 schedule: str = "cosine", learned_schedule: LearnedSchedule | None = None):
        super().__init__()
        _check(parameterisation, schedule)
        if learned_schedule is not None and parameterisation == "regression":
            raise ValueError("the regression baseline has no noise levels to schedule")
        self.net, self.parameterisation, self.sigma_data, self.schedule = net, parameterisation, sigma_data, schedule
        self.learned_schedule = learned_schedule  # trained with the network (graphsr.diffusion.schedule)

    def scalings(self, sigma: torch.Tensor):
        """(c_skip, c_out, c_in) for per-node sigma."""
        if self.parameterisation == "edm":
            sd2 = self.sigma_data**2
            c_skip = sd2 / (sigma**2 + sd2)
            c_out = sigma * self.sigma_data / (sigma**2 + sd2).sqrt()
            c_in = 1 / (sigma**2 + sd2).sqrt()
        elif self.parameterisation == "eps":
            c_skip, c_out, c_in = torch.ones_like(sigma), -sigma, 1 / (sigma**2 + 1).sqrt()
        elif self.parameterisation == "v":
            c_skip, c_out, c_in = 1 / (sigma**2 + 1), -sigma / (sigma**2 + 1).sqrt(), 1 / (sigma**2 + 1).sqrt()
        elif self.parameterisation == "cfm":
            c_skip, c_out, c_in = 1 / (1 + sigma), -sigma / (1 + sigma), 1 / (1 + sigma)
        else:
            c_skip, c_out, c_in = torch.zeros_like(sigma), torch.ones_like(sigma), torch.zeros_like(sigma)
        return c_skip, c_out, c_in

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, batch: torch.Tensor, **kwargs) -> torch.Tensor:
        """Denoised estimate of x0. x: ``[N, C]``; sigma: ``[num_graphs]``; batch: ``[N]`` graph of each node."""
        node_sigma = sigma[batch].unsqueeze(-1)
        c_skip, c_out, c_in = self.scalings(node_sigma)
        out = self.net(x * c_in, sigma.log() / 4, batch, **kwargs)
        return c_skip * x + c_out * out.to(x.dtype)


class DiffusionLoss:
    """Denoising loss: noise each event at its own sigma, weight the squared error, average per event, then over events.

    Per-event averaging makes every event count the same, whatever its number of cells.

    Training noise levels: ``edm`` draws ln(sigma) ~ N(p_mean, p_std^2) and weights the x0-error by
    (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 (unit weight on F's error). ``eps`` and ``v`` draw t ~ U(0, 1)
    on the VP ``schedule`` and weight by SNR = 1 / sigma^2 (the eps-MSE) or SNR + 1 (the v-MSE); with
    ``min_snr_gamma`` the weight on the x0-error is min(SNR, gamma) for both (Hang et al. 2023, "min-SNR-gamma":
    min(SNR, gamma) / SNR on the eps-MSE, min(SNR, gamma) / (SNR + 1) on the v-MSE). ``cfm`` draws t ~ U(0, 1)
    (sigma = t / (1 - t), at most ``1 / CFM_T_GAP``) and weights the x0-error by 1 / t^2: the velocity MSE.

    With a learned schedule (the denoiser's ``learned_schedule``, :mod:`graphsr.diffusion.schedule`) the levels are
    sigma(t) at t ~ U(0, 1) instead, each event's loss multiplied by :meth:`gamma_density` times the schedule's slope,
    so that the objective stays the parameterisation's (eps / v: VDM's, uniform in ln sigma^2) and the schedule is
    trained to minimise its variance.

    Args:
        parameterisation, schedule, sigma_data: as the :class:`Denoiser`.
        p_mean, p_std: EDM's lognormal noise distribution.
        min_snr_gamma: clamp of the SNR weight for eps / v (None: off).
        sigma_min: smallest training sigma (keeps the SNR weight finite).
    """

    def __init__(self, parameterisation: str = "edm", schedule: str = "cosine", sigma_data: float = 1.0,
                 p_mean: float = -1.2, p_std: float = 1.2, min_snr_gamma: float | None = None,
                 sigma_min: float = 2e-3):
        _check(parameterisation, schedule)
        self.parameterisation, self.schedule, self.sigma_data = parameterisation, schedule, sigma_data
        self.p_mean, self.p_std, self.min_snr_gamma, self.sigma_min = p_mean, p_std, min_snr_gamma, sigma_min

    def sample_sigma(self, num_graphs: int, device, generator: torch.Generator | None = None,
                     learned: LearnedSchedule | None = None) -> torch.Tensor:
        """Training noise levels ``[num_graphs]``: the parameterisation's own draw, or sigma(t) of a ``learned``
        schedule at t ~ U(0, 1)."""
        if learned is not None:
            return learned.sigma(torch.rand(num_graphs, device=device, generator=generator))
        if self.parameterisation == "regression":
            return torch.ones(num_graphs, device=device)
        if self.parameterisation == "edm":
            normal = torch.randn(num_graphs, device=device, generator=generator)
            sigma = (self.p_mean + self.p_std * normal).exp()
        elif self.parameterisation == "cfm":
            t = torch.rand(num_graphs, device=device, generator=generator).clamp_max(1 - CFM_T_GAP)
            sigma = t / (1 - t)
        else:
            sigma = vp_sigma(torch.rand(num_graphs, device=device, generator=generator), self.schedule)
        return sigma.clamp_min(self.sigma_min)

    def gamma_density(self, gamma: torch.Tensor, learned: LearnedSchedule) -> torch.Tensor:
        """The density over gamma = ln sigma^2 that the objective integrates against under a learned schedule
        (:mod:`graphsr.diffusion.schedule`): EDM's lognormal, flow matching's uniform t, and for eps / v uniform
        over the schedule's range (VDM's continuous-time objective)."""
        if self.parameterisation == "edm":
            mean, std = 2 * self.p_mean, 2 * self.p_std
            return torch.exp(-0.5 * ((gamma - mean) / std) ** 2) / (std * math.sqrt(2 * math.pi))
        if self.parameterisation == "cfm":
            t = torch.sigmoid(gamma / 2)
            return 0.5 * t * (1 - t)
        lo, hi = learned.ends
        return torch.full_like(gamma, 1 / float(hi - lo))

    def gamma_quantile(self, u: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
        """The quantile function of :meth:`gamma_density` truncated to [lo, hi]: gamma at probability ``u``, what a
        learned schedule starts from (:meth:`~graphsr.diffusion.schedule.LearnedSchedule.start_at_base`)."""
        lo_, hi_ = torch.tensor(lo, dtype=torch.float64), torch.tensor(hi, dtype=torch.float64)
        u = u.double()
        if self.parameterisation == "edm":
            mean, std = 2 * self.p_mean, 2 * self.p_std
            a, b = torch.special.ndtr((lo_ - mean) / std), torch.special.ndtr((hi_ - mean) / std)
            return (mean + std * torch.special.ndtri(a + u * (b - a))).float()
        if self.parameterisation == "cfm":
            a, b = torch.sigmoid(lo_ / 2), torch.sigmoid(hi_ / 2)
            return (2 * torch.logit(a + u * (b - a))).float()
        return (lo_ + u * (hi_ - lo_)).float()

    def weight(self, sigma: torch.Tensor) -> torch.Tensor:
        if self.parameterisation == "regression":
            return torch.ones_like(sigma)
        if self.parameterisation == "edm":
            return (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2
        if self.parameterisation == "cfm":
            return ((1 + sigma) / sigma) ** 2  # 1 / t^2: unit weight on the velocity's error
        snr = sigma.pow(-2)
        if self.min_snr_gamma is not None:
            return snr.clamp_max(self.min_snr_gamma)
        return snr if self.parameterisation == "eps" else snr + 1

    def __call__(self, denoiser: Denoiser, x0: torch.Tensor, *, batch: torch.Tensor, num_graphs: int,
                 generator: torch.Generator | None = None, sigma: torch.Tensor | None = None,
                 noise: torch.Tensor | None = None, node_weight: torch.Tensor | None = None,
                 per_event: bool = False, **kwargs) -> torch.Tensor:
        """Scalar loss (``per_event``: each event's, ``[num_graphs]``). x0: ``[N, C]`` clean targets; ``sigma``
        ([num_graphs]) and ``noise`` ([N, C], unit normal) override the random draws; ``node_weight`` ([N]) weights
        the nodes within each event (default: all equal)."""
        learned = getattr(denoiser, "learned_schedule", None)
        if sigma is None:
            sigma = self.sample_sigma(num_graphs, x0.device, generator, learned)
        if noise is None:
            noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
        importance, holder = 1.0, {}
        if learned is not None:  # the same sigma, now a function of the schedule's parameters
            gamma, slope = learned.with_slope(learned.invert(2 * sigma.log()))
            gamma, slope = VarianceGradient.apply(gamma, holder), VarianceGradient.apply(slope, holder)
            sigma, importance = (gamma / 2).exp(), self.gamma_density(gamma, learned) * slope
        x = x0 + sigma[batch].unsqueeze(-1) * noise
        error = (denoiser(x, sigma, batch, **kwargs) - x0).pow(2).mean(dim=-1)
        if node_weight is None:
            events = ops.scatter(error, batch, num_graphs, "mean")
        else:
            total = ops.scatter(node_weight, batch, num_graphs, "sum").clamp_min(1e-30)
            events = ops.scatter(error * node_weight, batch, num_graphs, "sum") / total
        events = importance * self.weight(sigma) * events
        holder["loss"] = events.detach()  # the schedule's gradient: of the mean squared loss (VarianceGradient)
        return events if per_event else events.mean()
