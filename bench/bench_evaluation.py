"""Evaluation cost: ``graphsr evaluate`` on N single-electron events (issue 4: 10,000 events on CPU in minutes).

Simulates N held-out events, then times the stages of the evaluation with the given checkpoint: super-resolving
(the ensemble, every sample), the metrics (including the classifier AUC, FPD / KPD, bootstrap errors and the
downstream reconstruction) and the report (plots). Usage:
``python bench/bench_evaluation.py --checkpoint runs/single_electron_2x/checkpoint.pt [--events 10000]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import torch

from graphsr.datasets import CocoaDataset
from graphsr.eval.evaluate import compute_metrics, generate, write_report
from graphsr.inference import SuperResolver
from graphsr.io import CocoaWriter
from graphsr.simulation import SingleElectronGun, simulate_events


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--ensemble", type=int, default=10)
    parser.add_argument("--max-nodes", type=int, help="fine cells per sampler call (default: SuperResolver's)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    resolver = SuperResolver(args.checkpoint, device=args.device, max_nodes=args.max_nodes)
    sc = resolver.config.sample
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "events.root"
        with CocoaWriter(path) as writer:
            for i in range(0, args.events, 1000):
                writer.write(simulate_events(SingleElectronGun(), min(1000, args.events - i), factor=resolver.factor,
                                             seed=10_000 + i, neighbour_branches=False))
        start = time.perf_counter()
        dataset = CocoaDataset([path], root=Path(tmp) / "cache", options=resolver.graph_options, log=False)
        t_load = time.perf_counter() - start
        events = torch.arange(len(dataset))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            g = generate(resolver, dataset.storage(), events, ensemble=args.ensemble)
            start = time.perf_counter()
            results = compute_metrics(g)
            t_metrics = time.perf_counter() - start
            start = time.perf_counter()
            write_report(g, results, Path(tmp) / "report")
            t_report = time.perf_counter() - start
    total = t_load + g.seconds + t_metrics + t_report
    print(f"{len(events)} events, ensemble {args.ensemble}, sampler {sc.sampler} x {sc.steps} steps, mode {g.mode}, "
          f"device {resolver.device}, torch threads {torch.get_num_threads()}")
    for name, t in (("load + build graphs", t_load), ("super-resolve (all samples)", g.seconds),
                    ("metrics", t_metrics), ("report + plots", t_report), ("total", total)):
        print(f"{name:<30} {t:>8.1f} s {1000 * t / len(events):>8.2f} ms/event")
    ev = results["event"]
    print(f"headline: coarse {ev['coarse']['spread']['value']:.4f}, super-resolved "
          f"{ev['super_resolved']['spread']['value']:.4f}, ratio {ev['ratio']:.3f}")


if __name__ == "__main__":
    main()
