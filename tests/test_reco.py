"""The particle-flow model: Hungarian matching, the metrics, learning a visible count, symmetries, batching, and the
command line end to end on tiny data."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from graphsr.cli import main
from graphsr.detector import Geometry
from graphsr.eval.reco_report import match_by_distance, particle_flow_metrics, reco_inputs
from graphsr.graphs import cell_graph, collate_events
from graphsr.io import write_cocoa
from graphsr.reco import ParticleFlow, ParticleFlowConfig, hungarian_match, load_reco_config, set_loss
from graphsr.reco.model import incidence_loss, padded_particles
from graphsr.simulation import MultiParticleGun, simulate_events

FINE = Geometry.cocoa()
TINY = ParticleFlowConfig(width=16, depth=1, decoder_depth=1, heads=2, context_tokens=2, k=4, k_between=2)


def test_hungarian_match_finds_the_least_total_cost():
    cost = torch.tensor([
        # greedy takes the cheapest pair (0, 0) first and pays 1 + 100; the best assignment pays 2 + 2
        [[1.0, 2.0, 0.0], [2.0, 100.0, 0.0], [0.0, 0.0, 0.0]],
        # three queries, two particles: query 1 stays unmatched; the padding (zeros) must not be used
        [[5.0, 1.0, 0.0], [9.0, 9.0, 0.0], [1.0, 7.0, 0.0]],
        # an event without particles
        [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]],
    ])
    event, row, col = hungarian_match(cost, [2, 3, 3], [2, 2, 0])
    assert sorted(zip(event.tolist(), row.tolist(), col.tolist())) == [(0, 0, 1), (0, 1, 0), (1, 0, 1), (1, 2, 0)]


def test_matching_by_distance_gates_far_pairs_and_metrics_count_them():
    # event 0: two true particles, three reconstructed (one far away: a fake); event 1: one true, none found
    # (missed); event 2: one true, one found 0.003 off in eta
    reco = {"count": np.array([3, 0, 1]), "event": np.array([0, 0, 0, 2]),
            "energy": np.array([11.0, 18.0, 3.0, 5.5]), "eta": np.array([0.51, 0.0, 1.5, -1.003]),
            "phi": np.array([0.0, 0.02, 0.0, 3.14])}
    true = {"count": np.array([2, 1, 1]), "energy": np.array([20.0, 10.0, 7.0, 5.0]),
            "eta": np.array([0.0, 0.5, 2.0, -1.0]), "phi": np.array([0.0, 0.0, 0.0, -3.14])}
    r, t = match_by_distance(reco["event"], reco["eta"], reco["phi"], np.repeat([0, 1, 2], true["count"]),
                             true["eta"], true["phi"], 3, max_dr=0.1)
    assert sorted(zip(r.tolist(), t.tolist())) == [(0, 1), (1, 0), (3, 3)]  # phi wraps: 3.14 and -3.14 are close
    out = particle_flow_metrics(reco, true["count"], true["energy"], true["eta"], true["phi"], max_count=4)
    assert out["cardinality"]["1"] == pytest.approx({"value": 0.5, "error": 0.5 / math.sqrt(2), "events": 2})
    assert out["cardinality"]["2"]["value"] == 0.0
    assert out["confusion"]["1"] == [1, 1, 0, 0, 0, 0] and out["confusion"]["2"] == [0, 0, 0, 1, 0, 0]
    assert out["fakes"]["2"] == 1.0 and out["missed"]["1"] == 0.5 and out["fakes"]["all"] == pytest.approx(1 / 3)
    residuals = np.array([11 / 10 - 1, 18 / 20 - 1, 5.5 / 5 - 1])
    assert out["energy"]["all"]["value"] == pytest.approx(np.std(residuals, ddof=1))
    assert out["efficiency"] == 0.75 and out["fake_rate"] == 0.25


def blobs(centres, energies, event):
    """3 x 3 ECAL2 showers at (ieta, iphi) centres: half the energy in the centre cell."""
    d = np.array([(a, b) for a in (-1, 0, 1) for b in (-1, 0, 1)])
    cells = []
    for (ieta, iphi), energy in zip(centres, energies):
        ie, ip = ieta + d[:, 0], (iphi + d[:, 1]) % FINE.n[1]
        eta, phi = FINE.cell_center(np.ones(9, dtype=int), ie, ip)
        cells.append((np.where((d == 0).all(1), energy / 2, energy / 16), eta, phi))
    energy, eta, phi = (np.concatenate(x) for x in zip(*cells))
    centre_eta, centre_phi = FINE.cell_center(np.ones(len(centres), dtype=int), *np.array(centres).T)
    return energy, eta, phi, np.full(len(energy), event), np.stack([energies, centre_eta, centre_phi], 1)


def toy_batch(rng, num_events):
    """Events of 1-3 well-separated blobs (count visible to anyone); returns cells and true particles."""
    parts = []
    for event in range(num_events):
        n = int(rng.integers(1, 4))
        ieta = 100 + 12 * np.arange(n) + rng.integers(0, 3, n)
        iphi = rng.integers(0, FINE.n[1]) + 12 * np.arange(n)
        parts.append(blobs(list(zip(ieta, iphi)), rng.uniform(5, 50, n), event))
    energy, eta, phi, event, kin = (np.concatenate(x) for x in zip(*parts))
    t = lambda a, dtype=torch.float32: torch.as_tensor(a, dtype=dtype)  # noqa: E731
    # each blob's 9 cells are its particle's alone: one-hot fractions, particle j of its event in column j
    owner = np.concatenate([np.repeat(np.arange(len(p[4])), 9) for p in parts])
    cells = cell_graph(t(energy), t(np.stack([eta, phi], 1)), torch.ones(len(energy), dtype=torch.long),
                       t(event, torch.long), num_events, fraction=torch.eye(TINY.max_particles)[owner])
    count = torch.as_tensor([len(p[4]) for p in parts])
    return cells, count, t(kin), torch.zeros(int(count.sum()), dtype=torch.long)


def test_the_cardinality_head_learns_a_visible_count():
    torch.manual_seed(0)
    model = ParticleFlow(TINY)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    rng = np.random.default_rng(0)
    for _ in range(120):
        cells, count, kin, classes = toy_batch(rng, 16)
        loss, _ = set_loss(model(cells), cells, count, kin, classes)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    cells, count, kin, _ = toy_batch(np.random.default_rng(1), 200)
    with torch.no_grad():
        predicted = ParticleFlow.particles(model(cells))["count"]
    # chance is 1/3 (counts 1-3); an untrained model predicts one count for every event
    assert (predicted == count.numpy()).mean() > 0.9


def test_the_incidence_matrix_learns_which_particle_each_cell_belongs_to():
    torch.manual_seed(0)
    model = ParticleFlow(TINY)
    cells, count, kin, classes = toy_batch(np.random.default_rng(1), 100)

    def divergence(cells):
        with torch.no_grad():
            return set_loss(model(cells), cells, count, kin, classes, incidence_weight=1.0)[1]["incidence"]

    untrained = divergence(cells)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    rng = np.random.default_rng(0)
    for _ in range(60):
        batch = toy_batch(rng, 16)
        loss, _ = set_loss(model(batch[0]), *batch, incidence_weight=1.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    # each cell has one owner, so the true split has divergence 0; a split among the queries that ignores the
    # cells' owners is ~log(queries + 1) ~ 1.6 nats
    trained = divergence(cells)
    assert untrained > 1.0 and trained < 0.1, (untrained, trained)
    # the same shares scored against the wrong owners: the first two particles of each event swap their cells
    swapped = cells.fraction[:, [1, 0, 2, 3]]
    two = (count >= 2)[cells.batch]
    wrong = divergence(cells._replace(fraction=torch.where(two.unsqueeze(1), swapped, cells.fraction)))
    assert wrong > 1.0, wrong


def random_model(seed=0):
    torch.manual_seed(seed)
    model = ParticleFlow(TINY)
    with torch.no_grad():  # the zero-initialised heads make a fresh model trivially symmetric: perturb them
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def test_permuting_the_cells_of_events_changes_nothing_and_phi_rotation_only_moves_phi():
    cells, *_ = toy_batch(np.random.default_rng(2), 3)
    model = random_model()
    with torch.no_grad():
        out = model(cells)
        # a permutation within each event (cells of an event stay consecutive)
        perm = torch.argsort(cells.batch * 1000 + torch.randperm(len(cells.energy),
                                                                 generator=torch.Generator().manual_seed(3)))
        inverse = torch.empty_like(perm)
        inverse[perm] = torch.arange(len(perm))
        shuffled = cells._replace(energy=cells.energy[perm], pos=cells.pos[perm], layer=cells.layer[perm],
                                  batch=cells.batch[perm], edge_index=inverse[cells.edge_index])
        out_shuffled = model(shuffled)
        pos = cells.pos.clone()
        pos[:, 1] = torch.remainder(pos[:, 1] + 1.234 + math.pi, 2 * math.pi) - math.pi
        out_rotated = model(cells._replace(pos=pos))
    for key in ("cardinality", "existence", "energy", "eta", "phi", "class_logits"):
        assert torch.allclose(out[key], out_shuffled[key], atol=1e-5), key
    for key in ("cardinality", "existence", "energy", "eta", "class_logits"):
        assert torch.allclose(out[key], out_rotated[key], atol=1e-4), key
    moved = torch.remainder(out_rotated["phi"] - out["phi"] - 1.234 + math.pi, 2 * math.pi) - math.pi
    assert torch.allclose(moved, torch.zeros_like(moved), atol=1e-4)


def test_events_with_different_particle_counts_batch_independently():
    count = torch.tensor([1, 3, 2])
    kin = torch.arange(18, dtype=torch.float32).view(6, 3)
    padded, mask = padded_particles(count, kin, max_count=4)
    assert mask.tolist() == [[True, False, False], [True, True, True], [True, True, False]]
    assert torch.equal(padded[1], kin[1:4]) and torch.equal(padded[2, :2], kin[4:6])
    assert not padded[0, 1:].any() and not padded[2, 2].any()
    # five particles with N_max 4: the first four are learned
    padded, mask = padded_particles(torch.tensor([5]), kin[:5], max_count=4)
    assert torch.equal(padded[0], kin[:4]) and mask.all()

    rng = np.random.default_rng(4)
    one, two, three = (blobs([(100 + 12 * i, 40 + 12 * i) for i in range(n)], rng.uniform(5, 50, n), e)
                       for e, n in ((0, 1), (1, 2), (2, 3)))
    energy, eta, phi, event, _ = (np.concatenate(x) for x in zip(one, two, three))
    t = lambda a, dtype=torch.float32: torch.as_tensor(a, dtype=dtype)  # noqa: E731
    model = random_model(1)
    batch = cell_graph(t(energy), t(np.stack([eta, phi], 1)), torch.ones(len(energy), dtype=torch.long),
                       t(event, torch.long), 4)  # the fourth event has no cells
    with torch.no_grad():
        together = model(batch)
        for e in range(3):
            sel = event == e
            alone = model(cell_graph(t(energy[sel]), t(np.stack([eta[sel], phi[sel]], 1)),
                                     torch.ones(int(sel.sum()), dtype=torch.long),
                                     torch.zeros(int(sel.sum()), dtype=torch.long), 1))
            for key in ("cardinality", "energy", "eta", "phi", "existence"):
                assert torch.allclose(together[key][e], alone[key][0], atol=1e-5), (e, key)
    assert torch.isfinite(together["cardinality"][3]).all() and (together["energy"][3] == 0).all()
    assert ParticleFlow.particles(together)["count"][3] == 0  # no cells, no particle


def test_incidence_loss_by_hand():
    # one event, two cells (3 and 1 GeV), two queries; query 0 is matched to particle 1, query 1 to particle 0
    shares = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3]])        # queries 0, 1, unassigned
    fraction = torch.tensor([[1.0, 0.0], [0.25, 0.5]])               # particles 0, 1 (the rest: noise)
    cells = cell_graph(torch.tensor([3.0, 1.0]), torch.zeros(2, 2), torch.ones(2, dtype=torch.long),
                       torch.zeros(2, dtype=torch.long), 1, fraction=fraction)
    match = torch.tensor([0, 0]), torch.tensor([0, 1]), torch.tensor([1, 0])
    # targets: cell 0 (0, 1, 0), cell 1 (0.5, 0.25, 0.25); KL by hand, weighted by energy
    kl0 = math.log(1 / 0.2)
    kl1 = 0.5 * math.log(0.5 / 0.1) + 0.25 * math.log(0.25 / 0.6) + 0.25 * math.log(0.25 / 0.3)
    assert float(incidence_loss(shares.log(), cells, *match)) == pytest.approx((3 * kl0 + kl1) / 4, rel=1e-5)
    exact = torch.tensor([[0.0, 1.0, 0.0], [0.5, 0.25, 0.25]])
    assert float(incidence_loss(exact.clamp_min(1e-12).log(), cells, *match)) == pytest.approx(0.0, abs=1e-6)
    # a query without a seed has share 0 (log -inf): matched to a particle, its term stays finite
    unseeded = torch.tensor([[0.0, 0.9, 0.1], [0.0, 0.6, 0.4]]).log()
    assert math.isfinite(float(incidence_loss(unseeded, cells, *match)))


def test_cell_fractions_by_hand():
    import awkward as ak

    from graphsr.graphs.build import cell_fractions

    tree = ak.zip({"cell_layer": [[0, 0, 1], [1, 1]],
                   "particle_to_node_idx": [[[0.0, 2.0], [2.0]], [[1.0], [0.0, 1.0], [1.0]]],
                   "particle_to_node_weight": [[[1.0, 0.25], [0.75]], [[0.5], [1.0, 0.3], [0.2]]]}, depth_limit=1)
    # the second event's third particle is beyond k = 2: its 0.2 of cell 1 counts nowhere
    expected = [[1.0, 0.0], [0.0, 0.0], [0.25, 0.75], [0.0, 1.0], [0.5, 0.3]]
    assert np.allclose(cell_fractions(tree, 2), expected)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Two tiny multi-particle files: the SR model's events and other events for the reconstruction."""
    folder = tmp_path_factory.mktemp("reco")
    for name, seed in (("sr_events.root", 11), ("reco_events.root", 12)):
        write_cocoa(folder / name, simulate_events(MultiParticleGun(), 40, factor=2, seed=seed,
                                                   neighbour_branches=False))
    return folder


