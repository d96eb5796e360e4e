"""The denoiser's fast path computes the same function: attention with per-offset edge tables against a hand-written
dense attention, the distinct-row tables, one modulation row for a shared noise level, the ensemble's graph work
done once, and the compiled backbone (with its fallback)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from graphsr import ops
from graphsr.graphs import GraphOptions, build_storage, collate_events
from graphsr.nn import GraphAttention, GraphTransformer, use_compile
from graphsr.nn import compiled as compiled_module
from graphsr.nn import fused_attention
from graphsr.nn.attention import distinct_rows
from graphsr.simulation import MultiParticleGun, simulate_events


@pytest.fixture(scope="module")
def storage():
    trees = simulate_events(MultiParticleGun(), 6, factor=2, seed=0, neighbour_branches=False)
    return build_storage(trees["Low_Tree"], trees["High_Tree"], GraphOptions(), drop_empty=True)


def model(seed=0):
    torch.manual_seed(seed)
    net = GraphTransformer(fine_in=2, coarse_in=1, out=1, width=16, depth=1, coarse_depth=1, heads=2,
                           context_tokens=2)
    with torch.no_grad():  # no zero gate: every sub-layer counts
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net.eval()


@pytest.mark.parametrize("path", ["scatter", "tables", "fused"])
def test_attention_with_offset_tables_is_dense_attention_by_hand(path):
    """scatter: torch_scatter's softmax; tables: the pure-torch softmax with its maxima over rank tables (as compiled
    code runs it); fused: the fused CPU kernel."""
    tables = path == "tables"
    if path == "fused" and not fused_attention.available(torch.zeros(1), 2, 2):
        pytest.skip("no C compiler for the fused attention kernel")
    torch.manual_seed(0)
    attention = GraphAttention(4, 2, edge_dim=1).eval()
    x = torch.randn(3, 4)
    # edges into node 0 from 2 and 1 and into node 1 from 0 and 2 (targets unsorted), two distinct edge features
    edge_index = torch.tensor([[2, 0, 1, 2], [0, 1, 0, 1]])
    features = torch.tensor([[-1.0], [0.5], [0.5], [0.5]])
    distinct, index = distinct_rows(features)
    assert distinct.shape == (2, 1)
    with ops.use_extensions(not tables):
        rank = ops.segment_rank(edge_index[1]) if tables else None
        csr = fused_attention.csr(edge_index[1], 3) if path == "fused" else None
        out = attention(x, x, edge_index, attention.embed_edges(distinct, index), rank, csr)
    with torch.no_grad():  # by hand: softmax over each target's sources of q.(k + e_k) / sqrt(d), values v + e_v
        expected = torch.zeros(3, 4)
        for t in (0, 1):
            rows = [e for e in range(4) if edge_index[1, e] == t]
            q = attention.query(x[t]).view(2, 2)
            for head in range(2):
                keys, values = [], []
                for e in rows:
                    kv = attention.key_value(x[edge_index[0, e]]) + attention.edge(features[e])
                    keys.append(kv[:4].view(2, 2)[head])
                    values.append(kv[4:].view(2, 2)[head])
                w = torch.softmax(torch.stack([q[head] @ k / math.sqrt(2) for k in keys]), 0)
                expected[t, 2 * head:2 * head + 2] = sum(wi * v for wi, v in zip(w, values))
        expected = attention.out(expected)
        expected[2] = 0.0  # node 2 has no incoming edge: zeros before the output layer... and after it
    assert torch.allclose(out[:2], expected[:2], atol=1e-6)
    assert torch.allclose(out[2], attention.out(torch.zeros(4)), atol=1e-6)


@pytest.mark.parametrize("hashed", [True, False])
def test_distinct_rows_rebuild_the_rows_even_when_their_keys_collide(hashed, monkeypatch):
    """hashed: in the kernel's library (first-appearance order); else by torch.unique (sorted)."""
    if hashed and not fused_attention.available(torch.zeros(1)):
        pytest.skip("no C compiler for the fused attention kernel")
    if not hashed:
        monkeypatch.setattr(fused_attention, "_libraries", {})
    signed_zeros = torch.tensor([[0.0], [-0.0], [0.0]])  # equal as numbers, not as bits: two rows
    distinct, index = distinct_rows(signed_zeros)
    assert len(distinct) == 2 and index[0] == index[2] != index[1]
    rows = torch.tensor([[0.5, -1.0, 2.0], [0.5, -1.0, 2.0], [0.0, 1.0, 0.0], [0.5, -1.0, 2.5]])
    distinct, index = distinct_rows(rows)
    assert len(distinct) == 3 and torch.equal(distinct[index], rows)
    assert index[0] == index[1] and len(set(index.tolist())) == 3
    # two rows whose bit patterns mix to the same 64-bit key ((0 M + 0) M + M == (0 M + 1) M + 0, M = 1,000,003)
    as_float = lambda bits: torch.tensor([bits], dtype=torch.int32).view(torch.float32).item()  # noqa: E731
    colliding = torch.tensor([[0.0, 0.0, as_float(1_000_003)], [0.0, as_float(1), 0.0]])
    distinct, index = distinct_rows(colliding)
    assert len(distinct) == 2 and torch.equal(distinct[index], colliding)


