"""The boosted-tree flow-matching baseline: child slots by hand, a known conditional distribution reproduced, and the
generator trained, saved, loaded and sampled through the same paths as the networks."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("lightgbm")

from graphsr.config import config_from_dict  # noqa: E402
from graphsr.diffusion import Denoiser, get_sampler, karras_sigmas  # noqa: E402
from graphsr.graphs import collate_events  # noqa: E402
from graphsr.inference import SuperResolver  # noqa: E402
from graphsr.models.boosted import BoostedVelocity, child_slots, flow_rows, node_features  # noqa: E402
from graphsr.models.sr3 import add_inputs  # noqa: E402
from graphsr.pipelines import train  # noqa: E402
from graphsr.training.checkpoint import load_checkpoint  # noqa: E402
from graphsr.training.trainer import load_splits  # noqa: E402


def boosted_config(electron_file, cache, **boosted):
    return config_from_dict({
        "data": {"train": [str(electron_file)], "cache": str(cache)},
        "model": {"generator": "boosted"}, "diffusion": {"parameterisation": "cfm"},
        "boosted": {"rounds": 20, "leaves": 15, "min_child_samples": 20, "draws": 4, **boosted},
        "train": {"batch_size": 8},
        "sample": {"sampler": "ddim", "steps": 4, "ensemble": 3, "calibration_events": 6},
    })


@pytest.fixture(scope="module")
def events(electron_file, tmp_path_factory):
    """(storage, indices) of 12 training events."""
    train_set, _, _ = load_splits(boosted_config(electron_file, tmp_path_factory.mktemp("cache")))
    return train_set.storage(), torch.as_tensor(train_set.indices()[:12])


@pytest.fixture(scope="module")
def batch(events):
    return add_inputs(collate_events(*events[0], events[1]), 2)


def test_each_parents_children_take_the_four_slots_in_eta_then_phi_order(batch):
    """At 2x every coarse cell has four children, half a fine cell either side of its centre in eta and phi:
    slot 2 * (eta above) + (phi above), whatever order the cells are stored in."""
    slot, inside, most = child_slots(batch, BoostedVelocity().cell_size)
    assert most == 4
    assert torch.allclose(inside.abs(), torch.full_like(inside, 0.5), atol=1e-3)
    assert torch.equal(slot, 2 * (inside[:, 0] > 0).long() + (inside[:, 1] > 0).long())
    fine, coarse = node_features(batch, torch.arange(batch.fine_parent.numel() + batch.coarse_layer.numel()).float(),
                                 torch.full((batch.num_graphs,), 0.5), BoostedVelocity().cell_size)
    # the sibling columns hold the children's states by slot: a cell's own state sits in its own slot's column
    own = fine[torch.arange(fine.size(0)), 12 + slot]
    assert torch.equal(own, fine[:, 0]) and fine.size(1) == 12 + 4 and coarse.size(1) == 10


def test_boosted_flow_reproduces_a_known_conditional_distribution(batch, events):
    """Targets drawn from a law known in closed form, given the measurement: each fine cell x0 ~ N(a c - b, s^2),
    c its parent's measured input; each coarse total x0 ~ N(m, s_c^2). Trees fitted to the flow's velocity on these
    graphs, then sampled with 16 Euler steps from noise, give back the slope a, the offset and both spreads."""
    generator = torch.Generator().manual_seed(0)
    a, b, s, m, s_c = 0.8, 0.3, 0.5, 1.0, 0.3
    parent_input = batch.coarse_input[batch.fine_parent]
    num_fine, num_coarse = batch.fine_parent.numel(), batch.coarse_layer.numel()

    def draw():
        return torch.cat([a * parent_input - b + s * torch.randn(num_fine, generator=generator),
                          m + s_c * torch.randn(num_coarse, generator=generator)])

    net = BoostedVelocity(config_from_dict({"boosted": {"rounds": 120, "leaves": 15, "min_child_samples": 50}}).boosted)
    weight = torch.ones(num_fine + num_coarse)
    rows = [flow_rows(batch, draw(), weight, net.cell_size, 4, generator) for _ in range(10)]
    fine_rows, coarse_rows = (tuple(torch.cat([torch.as_tensor(r[i][j]) for r in rows]).numpy() for j in range(3))
                              for i in range(2))
    net.fit(fine_rows, coarse_rows, seed=0)
    copies = 40
    many = add_inputs(collate_events(*events[0], events[1].repeat(copies)), 2)  # copy-major
    nodes = torch.cat([many.batch, many.coarse_batch])
    sigmas = karras_sigmas(16, 0.002, 20.0)
    x = torch.randn(nodes.numel(), 1, generator=generator) * sigmas[0]
    sample = get_sampler("ddim")(Denoiser(net, "cfm"), x, sigmas, batch=nodes, extra_args={"data": many},
                                 generator=generator, disable=True, num_graphs=many.num_graphs)[:, 0]
    fine = sample[:many.fine_parent.numel()].view(copies, -1)
    coarse = sample[many.fine_parent.numel():].view(copies, -1)
    slope, offset = torch.linalg.lstsq(torch.stack([parent_input, torch.ones(num_fine)], 1),
                                       fine.mean(0).unsqueeze(1)).solution[:, 0]
    assert abs(float(slope) - a) < 0.08 and abs(float(offset) + b) < 0.08
    assert abs(float(fine.std(0).mean()) / s - 1) < 0.15
    assert abs(float(coarse.mean()) - m) < 0.06 and abs(float(coarse.std(0).mean()) / s_c - 1) < 0.2


def test_the_boosted_generator_trains_calibrates_saves_and_samples(electron_file, tmp_path):
    config = boosted_config(electron_file, tmp_path / "cache")
    result = train(config, tmp_path / "run", progress=False)
    state = load_checkpoint(result.checkpoint)
    assert state["boosted_fit"]["rounds"] == [20, 20] and state["calibration"] is not None
    assert (tmp_path / "run" / "history.csv").exists() and result.val_loss == result.val_loss  # a number
    resolver = SuperResolver(result.checkpoint, device="cpu")
    _, _, test = load_splits(config)
    events = torch.as_tensor(test.indices()[:3])
    out = resolver(test.storage(), events, seed=1)
    again = resolver(test.storage(), events, seed=1)
    assert torch.equal(out["samples"], again["samples"])  # trees and the seeded noise: deterministic
    assert out["samples"].shape[0] == 3 and torch.isfinite(out["samples"]).all() and (out["samples"] >= 0).all()
    generated = resolver.generate(test.storage(), events, seed=1)
    totals = resolver.totals(generated)
    energies = resolver.energies(generated)
    sums = torch.zeros_like(totals).index_add_(1, generated["batch"].fine_parent, energies)
    assert torch.allclose(sums, totals, rtol=1e-4, atol=1e-6)  # children share their sampled total exactly
    # the trees went through the checkpoint: a fresh model without them cannot predict
    with pytest.raises(RuntimeError, match="not fitted"):
        BoostedVelocity().boosters()


def test_the_boosted_generator_refuses_what_it_cannot_do(electron_file, tmp_path, monkeypatch):
    config = boosted_config(electron_file, tmp_path / "cache")
    with monkeypatch.context() as patch:
        patch.setenv("WORLD_SIZE", "2")  # as under torchrun
        with pytest.raises(ValueError, match="without torchrun"):
            train(config, tmp_path / "run", progress=False)
    edm = config_from_dict({**config.to_dict(), "diffusion": {"parameterisation": "edm"}})
    with pytest.raises(ValueError, match="parameterisation: cfm"):
        train(edm, tmp_path / "edm", progress=False)
    with pytest.raises(ValueError, match="cannot be resumed"):
        train(config, tmp_path / "run", resume=True, progress=False)
    from graphsr.training.trainer import train as train_in_steps

    with pytest.raises(ValueError, match="fitted, not trained in steps"):
        train_in_steps(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "edm").exists() and not (tmp_path / "run").exists()  # nothing written
