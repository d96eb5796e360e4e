"""Pyramid against dense generation: cost against occupancy, and quality on the same held-out events.

Cost: peak memory and time of one sampler call (the whole ensemble) for events of 1, 4, 16 and 64 electrons spread
over the detector, for 16 electrons diluted to 30% occupancy (their measured cells, about 80% of whose children are
hit in truth, plus noise-only coarse cells drawn uniformly in the kept layers until 30% of the candidate fine cells
are hit: :func:`diluted_event`) and for one full-detector event in which every ECAL coarse cell is a candidate (the
showers' measured cells plus the layer's noise everywhere else: 36,864 coarse and 147,456 fine cells at 2x). Memory: peak RSS,
each measurement in a fresh process (the rise of the process's peak during its first sampler call, over its peak
with the event and the model loaded), and on CUDA the rise of the peak allocated; time: a second call. Occupancy: the
fraction of candidate fine cells that are hit in truth, and that each generator fills (energy above zero); with the
fine truth, the quality of the first call's first sample: recall and precision of the truth's hits above 1 MeV, and
the share of its energy in children that are empty in truth.

Quality: ``graphsr evaluate``'s figures of every checkpoint on the held-out events that none of them saw, side by
side (:func:`graphsr.eval.compare.side_by_side`).

Usage: ``python bench/bench_pyramid.py --checkpoint dense=runs/e/checkpoint.pt --checkpoint
pyramid=runs/e_pyramid/checkpoint.pt --input data/single_electron_2x.root [--device cpu] [--ensemble 1]``. The
first checkpoint is the reference of the cost ratios; all must share one granularity factor.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
import warnings
from contextlib import contextmanager

import awkward as ak
import numpy as np
import torch

from bench_denoiser import SpreadElectrons
from graphsr.detector import NUM_ECAL_LAYERS, Geometry
from graphsr.graphs import build_storage
from graphsr.graphs.noise_cells import add_noise_cells
from graphsr.inference import load_resolver
from graphsr.simulation import simulate_events

FULL = "full"
DILUTED = "occ"
HIT = 1e-3  # GeV: a fine cell above 1 MeV is a hit for precision / recall, as in graphsr evaluate


def full_detector_event(factor: int, showers: int = 4, seed: int = 0) -> dict:
    """``Low_Tree`` of one event holding every ECAL coarse cell: ``showers`` electrons' measured cells, noise (the
    layer's sigma) everywhere else."""
    trees = simulate_events(SpreadElectrons(showers), 1, factor=factor, seed=seed, neighbour_branches=False)
    coarse = Geometry.cocoa().coarsen(factor)
    layer = np.concatenate([np.full(coarse.n[la] ** 2, la) for la in range(NUM_ECAL_LAYERS)])
    local = np.concatenate([np.arange(coarse.n[la] ** 2) for la in range(NUM_ECAL_LAYERS)])
    ieta, iphi = local // coarse.n[layer], local % coarse.n[layer]
    energy = np.random.default_rng(seed).normal(0.0, coarse.noise[layer])
    low = trees["Low_Tree"][0]
    hit_layer = low.cell_layer.to_numpy()
    ecal = hit_layer < NUM_ECAL_LAYERS
    hit_ieta, hit_iphi = coarse.cell_at(hit_layer[ecal], low.cell_eta.to_numpy()[ecal], low.cell_phi.to_numpy()[ecal])
    energy[coarse.cell_id(hit_layer[ecal], hit_ieta, hit_iphi)] = low.cell_e.to_numpy()[ecal]
    eta, phi = coarse.cell_center(layer, ieta, iphi)
    return {"cell_layer": [layer.astype(np.int32)], "cell_eta": [eta.astype(np.float32)],
            "cell_phi": [phi.astype(np.float32)], "cell_e": [energy.astype(np.float32)]}


def diluted_event(factor: int, options, occupancy: float, layout: str = "around", showers: int = 16, seed: int = 0):
    """Storage of one event whose candidate fine cells are ``occupancy`` hit in truth: ``showers`` electrons'
    measured coarse cells (about 70-80% of their children hit) plus as many noise-only coarse cells (the layer's
    sigma; every child empty in truth) as it takes (:func:`graphsr.graphs.noise_cells.add_noise_cells`). ``layout``
    places them: ``around`` the showers, ring by ring of grid neighbours, as a lower clustering threshold would add
    them; ``scattered``: uniformly over the kept layers, as the full-detector event adds them (isolated cells, with
    few neighbours: the cheapest empty candidates for the dense path)."""
    trees = simulate_events(SpreadElectrons(showers), 1, factor=factor, seed=seed, neighbour_branches=False)
    low, high = trees["Low_Tree"], trees["High_Tree"]
    data = build_storage(low, high, options, factor=factor)[0]
    hits, candidates = int((data.fine_energy > 0).sum()), data.fine_energy.numel()
    extra = max(0, int(np.ceil((hits / occupancy - candidates) / factor**2)))
    low, high = add_noise_cells(low, high, np.array([extra]), factor, options.layers, layout,
                                np.random.default_rng(seed))
    return build_storage(low, high, options, factor=factor)