def test_fast_and_reference_paths_give_the_same_outputs(storage):
    """Edge networks on distinct offsets, one modulation row, the softmax's rank tables (the pure-torch softmax
    compiled code runs) and the fused attention kernel (the defaults) against per-edge embeddings, per-node
    modulation and the extension's softmax (the reference): the same weights give the same outputs within float
    rounding; and with the kernel off, the rank tables alone."""
    net = model()
    batch = collate_events(*storage, torch.arange(5))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch.num_nodes, 2, generator=g)
    for cond in (torch.randn(1, 16, generator=g).expand(batch.num_graphs, 16),  # a sampler: one noise level
                 torch.randn(batch.num_graphs, 16, generator=g)):              # training: one per event
        outputs = []
        for fast, fused in ((True, True), (True, False), (False, False)):
            net.per_offset = net.share_modulation = net.rank_tables = fast
            net.fused_attention = fused
            with ops.use_extensions(not fast):
                prepared = net.prepare(batch)
                kernel = fused and fused_attention.available(x, 2, 8)
                # the kernel runs every attention (the event context's too); else rank tables for every softmax
                assert sorted(prepared["ranks"]) == (["coarse", "context", "cross", "fine"] if fast and not kernel
                                                     else [])
                assert bool(prepared["csr"]) == kernel
                outputs.append(net(x, batch.coarse_energy.unsqueeze(1), batch, cond))
        assert torch.allclose(outputs[0], outputs[2], atol=1e-6)
        assert torch.allclose(outputs[1], outputs[2], atol=1e-6)
        assert outputs[0].abs().max() > 1e-2  # not trivially zero
    net.fused_attention = True


def test_an_ensembles_graph_work_is_done_once(storage):
    net = model()
    events = torch.tensor([0, 2, 3])
    single = collate_events(*storage, events)
    copies = collate_events(*storage, events.repeat(4))  # copy-major, as SuperResolver batches an ensemble
    for per_offset, fused in ((True, True), (True, False), (False, False)):
        net.per_offset, net.fused_attention = per_offset, fused
        with ops.use_extensions(False):  # the pure-torch softmax: with its rank tables
            tiled = net.repeat_prepared(net.prepare(single), 4, single.num_nodes, single.coarse_layer.numel())
            direct = net.prepare(copies)
        if fused and fused_attention.available(single.fine_pos, 2, 8):
            assert not direct["ranks"] and sorted(direct["csr"]) == ["coarse", "cross", "fine"]
        else:
            assert sorted(direct["ranks"]) == ["coarse", "context", "cross", "fine"] and not direct["csr"]
        assert {name: width for name, (_, width) in tiled["ranks"].items()} == \
            {name: width for name, (_, width) in direct["ranks"].items()}
        assert sorted(tiled["csr"]) == sorted(direct["csr"])

        def tensors(prepared):
            out = [prepared["inside"], prepared["cross"], *[rank for rank, _ in prepared["ranks"].values()]]
            out += [t for name in sorted(prepared["csr"]) for t in prepared["csr"][name]]
            for terms in [*prepared["coarse_edges"], *[t for pair in prepared["fine_edges"] for t in pair]]:
                out += list(terms) if isinstance(terms, tuple) else [terms]
            return out

        assert all(torch.equal(a, b) for a, b in zip(tensors(tiled), tensors(direct)))


def test_a_failing_compiler_falls_back_to_eager_with_a_warning(storage, monkeypatch):
    def broken(function, **options):
        def call(*args):
            raise RuntimeError("no C++ compiler")
        return call

    monkeypatch.setattr(compiled_module, "_compiled", {})
    monkeypatch.setattr(compiled_module, "_failed", set())
    monkeypatch.setattr(torch, "compile", broken)
    net = model()
    batch = collate_events(*storage, torch.arange(3))
    x, cond = torch.randn(batch.num_nodes, 2), torch.randn(batch.num_graphs, 16)
    eager = net(x, batch.coarse_energy.unsqueeze(1), batch, cond)
    with pytest.warns(RuntimeWarning, match="no C.. compiler"):
        fallback = use_compile(net)(x, batch.coarse_energy.unsqueeze(1), batch, cond)
    assert torch.equal(fallback, eager)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once: later calls run eagerly without trying again
        net(x, batch.coarse_energy.unsqueeze(1), batch, cond)


@pytest.mark.slow
def test_the_compiled_backbone_gives_the_eager_outputs(storage):
    net = model()
    batch = collate_events(*storage, torch.arange(5))
    x, cond = torch.randn(batch.num_nodes, 2), torch.randn(batch.num_graphs, 16)
    with torch.no_grad():
        eager = net(x, batch.coarse_energy.unsqueeze(1), batch, cond)
        compiled = use_compile(net)(x, batch.coarse_energy.unsqueeze(1), batch, cond)
        other = collate_events(*storage, torch.arange(1, 4))  # another size: the same compiled code
        x2, cond2 = torch.randn(other.num_nodes, 2), torch.randn(other.num_graphs, 16)
        again = net(x2, other.coarse_energy.unsqueeze(1), other, cond2)
        use_compile(net, False)
        assert torch.allclose(again, net(x2, other.coarse_energy.unsqueeze(1), other, cond2), atol=1e-5)
    assert torch.allclose(compiled, eager, atol=1e-5)


@pytest.mark.parametrize("capability, kernel, simdlen", [("AVX512", False, 256), ("AVX512", True, None),
                                                         ("AVX2", False, None), ("DEFAULT", False, None)])
def test_compiled_cpu_loops_use_8_float_vectors_where_they_run_the_attention(monkeypatch, capability, kernel,
                                                                               simdlen):
    """On AVX-512 without the fused attention kernel, a head of 8 features fills one 256-bit vector; with the kernel,
    and on other hosts, the compiler's own width."""
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(fused_attention, "_libraries", {(4, 8): object()} if kernel else {})
    options = compiled_module.cpu_options()
    assert options.get("cpp.simdlen") == simdlen
    assert options["cpp.threads"] == compiled_module.CPU_THREADS