def test_cells_carry_their_particles_energy_fractions(files, tmp_path):
    from graphsr.datasets import CocoaDataset
    from graphsr.reco.training import with_truth_fractions

    dataset = CocoaDataset(files / "reco_events.root", root=tmp_path, fractions=4, log=False)
    data = collate_events(*dataset.storage(), torch.arange(len(dataset)))
    fine, coarse = data.fine_fraction, data.coarse_fraction
    hit = data.fine_energy > 0
    few = (data.num_particles <= 4)[data.batch]  # events whose every particle has a column
    assert hit.any() and coarse.shape == (len(data.coarse_energy), 4)
    # the deposits of the event's particles are a hit cell's whole noise-free energy; empty children have none
    assert torch.allclose(fine[hit & few].sum(1), torch.ones(int((hit & few).sum())), atol=1e-4)
    assert not fine[~hit].any()
    # a coarse cell's fractions are its children's, weighted by their noise-free energy; noise-only cells have none
    child_energy = torch.zeros(len(coarse)).index_add_(0, data.fine_parent, data.fine_energy)
    weighted = torch.zeros_like(coarse).index_add_(0, data.fine_parent, fine * data.fine_energy.unsqueeze(1))
    signal = child_energy > 0
    assert torch.allclose(coarse[signal], weighted[signal] / child_energy[signal].unsqueeze(1), atol=1e-4)
    assert not coarse[~signal].any()
    other = CocoaDataset(files / "sr_events.root", root=tmp_path, log=False)
    with pytest.raises(ValueError, match="differ in their events"):
        with_truth_fractions(other, CocoaDataset(files / "reco_events.root", root=tmp_path, fractions=4, log=False))


