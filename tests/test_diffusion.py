"""Diffusion: preconditioning, loss, schedules and samplers against known answers for Gaussian data."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from graphsr.config import Config, load_config
from graphsr.diffusion import Denoiser, DiffusionLoss, evaluations, get_sampler, karras_sigmas, vp_sigma


class Zero(nn.Module):
    """F = 0: the EDM (sigma_data = s) and v (s = 1) denoisers are then the optimal ones for N(0, s^2) data."""

    def forward(self, x, c_noise, batch):
        return torch.zeros_like(x)


class GaussianOptimal(nn.Module):
    """The exact F for data N(mu, s^2): D(x; sigma) = mu + s^2 / (s^2 + sigma^2) (x - mu), inverted through the
    preconditioning of ``parameterisation``."""

    def __init__(self, mu, s, parameterisation, sigma_data=1.0):
        super().__init__()
        self.mu, self.s = mu, s
        self.ref = Denoiser(Zero(), parameterisation, sigma_data)

    def forward(self, x_in, c_noise, batch):
        sigma = (4 * c_noise).exp()[batch].unsqueeze(-1)
        c_skip, c_out, c_in = self.ref.scalings(sigma)
        x = x_in / c_in
        ideal = self.mu + self.s**2 / (self.s**2 + sigma**2) * (x - self.mu)
        return (ideal - c_skip * x) / c_out

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def exact_moments(sampler, sigmas, mu, s, eta=0.0):
    """Mean and standard deviation of what ``sampler`` returns on the grid ``sigmas`` from x ~ N(0, sigmas[0]^2) with
    the exact denoiser of N(mu, s^2) data, in closed form.

    With y = x - mu the denoiser is D - mu = k y, k = s^2 / (s^2 + sigma^2), so every step maps y linearly (plus fresh
    noise): a DDIM step to sigma_down with noise sigma_up gives y' = y (s^2 + sigma sigma_down) / (s^2 + sigma^2) +
    sigma_up eps; Heun's averages the slopes y sigma / (s^2 + sigma^2) at both ends of its Euler step; DPM-Solver++(2M)
    gives y' = e^-h y - expm1(-h) (d - mu), d its extrapolation of the last two denoised values. The mean of y is
    carried with the factors, its variance with their squares plus sigma_up^2."""
    sigmas = [float(v) for v in sigmas]
    k = lambda sigma: s**2 / (s**2 + sigma**2)  # noqa: E731
    mean, var = -mu, sigmas[0] ** 2  # of y
    factor_y = 1.0  # deterministic samplers: y = factor_y y_0
    old = None  # DPM-Solver++(2M): the last denoised value (minus mu, a multiple of y_0) and its step h
    for sigma, nxt in zip(sigmas[:-1], sigmas[1:]):
        if sampler in ("ddim", "ddpm"):
            e = 1.0 if sampler == "ddpm" else eta
            up = min(e * math.sqrt(nxt**2 * (sigma**2 - nxt**2) / sigma**2), nxt)
            down = math.sqrt(nxt**2 - up**2)
            g = (s**2 + sigma * down) / (s**2 + sigma**2)
            mean, var = g * mean, g**2 * var + up**2
            continue
        if sampler == "heun":
            g = 1 + (nxt - sigma) * sigma / (s**2 + sigma**2)
            if nxt > 0:
                g = 1 + (nxt - sigma) / 2 * (sigma / (s**2 + sigma**2) + g * nxt / (s**2 + nxt**2))
        else:  # dpmpp_2m, as multiples of y_0
            denoised = k(sigma) * factor_y
            if nxt == 0:
                g = denoised / factor_y
            else:
                h = math.log(sigma / nxt)
                d = denoised if old is None else (1 + h / (2 * old[1])) * denoised - h / (2 * old[1]) * old[0]
                old = (denoised, h)
                g = (math.exp(-h) * factor_y - math.expm1(-h) * d) / factor_y
        factor_y *= g
        mean, var = g * mean, g**2 * var
    return mu + mean, math.sqrt(var)


def sample(denoiser, sampler, steps, n=4000, graphs=4, seed=0, sigma_max=80.0):
    g = torch.Generator().manual_seed(seed)
    batch = torch.arange(graphs).repeat_interleave(n // graphs)
    sigmas = karras_sigmas(steps, 0.002, sigma_max)
    x = torch.randn(n, 1, generator=g) * sigmas[0]
    return get_sampler(sampler)(denoiser, x, sigmas, batch=batch, generator=g)


def test_karras_sigmas():
    s = karras_sigmas(10, 0.01, 50.0)
    assert len(s) == 11 and s[-1] == 0
    assert s[0] == pytest.approx(50.0) and s[-2] == pytest.approx(0.01)
    assert torch.all(s[1:] < s[:-1])
    with pytest.raises(ValueError):
        karras_sigmas(0)


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_vp_sigma_monotone(schedule):
    t = torch.linspace(0.01, 1, 50)
    sigma = vp_sigma(t, schedule)
    assert torch.all(sigma[1:] > sigma[:-1]) and sigma[0] < 0.2 and sigma[-1] > 50


@pytest.mark.parametrize("parameterisation", ["edm", "v"])
def test_zero_network_is_optimal_for_unit_gaussian(parameterisation):
    # D(x; sigma) = x / (1 + sigma^2) is E[x0 | x] for x0 ~ N(0, 1)
    d = Denoiser(Zero(), parameterisation, sigma_data=1.0)
    x, sigma = torch.randn(10, 1), torch.tensor([0.5, 2.0])
    batch = torch.tensor([0] * 5 + [1] * 5)
    assert torch.allclose(d(x, sigma, batch), x / (1 + sigma[batch].unsqueeze(1) ** 2))


@pytest.mark.parametrize("sampler,steps", [("heun", 18), ("dpmpp_2m", 25), ("ddim", 60), ("ddpm", 80)])
@pytest.mark.parametrize("parameterisation", ["edm", "eps", "v", "cfm"])
def test_samplers_recover_gaussian(sampler, steps, parameterisation):
    mu, s = 1.5, 0.4
    denoiser = Denoiser(GaussianOptimal(mu, s, parameterisation), parameterisation)
    x = sample(denoiser, sampler, steps, n=40_000)
    mean, std = exact_moments(sampler, karras_sigmas(steps, 0.002, 80.0), mu, s)
    # near the data's N(mu, s^2): the discretisation of these steps moves the standard deviation by 3-7%
    assert mean == pytest.approx(mu, abs=0.01) and std == pytest.approx(s, rel=0.08)
    # and the samples have exactly those moments: 4 standard errors of a mean and of a standard deviation of n
    # normal values, std / sqrt(n) and std / sqrt(2 (n - 1)) (0.35% of it at n = 40,000)
    n = len(x)
    assert float(x.mean()) == pytest.approx(mean, abs=4 * std / math.sqrt(n))
    assert float(x.std()) == pytest.approx(std, rel=4 / math.sqrt(2 * (n - 1)))


@pytest.mark.parametrize("parameterisation", ["edm", "cfm"])
def test_adaptive_sampler_solves_the_gaussian_ode_to_its_tolerance(parameterisation):
    # for N(mu, s^2) data the probability-flow ODE is linear: y = x - mu follows dy/dsigma = y sigma / (s^2 +
    # sigma^2), so y(sigma) = y(sigma_max) sqrt((s^2 + sigma^2) / (s^2 + sigma_max^2)); the last step to 0 lands on
    # the denoised value, mu + s^2 / (s^2 + sigma_min^2) y(sigma_min)
    from graphsr.diffusion.samplers import sample_rk45

    mu, s, sigma_max, sigma_min = 1.5, 0.4, 80.0, 0.002
    denoiser = Denoiser(GaussianOptimal(mu, s, parameterisation), parameterisation)
    x = torch.linspace(-3, 3, 7).unsqueeze(1) * sigma_max
    batch = torch.arange(7)
    y_min = (x - mu) * math.sqrt((s**2 + sigma_min**2) / (s**2 + sigma_max**2))
    exact = mu + s**2 / (s**2 + sigma_min**2) * y_min
    errors, counts = [], []
    for rtol in (1e-3, 1e-6):
        stats = {}
        out = sample_rk45(denoiser, x, karras_sigmas(4, sigma_min, sigma_max), batch=batch, rtol=rtol, atol=rtol,
                          stats=stats)
        errors.append(float((out - exact).abs().max()))
        counts.append(stats["evaluations"])
        assert stats["accepted"] > 0 and stats["evaluations"] == 1 + 6 * (stats["accepted"] + stats["rejected"])
    assert errors[1] < 1e-5 and errors[0] < 0.05  # within the tolerance of each run, on values of size 1 to 3
    assert counts[1] > counts[0]  # a tighter tolerance takes more evaluations


@pytest.mark.parametrize("parameterisation", ["edm", "eps"])
def test_ddim_with_eta_recovers_gaussian_and_spans_ddim_to_ddpm(parameterisation):
    mu, s = 1.5, 0.4
    denoiser = Denoiser(GaussianOptimal(mu, s, parameterisation), parameterisation)
    g = torch.Generator().manual_seed(0)
    batch = torch.arange(4).repeat_interleave(1000)
    sigmas = karras_sigmas(60, 0.002, 80.0)
    x0 = torch.randn(4000, 1, generator=g) * sigmas[0]
    run = lambda sampler, seed, **kw: get_sampler(sampler)(  # noqa: E731
        denoiser, x0, sigmas, batch=batch, generator=torch.Generator().manual_seed(seed), **kw)
    half = run("ddim", 1, eta=0.5)
    mean, std = exact_moments("ddim", sigmas, mu, s, eta=0.5)  # 4 standard errors, as above
    assert float(half.mean()) == pytest.approx(mean, abs=4 * std / math.sqrt(4000))
    assert float(half.std()) == pytest.approx(std, rel=4 / math.sqrt(2 * 3999))
    # eta = 1 is ancestral DDPM, draw for draw; eta = 0 draws no noise at all
    assert torch.equal(run("ddim", 1, eta=1.0), run("ddpm", 1))
    assert torch.equal(run("ddim", 1, eta=0.0), run("ddim", 2, eta=0.0))
    assert not torch.equal(half, run("ddim", 2, eta=0.5))


def test_samplers_are_seeded():
    denoiser = Denoiser(GaussianOptimal(0.0, 1.0, "edm"), "edm")
    assert torch.equal(sample(denoiser, "ddpm", 10, seed=3), sample(denoiser, "ddpm", 10, seed=3))
    assert not torch.equal(sample(denoiser, "ddpm", 10, seed=3), sample(denoiser, "ddpm", 10, seed=4))


def test_heun_evaluation_count_and_callback():
    calls = []

    class Counting(Zero):
        def forward(self, x, c_noise, batch):
            calls.append(1)
            return super().forward(x, c_noise, batch)

    steps_seen = []
    batch = torch.zeros(5, dtype=torch.long)
    get_sampler("heun")(Denoiser(Counting()), torch.randn(5, 1), karras_sigmas(6), batch=batch,
                        callback=lambda info: steps_seen.append(info["i"]))
    assert len(calls) == evaluations("heun", 6) == 11 and steps_seen == list(range(6))
    with pytest.raises(ValueError, match="unknown sampler"):
        get_sampler("euler_a")


@pytest.mark.parametrize("parameterisation", ["edm", "eps", "v"])
def test_loss_is_zero_for_the_exact_denoiser_of_a_constant(parameterisation):
    # data = the constant c: the exact denoiser returns c at every noise level; any other D has a positive loss
    c = 0.7
    exact = Denoiser(GaussianOptimal(c, 0.0, parameterisation), parameterisation)
    loss = DiffusionLoss(parameterisation)
    batch = torch.arange(3).repeat_interleave(20)
    x0 = torch.full((60, 1), c)
    g = torch.Generator().manual_seed(0)
    assert float(loss(exact, x0, batch=batch, num_graphs=3, generator=g)) == pytest.approx(0, abs=1e-8)
    wrong = Denoiser(GaussianOptimal(c + 0.1, 0.0, parameterisation), parameterisation)
    assert float(loss(wrong, x0, batch=batch, num_graphs=3, generator=g)) > 1e-3


def test_loss_averages_per_event_not_per_node():
    # D = 0: one event of 1 node with error 1, one of 99 nodes with error 0. Per event: (1 + 0) / 2 (times the
    # weight, 2 at sigma = 1); averaging over nodes would give 1 / 100.
    loss = DiffusionLoss("edm", sigma_data=1.0)
    batch = torch.tensor([0] + [1] * 99)
    x0 = torch.zeros(100, 1)
    x0[0] = 1.0
    value = loss(lambda x, sigma, batch: torch.zeros_like(x), x0, batch=batch, num_graphs=2,
                 sigma=torch.ones(2))
    assert float(value) == pytest.approx(0.5 * 2.0)


def test_edm_loss_weight():
    # EDM: (sigma^2 + sigma_data^2) / (sigma sigma_data)^2, unit weight on F's error
    assert math.isclose(float(DiffusionLoss("edm").weight(torch.tensor([1.0]))), 2.0)
    assert math.isclose(float(DiffusionLoss("edm", sigma_data=0.5).weight(torch.tensor([2.0]))), 4.25)


def test_bad_names_are_rejected():
    with pytest.raises(ValueError, match="parameterisation"):
        Denoiser(Zero(), "x0")
    with pytest.raises(ValueError, match="schedule"):
        DiffusionLoss("eps", schedule="sigmoid")


def test_regression_baseline_ignores_the_noisy_input_and_samples_in_one_step():
    class Constant(nn.Module):
        def forward(self, x_in, c_noise, batch):
            assert torch.all(x_in == 0) and torch.all(c_noise == 0)
            return torch.full_like(x_in, 0.25)

    d = Denoiser(Constant(), "regression")
    batch = torch.zeros(6, dtype=torch.long)
    out = get_sampler("ddim")(d, torch.randn(6, 1), torch.tensor([1.0, 0.0]), batch=batch)
    assert torch.allclose(out, torch.full((6, 1), 0.25))
    loss = DiffusionLoss("regression")
    x0 = torch.full((6, 1), 0.75)
    assert float(loss(d, x0, batch=batch, num_graphs=1)) == pytest.approx(0.25)  # plain MSE: (0.75 - 0.25)^2


@pytest.mark.parametrize("parameterisation,sigma_data,expected", [
    # hand-computed at sigma = 2: EDM table 1 (sigma_data 0.5); eps c_out = -sigma; v for unit-variance data
    ("edm", 0.5, (0.25 / 4.25, 1.0 / math.sqrt(4.25), 1 / math.sqrt(4.25))),
    ("eps", 1.0, (1.0, -2.0, 1 / math.sqrt(5.0))),
    ("v", 1.0, (0.2, -2 / math.sqrt(5.0), 1 / math.sqrt(5.0))),
    ("cfm", 1.0, (1 / 3, -2 / 3, 1 / 3)),  # t = sigma / (1 + sigma) = 2/3: 1 - t, -t, 1 - t
    ("regression", 1.0, (0.0, 1.0, 0.0)),
])
def test_preconditioning_scalings_match_hand_values(parameterisation, sigma_data, expected):
    c_skip, c_out, c_in = Denoiser(Zero(), parameterisation, sigma_data).scalings(torch.tensor([2.0]))
    assert [float(c_skip), float(c_out), float(c_in)] == pytest.approx(expected, rel=1e-6)


def test_v_prediction_recovers_x0_from_the_true_v():
    # VP form: x_t = a x0 + s n with a^2 + s^2 = 1, v = a n - s x0; in sigma form x = x_t / a, sigma = s / a.
    # Feeding the network's input c_in x and the true v must give back x0 exactly.
    x0, n = torch.tensor([[0.7], [-1.3]]), torch.tensor([[0.2], [0.9]])
    a, s = 0.6, 0.8
    v = a * n - s * x0

    class TrueV(nn.Module):
        def forward(self, x_in, c_noise, batch):
            return v

    sigma = torch.tensor([s / a])
    assert torch.allclose(Denoiser(TrueV(), "v")((a * x0 + s * n) / a, sigma, torch.zeros(2, dtype=torch.long)), x0,
                          atol=1e-6)


def test_flow_matching_recovers_x0_from_the_true_velocity():
    # x_t = (1 - t) x0 + t n, velocity n - x0; in sigma form x = x_t / (1 - t), sigma = t / (1 - t)
    x0, n, t = torch.tensor([[0.7], [-1.3]]), torch.tensor([[0.2], [0.9]]), 0.3

    class TrueVelocity(nn.Module):
        def forward(self, x_in, c_noise, batch):
            assert torch.allclose(x_in, (1 - t) * x0 + t * n)  # the network sees x_t itself
            return n - x0

    x = ((1 - t) * x0 + t * n) / (1 - t)
    denoised = Denoiser(TrueVelocity(), "cfm")(x, torch.tensor([t / (1 - t)]), torch.zeros(2, dtype=torch.long))
    assert torch.allclose(denoised, x0, atol=1e-6)


@pytest.mark.parametrize("t", [0.2, 0.5, 0.8])
def test_flow_matching_loss_is_least_for_the_optimal_velocity_of_gaussian_data(t):
    # x0 ~ N(0, s^2), x_t = (1 - t) x0 + t n: the optimal velocity E[n - x0 | x_t] = (t - (1 - t) s^2) x_t / V
    # with V = (1 - t)^2 s^2 + t^2, and the least velocity MSE is Var(n - x0) - Cov(n - x0, x_t)^2 / V
    s, count = 0.6, 400_000
    g = torch.Generator().manual_seed(0)
    x0 = s * torch.randn(count, 1, generator=g)
    variance = (1 - t) ** 2 * s**2 + t**2
    least = 1 + s**2 - (t - (1 - t) * s**2) ** 2 / variance

    class Velocity(nn.Module):
        def __init__(self, slope):
            super().__init__()
            self.slope = slope

        def forward(self, x_in, c_noise, batch):  # x_in is x_t
            return self.slope * x_in

    loss, sigma = DiffusionLoss("cfm"), torch.tensor([t / (1 - t)])
    batch = torch.zeros(count, dtype=torch.long)
    optimal = (t - (1 - t) * s**2) / variance
    values = {slope: float(loss(Denoiser(Velocity(slope), "cfm"), x0, batch=batch, num_graphs=1, sigma=sigma,
                                generator=torch.Generator().manual_seed(1)))
              for slope in (optimal, optimal + 0.2, optimal - 0.2)}
    assert values[optimal] == pytest.approx(least, rel=0.01)
    assert values[optimal] < min(values[optimal + 0.2], values[optimal - 0.2])


def test_flow_matching_draws_t_uniformly_and_weights_the_velocity_error():
    loss = DiffusionLoss("cfm")
    sigma = loss.sample_sigma(100_000, "cpu", torch.Generator().manual_seed(0))
    t = sigma / (1 + sigma)
    # U(0, 1): mean 1/2, a quarter below 1/4, none above 1 - 1e-5 (sigma <= 1e5)
    assert float(t.mean()) == pytest.approx(0.5, abs=0.005) and float((t < 0.25).float().mean()) == \
        pytest.approx(0.25, abs=0.005) and float(sigma.max()) <= 1e5
    assert loss.weight(torch.tensor([1.0, 3.0])).tolist() == pytest.approx([4.0, 16 / 9])  # 1 / t^2


@pytest.mark.parametrize("parameterisation", ["eps", "v"])
def test_min_snr_weight_on_the_x0_error_is_min_of_snr_and_gamma(parameterisation):
    # Hang et al. 2023: min(SNR, gamma) / SNR on the eps-MSE and min(SNR, gamma) / (SNR + 1) on the v-MSE; the
    # eps-MSE is SNR and the v-MSE (SNR + 1) times the x0-MSE, so both weigh the x0 error by min(SNR, gamma)
    sigma = torch.tensor([0.1, 0.5, 2.0])  # SNR 100, 4, 0.25
    weighted = DiffusionLoss(parameterisation, min_snr_gamma=5.0).weight(sigma)
    assert weighted.tolist() == pytest.approx([5.0, 4.0, 0.25])
    plain = DiffusionLoss(parameterisation).weight(sigma)
    assert plain.tolist() == pytest.approx([100.0, 4.0, 0.25] if parameterisation == "eps" else [101.0, 5.0, 1.25])


def test_loss_node_weights_average_within_events():
    # F = 0 under "regression" gives D = 0: the squared error is x0^2. Event 0 has nodes 1, 3 (weights 1, 3) and
    # event 1 node 2 (weight 1): per event (1*1 + 3*9) / 4 = 7 and 4, mean 5.5
    loss = DiffusionLoss("regression")
    x0 = torch.tensor([[1.0], [3.0], [2.0]])
    batch = torch.tensor([0, 0, 1])
    value = loss(Denoiser(Zero(), "regression"), x0, batch=batch, num_graphs=2,
                 node_weight=torch.tensor([1.0, 3.0, 1.0]))
    assert float(value) == pytest.approx(5.5)
    assert float(loss(Denoiser(Zero(), "regression"), x0, batch=batch, num_graphs=2)) == pytest.approx((5 + 4) / 2)


@pytest.mark.parametrize("name", ["default", *sorted(p.name for p in CONFIGS.glob("*.yaml"))])
def test_sampling_starts_where_training_reaches_and_from_pure_noise(name):
    # EDM trains on ln(sigma) ~ N(p_mean, p_std): above p_mean + 3.5 p_std (e^3.0 = 20.1 for -1.2, 1.2) it has seen
    # one noise level in 4,000, and a few-step grid starting far above that biased the event energy (config.py).
    # The start must still drown the data: sigma_max >= 10 sigma_data (signal-to-noise <= 1/100).
    config = Config() if name == "default" else load_config(CONFIGS / name)
    d = config.diffusion
    if d.parameterisation != "edm":
        pytest.skip("not EDM: eps / v follow their VP schedule, flow matching (and the trees) its t in [0, 1], "
                    "the regression baseline takes one step")
    assert d.sigma_max <= math.exp(d.p_mean + 3.5 * d.p_std)
    assert d.sigma_max >= 10 * d.sigma_data
