"""Are kNN graphs the same on every host? The particle-flow models' cell graphs of a file's events, built with
torch-cluster (when installed) and with the pure-torch path on the CPU, and on another device, compared edge by edge.

graphsr's kNN ranks neighbours exactly and breaks ties by index (graphsr.ops.knn), so every column must equal the
first: the regular cell grids are full of equidistant neighbours, which must not be chosen by the backend or by the
last bit of a float32 cosine (docs/data.md, "Reproducibility").

Usage: python bench/check_knn_devices.py [--file data/multi_particle_4x_eval.root] [--events 300] [--device cuda]
Exit status 1 if any graph differs from the first.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile

import torch

from graphsr import ops
from graphsr.datasets import CocoaDataset
from graphsr.graphs import GraphOptions, collate_events
from graphsr.graphs.cells import cell_graph, cells_of


def edges(cells, num_events: int, options: GraphOptions, device: str, extensions: bool) -> set:
    with ops.use_extensions(extensions):
        graph = cell_graph(*(t.to(device) for t in (cells.energy, cells.pos, cells.layer, cells.batch)), num_events,
                           options, threshold=1e-3)
    return set(map(tuple, graph.edge_index.cpu().t().tolist()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--file", default="data/multi_particle_4x_eval.root")
    parser.add_argument("--events", type=int, default=300)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else None,
                        help="another device to compare (default: CUDA if present)")
    parser.add_argument("--out", help="JSON file for the figures")
    args = parser.parse_args()
    options = GraphOptions(layers=(0, 1, 2), k=6, k_between=2)  # configs/reco/*.yaml
    with tempfile.TemporaryDirectory() as cache:
        dataset = CocoaDataset([args.file], root=cache, log=False)
        batch = collate_events(*dataset.storage(), torch.arange(min(args.events, len(dataset))))
    ways = [("cpu", True)] if ops.has_torch_cluster() else []
    ways += [("cpu", False)] + ([(args.device, True)] if args.device not in (None, "cpu") else [])
    figures, same = {}, True
    for which in ("coarse", "fine"):
        cells = cells_of(batch, which)
        built = {f"{device}, {'torch-cluster' if ext and ops.has_torch_cluster() else 'pure torch'}":
                 edges(cells, batch.num_graphs, options, device, ext) for device, ext in ways}
        first = next(iter(built.values()))
        figures[which] = {name: {"edges": len(e), "differ_from_first": len(e ^ first)} for name, e in built.items()}
        same &= all(not f["differ_from_first"] for f in figures[which].values())
        for name, f in figures[which].items():
            print(f"{which:6s} cells, {name:24s}: {f['edges']:8d} edges, {f['differ_from_first']:6d} differ")
    if args.out:
        with open(args.out, "w") as handle:
            json.dump({"file": args.file, "events": batch.num_graphs, "same": same, **figures}, handle, indent=2)
    print("the same graphs everywhere" if same else "GRAPHS DIFFER")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
