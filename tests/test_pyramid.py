"""The pyramid generator: analog-bit occupancy, hit-only graphs, levels feeding levels, the CLI in pyramid mode."""

from __future__ import annotations

import math

import awkward as ak
import numpy as np
import pytest
import torch
import yaml

from graphsr.cli import main
from graphsr.config import config_from_dict
from graphsr.diffusion import karras_sigmas
from graphsr.graphs import GraphOptions, build_storage, collate_events
from graphsr.inference import PyramidResolver, fit_calibration, spread_totals
from graphsr.io import read_cocoa, write_cocoa
from graphsr.models.occupancy import (SelfConditioning, decode_bits, encode_bits, sample_analog_bits,
                                      sample_bernoulli)
from graphsr.models.pyramid import FINE, Pyramid, hit_graph, measured_parents
from graphsr.models.sr3 import EnergyModel
from graphsr.simulation import SingleElectronGun, simulate_events
from graphsr.training.trainer import build_loss

from conftest import make_toy_events

TINY_MODEL = {"width": 16, "depth": 1, "coarse_depth": 1, "heads": 2, "context_tokens": 2, "generator": "pyramid"}


def test_analog_bits_round_trip():
    bits = torch.tensor([[0, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)
    analog = encode_bits(bits)
    assert analog.tolist() == [[-1.0, 1.0, 1.0, -1.0], [1.0, 1.0, -1.0, -1.0]]
    assert torch.equal(decode_bits(analog), bits)
    # any error smaller than the bit's distance to the threshold decodes to the same bit
    assert torch.equal(decode_bits(analog + 0.99 * (2 * torch.rand(2, 4, generator=torch.Generator().manual_seed(0))
                                                    - 1)), bits)


@pytest.mark.parametrize("sampler, steps", [("heun", 16), ("ddim", 32)])
def test_analog_bit_sampling_reproduces_bernoulli_rates(sampler, steps):
    """With the exact denoiser of independent bits of known rates p, the project's samplers must draw each bit at its
    rate: for x = x0 + sigma n, x0 = +-1 with P(+1) = p, E[x0 | x] = tanh(x / sigma^2 + logit(p) / 2)."""
    p = torch.tensor([0.05, 0.3, 0.5, 0.9])

    def exact(x, sigma, batch, self_cond=None):
        return torch.tanh(x / sigma[batch].unsqueeze(-1) ** 2 + 0.5 * torch.log(p / (1 - p)))

    n = 20_000
    bits = sample_analog_bits(exact, (n, 4), torch.zeros(n, dtype=torch.long), karras_sigmas(steps),
                              torch.Generator().manual_seed(0), sampler, num_graphs=1)
    # binomial standard error <= 0.0035; the samplers' discretisation adds < 0.007 at these steps
    assert bits.float().mean(0).tolist() == pytest.approx(p.tolist(), abs=0.012)


def test_bernoulli_head_draws_each_bit_at_its_probability():
    logits = torch.log(torch.tensor([0.1, 0.5, 0.8]) / torch.tensor([0.9, 0.5, 0.2])).repeat(20_000, 1)
    rates = sample_bernoulli(logits, torch.Generator().manual_seed(3)).float().mean(0)
    assert rates.tolist() == pytest.approx([0.1, 0.5, 0.8], abs=0.01)


def test_self_conditioning_feeds_the_previous_estimate():
    seen = []

    def denoiser(x, sigma, batch, self_cond):
        seen.append(self_cond.clone())
        return x + 1

    x, sigma, batch = torch.zeros(3, 2), torch.ones(2), torch.tensor([0, 1, 1])
    sampling = SelfConditioning(denoiser)
    sampling(x, sigma, batch)
    sampling(x + 5, sigma, batch)
    assert torch.equal(seen[0], torch.zeros(3, 2)) and torch.equal(seen[1], torch.ones(3, 2))
    # training: the first estimate at the same state for the events drawn (probability 1: all, 0: none)
    seen.clear()
    SelfConditioning(denoiser, probability=1.0)(x + 2, sigma, batch)
    assert torch.equal(seen[1], torch.full((3, 2), 3.0))
    seen.clear()
    SelfConditioning(denoiser, probability=0.0)(x + 2, sigma, batch)
    assert torch.equal(seen[1], torch.zeros(3, 2))


def test_stage_two_graph_holds_only_the_hit_children(toy_chunk):
    low, high = toy_chunk
    # two events in one batch, kNN graphs (the coarse edges below count on k = 8 and k_between = 4)
    batch = collate_events(*build_storage(*toy_chunk, GraphOptions(edges="knn")), torch.tensor([0, 2]))
    parents = measured_parents(batch, 2)
    layer, ieta, iphi = FINE.coarsen(2).cell_index(parents.coarse_cell)
    chosen = {(0, 0, 60, 0): [0, 3], (0, 0, 60, 1): [1], (0, 1, 61, 0): [2], (1, 1, 60, 10): [0, 1, 2, 3]}
    hits = torch.zeros(len(layer), 4, dtype=torch.bool)
    for i, key in enumerate(zip(parents.coarse_batch.tolist(), layer.tolist(), ieta.tolist(), iphi.tolist())):
        hits[i, chosen.get(key, [])] = True
    graph = hit_graph(parents, hits, 2, 1, GraphOptions(edges="knn", k=8, k_between=4))
    # the children by hand: slot s of parent (l, a, b) is (l, 2a + s // 2, 2b + s % 2)
    expected = [(0, 0, 120, 0), (0, 0, 121, 1), (0, 0, 120, 3), (0, 1, 123, 0),
                (1, 1, 120, 20), (1, 1, 120, 21), (1, 1, 121, 20), (1, 1, 121, 21)]
    f_layer, f_ieta, f_iphi = FINE.cell_index(graph.fine_cell)
    got = list(zip(graph.batch.tolist(), f_layer.tolist(), f_ieta.tolist(), f_iphi.tolist()))
    assert sorted(got) == sorted(expected)
    # the coarse nodes are the parents with a hit, each hit under its own parent, in its own event
    c_layer, c_ieta, c_iphi = FINE.coarsen(2).cell_index(graph.coarse_cell)
    assert sorted(zip(graph.coarse_batch.tolist(), c_layer.tolist(), c_ieta.tolist(), c_iphi.tolist())) == \
        sorted(chosen)
    assert torch.equal(graph.coarse_batch[graph.fine_parent], graph.batch)
    assert torch.equal(c_ieta[graph.fine_parent], f_ieta // 2) and torch.equal(c_iphi[graph.fine_parent], f_iphi // 2)
    # coarse edges only among those parents, within each event: (0,60,0) - (0,60,1) - (1,61,0) all linked (k = 8
    # within a layer, k_between = 4 across), (1,60,10) alone in its event
    coarse = list(zip(graph.coarse_batch.tolist(), c_layer.tolist()))
    coarse_pairs = {(a, b) for a in range(4) for b in range(4) if a != b and coarse[a][0] == coarse[b][0]}
    assert set(map(tuple, graph.coarse_edge_index.T.tolist())) == coarse_pairs and len(coarse_pairs) == 6
    # edges: with k = 8 and k_between = 4 above the hit counts, every pair of hits of one event in the same or
    # adjacent layers is linked, both ways, and nothing else (no empty child, no other event)
    node = {cell: i for i, cell in enumerate(got)}
    pairs = {(node[a], node[b]) for a in expected for b in expected
             if a != b and a[0] == b[0] and abs(a[1] - b[1]) <= 1}
    assert set(map(tuple, graph.fine_edge_index.T.tolist())) == pairs and len(pairs) == 24


@pytest.fixture(scope="module")
def pyramid_4x():
    """Two events at 4x and an untrained two-level pyramid (levels 2 x 2), threshold 150 MeV."""
    low, high = make_toy_events([[(0, 30, 0), (0, 30, 1), (1, 30, 0)], [(1, 10, 5), (2, 10, 5)]], factor=4, seed=2)
    batch = collate_events(*build_storage(low, high), torch.arange(2))
    config = config_from_dict({"model": TINY_MODEL, "pyramid": {"levels": [2, 2], "threshold": 0.15}})
    torch.manual_seed(0)
    return config, Pyramid(config), batch, high


def test_teacher_forcing_uses_the_true_intermediate_cells(pyramid_4x):
    _, pyramid, batch, high = pyramid_4x
    (_, bits, first), (parents, _, second) = list(pyramid.teacher_forced(batch))
    # intermediate truth by hand from the High_Tree: sums of the fine cells in each 2x2 block, in GeV
    truth = {}
    for event in range(2):
        cells = high[event]
        ieta, iphi = FINE.cell_at(cells.cell_layer.to_numpy(), cells.cell_eta.to_numpy(), cells.cell_phi.to_numpy())
        for la, a, b, e in zip(cells.cell_layer.to_numpy(), ieta, iphi, cells.cell_e.to_numpy()):
            key = (event, int(la), int(a) // 2, int(b) // 2)
            truth[key] = truth.get(key, 0.0) + e / 1000
    hit = {k: v for k, v in truth.items() if v > 0.15}
    assert 0 < len(hit) < len(truth)  # the threshold leaves some intermediate cells empty
    layer, ieta, iphi = FINE.coarsen(2).cell_index(first.fine_cell)
    got = dict(zip(zip(first.batch.tolist(), layer.tolist(), ieta.tolist(), iphi.tolist()), first.fine_energy.tolist()))
    assert got.keys() == hit.keys() and int(bits.sum()) == len(hit)
    assert list(got.values()) == pytest.approx([hit[k] for k in got], rel=1e-5)
    # the second level's parents are exactly those cells, with their true energies
    assert torch.equal(parents.coarse_cell, first.fine_cell) and torch.equal(parents.coarse_energy, first.fine_energy)
    assert torch.all(second.fine_energy > 0.15)


def test_a_level_output_feeds_the_next_level(pyramid_4x):
    _, pyramid, batch, _ = pyramid_4x
    out = pyramid.sample(batch, 4, sigmas=karras_sigmas(3), generator=torch.Generator().manual_seed(0))
    first, second = out["levels"]
    assert first["graph"].fine_cell.numel() > 0 and second["graph"].fine_cell.numel() > 0
    # the second level's parents are the first level's hit cells, with the energies the first level generated
    assert torch.equal(second["parents"].coarse_cell, first["graph"].fine_cell)
    assert torch.equal(second["parents"].coarse_energy, first["energy"])
    # the second stage runs on the parents with a hit child; every fine cell lies in its intermediate parent, and a
    # parent's children share exactly its energy
    graph, parents = second["graph"], second["parents"]
    assert torch.equal(graph.coarse_cell, parents.coarse_cell[second["bits"].any(1)])
    assert torch.equal(FINE.parent_id(FINE.coarsen(2), graph.fine_cell), graph.coarse_cell[graph.fine_parent])
    sums = torch.zeros_like(graph.coarse_energy).index_add_(0, graph.fine_parent, second["energy"])
    assert torch.allclose(sums, graph.coarse_energy, rtol=1e-5, atol=1e-7)
    # the output holds those energies at their cells of the batch's 16 children per coarse cell, zero elsewhere
    dense = out["energy"]
    assert dense.shape == batch.fine_energy.shape
    position = {(int(e), int(c)): i for i, (e, c) in enumerate(zip(batch.batch, batch.fine_cell))}
    placed = torch.tensor([position[(int(e), int(c))] for e, c in zip(graph.batch, graph.fine_cell)])
    assert torch.equal(dense[placed], second["energy"])
    assert int((dense != 0).sum()) == int((second["energy"] != 0).sum())


def test_pyramid_random_paths_are_seeded(pyramid_4x):
    config, pyramid, batch, _ = pyramid_4x

    def sample(seed):
        generator = torch.Generator().manual_seed(seed)
        return pyramid.sample(batch, 4, sigmas=karras_sigmas(2), generator=generator)["energy"]

    assert torch.equal(sample(1), sample(1)) and not torch.equal(sample(1), sample(2))
    loss_fn = build_loss(config)

    def loss(seed):  # training noise, noise levels and the self-conditioning draw
        return float(pyramid.loss(loss_fn, batch, torch.Generator().manual_seed(seed), 4))

    assert loss(5) == loss(5) and loss(5) != loss(6)
    with pytest.raises(ValueError, match="multiply to 4"):
        pyramid.loss(loss_fn, batch, None, 2)


def test_cli_trains_samples_and_evaluates_in_pyramid_mode(tmp_path, capsys):
    import shutil

    data = tmp_path / "e.root"
    write_cocoa(data, simulate_events(SingleElectronGun(), 30, factor=2, seed=4, neighbour_branches=False))
    config = tmp_path / "pyramid.yaml"
    config.write_text(yaml.safe_dump({
        "data": {"train": [str(data)], "cache": str(tmp_path / "cache")},
        "model": {**TINY_MODEL, "generator": "dense"},
        "train": {"steps": 2, "batch_size": 8, "warmup": 1, "val_every": 2},
        "sample": {"sampler": "ddim", "steps": 2, "ensemble": 2}}))
    run = tmp_path / "run"
    assert main(["train", "--config", str(config), "--out", str(run), "--generator", "pyramid"]) == 0
    checkpoint = str(run / "checkpoint.pt")
    out = tmp_path / "sr.root"
    base = ["sample", "--checkpoint", checkpoint, "--input", str(data), "--output", str(out), "--max-events", "4",
            "--device", "cpu"]
    assert main(base + ["--generator", "dense"]) == 1 and "pyramid generator" in capsys.readouterr().err
    assert main(base + ["--generator", "pyramid"]) == 0
    trees = read_cocoa(out)
    low, high = trees["Low_Tree"], trees["High_Tree"]
    # the usual blocks: 4 children per coarse cell, each inside its parent; absent children are written as zero
    assert len(high) == 4 and np.array_equal(ak.num(high.cell_e).to_numpy(), 4 * ak.num(low.cell_e).to_numpy())
    for event in range(4):
        parent = low.low_cell_to_high_cell_edge[event].to_numpy()
        child = low.high_cell_to_low_cell_edge[event].to_numpy()
        c_layer, f_layer = low.cell_layer[event].to_numpy(), high.cell_layer[event].to_numpy()
        c_ieta, c_iphi = FINE.coarsen(2).cell_at(c_layer, low.cell_eta[event].to_numpy(),
                                                 low.cell_phi[event].to_numpy())
        f_ieta, f_iphi = FINE.cell_at(f_layer, high.cell_eta[event].to_numpy(), high.cell_phi[event].to_numpy())
        assert np.array_equal(f_layer[child], c_layer[parent])
        assert np.array_equal(f_ieta[child] // 2, c_ieta[parent]) and np.array_equal(f_iphi[child] // 2, c_iphi[parent])
    mean = ak.flatten(high.cell_e_mean).to_numpy()
    assert np.all(mean >= 0) and np.any(mean == 0) and np.any(mean > 0)
    # the evaluation report sets a second checkpoint beside the first
    shutil.copy(checkpoint, tmp_path / "copy.pt")
    report = tmp_path / "report"
    with pytest.warns(UserWarning):
        assert main(["evaluate", "--checkpoint", checkpoint, "--compare", str(tmp_path / "copy.pt"), "--input",
                     str(data), "--out", str(report), "--ensemble", "2", "--displays", "0", "--device", "cpu"]) == 0
    text = (report / "report.md").read_text()
    assert "## Generators side by side" in text and f"pyramid: {tmp_path / 'copy.pt'}" in text


def test_events_left_without_hits_get_zeros(pyramid_4x, monkeypatch):
    from graphsr.models.occupancy import Occupancy

    _, pyramid, batch, _ = pyramid_4x
    drawn = Occupancy.sample
    # stage 1 hits nothing in the first event (all its parents left out of stage 2), as drawn in the second
    monkeypatch.setattr(Occupancy, "sample", lambda self, parents, *args, **kwargs:
                        drawn(self, parents, *args, **kwargs) & (parents.coarse_batch == 1).unsqueeze(1))
    out = pyramid.sample(batch, 4, sigmas=karras_sigmas(2), generator=torch.Generator().manual_seed(0))
    assert torch.all(out["energy"][batch.batch == 0] == 0) and torch.any(out["energy"][batch.batch == 1] > 0)
    assert torch.all(out["levels"][0]["graph"].coarse_batch == 1)


class KnownLaw(PyramidResolver):
    """A pyramid resolver whose members follow a law known by hand instead of a trained model's.

    Each event has two coarse cells, P (layer 0) and Q (layer 1). Per event, the total of P is ``m exp(0.1 z)`` and
    child A takes the share ``sigmoid(mu + z')`` of it, child B the rest (log-shares ``mu + z'`` and 0); P's other
    children and all of Q are never hit (log-share -inf, Q's total 0); z, z' standard normal. The truth is one draw of
    that law; the members draw z and z' too narrow, divided by ``narrow_total`` and ``narrow_share``, so a member
    widened by exactly those factors follows the truth's law and the 68% calibration must find them."""

    def __init__(self, events: int, narrow_total: float, narrow_share: float, ensemble: int):
        low, high = make_toy_events([[(0, 30, 0), (1, 30, 1)]] * events, factor=2)
        self.storage = build_storage(low, high)
        self.config = config_from_dict({"sample": {"ensemble": ensemble}})
        self.max_nodes, self.calibration, self.narrow = 10**9, None, (narrow_total, narrow_share)
        self.sampling_sigmas = None  # not a distilled student
        self.energy_model = EnergyModel("shares")
        g = torch.Generator().manual_seed(0)
        self.m, self.mu = 1 + 4 * torch.rand(events, generator=g), 2 * torch.rand(events, generator=g) - 1
        total = self.m * torch.exp(0.1 * torch.randn(events, generator=g))
        share = torch.sigmoid(self.mu + torch.randn(events, generator=g))
        truth = torch.zeros(events, 8)
        truth[:, 0], truth[:, 1] = total * share, total * (1 - share)
        self.storage[0].fine_energy = truth.view(-1)

    def generate(self, storage, events, *, ensemble, seed, mode, **_):
        batch = collate_events(*storage, events)
        g = torch.Generator().manual_seed(seed)
        k, n = ensemble, len(events)
        fine = torch.full((k, n, 8), -math.inf)
        fine[:, :, 0] = self.mu[events] + torch.randn(k, n, generator=g) / self.narrow[1]
        fine[:, :, 1] = 0.0
        totals = torch.zeros(k, n, 2)
        totals[:, :, 0] = self.m[events] * torch.exp(0.1 * torch.randn(k, n, generator=g) / self.narrow[0])
        return {"batch": batch, "fine": fine.view(k, -1), "totals": totals.view(k, -1), "mode": mode}


def test_pyramid_calibration_finds_the_factors_known_by_hand():
    resolver = KnownLaw(2000, narrow_total=2.5, narrow_share=3.0, ensemble=200)
    calibration = fit_calibration(resolver, resolver.storage, torch.arange(2000))
    # coverage of 2,000 events (cells) has a standard error of 0.010, 2% in the factor; 200 members' empirical
    # interval covers the level to < 0.01
    assert calibration["coarse"] == pytest.approx(2.5, rel=0.1) and calibration["fine"] == pytest.approx(3.0, rel=0.1)
    assert calibration["coverage"]["event_before"] < 0.35 and calibration["coverage"]["cells_before"] < 0.5
    assert calibration["coverage"]["event_after"] == pytest.approx(0.68, abs=0.02)
    assert calibration["coverage"]["cells_after"] == pytest.approx(0.68, abs=0.02)
    # applied: the cells no member hit stay exactly empty, and each member's hits share its total
    resolver.calibration = calibration
    generated = resolver.generate(resolver.storage, torch.arange(5), ensemble=4, seed=1, mode="posterior")
    energy = resolver.decode(generated).view(4, 5, 8)
    assert torch.all(energy[:, :, 2:] == 0) and torch.all(energy[:, :, :2] > 0)
    totals = spread_totals(generated["totals"], calibration["coarse"]).view(4, 5, 2)[:, :, 0]
    assert torch.allclose(energy.sum(-1), totals, rtol=1e-5)
    with pytest.raises(ValueError, match="generated in posterior mode"):
        resolver.decode(generated, "conserving")


def test_pyramid_log_shares_and_totals_give_its_energies(pyramid_4x):
    """Two levels: each fine hit's log-share of its coarse cell is the sum of its two levels' log-shares."""
    _, pyramid, batch, _ = pyramid_4x
    out = pyramid.sample(batch, 4, sigmas=karras_sigmas(2), generator=torch.Generator().manual_seed(3))
    hit = torch.isfinite(out["log_shares"])
    assert bool(hit.any()) and torch.all(out["energy"][~hit] == 0)
    last = out["levels"][-1]["graph"]
    assert int(hit.sum()) == last.fine_cell.numel()
    assert torch.allclose(out["log_shares"].exp() * out["totals"][batch.fine_parent], out["energy"], rtol=1e-5,
                          atol=1e-9)
    # a coarse cell's hits share at most its total (less where an intermediate hit at or below 4 x 0.15 GeV got none)
    shares = torch.zeros_like(out["totals"]).index_add_(0, batch.fine_parent[hit], out["log_shares"][hit].exp())
    assert torch.all(shares <= 1 + 1e-5)


def test_grid_hit_graph_keeps_the_dense_grid_edges_among_the_hits():
    """With grid edges, stage 2's fine graph is the dataset's grid graph of all the children restricted to the hits:
    the same neighbours, none added where a hit's neighbours are empty (a kNN graph would reach further)."""
    low, high = simulate_events(SingleElectronGun(), 3, factor=2, seed=7, neighbour_branches=False).values()
    options = GraphOptions()  # grid, reach 1, links between layers
    batch = collate_events(*build_storage(low, high, options), torch.arange(3))
    parents = measured_parents(batch, 2)
    hits = (torch.rand(parents.coarse_cell.numel(), 4, generator=torch.Generator().manual_seed(1)) < 0.5)
    graph = hit_graph(parents, hits, 2, 1, options)
    # the batch holds every child in block order: hit (parent, slot) is its fine node parent * 4 + slot
    parent, slot = hits.nonzero(as_tuple=True)
    node = parent * 4 + slot
    assert torch.equal(batch.fine_cell[node], graph.fine_cell)
    position = torch.full((batch.fine_cell.numel(),), -1).index_put_((node,), torch.arange(node.numel()))
    src, dst = position[batch.fine_edge_index]
    kept = (src >= 0) & (dst >= 0)
    expected = {(int(a), int(b)) for a, b in zip(src[kept], dst[kept])}
    assert set(map(tuple, graph.fine_edge_index.T.tolist())) == expected and 0 < len(expected)
    assert graph.fine_edge_index.size(1) == len(expected)  # each edge once


def test_stage_one_takes_its_own_steps(pyramid_4x, monkeypatch):
    from graphsr.models.occupancy import Occupancy

    _, pyramid, batch, _ = pyramid_4x
    drawn, seen = Occupancy.sample, []

    def recording(self, parents, sigmas, *args, **kwargs):
        seen.append(sigmas.numel())
        return drawn(self, parents, sigmas, *args, **kwargs)

    monkeypatch.setattr(Occupancy, "sample", recording)
    pyramid.sample(batch, 4, sigmas=karras_sigmas(4), generator=torch.Generator().manual_seed(0),
                   occupancy_sigmas=karras_sigmas(1))
    pyramid.sample(batch, 4, sigmas=karras_sigmas(4), generator=torch.Generator().manual_seed(0))
    assert seen == [2, 2, 5, 5]  # both levels: one step (and the final 0), then the energies' four


def test_at_least_one_hit_takes_the_most_likely_child_of_required_empty_parents():
    from graphsr.models.occupancy import at_least_one_hit

    bits = torch.tensor([[False, False, False], [False, True, False], [False, False, False]])
    scores = torch.tensor([[-0.9, -0.2, -0.5], [0.1, 0.8, -1.0], [-0.3, -0.1, -0.7]])
    required = torch.tensor([True, True, False])
    # row 0 is required and empty: its best child (index 1) is hit; row 1 has a hit already; row 2 is not required
    expected = torch.tensor([[False, True, False], [False, True, False], [False, False, False]])
    assert torch.equal(at_least_one_hit(bits, scores, required), expected)
    assert not bits[0].any()  # the input is left as it was


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_later_levels_keep_the_energy_of_every_parent_above_the_bound(pyramid_4x, seed):
    # threshold 0.15 GeV, 2 x 2 children: an intermediate cell above 0.6 GeV has a child above 0.15 in any truth, so
    # the untrained second level must give it a hit and share all of its energy among its children
    _, pyramid, batch, _ = pyramid_4x
    out = pyramid.sample(batch, 4, sigmas=karras_sigmas(2), generator=torch.Generator().manual_seed(seed))
    second = out["levels"][1]
    parents, graph = second["parents"], second["graph"]
    above = parents.coarse_energy > 4 * 0.15
    assert bool(above.any()) and torch.all(second["bits"][above].any(dim=1))
    kept = second["bits"].any(dim=1).nonzero().squeeze(1)
    sums = torch.zeros(parents.coarse_energy.numel()).index_add_(0, kept[graph.fine_parent], second["energy"])
    assert torch.allclose(sums[above], parents.coarse_energy[above], rtol=1e-5)
