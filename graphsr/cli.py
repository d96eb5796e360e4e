"""The ``graphsr`` command line: ``graphsr <command> --help`` explains each command."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _simulate(args):
    import numpy as np
    from tqdm import tqdm

    from graphsr.io import CocoaWriter
    from graphsr.simulation import MultiParticleGun, SingleElectronGun, simulate_events

    gun = SingleElectronGun() if args.gun == "single-electron" else MultiParticleGun()
    # one independent, reproducible stream per chunk: the file does not depend on the chunk size's timing
    seeds = np.random.SeedSequence(args.seed).spawn(-(-args.events // args.chunk))
    with CocoaWriter(args.output, overwrite=args.overwrite) as writer, \
            tqdm(total=args.events, unit="event", desc=f"simulating {args.gun} x{args.factor}") as bar:
        for i, seed in enumerate(seeds):
            n = min(args.chunk, args.events - i * args.chunk)
            writer.write(simulate_events(gun, n, factor=args.factor, seed=np.random.default_rng(seed),
                                         neighbour_branches=not args.no_neighbour_branches))
            bar.update(n)
    print(f"wrote {args.events} events to {args.output}")


def _summary(args):
    import torch

    from graphsr.datasets import CocoaDataset
    from graphsr.graphs import GraphOptions
    from graphsr.plotting import energy_histograms, event_display

    dataset = CocoaDataset([args.input], root=args.cache, options=GraphOptions(), max_events=args.max_events)
    data = dataset.storage()[0]
    slices = dataset.slices
    fine, coarse = torch.diff(slices["fine_layer"]).float(), torch.diff(slices["coarse_layer"]).float()
    nonzero = (data.fine_energy > 0).float().mean()
    print(f"{args.input}: {len(dataset)} events with ECAL cells")
    print(f"  coarse ECAL cells per event: mean {coarse.mean():.1f}, sd {coarse.std():.1f}, "
          f"range {int(coarse.min())}-{int(coarse.max())}")
    print(f"  fine ECAL cells per event:   mean {fine.mean():.1f}, sd {fine.std():.1f}, "
          f"range {int(fine.min())}-{int(fine.max())}, {100 * nonzero:.0f}% nonzero")
    print(f"  fine edges per event: {torch.diff(slices['fine_edge_index']).float().mean():.0f}, "
          f"coarse edges: {torch.diff(slices['coarse_edge_index']).float().mean():.0f}")
    owner = lambda counts: torch.arange(len(counts)).repeat_interleave(counts.long())  # noqa: E731
    e_coarse = torch.zeros(len(dataset)).index_add_(0, owner(coarse), data.coarse_energy)
    e_fine = torch.zeros(len(dataset)).index_add_(0, owner(fine), data.fine_energy)
    print(f"  ECAL energy per event: coarse {e_coarse.mean():.2f} GeV, fine {e_fine.mean():.2f} GeV, "
          f"relative spread of coarse vs fine {((e_coarse - e_fine) / e_fine).std():.4f}")
    plot = Path(args.plot)
    event_display(dataset[0], plot, title=f"{Path(args.input).name}, event {int(dataset[0].event)}")
    energy_histograms({"fine cells": data.fine_energy[data.fine_energy > 0].log10().numpy(),
                       "coarse cells": data.coarse_energy[data.coarse_energy > 0].log10().numpy()},
                      plot.with_name("cell_energies.png"), "log10(cell energy / GeV)")
    print(f"  plots: {plot} and {plot.with_name('cell_energies.png')}")


def _train(args):
    from graphsr.config import load_config
    from graphsr.training.trainer import train

    config = load_config(args.config)
    if args.data:
        config.data.train = args.data
    if args.steps is not None:
        config.train.steps = args.steps
    if args.device:
        config.train.device = args.device
    if args.time_limit is not None:
        config.train.time_limit = args.time_limit
    result = train(config, args.out, resume=args.resume)
    print(f"checkpoint: {result.checkpoint} (step {result.step}, validation loss {result.val_loss:.4f}, "
          f"{result.events_per_second:.0f} events/s)")


def _resolver(args):
    """The checkpoint's model, with the command line's sampler settings that are not per call."""
    from graphsr.inference import SuperResolver

    resolver = SuperResolver(args.checkpoint, device=args.device)
    if args.eta is not None:
        resolver.config.sample.eta = args.eta
    return resolver


def _sample(args):
    from graphsr.inference import super_resolve_file

    resolver = _resolver(args)
    n = super_resolve_file(resolver, args.input, args.output, overwrite=args.overwrite, max_events=args.max_events,
                           sampler=args.sampler, steps=args.steps, ensemble=args.ensemble, seed=args.seed,
                           mode=args.mode, spread_scale=args.spread_scale, energy_scale=args.energy_scale)
    print(f"wrote {n} super-resolved events to {args.output}")


def _evaluate(args):
    import torch

    from graphsr.datasets import CocoaDataset
    from graphsr.eval.evaluate import calibrate_fusion, compute_metrics, generate, write_report
    from graphsr.inference import SuperResolver
    from graphsr.plotting import event_display

    resolver = _resolver(args)
    config = resolver.config
    same_file = any(Path(args.input).resolve() == Path(f).resolve() for f in config.data.train)
    dataset = CocoaDataset([args.input], root=config.data.cache, options=resolver.graph_options,
                           max_events=config.data.max_events if same_file else None)
    if args.split == "test" and same_file:
        # the training run's own held-out events (same split seed and fractions)
        v, t = config.data.val_fraction, config.data.test_fraction
        events = torch.as_tensor(dataset.split((1 - v - t, v, t), seed=config.data.split_seed)[2].indices())
        where = f"the {len(events)} held-out test events of {args.input}"
    else:
        events = torch.arange(len(dataset))
        where = f"all {len(events)} events of {args.input}"
    events = events[:args.events] if args.events else events
    print(f"evaluating {resolver.step}-step checkpoint on {len(events)} events ({where})")
    storage = dataset.storage()
    mode = args.mode or config.sample.mode
    calibration = None
    spread_scale, energy_scale = args.spread_scale, args.energy_scale
    if mode == "fused" and same_file and spread_scale is None and energy_scale is None:
        v, t = config.data.val_fraction, config.data.test_fraction
        val = torch.as_tensor(dataset.split((1 - v - t, v, t), seed=config.data.split_seed)[1].indices())
        calibration = calibrate_fusion(resolver, storage, val[:args.calibration_events],
                                       ensemble=args.ensemble, sampler=args.sampler, steps=args.steps)
        spread_scale, energy_scale = calibration["spread_scale"], calibration["energy_scale"]
        rms, default = calibration["rms"], f"{config.sample.spread_scale},1.0"
        print(f"fused mode: spread scale {spread_scale}, energy scale {energy_scale} chosen on "
              f"{calibration['events']} validation events (RMS relative residual "
              f"{rms[f'{spread_scale},{energy_scale}']:.4f}; with {default}: {rms.get(default, float('nan')):.4f})")
        if calibration["at_edge"]:
            print("warning: a calibrated value is at the edge of its grid (graphsr.eval.evaluate.calibrate_fusion); "
                  "the model may need more training", file=sys.stderr)
    regression = SuperResolver(args.regression, device=args.device) if args.regression else None
    generated = generate(resolver, storage, events, ensemble=args.ensemble, sampler=args.sampler,
                         steps=args.steps, seed=args.seed, mode=mode, spread_scale=spread_scale,
                         energy_scale=energy_scale, regression=regression)
    results = compute_metrics(generated)
    results["calibration"] = calibration
    out = Path(args.out)
    displays = []
    for i, event in enumerate(events[:args.displays].tolist()):
        single = resolver(storage, torch.tensor([event]), sampler=args.sampler, steps=args.steps,
                          ensemble=args.ensemble, seed=args.seed, mode=mode, spread_scale=spread_scale,
                          energy_scale=energy_scale, record_steps=True)
        data = single["batch"].cpu()
        path = event_display(data, out / f"event_{i}.png", {"one sample": single["samples"][0].cpu(),
                                                          f"mean of {single['samples'].shape[0]}": single["mean"].cpu()},
                             title=f"event {int(data.event)}: coarse / truth / super-resolved")
        trajectory = single["trajectory"].cpu()
        picks = sorted({0, len(trajectory) // 3, 2 * len(trajectory) // 3, len(trajectory) - 1})
        steps_path = event_display(data, out / f"event_{i}_denoising.png",
                                   {f"step {s + 1} estimate": trajectory[s] for s in picks},
                                   title=f"event {int(data.event)}: denoised estimate along the sampler's steps")
        displays += [(f"event {i}", path), (f"event {i} denoising", steps_path)]
    report = write_report(generated, results, out, title=f"graphsr evaluation: {Path(args.input).name}",
                          displays=displays)
    ev = results["event"]
    print(f"headline: relative spread of the event ECAL energy against the fine truth: coarse "
          f"{ev['coarse']['spread']['value']:.4f}, super-resolved (mean of {args.ensemble}) "
          f"{ev['super_resolved']['spread']['value']:.4f}, ratio {ev['ratio']:.2f} (published 0.0057 -> 0.0034, 0.60); "
          f"bias coarse {ev['coarse']['bias']['value']:+.4f}, super-resolved {ev['super_resolved']['bias']['value']:+.4f}")
    cell = results["cell"].get("ECAL2", next(iter(results["cell"].values())))
    print("per-cell RMSE (ECAL2, GeV): " + ", ".join(f"{name} {v['rmse']['value']:.4f}" for name, v in cell.items()
                                                     if name != "coverage_68"))
    print(f"report: {report} (metrics: {out / 'metrics.json'})")


def _add_sampling_options(parser, ensemble_default=None):
    """The options every command that runs the sampler shares."""
    from graphsr.diffusion import SAMPLERS

    parser.add_argument("--checkpoint", required=True, help="checkpoint written by `graphsr train`")
    parser.add_argument("--sampler", choices=sorted(SAMPLERS), help="default: the checkpoint's")
    parser.add_argument("--steps", type=int, help="sampling steps (default: the checkpoint's)")
    parser.add_argument("--eta", type=float, help="ddim sampler's stochasticity: 0 deterministic DDIM, 1 ancestral "
                        "DDPM (default: the checkpoint's)")
    parser.add_argument("--ensemble", type=int, default=ensemble_default,
                        help=f"samples per event (default: {ensemble_default or 'the checkpoint' + chr(39) + 's'})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampling noise (same seed, same samples)")
    parser.add_argument("--mode", choices=["free", "conserving", "fused"],
                        help="free: children as generated; conserving: they sum to the measured parent; fused: to the "
                        "measurement and the ensemble combined by their uncertainties (default: the checkpoint's)")
    parser.add_argument("--spread-scale", type=float,
                        help="fused mode: factor on the ensemble spread (default: the checkpoint's; evaluate "
                        "calibrates it on validation events)")
    parser.add_argument("--energy-scale", type=float,
                        help="fused mode: factor on the ensemble's sums, the model's energy-scale correction (default: "
                        "the checkpoint's; evaluate calibrates it on validation events)")
    parser.add_argument("--device", default="auto", help='"cpu", "cuda", ... (default: CUDA if present)')


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="graphsr", description="Graph super-resolution of COCOA calorimeter events: simulate events, train a "
        "diffusion model that generates fine cells from coarse ones, super-resolve files. Typical order: simulate -> "
        "summary -> train -> sample. `graphsr <command> --help` explains each command.")
    commands = parser.add_subparsers(dest="command", required=True)

    sim = commands.add_parser("simulate", help="simulate events into a COCOA super-resolution ROOT file",
                              description="Simulate electron / photon showers in the COCOA calorimeter and write "
                              "Low_Tree (coarse cells with noise) and High_Tree (fine cells) to a ROOT file.")
    sim.add_argument("--gun", choices=["single-electron", "multi-particle"], default="single-electron",
                     help="single electron pT 50-51 GeV at eta~0, or an electron plus 0-3 nearby photons")
    sim.add_argument("--events", type=int, default=1000, help="number of events")
    sim.add_argument("--factor", type=int, default=2, help="fine cells per coarse cell per side (2 or 4)")
    sim.add_argument("--seed", type=int, default=0, help="random seed (same seed, same file)")
    sim.add_argument("--chunk", type=int, default=1000, help="events simulated and written at a time")
    sim.add_argument("--output", required=True, help="ROOT file to write")
    sim.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    sim.add_argument("--no-neighbour-branches", action="store_true",
                     help="leave out cell_to_cell_edge_start/_end (graphsr does not read them; ~2x faster)")
    sim.set_defaults(run=_simulate)

    summary = commands.add_parser("summary", help="build the graphs of a file and summarise them",
                                  description="Read a COCOA file, build the paired coarse / fine graphs of its ECAL "
                                  "cells, print statistics and write an event display and energy histograms.")
    summary.add_argument("--input", required=True, help="COCOA super-resolution ROOT file")
    summary.add_argument("--plot", default="reports/summary/event_display.png", help="event display to write")
    summary.add_argument("--cache", default="data/cache", help="where processed graphs are cached")
    summary.add_argument("--max-events", type=int, default=None, help="read at most this many events")
    summary.set_defaults(run=_summary)

    tr = commands.add_parser("train", help="train a super-resolution model",
                             description="Train the diffusion model that generates fine-cell energies from coarse "
                             "cells. Writes OUT/checkpoint.pt every validation step (atomically); --resume continues "
                             "a stopped run exactly.")
    tr.add_argument("--config", required=True, help="YAML config (see configs/)")
    tr.add_argument("--out", default="runs/model", help="run directory for the checkpoint")
    tr.add_argument("--data", nargs="+", help="training ROOT files (override the config's data.train)")
    tr.add_argument("--steps", type=int, help="override train.steps")
    tr.add_argument("--time-limit", type=float, help="stop and checkpoint after this many seconds")
    tr.add_argument("--device", help='"cpu", "cuda", "cuda:1" (default: the config, "auto")')
    tr.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    tr.set_defaults(run=_train)

    sa = commands.add_parser("sample", help="super-resolve the events of a COCOA file",
                             description="Generate the fine cells of every event of a COCOA file (Low_Tree + "
                             "High_Tree, or a plain Out_Tree with coarse cells only) and write them to a new ROOT "
                             "file: High_Tree cell_e is the ensemble mean and cell_e_spread its standard deviation "
                             "(MeV); Low_Tree holds the coarse cells used and the coarse -> fine mapping.")
    _add_sampling_options(sa)
    sa.add_argument("--input", required=True, help="COCOA ROOT file with the coarse cells")
    sa.add_argument("--output", required=True, help="ROOT file to write (refused if it exists)")
    sa.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    sa.add_argument("--max-events", type=int, help="super-resolve only the first events")
    sa.set_defaults(run=_sample)

    ev = commands.add_parser("evaluate", help="evaluate a model against the fine truth and baselines",
                             description="Super-resolve held-out events that have a fine truth (a High_Tree), "
                             "compare with the fine truth and with the coarse / even-split baselines, and write "
                             "OUT/metrics.json, OUT/report.md and PNG plots (distributions, shower shapes, "
                             "calibration, ensemble size, event displays).")
    _add_sampling_options(ev, ensemble_default=10)
    ev.add_argument("--input", required=True, help="COCOA super-resolution ROOT file (with High_Tree)")
    ev.add_argument("--out", default="reports/eval", help="report directory")
    ev.add_argument("--split", choices=["test", "all"], default="test",
                    help="test: the training run's held-out events when --input is its training file")
    ev.add_argument("--events", type=int, help="evaluate at most this many events")
    ev.add_argument("--regression", help="checkpoint of a regression baseline (diffusion.parameterisation: "
                    "regression) to compare with")
    ev.add_argument("--displays", type=int, default=2, help="event displays to draw")
    ev.add_argument("--calibration-events", type=int, default=100,
                    help="validation events used to calibrate the fused mode's spread scale")
    ev.set_defaults(run=_evaluate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (FileNotFoundError, FileExistsError, ValueError) as error:
        print(f"graphsr {args.command}: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
