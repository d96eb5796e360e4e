"""The point estimate that `graphsr sample` writes (graphsr.inference.point_estimate), on hand-made ensembles."""

from types import SimpleNamespace

import torch

from graphsr.inference import point_estimate

HIT = 0.001  # GeV


def _data(parents: int, children: int = 4):
    return SimpleNamespace(fine_parent=torch.arange(parents).repeat_interleave(children),
                           coarse_energy=torch.zeros(parents))


def test_members_agreeing_on_how_many_children_but_not_which_give_that_many_hits():
    # one parent, four members: each puts the parent's energy in one child, child 0 (12 GeV) or child 1 (8 GeV).
    # The mean has two hit children (6 and 4); the members have one each, so the estimate keeps one, the child of
    # highest mean, with the mean's total: 10 GeV in child 0.
    members = torch.tensor([[12.0, 0, 0, 0], [0, 8.0, 0, 0], [12.0, 0, 0, 0], [0, 8.0, 0, 0]])
    estimate = point_estimate(members, _data(1))
    assert torch.allclose(estimate, torch.tensor([10.0, 0, 0, 0]))


def test_count_is_the_members_average_rounded_half_up_and_energy_is_kept_per_parent():
    members = torch.tensor([
        # parent 0: 2, 3, 2, 1 hit children (average 2); parent 1: 1, 0, 0, 1 (average 0.5 -> 1)
        [3.0, 1.0, 0, 0, 2.0, 0, 0, 0],
        [3.0, 1.0, 0.5, 0, 0, 0, 0, 0],
        [3.0, 0, 1.0, 0, 0, 0, 0, 0],
        [3.0, 0, 0, 0, 0, 0, 0, 2.0],
    ])
    estimate = point_estimate(members, _data(2))
    # parent 0: mean (3, 0.5, 0.375, 0), total 3.875, the two highest kept and scaled to it
    kept = torch.tensor([3.0, 0.5])
    assert torch.allclose(estimate[:4], torch.cat([kept * 3.875 / kept.sum(), torch.zeros(2)]))
    # parent 1: mean (0.5, 0, 0, 0.5): one child kept (the first of the tie) with the total of 1 GeV
    assert torch.allclose(estimate[4:], torch.tensor([1.0, 0, 0, 0]))
    assert torch.allclose(estimate.view(2, 4).sum(1), members.mean(0).view(2, 4).sum(1))


def test_parents_whose_members_hit_nothing_keep_the_plain_mean():
    # faint deposits below the 1 MeV threshold in every member: no child counts as hit, the mean stays as it is
    members = torch.tensor([[0.0004, 0.0002, 0, 0], [0, 0.0006, 0, 0], [0.0004, 0, 0, 0.0002]])
    assert torch.allclose(point_estimate(members, _data(1), threshold=HIT), members.mean(0))