def test_the_command_line_trains_and_evaluates_every_input_type(files, tmp_path, capsys):
    cache = tmp_path / "cache"
    sr_config = tmp_path / "sr.yaml"
    sr_config.write_text(f"data: {{train: ['{files / 'sr_events.root'}'], cache: '{cache}'}}\n"
                         "model: {width: 8, depth: 1, coarse_depth: 1, heads: 2, context_tokens: 1}\n"
                         "train: {steps: 2, batch_size: 8, warmup: 1, val_every: 2}\n"
                         "sample: {sampler: ddim, steps: 2, ensemble: 2}\n")
    reco_config = tmp_path / "reco.yaml"
    reco_config.write_text(f"data: {{train: ['{files / 'reco_events.root'}'], cache: '{cache}'}}\n"
                           "model: {width: 8, depth: 1, decoder_depth: 1, heads: 2, context_tokens: 1, k: 4, "
                           "k_between: 1, incidence_weight: 0.1}\n"
                           "train: {steps: 3, batch_size: 8, warmup: 1, val_every: 3}\n")
    sr_run, sr_file = tmp_path / "sr", tmp_path / "reco_events_sr.root"
    assert main(["train", "--config", str(sr_config), "--out", str(sr_run)]) == 0
    sr_checkpoint = str(sr_run / "checkpoint.pt")
    assert main(["sample", "--checkpoint", sr_checkpoint, "--input", str(files / "reco_events.root"),
                 "--output", str(sr_file), "--seed", "1"]) == 0
    # generated cells have no particle fractions: asking for them names the tree and branch; SR-input training
    # takes them from the truth of the sampled events instead
    from graphsr.datasets import CocoaDataset
    from graphsr.io import CocoaFormatError

    with pytest.raises(CocoaFormatError, match="particle_to_node_idx") as error:
        CocoaDataset(sr_file, root=cache, fractions=4, log=False)
    assert "High_Tree" in str(error.value) and str(sr_file) in str(error.value)
    runs = {}
    for input_type in ("coarse", "truth", "sr"):
        runs[input_type] = tmp_path / f"reco_{input_type}"
        assert main(["train-reco", "--config", str(reco_config), "--input-type", input_type, "--out",
                     str(runs[input_type]), "--sr-files", str(sr_file), "--sr-checkpoint", sr_checkpoint]) == 0
        test = json.loads((runs[input_type] / "test_metrics.json").read_text())
        assert test["input_type"] == input_type and test["events"] == 4
        assert set(test) >= {"learned", "hand_clustering"}
    capsys.readouterr()

    # the SR model's own events may not train an SR-input reconstruction, nor be a reco model's evaluation
    assert main(["train-reco", "--config", str(reco_config), "--input-type", "sr", "--out", str(tmp_path / "bad"),
                 "--data", str(files / "sr_events.root"), "--sr-files", str(sr_file),
                 "--sr-checkpoint", sr_checkpoint]) == 1
    assert "trained the super-resolution model" in capsys.readouterr().err
    checkpoints = [str(runs[t] / "checkpoint.pt") for t in ("coarse", "truth", "sr")]
    assert main(["evaluate", "--checkpoint", sr_checkpoint, "--input", str(files / "reco_events.root"),
                 "--out", str(tmp_path / "bad_report"), "--ensemble", "2", "--displays", "0", "--events", "4",
                 "--split", "all", "--reco",
                 *checkpoints]) == 1
    assert "evaluate it on events it never saw" in capsys.readouterr().err

    report = tmp_path / "report"
    assert main(["evaluate", "--checkpoint", sr_checkpoint, "--input", str(files / "sr_events.root"),
                 "--out", str(report), "--ensemble", "2", "--displays", "0", "--reco",
                 *checkpoints]) == 0
    assert "learned, truth-trained on sr" in capsys.readouterr().out
    reco = json.loads((report / "metrics.json").read_text())["reco"]
    assert set(reco["learned"]) == {"coarse-trained on coarse", "truth-trained on truth", "truth-trained on sr",
                                    "truth-trained on sr_mean", "truth-trained on sr_sample", "sr-trained on sr"}
    assert set(reco["hand_clustering"]) == {"on coarse", "on truth", "on sr", "on sr_mean"}
    for rows in (reco["learned"], reco["hand_clustering"]):
        for v in rows.values():  # every held-out event counted once per input
            assert sum(c["events"] for n, c in v["cardinality"].items() if n != "all") == reco["events"]
    text = (report / "report.md").read_text()
    assert "the learned particle-flow model" in text and "published particle-flow model, coarse input" in text


