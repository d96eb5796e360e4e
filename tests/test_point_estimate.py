"""The point estimate that `graphsr sample` writes (graphsr.inference.point_estimate), on hand-made ensembles."""

from types import SimpleNamespace

import torch

from graphsr.inference import fit_occupancy, point_estimate

HIT = 0.001  # GeV


def _data(parents: int, children: int = 4, layers=None, truth=None):
    layers = torch.zeros(parents, dtype=torch.long) if layers is None else torch.as_tensor(layers)
    parent = torch.arange(parents).repeat_interleave(children)
    return SimpleNamespace(fine_parent=parent, coarse_energy=torch.zeros(parents), coarse_layer=layers,
                           fine_layer=layers[parent], fine_energy=truth)


def test_members_agreeing_on_how_many_children_but_not_which_give_that_many_hits():
    # one parent, four members: each puts the parent's energy in one child, child 0 (12 GeV) or child 1 (8 GeV).
    # The mean has two hit children (6 and 4); the members have one each, so the estimate keeps one, the child of
    # highest mean, with the mean's total: 10 GeV in child 0.
    members = torch.tensor([[12.0, 0, 0, 0], [0, 8.0, 0, 0], [12.0, 0, 0, 0], [0, 8.0, 0, 0]])
    estimate = point_estimate(members, _data(1))
    assert torch.allclose(estimate, torch.tensor([10.0, 0, 0, 0]))


def test_the_child_most_members_fill_is_kept_over_one_a_few_fill_heavily():
    # one parent, five members, each hitting one child: two put 10 GeV into child 0, three put 3 GeV into child 1.
    # Mean (4, 1.8): child 0 is higher; medians (0, 3): child 1 is where the typical member puts the energy. One
    # child is kept (the members' count), with the mean's total of 5.8 GeV.
    members = torch.tensor([[10.0, 0, 0, 0], [10.0, 0, 0, 0], [0, 3.0, 0, 0], [0, 3.0, 0, 0], [0, 3.0, 0, 0]])
    estimate = point_estimate(members, _data(1))
    assert torch.allclose(estimate, torch.tensor([0, 5.8, 0, 0]))


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


def test_the_occupancy_calibration_gives_the_estimate_the_truths_number_of_hits_per_layer():
    # 4 parents of 4 children: two in layer 0, two in layer 1. Every member hits two children of each parent (1 GeV
    # each, in children 0 and 1, or 0 and 2); the truth hits one child per parent in layer 0 and two in layer 1.
    member_a = torch.tensor([1.0, 1.0, 0, 0]).repeat(4)
    member_b = torch.tensor([1.0, 0, 1.0, 0]).repeat(4)
    members = torch.stack([member_a, member_b, member_a, member_b])
    truth = torch.cat([torch.tensor([2.0, 0, 0, 0]).repeat(2), torch.tensor([1.0, 1.0, 0, 0]).repeat(2)])
    data = _data(4, layers=[0, 0, 1, 1], truth=truth)
    assert int((point_estimate(members, data) > HIT).sum()) == 8  # two per parent, as the members
    fit = fit_occupancy([(members, data)])
    assert fit["truth"][:2] == [2, 4] and fit["before"][:2] == [4, 4]
    # layer 0: one child, count = floor(2 s + 1/2) = 1 for s in [1/4, 3/4); layer 1 needs nothing: it stays at
    # a count of 2 (s in [3/4, 5/4)); layers without hits keep 1
    s0, s1 = fit["scale"][:2]
    assert 0.25 <= s0 < 0.75 and 0.75 <= s1 < 1.25 and fit["scale"][2:] == [1.0] * 4
    estimate = point_estimate(members, data, count_scale=torch.tensor(fit["scale"]))
    # layer 0: child 0 (mean 1 GeV, the highest) keeps the parent's mean total of 2 GeV; layer 1: children 0 and 1
    # (mean 1 and 0.5; child 2's 0.5 loses the tie) scaled to 2 GeV
    assert torch.allclose(estimate[:8], torch.tensor([2.0, 0, 0, 0]).repeat(2))
    assert torch.allclose(estimate[8:], torch.tensor([4 / 3, 2 / 3, 0, 0]).repeat(2))
    assert fit["after"][:2] == [2, 4]
