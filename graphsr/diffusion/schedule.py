"""A learned noise schedule (variational diffusion models, Kingma et al. 2021, arXiv 2107.00630).

``gamma(t) = ln sigma(t)^2`` (minus the log signal-to-noise ratio) is a monotone network of t in [0, 1] with fixed end
points ``gamma(0) = ln sigma_min^2`` and ``gamma(1) = ln sigma_max^2``. Training draws t ~ U(0, 1) and the noise level
``sigma(t)``; the loss of each event is multiplied by ``p(gamma) gamma'(t)``, where ``p`` is the density over gamma that
the parameterisation's objective integrates against (:meth:`graphsr.diffusion.DiffusionLoss.gamma_density`): so the
expected loss is the same whatever the schedule's interior, and the schedule only changes how the noise levels are
sampled, that is the loss estimate's variance. As in VDM, the schedule's own parameters are trained to minimise that
variance: they get the gradient of the squared per-event loss (:class:`VarianceGradient`), the network the gradient of
the loss. For ``eps`` and ``v`` the density is uniform in gamma (VDM's continuous-time objective); for EDM its
lognormal training density, for flow matching its uniform t: the same objectives as their fixed schedules, sampled
where they vary most.

Samplers can take their grid from it (``sample.grid: learned``): steps evenly spaced in t, as training saw them.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.functional import softplus


class LearnedSchedule(nn.Module):
    """Monotone ``gamma(t)`` from ``ln sigma_min^2`` at t = 0 to ``ln sigma_max^2`` at t = 1 (the module docstring).

    The network is VDM's: ``y = l1(t)``, ``gamma~ = y + l3(sigmoid(l2(y)))`` with positive weights (softplus of free
    ones), so increasing in t; then rescaled to the end points. ``base``: the quantile function ``gamma(u, lo, hi)``
    of the objective's own density (:meth:`~graphsr.diffusion.DiffusionLoss.gamma_quantile`), which
    :meth:`start_at_base` fits before training, so that a run starts from its parameterisation's own sampling.
    """

    def __init__(self, sigma_min: float, sigma_max: float, hidden: int = 64, base=None):
        super().__init__()
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"a schedule needs 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.register_buffer("ends", torch.tensor([2 * math.log(sigma_min), 2 * math.log(sigma_max)]))
        self.base = base
        self.l1 = nn.Linear(1, 1)
        self.l2 = nn.Linear(1, hidden)
        self.l3 = nn.Linear(hidden, 1)
        with torch.no_grad():  # y spans [0, 10]; sigmoid steps of many sharpnesses spread across it, so that
            self.l1.weight.fill_(10.0)  # start_at_base can fit steep quantile functions
            self.l1.bias.zero_()
            self.l2.weight.uniform_(-1.0, 4.0)
            self.l2.bias.copy_(-torch.linspace(0.0, float(softplus(torch.tensor(10.0))), hidden) *
                               softplus(self.l2.weight[:, 0]))
            self.l3.weight.fill_(-3.0)

    def start_at_base(self, steps: int = 400) -> LearnedSchedule:
        """Fit the schedule to ``base`` (least squares on a grid of t; deterministic): training then starts from the
        parameterisation's own noise-level density, importance weights 1."""
        if self.base is None:
            return self
        lo, hi = (float(v) for v in self.ends)
        t = torch.linspace(0, 1, 257, device=self.ends.device)[1:-1]
        target = self.base(t, lo, hi)
        optimizer = torch.optim.Adam(self.parameters(), lr=0.1)
        with torch.enable_grad():
            for _ in range(steps):
                optimizer.zero_grad()
                ((self(t) - target) ** 2).mean().backward()
                optimizer.step()
        return self

    def _monotone(self, t: torch.Tensor) -> torch.Tensor:
        y = t.unsqueeze(-1) * softplus(self.l1.weight[0]) + self.l1.bias
        hidden = torch.sigmoid(y * softplus(self.l2.weight[:, 0]) + self.l2.bias)
        return (y + hidden @ softplus(self.l3.weight[0]).unsqueeze(-1) + self.l3.bias)[..., 0]

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """``gamma(t)`` for t in [0, 1] (any shape)."""
        raw = self._monotone(torch.cat([t.reshape(-1), t.new_tensor([0.0, 1.0])]))
        lo, hi = self.ends
        return (lo + (hi - lo) * (raw[:-2] - raw[-2]) / (raw[-1] - raw[-2])).view_as(t)

    def with_slope(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(gamma(t), gamma'(t))``, both differentiable in the schedule's parameters."""
        training = torch.is_grad_enabled()  # else (validation, sampling) plain values
        t = t.detach().requires_grad_(True)
        with torch.enable_grad():
            gamma = self(t)
            (slope,) = torch.autograd.grad(gamma.sum(), t, create_graph=training)
        return (gamma, slope) if training else (gamma.detach(), slope.detach())

    @torch.no_grad()
    def invert(self, gamma: torch.Tensor, iterations: int = 40) -> torch.Tensor:
        """The t of each ``gamma`` (clamped to the end points), by bisection: 40 halvings leave 1e-12 of t."""
        lo, hi = torch.zeros_like(gamma), torch.ones_like(gamma)
        for _ in range(iterations):
            mid = (lo + hi) / 2
            below = self(mid) < gamma
            lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
        return (lo + hi) / 2

    @torch.no_grad()
    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        return (self(t) / 2).exp()

    @torch.no_grad()
    def grid(self, steps: int, device=None) -> torch.Tensor:
        """``steps`` sampling levels evenly spaced in t from sigma_max down to sigma_min, then a final 0 (as
        :func:`~graphsr.diffusion.karras_sigmas`)."""
        if steps < 1:
            raise ValueError(f"need at least one sampling step, got {steps}")
        t = torch.linspace(1, 0, steps, device=device or self.ends.device)
        return torch.cat([self.sigma(t), t.new_zeros(1)]).float()


class VarianceGradient(torch.autograd.Function):
    """Identity on the way forward; on the way back each event's gradient is multiplied by ``2 L_i`` (``holder
    ["loss"]``, set once the per-event losses are known), so that what reaches the schedule's parameters is the
    gradient of the mean squared loss (VDM's variance objective) while the network's gradients stay the loss's."""

    @staticmethod
    def forward(ctx, value: torch.Tensor, holder: dict) -> torch.Tensor:
        ctx.holder = holder
        return value.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * 2 * ctx.holder["loss"], None