def test_sr_input_is_what_graphsr_sample_writes():
    """SR-input models train on `graphsr sample`'s cell_e (the point estimate), so evaluation must feed them that,
    not the ensemble mean (they differ: the mean spreads energy over every child one member hit)."""
    from types import SimpleNamespace

    fine = Geometry.cocoa()
    cells = np.array([fine.cell_id(1, 128, 10), fine.cell_id(1, 129, 10)])
    g = SimpleNamespace(factor=4, coarse_cell=np.array([0]), coarse_energy=np.array([5.0]), coarse_layer=np.array([1]),
                        coarse_event=np.array([0]), truth=np.array([5.0, 0.0]), estimate=np.array([5.0, 0.0]),
                        mean=np.array([2.5, 2.5]), samples=np.array([[5.0, 0.0], [0.0, 5.0]]),
                        eta=np.array([0.0, 0.02]), phi=np.array([0.0, 0.0]), layer=np.array([1, 1]),
                        event=np.array([0, 0]), fine_cell=cells)
    inputs = reco_inputs(g)
    assert inputs["sr"][0].tolist() == [5.0, 0.0] and inputs["sr_mean"][0].tolist() == [2.5, 2.5]
    assert inputs["sr_sample"][0].tolist() == [5.0, 0.0] and inputs["truth"][0].tolist() == [5.0, 0.0]


@pytest.mark.parametrize("path", sorted((Path(__file__).parent.parent / "configs" / "reco").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_shipped_reco_configs_load(path):
    config = load_reco_config(path)
    assert config.model.max_particles >= 1 and config.data.train and config.sr_input.checkpoint
