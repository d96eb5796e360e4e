"""Denoiser cost against event size: forward + backward per event at ~250 to ~16,000 fine cells, sparse graph
attention (graphsr) against a dense all-to-all transformer of the same width and depth.

Events are simulated with N electrons spread over the detector (about 250 fine ECAL cells each at 2x).
Usage: ``python bench/bench_denoiser.py [--width 64] [--depth 3] [--device cpu] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn

from graphsr.graphs import GraphOptions, build_storage, collate_events
from graphsr.nn import GraphTransformer
from graphsr.simulation import ELECTRON, Particles, simulate_events


class SpreadElectrons:
    """``count`` 50 GeV electrons per event at random directions (|eta| < 2.4): events of ~250 x count fine cells."""

    def __init__(self, count: int):
        self.count = count

    def sample(self, num_events, rng):
        n = num_events * self.count
        return Particles.make(np.full(n, ELECTRON), np.full(n, 50_000.0), rng.uniform(-2.4, 2.4, n),
                              rng.uniform(-np.pi, np.pi, n), np.repeat(np.arange(num_events), self.count), num_events)


class DenseTransformer(nn.Module):
    """All-to-all self-attention over an event's fine cells (the published model's choice), same width / depth."""

    def __init__(self, width, depth, heads):
        super().__init__()
        self.input = nn.Linear(5, width)
        layer = nn.TransformerEncoderLayer(width, heads, 4 * width, batch_first=True, norm_first=True, dropout=0.0)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.head = nn.Linear(width, 1)

    def forward(self, x):
        return self.head(self.encoder(self.input(x)))


def timed(fn, repeats, device):
    fn()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--electrons", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--dense-max-cells", type=int, default=20000, help="skip dense attention above this size")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    sparse = GraphTransformer(2, 1, 1, width=args.width, depth=args.depth, coarse_depth=1, heads=args.heads,
                              context_tokens=4).to(device)
    dense = DenseTransformer(args.width, args.depth, args.heads).to(device)
    print(f"device {device}, width {args.width}, depth {args.depth}, heads {args.heads}; ms per event, fwd + bwd")
    print(f"{'fine cells':>10} {'edges/cell':>10} {'sparse ms':>10} {'ms/1k cells':>12} {'dense ms':>10} "
          f"{'dense/sparse':>12}")
    for count in args.electrons:
        trees = simulate_events(SpreadElectrons(count), 1, factor=2, seed=count, neighbour_branches=False)
        batch = collate_events(*build_storage(trees["Low_Tree"], trees["High_Tree"], GraphOptions()),
                               torch.tensor([0])).to(device)
        n = batch.num_nodes
        x_fine = torch.randn(n, 2, device=device)
        x_coarse = batch.coarse_energy.unsqueeze(1)
        cond = torch.randn(1, args.width, device=device)

        def sparse_step():
            sparse.zero_grad()
            sparse(x_fine, x_coarse, batch, cond).square().mean().backward()

        t_sparse = timed(sparse_step, args.repeats, device)
        edges = (batch.fine_edge_index.size(1) + len(sparse.cross_edges(batch)[0])) / n
        line = f"{n:>10} {edges:>10.1f} {1000 * t_sparse:>10.1f} {1e6 * t_sparse / n:>12.2f}"
        if n <= args.dense_max_cells:
            x_dense = torch.randn(1, n, 5, device=device)

            def dense_step():
                dense.zero_grad()
                dense(x_dense).square().mean().backward()

            t_dense = timed(dense_step, args.repeats, device)
            line += f" {1000 * t_dense:>10.1f} {t_dense / t_sparse:>12.2f}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
