"""The graph-transformer backbone: shapes, independence of events, phi symmetry, and both ops paths."""

from __future__ import annotations

import math

import pytest
import torch

from graphsr import ops
from graphsr.graphs import GraphOptions, build_storage, collate_events
from graphsr.nn import GraphAttention, GraphTransformer, NoiseEmbedding
from graphsr.simulation import MultiParticleGun, simulate_events


@pytest.fixture(scope="module")
def storage():
    trees = simulate_events(MultiParticleGun(), 6, factor=2, seed=0, neighbour_branches=False)
    return build_storage(trees["Low_Tree"], trees["High_Tree"], GraphOptions(), drop_empty=True)


def batch_of(storage, events):
    return collate_events(*storage, torch.as_tensor(events))


def model(seed=0):
    torch.manual_seed(seed)
    net = GraphTransformer(fine_in=2, coarse_in=1, out=1, width=32, depth=2, coarse_depth=1, heads=4,
                           context_tokens=2)
    # the zero-initialised gates and head make a fresh model trivially symmetric: perturb them
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net.eval()


def run(net, batch, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch.num_nodes, 2, generator=g)
    cond = torch.randn(batch.num_graphs, 32, generator=g)
    return net(x, batch.coarse_energy.unsqueeze(1), batch, cond), x, cond


def test_output_shape_and_finite(storage):
    batch = batch_of(storage, [0, 1, 2])
    out, _, _ = run(model(), batch)
    assert out.shape == (batch.num_nodes, 1) and torch.isfinite(out).all()


def test_events_do_not_see_each_other(storage):
    net = model()
    batch = batch_of(storage, [0, 1, 2])
    out, x, cond = run(net, batch)
    alone = batch_of(storage, [1])
    mask = batch.batch == 1
    single = net(x[mask], alone.coarse_energy.unsqueeze(1), alone, cond[1:2])
    assert torch.allclose(out[mask], single, atol=1e-5)
    # changing event 0's inputs leaves event 1 unchanged
    x2 = x.clone()
    x2[batch.batch == 0] += 1.0
    out2 = net(x2, batch.coarse_energy.unsqueeze(1), batch, cond)
    assert torch.allclose(out2[mask], out[mask], atol=1e-5) and not torch.allclose(out2[~mask], out[~mask])


def test_invariant_under_phi_rotation(storage):
    net = model()
    batch = batch_of(storage, [0, 1])
    out, x, cond = run(net, batch)
    rotated = batch.clone()
    for key in ("fine_pos", "coarse_pos"):
        pos = rotated[key].clone()
        pos[:, 1] = torch.remainder(pos[:, 1] + 1.234 + math.pi, 2 * math.pi) - math.pi
        rotated[key] = pos
    out_rot = net(x, rotated.coarse_energy.unsqueeze(1), rotated, cond)
    assert torch.allclose(out, out_rot, atol=1e-4)


def test_depends_on_the_coarse_energies(storage):
    net = model()
    batch = batch_of(storage, [0])
    out, x, cond = run(net, batch)
    out2 = net(x, 2 * batch.coarse_energy.unsqueeze(1), batch, cond)
    assert not torch.allclose(out, out2)


@pytest.mark.skipif(not (ops.has_torch_scatter() and ops.has_torch_cluster()), reason="extensions not installed")
def test_pure_torch_path_gives_the_same_output(storage):
    net = model()
    batch = batch_of(storage, [0, 1, 2])
    out, x, cond = run(net, batch)
    with ops.use_extensions(False):
        pure, _, _ = run(net, batch)
    assert torch.allclose(out, pure, atol=1e-5)


def test_cross_edges_link_parent_and_its_neighbours(storage):
    batch = batch_of(storage, [0, 1])
    source, target = GraphTransformer(2, 1, 1, width=8, heads=2).cross_edges(batch)
    parent = batch.fine_parent
    # every fine cell sees its own parent
    pairs = set(zip(source.tolist(), target.tolist()))
    assert all((int(parent[f]), f) in pairs for f in range(batch.num_nodes))
    # and otherwise only coarse neighbours of its parent
    coarse_pairs = set(zip(*batch.coarse_edge_index.tolist()))
    others = [(s, t) for s, t in pairs if s != int(parent[t])]
    assert others and all((s, int(parent[t])) in coarse_pairs for s, t in others)


def test_graph_attention_targets_without_edges_get_zero_message():
    attention = GraphAttention(8, 2)
    x = torch.randn(4, 8)
    edge_index = torch.tensor([[0, 1], [2, 2]])
    out = attention(x, x, edge_index)
    # the output projection's bias is the only thing a target without edges receives
    assert torch.allclose(out[0], attention.out.bias) and not torch.allclose(out[2], attention.out.bias)


def test_noise_embedding_distinguishes_levels():
    embed = NoiseEmbedding(16)
    e = embed(torch.tensor([-1.0, 0.0, 1.0]))
    assert e.shape == (3, 16) and not torch.allclose(e[0], e[1])


def test_permuting_the_cells_permutes_the_output(storage):
    net = model()
    batch = batch_of(storage, [0])
    out, x, cond = run(net, batch)
    perm = torch.randperm(batch.num_nodes, generator=torch.Generator().manual_seed(4))
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(len(perm))
    shuffled = batch.clone()
    for key in ("fine_pos", "fine_layer", "fine_cell", "fine_parent", "fine_energy"):
        shuffled[key] = batch[key][perm]
    shuffled.fine_edge_index = inverse[batch.fine_edge_index]  # node i is now at position inverse[i]
    out_shuffled = net(x[perm], shuffled.coarse_energy.unsqueeze(1), shuffled, cond)
    assert torch.allclose(out_shuffled, out[perm], atol=1e-5)


def test_prepared_graph_work_gives_the_same_output_at_every_step(storage):
    net, batch = model(), batch_of(storage, [0, 1, 2])
    prepared = net.prepare(batch)
    for seed in (1, 2):  # reused across calls with different inputs and conditioning, as a sampler does
        out, x, cond = run(net, batch, seed)
        assert torch.equal(net(x, batch.coarse_energy.unsqueeze(1), batch, cond, prepared), out)
