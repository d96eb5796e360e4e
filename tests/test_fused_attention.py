"""The fused CPU attention kernel (graphsr.nn.fused_attention): outputs and gradients against attention written out
per target with torch.softmax, empty targets, extreme and NaN logits, the ensemble tiling of its edge order, the
build cache and the fallback where no C compiler works."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

from graphsr.nn import GraphAttention, GraphTransformer
from graphsr.nn import fused_attention as fa


def needs_kernel(heads, dim):
    if not fa.available(torch.zeros(1), heads, dim):
        pytest.skip("no C compiler for the fused attention kernel")


def by_hand(q, kv, table, row, source, target, num_targets, heads):
    """Per target and head: softmax over its edges of q . (k + b) / sqrt(d), then the weighted sum of v + b'."""
    width = q.size(1)
    dim = width // heads
    terms = kv[source] + table[row]
    out = []
    for t in range(num_targets):
        edges = (target == t).nonzero().squeeze(1)
        heads_out = []
        for h in range(heads):
            cols = slice(h * dim, (h + 1) * dim)
            key, value = terms[edges][:, cols], terms[edges][:, width:][:, cols]
            weight = torch.softmax(key @ q[t, cols] / dim ** 0.5, 0)
            heads_out.append(weight @ value if len(edges) else q.new_zeros(dim))
        out.append(torch.cat(heads_out))
    return torch.stack(out)


def graph(seed=0, targets=7, sources=5, edges=30, heads=2, dim=4, rows=3):
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, targets - 1, (edges,), generator=g)  # the last target has no edge
    source = torch.randint(0, sources, (edges,), generator=g)
    row = torch.randint(0, rows, (edges,), generator=g)
    width = heads * dim
    q = torch.randn(targets, width, generator=g, requires_grad=True)
    kv = torch.randn(sources, 2 * width, generator=g, requires_grad=True)
    table = torch.randn(rows, 2 * width, generator=g, requires_grad=True)
    return q, kv, table, row, source, target


@pytest.mark.parametrize("heads, dim", [(2, 4), (4, 8), (3, 5)])
def test_outputs_and_gradients_are_softmax_attention_by_hand(heads, dim):
    needs_kernel(heads, dim)
    q, kv, table, row, source, target = graph(heads=heads, dim=dim)
    out = fa.edge_attention(q, kv, table, row, source, *fa.csr(target, 7), heads)
    expected = by_hand(q.double(), kv.double(), table.double(), row, source, target, 7, heads)
    assert torch.allclose(out.double(), expected, atol=1e-5)
    assert torch.equal(out[6], torch.zeros(heads * dim))  # no incoming edge
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    got = torch.autograd.grad(out, (q, kv, table), grad)
    want = torch.autograd.grad(expected, (q, kv, table), grad.double())
    for g, w in zip(got, want):
        assert torch.allclose(g.double(), w.double(), atol=1e-4)
    assert torch.equal(got[0][6], torch.zeros(heads * dim))
    assert got[1].abs().sum() > 0 and got[2].abs().sum() > 0  # not trivially zero


def test_extreme_logits_give_the_softmax_limits_and_nan_stays_nan():
    needs_kernel(2, 4)
    q, kv, table, row, source, target = graph()
    with torch.no_grad():
        q = q * 300  # logits hundreds apart: weights underflow to exactly 0 or 1, as torch.softmax's
        out = fa.edge_attention(q, kv, table, row, source, *fa.csr(target, 7), 2)
        expected = by_hand(q.double(), kv.double(), table.double(), row, source, target, 7, 2)
        assert torch.allclose(out.double(), expected, atol=1e-4)
        q[0, 0] = float("nan")
        out = fa.edge_attention(q, kv, table, row, source, *fa.csr(target, 7), 2)
    assert out[0, :4].isnan().all() and not out[1:].isnan().any()  # the head with a NaN query, alone


