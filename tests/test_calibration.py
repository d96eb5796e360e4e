"""The spread calibration of the dense generator against answers known by hand: members drawn w times as wide as the
truth's law need the factor 1 / w, below 1 for w > 1 (an over-dispersed ensemble is narrowed)."""

from __future__ import annotations

import math

import pytest
import torch

from graphsr.config import config_from_dict
from graphsr.graphs import build_storage, collate_events
from graphsr.inference import SuperResolver, central_coverage, fit_calibration
from graphsr.inference.calibration import _smallest_reaching
from graphsr.models.sr3 import EnergyModel

from conftest import make_toy_events

Z68 = 0.994458  # Phi^-1(0.84): the central 68% interval of N(0, s^2) is +-Z68 s


def phi(x: float) -> float:
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def gaussian_coverage(width: float) -> float:
    """Coverage of a N(0, 1) truth by the central 68% interval of members N(0, width^2)."""
    return 2 * phi(Z68 * width) - 1


def standard_error(p: float, n: int) -> float:
    return math.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("width", [0.5, 1.0, 2.0])
def test_central_coverage_of_gaussian_members(width):
    g = torch.Generator().manual_seed(1)
    n, k = 4000, 400
    truth = torch.randn(n, generator=g)
    members = width * torch.randn(k, n, generator=g)
    expected = gaussian_coverage(width)  # 0.381, 0.680, 0.953
    # 4 standard errors of a fraction of n; the interval of 400 members is noisy, which lowers the coverage by
    # phi(Z68 w) var / 2 per end, var = 0.16 * 0.84 / (k phi(Z68)^2) w^2: < 0.002 here
    assert central_coverage(members, truth) == pytest.approx(expected, abs=4 * standard_error(expected, n) + 0.002)


@pytest.mark.parametrize("width", [2.2, 0.3])
def test_smallest_reaching_finds_the_factor_of_gaussian_members(width):
    # members width times the truth's width, widened by x: coverage 2 Phi(Z68 w x) - 1 reaches 0.68 at x = 1 / w
    found = _smallest_reaching(lambda x: gaussian_coverage(width * x), 0.68)
    # the search ends on the upper end of a bracket sqrt(2)^(1/2^8) wide
    assert 1 / width <= found <= 1 / width * 2 ** (1 / 512)


class DenseKnownLaw(SuperResolver):
    """Dense members of a law known by hand instead of a trained model's.

    Each event has one coarse cell (measured ``C`` = 30 GeV, noise sigma 0.03 GeV) with 4 children. The truth: the
    children's total ``T = C - sigma z`` and log-shares ``(mu + z', 0, 0, 0)``, z, z' standard normal, mu per event.
    The members draw z and z' from normals ``wide_total`` and ``wide_share`` times as wide, so the 68% calibration
    must find the factors ``1 / wide``. The total varies by 0.1%, where the power law of ``spread_totals`` is the
    linear widening (its next term is ``(f - 1) / 2`` times the relative spread: < 1e-3 of it), and the shares by
    far more than the total, so every child's energy moves with z' alone."""

    def __init__(self, events: int, wide_total: float, wide_share: float, ensemble: int):
        low, high = make_toy_events([[(0, 30, 0)]] * events, factor=2)
        self.storage = build_storage(low, high)
        self.config = config_from_dict({"sample": {"ensemble": ensemble}})
        self.max_nodes, self.calibration, self.sampling_sigmas = 10**9, None, None
        self.energy_model = EnergyModel("shares")
        self.wide = (wide_total, wide_share)
        g = torch.Generator().manual_seed(0)
        self.mu, self.sigma = 2 * torch.rand(events, generator=g) - 1, 0.03
        self.storage[0].coarse_energy = torch.full((events,), 30.0)
        total = 30.0 - self.sigma * torch.randn(events, generator=g)
        share = torch.softmax(torch.stack([self.mu + torch.randn(events, generator=g)] + [torch.zeros(events)] * 3,
                                          1), 1)
        self.storage[0].fine_energy = (total.unsqueeze(1) * share).reshape(-1)

    def generate(self, storage, events, *, ensemble, seed, mode, **_):
        batch = collate_events(*storage, events)
        batch.coarse_noise = torch.full((len(events),), self.sigma)
        g = torch.Generator().manual_seed(seed)
        k, n = ensemble, len(events)
        fine = torch.zeros(k, n, 4)
        fine[:, :, 0] = self.mu[events] + self.wide[1] * torch.randn(k, n, generator=g)
        coarse = self.wide[0] * torch.randn(k, n, generator=g)
        return {"batch": batch, "fine": fine.view(k, -1), "coarse": coarse, "mode": mode}


@pytest.mark.parametrize("wide_total,wide_share", [(2.0, 0.4), (0.4, 1.6)])
def test_dense_calibration_finds_the_factors_known_by_hand(wide_total, wide_share):
    n = 2000
    resolver = DenseKnownLaw(n, wide_total, wide_share, ensemble=200)
    assert torch.allclose(resolver.storage[0].fine_energy.view(n, 4).sum(1).mean(), torch.tensor(30.0), rtol=1e-3)
    calibration = fit_calibration(resolver, resolver.storage, torch.arange(n))
    # Coverage of n events (each event's children are all inside or all outside together: n, not 4n, counts) has
    # the standard error sqrt(0.68 0.32 / n) = 0.0104; its slope in log f at 68% is 2 Z68 phi'(Z68) = 0.48, so the
    # factor's standard error is 2.2%: 4 of them, 9%. The interval of 200 members shifts it by < 1%.
    slope = 2 * Z68 * math.exp(-Z68**2 / 2) / math.sqrt(2 * math.pi)
    relative = 4 * standard_error(0.68, n) / slope + 0.01
    assert calibration["coarse"] == pytest.approx(1 / wide_total, rel=relative)
    assert calibration["fine"] == pytest.approx(1 / wide_share, rel=relative)
    coverage = calibration["coverage"]
    for before, width in (("event_before", wide_total), ("cells_before", wide_share)):
        expected = gaussian_coverage(width)  # 0.953 or 0.309 before any factor
        assert coverage[before] == pytest.approx(expected, abs=4 * standard_error(expected, n) + 0.005), before
    # the smallest factor that reaches 68% on these events: just above it (one event more is 1 / n)
    assert 0.68 <= coverage["event_after"] <= 0.68 + 3 / n and 0.68 <= coverage["cells_after"] <= 0.68 + 12 / n
