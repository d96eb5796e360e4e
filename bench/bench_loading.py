"""Loading benchmark: ROOT file -> batched PyG graphs, events per second, and where the time goes.

Compares, on the same file and branches, in one run (each stage the best of ``--repeat`` runs):
  raw uproot       TTree.arrays of the graph branches of both trees (the floor: decompression + awkward)
  graphsr read     iter_cocoa: the same read plus validation (mapping, finiteness, factor)
  graphsr graphs   build_storage: flattening, block order, cell ids, edges of the fine and coarse graphs, for each
                   ``--edges`` option (the first one feeds the batching rows and the total)
  graphsr batches  GraphLoader batches of 64 events (vectorised gathering from the collated storage)
  PyG batches      torch_geometric's DataLoader on the same events: separating the storage into one Data object per
                   event (what InMemoryDataset does on first access, cached after) and collating them

On a shared machine compare the ratios to the raw read rather than the absolute rates (docs/data.md, "Graphs and
loading").

Usage: python bench/bench_loading.py [--events 5000] [--file data/single_electron_2x.root] [--edges grid knn]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import uproot
from torch_geometric.data.separate import separate
from torch_geometric.loader import DataLoader

import graphsr.graphs.build as build_module
from graphsr import ops
from graphsr.graphs import GraphLoader, GraphOptions, build_storage, concat_storages
from graphsr.graphs.data import PairData
from graphsr.io import GRAPH_BRANCHES_HIGH, GRAPH_BRANCHES_LOW, CocoaWriter, iter_cocoa
from graphsr.simulation import SingleElectronGun, simulate_events


def timed(fn, repeat: int = 1):
    """``(result, (wall, cpu))``: the least wall-clock and CPU (process) seconds of ``repeat`` calls."""
    wall = cpu = float("inf")
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        out = fn()
        wall, cpu = min(wall, time.perf_counter() - start), min(cpu, time.process_time() - start_cpu)
    return out, (wall, cpu)


def _timing(fn, spent: list[float]):
    """``fn`` adding the wall-clock and CPU seconds of each call to ``spent``."""
    def wrapper(*args, **kwargs):
        start, start_cpu = time.perf_counter(), time.process_time()
        out = fn(*args, **kwargs)
        spent[0] += time.perf_counter() - start
        spent[1] += time.process_time() - start_cpu
        return out
    return wrapper


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--file", type=Path, default=None, help="existing file (default: simulate one)")
    parser.add_argument("--step", type=int, default=5000, help="events per chunk")
    parser.add_argument("--edges", nargs="+", default=["grid", "knn"], help="GraphOptions.edges to build")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3, help="runs per stage (the best counts)")
    args = parser.parse_args()

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

        def raw_read():  # a fresh file each time: uproot caches what an open file has read
            with uproot.open(path) as f:
                return (f["Low_Tree"].arrays(raw_low, entry_stop=n),
                        f["High_Tree"].arrays(list(GRAPH_BRANCHES_HIGH), entry_stop=n))

        _, t_raw = timed(raw_read, args.repeat)

        chunks, t_read = timed(lambda: list(iter_cocoa([path], low_branches=GRAPH_BRANCHES_LOW,
                                                       high_branches=GRAPH_BRANCHES_HIGH, step_size=args.step,
                                                       max_events=n)), args.repeat)

    builds = {}
    for edges in args.edges:
        options = GraphOptions(edges=edges)
        spent = [0.0, 0.0]
        originals = {name: getattr(build_module, name) for name in ("grid_edges", "neighbour_edges")
                     if hasattr(build_module, name)}
        for name, original in originals.items():
            setattr(build_module, name, _timing(original, spent))

        def build():
            spent[:] = [0.0, 0.0]
            storage = concat_storages([build_storage(c.low, c.high, options, factor=c.factor,
                                                     first_event=c.entry_start) for c in chunks])
            return storage, tuple(spent)

        best = None
        for _ in range(args.repeat):  # keep only the fastest run (and its edge time): memory is reused
            run = timed(build)
            best = run if best is None or run[1][0] < best[1][0] else best
            del run
        (storage, t_edges), t_build = best
        del best
        for name, original in originals.items():
            setattr(build_module, name, original)
        edges_per_cell = storage[0].fine_edge_index.size(1) / storage[0].fine_layer.numel()
        builds[edges] = storage, t_build, t_edges, edges_per_cell

    storage, t_build = builds[args.edges[0]][:2]

    def batches():
        return sum(b.num_graphs for b in GraphLoader(storage, args.batch_size, shuffle=True,
                                                     generator=torch.Generator().manual_seed(0)))

    _, t_batch = timed(batches, args.repeat)
    data, slices = storage
    events, t_separate = timed(lambda: [separate(PairData, data, i, slices, decrement=False)
                                        for i in range(len(slices["event"]) - 1)], args.repeat)
    _, t_pyg = timed(lambda: sum(b.num_graphs for b in DataLoader(events, batch_size=args.batch_size,
                                                                  shuffle=True)), args.repeat)

    total = tuple(sum(t) for t in zip(t_read, t_build, t_batch))
    print(f"events: {n} from {args.file or 'simulated single electrons (2x)'}, torch threads "
          f"{torch.get_num_threads()}, torch_cluster {'yes' if ops.has_torch_cluster() else 'no (pure torch)'}, "
          f"best of {args.repeat}")
    print(f"{'stage':<46}{'seconds':>9}{'events/s':>11}{'CPU s':>8}")
    rows = [("raw uproot read (same branches)", t_raw), ("graphsr read + validation", t_read)]
    for edges, (_, t, t_edges, per_cell) in builds.items():
        rows += [(f"graph building, {edges} edges ({per_cell:.1f}/fine cell)", t), ("  of which edges", t_edges)]
    rows += [(f"batching, GraphLoader ({args.batch_size} events)", t_batch),
             ("batching, PyG DataLoader: separate + collate", tuple(map(sum, zip(t_separate, t_pyg)))),
             ("  of which collate", t_pyg), (f"graphsr total: file -> batches ({args.edges[0]})", total)]
    for name, (wall, cpu) in rows:
        print(f"{name:<46}{wall:>9.3f}{n / wall:>11.0f}{cpu:>8.3f}")
    print(f"ratio graphsr total / raw uproot read: {total[0] / t_raw[0]:.1f}x the time")
    print(f"ratio PyG DataLoader / GraphLoader batching: {(t_separate[0] + t_pyg[0]) / t_batch[0]:.1f}x "
          f"(collate alone {t_pyg[0] / t_batch[0]:.1f}x)")


if __name__ == "__main__":
    main()