def test_tiled_edge_order_is_the_order_of_tiled_edges():
    """An ensemble's copies batched one after the other; the cross edges in two parts, each tiled on its own."""
    target = torch.tensor([1, 0, 2, 1, 0, 2, 2])  # 3 targets; first part: edges 0-2, second part: 3-6
    order, ptr = fa.csr(target, 3)
    tiled_order, tiled_ptr = fa.tile_csr(order, ptr, 2, first=3)
    # by hand: [first part of copy 0, of copy 1, second part of copy 0, of copy 1], targets offset by 3 per copy
    tiled_target = torch.cat([target[:3], target[:3] + 3, target[3:], target[3:] + 3])
    want_order, want_ptr = fa.csr(tiled_target, 6)
    assert torch.equal(tiled_order, want_order) and torch.equal(tiled_ptr, want_ptr)
    assert torch.equal(tiled_ptr, torch.tensor([0, 2, 4, 7, 9, 11, 14]))
    plain_order, plain_ptr = fa.tile_csr(order, ptr, 3)
    assert torch.equal(plain_order, fa.csr(torch.cat([target, target + 3, target + 6]), 9)[0])


def test_attention_with_dropout_in_training_keeps_the_scatter_path():
    needs_kernel(2, 2)
    torch.manual_seed(0)
    attention = GraphAttention(4, 2, edge_dim=1, dropout=1.0).train()  # every weight dropped
    x = torch.randn(3, 4)
    edge_index = torch.tensor([[2, 0, 1], [0, 1, 0]])
    embedding = attention.embed_edges(torch.randn(3, 1))
    out = attention(x, x, edge_index, embedding, csr=fa.csr(edge_index[1], 3))
    assert torch.allclose(out, attention.out.bias.expand(3, 4))


def test_the_kernel_is_built_once_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHSR_CACHE", str(tmp_path))
    monkeypatch.setattr(fa, "_libraries", {})
    monkeypatch.setattr(fa, "_failed", [])
    if fa._compiler() is None:
        pytest.skip("no C compiler")
    assert fa.available(torch.zeros(1), 2, 3)
    built = list(tmp_path.glob("edge_attention_2x3_*.so"))
    assert len(built) == 1
    stamp = built[0].stat().st_mtime_ns
    monkeypatch.setattr(fa, "_libraries", {})
    assert fa.available(torch.zeros(1), 2, 3) and built[0].stat().st_mtime_ns == stamp  # loaded, not rebuilt
    assert not fa.available(torch.zeros(1, dtype=torch.float64), 2, 3)