@contextmanager
def stage_timer(spent: dict):
    """Add the seconds spent in the pyramid's stage 1 (occupancy sampling) and in building its hit graphs to
    ``spent``; the rest of a pyramid call is stage 2 and the bookkeeping around it (on CUDA, without synchronising:
    the time to launch them)."""
    import graphsr.models.pyramid as pyramid
    from graphsr.models.occupancy import Occupancy

    patched = {"stage1": (Occupancy, "sample"), "hit_graph": (pyramid, "hit_graph")}
    originals = {name: getattr(owner, attr) for name, (owner, attr) in patched.items()}

    def timed(name):
        def call(*args, **kwargs):
            start = time.perf_counter()
            try:
                return originals[name](*args, **kwargs)
            finally:
                spent[name] = spent.get(name, 0.0) + time.perf_counter() - start
        return call

    for name, (owner, attr) in patched.items():
        setattr(owner, attr, timed(name))
    try:
        yield spent
    finally:
        for name, (owner, attr) in patched.items():
            setattr(owner, attr, originals[name])


def measure(checkpoint: str, case: str, device: str, ensemble: int, seed: int = 0) -> dict:
    """One sampler call on one event (``case``: a number of showers, ``full``, or ``occ0.3:around``: a 30% occupied
    event, :func:`diluted_event`), in this process."""
    resolver = load_resolver(checkpoint, device=device)
    if case == FULL:
        storage = build_storage(ak.Array(full_detector_event(resolver.factor)), None, resolver.graph_options,
                                factor=resolver.factor)
    elif case.startswith(DILUTED):  # occ<fraction>:<layout>
        fraction, layout = case.removeprefix(DILUTED).split(":")
        storage = diluted_event(resolver.factor, resolver.graph_options, float(fraction), layout)
    else:
        trees = simulate_events(SpreadElectrons(int(case)), 1, factor=resolver.factor, seed=int(case),
                                neighbour_branches=False)
        storage = build_storage(trees["Low_Tree"], trees["High_Tree"], resolver.graph_options)
    events = torch.tensor([0])
    cuda = resolver.device.type == "cuda"
    maxrss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # noqa: E731 (MB)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # spread electrons lie outside a single-electron model's training range
        before, allocated = maxrss(), torch.cuda.memory_allocated() if cuda else 0
        out = resolver(storage, events, ensemble=ensemble, seed=seed)  # memory: the first call
        rss_rise = maxrss() - before
        cuda_rise = (torch.cuda.max_memory_allocated() - allocated) / 2**20 if cuda else None
        with stage_timer({}) as stages:
            start = time.perf_counter()  # time: the second call (kernels, allocator and caches warm)
            resolver(storage, events, ensemble=ensemble, seed=seed + 1)
            if cuda:
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
    data = storage[0]
    sample = out["samples"].cpu()
    quality = {}
    if "fine_energy" in data:  # one sample's energy in truth-empty children, and its hits among the truth's
        empty, hit = data.fine_energy <= 0, data.fine_energy > HIT
        quality = {"empty_energy_share": float(sample.clamp_min(0)[:, empty].sum() / sample.clamp_min(0).sum()),
                   "hit_recall": float((sample[:, hit] > HIT).float().mean()),
                   "hit_precision": float((sample[:, hit] > HIT).sum() / (sample > HIT).sum().clamp_min(1))}
    return {"fine_cells": int(data.fine_layer.numel()), "seconds": seconds, "rss_rise_mb": rss_rise,
            "rss_peak_mb": maxrss(), "cuda_rise_mb": cuda_rise, "stages": stages,
            "truth_occupancy": float((data.fine_energy > 0).float().mean()) if "fine_energy" in data else None,
            "generated_occupancy": float((sample > 0).float().mean()), **quality}


