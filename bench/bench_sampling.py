"""Sampling cost and quality against the number of steps, per sampler, on held-out events of a trained model.

For each sampler and step count: network evaluations per sample, ms per event (the whole ensemble), and the
headline figure (relative spread of the event ECAL energy, ensemble mean vs fine truth, divided by the coarse one)
with the per-cell RMSE. Usage:
``python bench/bench_sampling.py --checkpoint runs/x/checkpoint.pt --input data/single_electron_2x.root``.
"""

from __future__ import annotations

import argparse
import warnings


from graphsr.datasets import CocoaDataset
from graphsr.diffusion import evaluations
from graphsr.eval import metrics as m
from graphsr.eval.evaluate import generate
from graphsr.inference import SuperResolver, unseen_events


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--input", required=True)
    parser.add_argument("--events", type=int, default=100)
    parser.add_argument("--ensemble", type=int, default=10)
    parser.add_argument("--samplers", nargs="+", default=["ddpm", "ddim", "heun", "dpmpp_2m"])
    parser.add_argument("--steps", type=int, nargs="+", default=[4, 8, 16, 32, 100])
    parser.add_argument("--max-evaluations", type=int, default=100, help="skip settings above this many NFE")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    resolver = SuperResolver(args.checkpoint, device=args.device)
    config = resolver.config
    dataset = CocoaDataset([args.input], root=config.data.cache, options=resolver.graph_options)
    events = unseen_events(resolver, dataset)[0][:args.events]
    storage = dataset.storage()
    print(f"{len(events)} held-out events, ensemble {args.ensemble}, device {resolver.device}, "
          f"checkpoint step {resolver.step}")
    print(f"{'sampler':<9} {'steps':>5} {'NFE':>4} {'ms/event':>9} {'coarse':>7} {'SR':>7} {'SR/coarse':>9} "
          f"{'cell RMSE':>9} {'split RMSE':>10}")
    with warnings.catch_warnings():  # warm-up, untimed: the first call pays for allocations and lazy set-up
        warnings.simplefilter("ignore")
        generate(resolver, storage, events[:2], ensemble=args.ensemble, sampler=args.samplers[0],
                 steps=args.steps[0], progress=False)
    for sampler in args.samplers:
        for steps in args.steps:
            nfe = evaluations(sampler, steps)
            if nfe > args.max_evaluations:
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                g = generate(resolver, storage, events, ensemble=args.ensemble, sampler=sampler, steps=steps,
                             progress=False)
                e_true = m.per_event_sum(g.truth, g.event, g.num_events)
                coarse = m.relative_residual_spread(m.per_event_sum(g.coarse_energy, g.coarse_event, g.num_events),
                                                    e_true)[0]
                sr = m.relative_residual_spread(m.per_event_sum(g.mean, g.event, g.num_events), e_true)[0]
                rmse = m.cell_error(g.mean, g.truth)[0]
                split = m.cell_error(g.even_split, g.truth)[0]
            print(f"{sampler:<9} {steps:>5} {nfe:>4} {1000 * g.seconds / len(events):>9.1f} {coarse:>7.4f} "
                  f"{sr:>7.4f} {sr / coarse:>9.3f} {rmse:>9.4f} {split:>10.4f}", flush=True)


if __name__ == "__main__":
    main()
