import numpy as np
import pytest
import torch

from graphsr.eval.metrics import cell_error, even_split, per_event_sum, relative_residual_mean, relative_residual_spread


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