def cost_table(checkpoints: dict[str, str], cases: list[str], device: str, ensemble: int, timeout: float):
    names = list(checkpoints)
    print(f"\nCost of one sampler call (ensemble {ensemble}, device {device}); ratios against {names[0]}")
    print(f"{'event':>10} {'fine cells':>10} {'truth occ':>9} | " + " | ".join(
        f"{n[:12]:>12} {'occ':>5} {'ms':>8} {'RSS+ MB':>8} {'CUDA+ MB':>8} {'t/ref':>6} {'m/ref':>6}" for n in names))
    for case in cases:
        row, reference, cells, truth, stages = [], None, "", None, []
        for name in names:
            command = [sys.executable, __file__, "--measure", checkpoints[name], case, "--device", device,
                       "--ensemble", str(ensemble)]
            try:
                done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
                result = json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else None
            except subprocess.TimeoutExpired:
                result = None
            if result is None:
                row.append(f"{name[:12]:>12} {'failed or over ' + str(int(timeout)) + ' s':>49}")
                continue
            reference = reference or result
            memory = "rss_rise_mb" if result["cuda_rise_mb"] is None else "cuda_rise_mb"
            cuda = "" if result["cuda_rise_mb"] is None else f"{result['cuda_rise_mb']:.0f}"
            row.append(f"{name[:12]:>12} {result['generated_occupancy']:>5.2f} {1000 * result['seconds']:>8.0f} "
                       f"{result['rss_rise_mb']:>8.0f} {cuda:>8} {result['seconds'] / reference['seconds']:>6.2f} "
                       f"{result[memory] / max(reference[memory], 1e-9):>6.2f}")
            cells, truth = result["fine_cells"], result["truth_occupancy"]
            notes = [f"stage 1 {1000 * result['stages']['stage1']:.0f} ms, hit graphs "
                     f"{1000 * result['stages']['hit_graph']:.0f} ms"] if result["stages"] else []
            if "hit_recall" in result:
                notes.append(f"hits > 1 MeV: recall {result['hit_recall']:.2f}, precision {result['hit_precision']:.2f}"
                             f"; energy in truth-empty cells {result['empty_energy_share']:.3f}")
            if notes:
                stages.append(f"{name}: " + "; ".join(notes))
        label = "full ECAL" if case == FULL else f"{case} e-" if case.isdigit() else case.removeprefix(DILUTED)
        print(f"{label:>10} {cells:>10} {'' if truth is None else f'{truth:.2f}':>9} | " + " | ".join(row), flush=True)
        for line in stages:
            print(f"{'':>32}{line}")


def quality_table(checkpoints: dict[str, str], path: str, events: int, ensemble: int, device: str):
    from graphsr.datasets import CocoaDataset
    from graphsr.eval.compare import side_by_side
    from graphsr.eval.evaluate import evaluate_other
    from graphsr.inference import unseen_events

    resolvers = {name: load_resolver(c, device=device) for name, c in checkpoints.items()}
    first = next(iter(resolvers.values()))
    dataset = CocoaDataset([path], root=first.config.data.cache, options=first.graph_options)
    held_out = unseen_events(first, dataset)[0]
    for resolver in resolvers.values():
        held_out = held_out[torch.isin(held_out, unseen_events(resolver, dataset)[0])]
    held_out = held_out[:events]
    print(f"\nQuality on {len(held_out)} held-out events of {path} (ensemble {ensemble}, each checkpoint's sampler)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = side_by_side({name: evaluate_other(r, dataset.storage(), held_out, ensemble=ensemble, progress=False)
                              for name, r in resolvers.items()})
    print(f"{'figure':<58} " + " ".join(f"{n[:14]:>14}" for n in resolvers))
    for figure, values in table.items():
        print(f"{figure[:58]:<58} " + " ".join("n/a".rjust(14) if values[n] is None else f"{values[n]:>14.4g}"
                                               for n in resolvers))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", action="append", default=[], metavar="NAME=PATH",
                        help="a checkpoint to compare (repeat; the first is the reference)")
    parser.add_argument("--input", help="COCOA file the checkpoints trained on: quality on its held-out events")
    parser.add_argument("--events", type=int, default=200, help="held-out events for the quality table")
    parser.add_argument("--quality-ensemble", type=int, default=10)
    parser.add_argument("--showers", nargs="+", default=["1", "4", "16", "64"])
    parser.add_argument("--no-full", action="store_true", help="skip the full-detector event")
    parser.add_argument("--occupancy", nargs="*", type=float, default=[0.3],
                        help="truth occupancies of 16-electron events diluted with noise-only coarse cells")
    parser.add_argument("--layout", nargs="+", default=["around", "scattered"],
                        help="where the noise-only cells of the diluted events lie (diluted_event)")
    parser.add_argument("--ensemble", type=int, default=1, help="samples per event in the cost table")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds allowed to one cost measurement")
    parser.add_argument("--measure", nargs=2, metavar=("CHECKPOINT", "CASE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(*args.measure, args.device, args.ensemble)))
        return
    checkpoints = dict(item.split("=", 1) for item in args.checkpoint)
    if not checkpoints:
        parser.error("give at least one --checkpoint NAME=PATH")
    cases = args.showers + [f"{DILUTED}{o:g}:{layout}" for o in args.occupancy for layout in args.layout] + \
        ([] if args.no_full else [FULL])
    cost_table(checkpoints, cases, args.device, args.ensemble, args.timeout)
    if args.input:
        quality_table(checkpoints, args.input, args.events, args.quality_ensemble, args.device)


if __name__ == "__main__":
    main()
