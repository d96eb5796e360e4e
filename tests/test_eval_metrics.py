import numpy as np
import pytest
import torch

from graphsr.eval.metrics import (
    SHOWER_SHAPES,
    cell_error,
    classifier_auc,
    coverage,
    even_split,
    frechet_distance,
    frechet_physics_distance,
    hallucinated_fraction,
    kernel_physics_distance,
    occupancy,
    parent_sum_residual,
    per_event_sum,
    relative_residual_mean,
    relative_residual_spread,
    shower_shapes,
    wasserstein,
)


def test_relative_residual_of_known_gaussian_smearing():
    rng = np.random.default_rng(0)
    truth = rng.uniform(40, 60, 20000)
    estimate = truth * (1 + 0.01 + 0.005 * rng.standard_normal(truth.size))
    spread, error = relative_residual_spread(estimate, truth)
    assert spread == pytest.approx(0.005, abs=3 * error) and error < 1e-4
    bias, bias_error = relative_residual_mean(torch.tensor(estimate), torch.tensor(truth))
    assert bias == pytest.approx(0.01, abs=4 * bias_error)
    assert relative_residual_spread(truth, truth)[0] == 0.0


def test_cell_error_and_small_sample_warning():
    assert cell_error(np.ones(100) * 3.0, np.ones(100))[0] == pytest.approx(2.0)
    with pytest.warns(UserWarning, match="only 3 entries"):
        cell_error(np.ones(3), np.zeros(3))


def test_even_split_and_event_sums():
    split = even_split(torch.tensor([4.0, -2.0]), torch.tensor([0, 0, 0, 0, 1, 1]))
    assert split.tolist() == [1.0, 1.0, 1.0, 1.0, -1.0, -1.0]
    assert per_event_sum([1.0, 2.0, 3.0], [0, 2, 2], num_events=4).tolist() == [1.0, 0.0, 5.0, 0.0]


# ---------------------------------------------------------------------------- distribution and physics distances
def test_wasserstein_known_shift():
    a = np.random.default_rng(0).normal(size=4000)
    assert wasserstein(a, a)[0] == 0
    value, error = wasserstein(a, a + 0.3)
    assert value == pytest.approx(0.3, abs=1e-9) and error >= 0


def test_occupancy_precision_recall():
    truth = np.array([0, 5, 5, 0, 5.0])
    estimate = np.array([5, 5, 0, 0, 5.0])
    result = occupancy(estimate, truth, threshold=1.0)
    assert result["precision"] == pytest.approx(2 / 3) and result["recall"] == pytest.approx(2 / 3)


def test_hallucinated_fraction():
    truth = np.array([0.0, 1.0, 2.0, 0.0])
    assert hallucinated_fraction(truth, truth) == 0
    assert hallucinated_fraction(np.array([1.0, 1.0, 2.0, 0.0]), truth) == pytest.approx(0.25)


def test_coverage_of_a_calibrated_toy_is_68_percent():
    rng = np.random.default_rng(1)
    n, k = 4000, 400
    centre = rng.normal(size=n)
    truth = centre + rng.normal(size=n)               # truth ~ N(centre, 1)
    samples = centre + rng.normal(size=(k, n))        # the ensemble has the same distribution: calibrated
    value, error = coverage(samples, truth)
    assert value == pytest.approx(0.68, abs=3 * error + 0.01)
    overconfident = centre + 0.3 * rng.normal(size=(k, n))
    assert coverage(overconfident, truth)[0] < 0.35


def test_parent_sum_residual():
    parent = np.array([0, 0, 1, 1])
    assert parent_sum_residual(np.array([1.0, 2.0, 0.5, 0.5]), parent, np.array([3.0, 1.0])) == 0
    assert parent_sum_residual(np.array([1.0, 2.0, 0.5, 1.5]), parent, np.array([3.0, 1.0])) == pytest.approx(1 / 3)


def test_shower_shapes_known_event():
    # event 0: two cells of 1 and 3 GeV at eta 0 and 0.1, phi on both sides of pi; event 1: one cell
    energy = np.array([1.0, 3.0, 2.0])
    eta = np.array([0.0, 0.1, 1.0])
    phi = np.array([np.pi - 0.05, -np.pi + 0.05, 0.5])
    shapes = shower_shapes(energy, eta, phi, np.array([0, 0, 1]), 2, threshold=1.5)
    assert set(shapes) == set(SHOWER_SHAPES)
    assert shapes["energy"].tolist() == [4.0, 2.0]
    assert shapes["centroid_eta"][0] == pytest.approx(0.075)
    # weighted mean of phi across the wrap: 0.25 (pi - 0.05) + 0.75 (pi + 0.05) = pi + 0.025 -> -pi + 0.025
    assert shapes["centroid_phi"][0] == pytest.approx(-np.pi + 0.025)
    assert shapes["width_eta"][0] == pytest.approx(np.sqrt(0.25 * 0.75) * 0.1)
    assert shapes["width_phi"][1] == 0 and shapes["leading_fraction"].tolist() == [0.75, 1.0]
    assert shapes["cells_above"].tolist() == [1, 1]
    # a window of 0.05 around event 0's leading cell (eta 0.1) leaves out the cell at eta 0
    windowed = shower_shapes(energy, eta, phi, np.array([0, 0, 1]), 2, threshold=1.5, window=0.05)
    assert windowed["energy"].tolist() == [3.0, 2.0] and windowed["width_eta"][0] == 0
    assert windowed["centroid_eta"][0] == pytest.approx(0.1) and windowed["leading_fraction"][0] == 1.0