def test_a_failing_compiler_warns_once_and_the_model_keeps_the_scatter_path(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHSR_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", "false")  # a compiler that always fails
    monkeypatch.setattr(fa, "_libraries", {})
    monkeypatch.setattr(fa, "_failed", [])
    if fa._compiler() is None:
        pytest.skip("no `false` command")
    with pytest.warns(RuntimeWarning, match="edge_attention.c"):
        assert not fa.available(torch.zeros(1), 2, 3)
    net = GraphTransformer(fine_in=1, coarse_in=1, out=1, width=8, depth=1, coarse_depth=1, heads=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once: no second try, no second warning
        assert not fa.available(torch.zeros(1), 4, 8)
        from graphsr.nn.transformer import attention_orders
        assert attention_orders(net, {"fine": (torch.tensor([0, 1]), 2)}) == {}


def test_the_counting_csr_is_a_stable_sort_and_rejects_targets_out_of_range():
    needs_kernel(2, 4)  # loads the library that counts
    target = torch.randint(0, 50, (2000,), generator=torch.Generator().manual_seed(3))
    order, ptr = fa.csr(target, 60)  # the last 10 targets have no edge
    assert torch.equal(order, torch.sort(target, stable=True).indices)
    assert torch.equal(ptr[1:] - ptr[:-1], torch.bincount(target, minlength=60)) and ptr[0] == 0
    with pytest.raises(ValueError, match=r"outside 0\.\.2"):
        fa.csr(torch.tensor([0, 5]), 3)


def test_queries_and_keys_may_be_column_slices_of_one_matmul_output():
    """Self-attention projects queries, keys and values in one matmul: the kernel reads the slices in place."""
    needs_kernel(2, 4)
    _, _, table, row, source, target = graph(targets=5, sources=5)
    wide = torch.randn(5, 24, generator=torch.Generator().manual_seed(2), requires_grad=True)
    q, kv = wide.split([8, 16], dim=1)
    assert q.stride(0) == kv.stride(0) == 24
    out = fa.edge_attention(q, kv, table, row, source, *fa.csr(target, 5), 2)
    expected = by_hand(q.double(), kv.double(), table.double(), row, source, target, 5, 2)
    assert torch.allclose(out.double(), expected, atol=1e-5)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    got, = torch.autograd.grad(out, wide, grad)
    want, = torch.autograd.grad(expected, wide, grad.double())
    assert torch.allclose(got, want.float(), atol=1e-4) and got.abs().sum() > 0


def test_event_graphs_pool_each_events_nodes_and_read_its_tokens():
    """Events 0 (nodes 0-2), 1 (none), 2 (3-4), 3 (5); two tokens: written out by hand."""
    graphs = fa.event_graphs(torch.tensor([0, 0, 0, 2, 2, 3]), 4, 2)
    source, order, ptr = graphs["pool"]
    assert source.tolist() == [0, 1, 2, 0, 1, 2, 3, 4, 3, 4, 5, 5]
    assert ptr.tolist() == [0, 3, 6, 6, 6, 8, 10, 11, 12]  # event 1's tokens have no edge
    source, order, ptr = graphs["read"]
    assert source.tolist() == [0, 1, 0, 1, 0, 1, 4, 5, 4, 5, 6, 7] and ptr.tolist() == list(range(0, 13, 2))
    assert order.tolist() == list(range(12))


def test_the_event_context_in_the_kernel_is_its_attention_written_out_per_event():
    """EventContext with the kernel's graphs against its two softmaxes written per event in float64 (the learned
    queries pool each event's nodes; each node reads its event's tokens), outputs and gradients; event 1 empty."""
    from graphsr.nn import EventContext

    needs_kernel(2, 4)
    torch.manual_seed(0)
    context = EventContext(8, 2, 3)
    batch = torch.tensor([0, 0, 0, 0, 2, 2, 2, 3, 3])
    x = torch.randn(9, 8, requires_grad=True)
    out = context(x, batch, 4, graphs=fa.event_graphs(batch, 4, 3))

    def by_event(x, p):
        dim = 4  # features per head (2 heads)
        rows = []
        for b in range(4):
            nodes = x[batch == b]
            if not len(nodes):
                continue
            key, value = p["pool_key_value"](nodes).split(8, dim=1)
            tokens = torch.cat([torch.softmax(key[:, s] @ p["queries"][:, s].T / dim ** 0.5, 0).T @ value[:, s]
                                for s in (slice(0, 4), slice(4, 8))], dim=1)  # [3 tokens, 8]
            token_key, token_value = p["read_key_value"](tokens).split(8, dim=1)
            query = p["read_query"](nodes)
            read = torch.cat([torch.softmax(query[:, s] @ token_key[:, s].T / dim ** 0.5, 1) @ token_value[:, s]
                              for s in (slice(0, 4), slice(4, 8))], dim=1)
            rows.append(p["out"](read))
        return torch.cat(rows)

    double = copy.deepcopy(context).double()
    x_double = x.detach().double().requires_grad_()
    expected = by_event(x_double, dict(double.named_children(), queries=double.queries))
    assert torch.allclose(out.double(), expected, atol=1e-5)
    grad = torch.randn(out.shape)
    got = torch.autograd.grad(out, (x, context.queries), grad)
    want = torch.autograd.grad(expected, (x_double, double.queries), grad.double())
    for a, b in zip(got, want):
        assert torch.allclose(a.double(), b, atol=1e-5) and a.abs().sum() > 0


def test_attention_without_edge_terms_is_attention_with_a_zero_table():
    needs_kernel(2, 4)
    q, kv, _, _, source, target = graph()
    out = fa.edge_attention(q, kv, None, None, source, *fa.csr(target, 7), 2)
    zero = torch.zeros(1, 16, dtype=torch.float64)
    expected = by_hand(q.double(), kv.double(), zero, torch.zeros_like(source), source, target, 7, 2)
    assert torch.allclose(out.double(), expected, atol=1e-5)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    got = torch.autograd.grad(out, (q, kv), grad)
    want = torch.autograd.grad(expected, (q, kv), grad.double())
    for a, b in zip(got, want):
        assert torch.allclose(a, b.float(), atol=1e-4) and a.abs().sum() > 0
