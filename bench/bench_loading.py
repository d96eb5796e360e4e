"""Loading benchmark: ROOT file -> batched PyG graphs, events per second, and where the time goes.

Compares, on the same file and branches, in one run:
  raw uproot       TTree.arrays of the graph branches of both trees (the floor: decompression + awkward)
  graphsr read     iter_cocoa: the same read plus validation (mapping, finiteness, factor)
  graphsr graphs   build_storage: flattening, block order, cell ids, kNN edges (fine + coarse graphs)
  graphsr batches  GraphLoader batches of 64 events (vectorised gathering), and PyG's DataLoader for reference

Usage: python bench/bench_loading.py [--events 5000] [--file data/single_electron_2x.root]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import uproot

import graphsr.graphs.build as build_module
from graphsr import ops
from graphsr.graphs import GraphLoader, GraphOptions, build_storage, concat_storages
from graphsr.graphs.data import PairData
from graphsr.io import GRAPH_BRANCHES_HIGH, GRAPH_BRANCHES_LOW, CocoaWriter, iter_cocoa
from graphsr.simulation import SingleElectronGun, simulate_events


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--file", type=Path, default=None, help="existing file (default: simulate one)")
    parser.add_argument("--step", type=int, default=5000, help="events per chunk")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    with tempfile.TemporaryDirectory() as tmp:
        path = args.file
        if path is None:
            path = Path(tmp) / "bench.root"
            with CocoaWriter(path) as writer:
                for i in range(0, args.events, 1000):
                    writer.write(simulate_events(SingleElectronGun(), min(1000, args.events - i), factor=2,
                                                 seed=i))
        with uproot.open(path) as f:
            n = min(args.events, f["Low_Tree"].num_entries)
            raw_low = [b for b in f["Low_Tree"].keys() if b in GRAPH_BRANCHES_LOW]
            _, t_raw = timed(lambda: (f["Low_Tree"].arrays(raw_low, entry_stop=n),
                                      f["High_Tree"].arrays(list(GRAPH_BRANCHES_HIGH), entry_stop=n)))

        chunks, t_read = timed(lambda: list(iter_cocoa([path], low_branches=GRAPH_BRANCHES_LOW,
                                                       high_branches=GRAPH_BRANCHES_HIGH, step_size=args.step,
                                                       max_events=n)))
        edge_time = [0.0]
        original = build_module.neighbour_edges

        def timed_edges(*a, **k):
            out, t = timed(original, *a, **k)
            edge_time[0] += t
            return out

        build_module.neighbour_edges = timed_edges
        storage, t_build = timed(lambda: concat_storages([
            build_storage(c.low, c.high, GraphOptions(), factor=c.factor, first_event=c.entry_start)
            for c in chunks]))
        build_module.neighbour_edges = original

        def batches():
            return sum(b.num_graphs for b in GraphLoader(storage, 64, shuffle=True,
                                                         generator=torch.Generator().manual_seed(0)))

        _, t_batch = timed(batches)

        from torch_geometric.data.separate import separate
        from torch_geometric.loader import DataLoader

        data, slices = storage
        events = [separate(PairData, data, i, slices, decrement=False) for i in range(len(slices["event"]) - 1)]
        _, t_pyg = timed(lambda: sum(b.num_graphs for b in DataLoader(events, batch_size=64, shuffle=True)))

    total = t_read + t_build + t_batch
    print(f"events: {n} single electrons (2x), torch threads {torch.get_num_threads()}, "
          f"torch_cluster {'yes' if ops.has_torch_cluster() else 'no (pure torch)'}")
    print(f"{'stage':<34}{'seconds':>9}{'events/s':>11}")
    rows = [("raw uproot read (same branches)", t_raw), ("graphsr read + validation", t_read),
            ("graphsr graph building", t_build), ("  of which kNN edges", edge_time[0]),
            ("  of which the rest", t_build - edge_time[0]), ("graphsr batching (GraphLoader)", t_batch),
            ("PyG DataLoader batching (reference)", t_pyg), ("graphsr total: file -> batches", total)]
    for name, t in rows:
        print(f"{name:<34}{t:>9.3f}{n / t:>11.0f}")
    print(f"ratio graphsr total / raw uproot read: {total / t_raw:.2f}x the time")
    print(f"ratio PyG DataLoader / GraphLoader batching: {t_pyg / t_batch:.1f}x")


if __name__ == "__main__":
    main()
