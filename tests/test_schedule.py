"""The learned noise schedule (VDM): monotone with fixed end points, an unchanged objective whatever its shape, a
variance that its own training lowers, and a grid the samplers can use."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from graphsr.diffusion import Denoiser, DiffusionLoss
from graphsr.diffusion.schedule import LearnedSchedule

SIGMA_MIN, SIGMA_MAX = 0.002, 20.0


def perturbed(seed: int) -> LearnedSchedule:
    torch.manual_seed(seed)
    schedule = LearnedSchedule(SIGMA_MIN, SIGMA_MAX)
    with torch.no_grad():
        for p in schedule.parameters():
            p.add_(3 * torch.randn_like(p))
    return schedule


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_schedule_is_monotone_between_its_end_points_whatever_its_weights(seed):
    schedule = perturbed(seed)
    t = torch.linspace(0, 1, 2001)
    gamma = schedule(t).detach()
    assert math.isclose(float(gamma[0]), 2 * math.log(SIGMA_MIN), abs_tol=1e-4)
    assert math.isclose(float(gamma[-1]), 2 * math.log(SIGMA_MAX), abs_tol=1e-4)
    assert (torch.diff(gamma) > 0).all()
    assert torch.allclose(schedule.invert(gamma[::100]), t[::100], atol=1e-5)
    _, slope = schedule.with_slope(t[1:-1])
    assert torch.allclose(slope, torch.diff(gamma)[:-1] / 5e-4, rtol=0.05)  # against finite differences
    grid = schedule.grid(6)
    assert math.isclose(float(grid[0]), SIGMA_MAX, rel_tol=1e-4) and math.isclose(float(grid[-2]), SIGMA_MIN,
                                                                                   rel_tol=1e-3)
    assert float(grid[-1]) == 0 and (torch.diff(grid) < 0).all()


class Zero(nn.Module):
    def forward(self, x, c_noise, batch):
        return torch.zeros_like(x)


def edm_objective(s: float, p_mean: float = -1.2, p_std: float = 1.2) -> float:
    """EDM's objective for N(0, s^2) data and F = 0 (D = c_skip x), by quadrature over gamma = ln sigma^2 within
    the schedule's range: the lognormal density of gamma times lambda(sigma) times the x0 error
    (c_skip - 1)^2 s^2 + c_skip^2 sigma^2, with sigma_data = 1."""
    gamma = np.linspace(2 * math.log(SIGMA_MIN), 2 * math.log(SIGMA_MAX), 200_001)
    sigma2 = np.exp(gamma)
    density = np.exp(-0.5 * ((gamma - 2 * p_mean) / (2 * p_std)) ** 2) / (2 * p_std * math.sqrt(2 * math.pi))
    c_skip = 1 / (sigma2 + 1)
    error = (c_skip - 1) ** 2 * s**2 + c_skip**2 * sigma2
    weight = (sigma2 + 1) / sigma2
    return float(np.trapezoid(density * weight * error, gamma))


def toy_loss(schedule, s, events=40_000, seed=0):
    """Per-event losses (one node each) of the F = 0 EDM denoiser on N(0, s^2) data under ``schedule``."""
    generator = torch.Generator().manual_seed(seed)
    return DiffusionLoss("edm")(Denoiser(Zero(), "edm", learned_schedule=schedule),
                                s * torch.randn(events, 1, generator=generator), batch=torch.arange(events),
                                num_graphs=events, generator=generator, per_event=True)


@pytest.mark.parametrize("seed", [0, 1])
def test_the_objective_does_not_depend_on_the_schedules_shape(seed):
    """EDM's expected loss under two unrelated learned schedules equals its quadrature (edm_objective) within the
    Monte-Carlo error: the importance weights p(gamma) gamma'(t) undo the schedule's sampling density."""
    s = 0.7
    expected = edm_objective(s)
    schedule = perturbed(seed)
    with torch.no_grad():
        losses = toy_loss(schedule, s)
    error = float(losses.std()) / math.sqrt(losses.numel())
    assert abs(float(losses.mean()) - expected) < 4 * error + 1e-3, (float(losses.mean()), expected, error)


def test_training_the_schedule_lowers_the_variance_of_the_loss():
    """VDM's objective: the schedule's parameters follow the gradient of the squared loss (VarianceGradient), so a
    few hundred Adam steps on them alone leave the mean (the objective) and lower the variance of the estimate."""
    s = 0.7
    schedule = LearnedSchedule(SIGMA_MIN, SIGMA_MAX)  # uniform in gamma: far from EDM's lognormal density
    denoiser = Denoiser(Zero(), "edm", learned_schedule=schedule)
    loss = DiffusionLoss("edm")
    generator = torch.Generator().manual_seed(3)

    def per_event(n=2000):
        x0 = s * torch.randn(n, 1, generator=generator)
        return loss(denoiser, x0, batch=torch.arange(n), num_graphs=n, generator=generator), x0

    def variance():
        with torch.no_grad():
            values = toy_loss(schedule, s, seed=7)
        return float(values.var()), float(values.mean())

    before, mean_before = variance()
    optimizer = torch.optim.Adam(schedule.parameters(), lr=0.05)
    for _ in range(300):
        optimizer.zero_grad()
        per_event()[0].backward()
        optimizer.step()
    after, mean_after = variance()
    expected = edm_objective(s)
    assert after < 0.6 * before, (before, after)  # 4.7 -> 2.3 here
    assert abs(mean_after - expected) < 0.03 * expected and abs(mean_before - expected) < 0.03 * expected


def test_a_model_trains_its_schedule_and_samples_on_its_grid(electron_file, tmp_path):
    from graphsr.config import config_from_dict
    from graphsr.inference import SuperResolver
    from graphsr.pipelines import train
    from graphsr.training.checkpoint import load_checkpoint
    from graphsr.training.trainer import load_splits

    settings = {
        "data": {"train": [str(electron_file)], "cache": str(tmp_path / "cache")},
        "model": {"width": 16, "depth": 1, "coarse_depth": 1, "heads": 2, "context_tokens": 2},
        "diffusion": {"parameterisation": "eps", "learned_schedule": True},
        "train": {"steps": 6, "batch_size": 8, "lr": 2e-2, "warmup": 1, "val_every": 3},
        "sample": {"sampler": "ddim", "steps": 3, "ensemble": 2, "grid": "learned", "calibration_events": 2}}
    result = train(config_from_dict(settings), tmp_path / "run", progress=False)
    weights = load_checkpoint(result.checkpoint)["model"]
    fresh = LearnedSchedule(SIGMA_MIN, SIGMA_MAX).state_dict()
    assert not torch.equal(weights["learned_schedule.l2.weight"], fresh["l2.weight"])  # trained with the network
    resolver = SuperResolver(result.checkpoint, device="cpu")
    schedule = resolver.denoiser.learned_schedule
    assert torch.allclose(resolver.grid(3), schedule.grid(3))
    _, _, test = load_splits(resolver.config)
    out = resolver(test.storage(), torch.as_tensor(test.indices()[:2]), seed=0)
    assert torch.isfinite(out["samples"]).all()
    resolver.config.sample.grid = "karras"  # either grid samples the same model
    assert torch.isfinite(resolver(test.storage(), torch.as_tensor(test.indices()[:2]), seed=0)["samples"]).all()
    plain = {**settings, "diffusion": {"parameterisation": "eps"}}
    with pytest.raises(ValueError, match="needs a learned schedule"):  # refused before any training
        train(config_from_dict(plain), tmp_path / "plain", progress=False)
    assert not (tmp_path / "plain").exists()
    other = train(config_from_dict({**plain, "sample": {**settings["sample"], "grid": "karras"}}), tmp_path / "plain",
                  progress=False)
    resolver = SuperResolver(other.checkpoint, device="cpu")
    resolver.config.sample.grid = "learned"
    with pytest.raises(ValueError, match="no learned schedule"):
        resolver.grid(3)


def test_a_schedule_starts_at_its_objectives_own_density():
    """Before training, the schedule is fitted to the quantile function of the objective's density of ln sigma^2:
    EDM's lognormal truncated to the schedule's range (scipy's truncnorm, independently), flow matching's uniform t
    (gamma = 2 logit t). Its draws then fall in the same places, within a few per cent of probability."""
    from scipy import stats

    lo, hi = 2 * math.log(SIGMA_MIN), 2 * math.log(SIGMA_MAX)
    u = torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95])
    mean, std = 2 * -1.2, 2 * 1.2
    expected = stats.truncnorm.ppf(u.numpy(), (lo - mean) / std, (hi - mean) / std, loc=mean, scale=std)
    assert np.allclose(DiffusionLoss("edm").gamma_quantile(u, lo, hi).numpy(), expected, atol=1e-4)
    t = lambda g: 1 / (1 + np.exp(-g / 2))  # noqa: E731
    cfm = DiffusionLoss("cfm").gamma_quantile(u, lo, hi).numpy()
    assert np.allclose((t(cfm) - t(lo)) / (t(hi) - t(lo)), u.numpy(), atol=1e-5)
    for parameterisation in ("edm", "cfm"):
        loss = DiffusionLoss(parameterisation)
        torch.manual_seed(0)
        schedule = LearnedSchedule(SIGMA_MIN, SIGMA_MAX, base=loss.gamma_quantile).start_at_base()
        draws = schedule(torch.rand(100_000, generator=torch.Generator().manual_seed(1))).detach()
        for q, value in zip(u.tolist(), loss.gamma_quantile(u, lo, hi).tolist()):
            assert abs(float((draws < value).float().mean()) - q) < 0.04, (parameterisation, q)