def test_frechet_distance_of_gaussians_has_the_closed_form():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(20000, 3))
    # equal covariances: |mean shift|^2; isotropic widths s1, s2: d (s1 - s2)^2 (the trace term)
    assert frechet_distance(a, rng.normal(size=(20000, 3)) + [1.0, 0.0, 0.0]) == pytest.approx(1.0, abs=0.05)
    assert frechet_distance(a, 2.0 * rng.normal(size=(20000, 3))) == pytest.approx(3 * (2 - 1) ** 2, abs=0.1)


def test_frechet_physics_distance_extrapolates_the_finite_sample_bias_away():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(4000, 3)), rng.normal(size=(4000, 3))
    # at N = 4000 the plain distance is biased upwards by about (sum of covariance terms) / N
    biased = frechet_distance(a[:400], b[:400])
    value, error = frechet_physics_distance(a, b)
    assert biased > 0.005 and value < biased / 3 and 0 < error < 0.01
    value, error = frechet_physics_distance(a, b + [0.5, 0.0, 0.0])
    # the distance is about |mean_a - mean_b|^2, of standard deviation 2 delta sqrt(2 / N) along the shift delta =
    # 0.5: 0.022 at N = 4000 (12 independent sample pairs: 0.025). The error the fit reports is 4 times smaller
    # (0.006): it knows only the scatter of the resampled batches around its line
    assert value == pytest.approx(0.25, abs=4 * 2 * 0.5 * np.sqrt(2 / 4000)) and error > 0


def _gaussian_moments(mu: float, sigma: float, order: int = 4) -> np.ndarray:
    """E[x^k], k = 0..order, of N(mu, sigma^2): m_k = mu m_(k-1) + (k - 1) sigma^2 m_(k-2)."""
    moments = [1.0, mu]
    for k in range(2, order + 1):
        moments.append(mu * moments[-1] + (k - 1) * sigma**2 * moments[-2])
    return np.array(moments[:order + 1])


def _mmd_standard_deviation(mx: np.ndarray, my: np.ndarray, n: int) -> float:
    """Standard deviation of the unbiased MMD^2 of n + n events for k(x, y) = sum_j C(4, j) x^j y^j, to first order
    (Serfling): 4 (Var g_x + Var g_y) / n, g_x(x) = E_x' k(x, x') - E_y k(x, y) = sum_j C(4, j) (mx_j - my_j) x^j and
    g_y likewise. ``mx``, ``my``: moments 0..8."""
    binomial = np.array([1, 4, 6, 4, 1])

    def variance(coefficients, moments):
        products = moments[np.add.outer(np.arange(5), np.arange(5))]  # E[x^(j + l)]
        return coefficients @ products @ coefficients - (coefficients @ moments[:5]) ** 2

    return float(np.sqrt(4 * (variance(binomial * (mx[:5] - my[:5]), mx) + variance(binomial * (my[:5] - mx[:5]), my))
                         / n))


def test_kernel_physics_distance_matches_the_analytic_mmd():
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(10000, 1)), rng.normal(0.5, 1.0, size=(10000, 1))
    # one feature: k(x, y) = (x y + 1)^4 = sum_k C(4, k) x^k y^k, so E k(x, y) = sum_k C(4, k) E[x^k] E[y^k]
    binomial = np.array([1, 4, 6, 4, 1])
    mx, my = _gaussian_moments(0.0, 1.0), _gaussian_moments(0.5, 1.0)
    expected = (binomial * mx * mx).sum() + (binomial * my * my).sum() - 2 * (binomial * mx * my).sum()
    assert expected == pytest.approx(14.3789, abs=1e-4)
    value, error = kernel_physics_distance(a, b, batch_size=2500)
    # the statistical error: that of the MMD of all 10,000 events, which the median of batches of them approaches
    # (1.28; 12 independent sample pairs: 1.17); one batch of 2,500 scatters by twice that (2.57; measured: 2.63)
    full, batch = (_mmd_standard_deviation(_gaussian_moments(0.0, 1.0, 8), _gaussian_moments(0.5, 1.0, 8), n)
                   for n in (10000, 2500))
    assert value == pytest.approx(expected, abs=4 * full)
    # the error reported, half the 16-84% range of 10 batch values, estimates their scatter (batches of one sample
    # overlap, so a little less: 1.74 on average over the 12 pairs)
    assert full / 2 < error < 2 * batch
    same, same_error = kernel_physics_distance(a, rng.normal(size=(10000, 1)), batch_size=2500)
    assert abs(same) < 2 * same_error + 1e-3


def test_kernel_physics_distance_has_an_error_on_small_samples():
    """Batches of the whole sample were all the same: the old KPD printed its error as 0.00000."""
    rng = np.random.default_rng(6)
    a, b = rng.normal(size=(300, 15)), rng.normal(size=(300, 15))
    with pytest.warns(UserWarning, match="not reliable"):
        kernel_physics_distance(a[:40], b[:40])
    value, error = kernel_physics_distance(a, b)
    assert error > 1e-4 and abs(value) < 3 * error


def test_classifier_auc():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(1000, 2)), rng.normal(size=(1000, 2))
    auc, error = classifier_auc(a, b)
    assert abs(auc - 0.5) < 4 * error + 0.02
    assert classifier_auc(a, b + 3.0)[0] > 0.95
