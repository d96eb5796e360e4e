"""The ``graphsr`` command line: ``graphsr <command> --help`` explains each command."""

from __future__ import annotations

import argparse
import os
import logging
import sys
from pathlib import Path

from graphsr import __version__


def _simulate(args):
    import numpy as np
    from tqdm import tqdm

    from graphsr.io import CocoaWriter
    from graphsr.provenance import provenance
    from graphsr.simulation import MultiParticleGun, SingleElectronGun, simulate_events

    gun = SingleElectronGun() if args.gun == "single-electron" else MultiParticleGun()
    # one independent, reproducible stream per chunk: the file does not depend on the chunk size's timing
    seeds = np.random.SeedSequence(args.seed).spawn(-(-args.events // args.chunk))
    settings = {"gun": args.gun, "factor": args.factor, "events": args.events, "chunk": args.chunk,
                "neighbour_branches": not args.no_neighbour_branches}
    if args.coarse_noise is not None:
        settings["coarse_noise"] = args.coarse_noise
    with CocoaWriter(args.output, overwrite=args.overwrite,
                     provenance=provenance("simulate", config=settings, seed=args.seed)) as writer, \
            tqdm(total=args.events, unit="event", desc=f"simulating {args.gun} x{args.factor}",
                 disable=None) as bar:
        for i, seed in enumerate(seeds):
            n = min(args.chunk, args.events - i * args.chunk)
            writer.write(simulate_events(gun, n, factor=args.factor, seed=np.random.default_rng(seed),
                                         neighbour_branches=not args.no_neighbour_branches,
                                         coarse_noise=args.coarse_noise))
            bar.update(n)
    print(f"wrote {args.events} events to {args.output}")


def _noise_list(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--coarse-noise takes comma-separated MeV values, got {text!r}") from None


def _summary(args):
    from graphsr.datasets import CocoaDataset
    from graphsr.datasets.summary import dataset_summary
    from graphsr.graphs import GraphOptions
    from graphsr.plotting import energy_histograms, event_display

    dataset = CocoaDataset([args.input], root=args.cache, options=GraphOptions(), max_events=args.max_events)
    n = dataset_summary(dataset)
    coarse, fine, e_coarse, e_fine = n["coarse_cells"], n["fine_cells"], n["coarse_energy"], n["fine_energy"]
    print(f"{args.input}: {n['events']} events with ECAL cells")
    print(f"  coarse ECAL cells per event: mean {coarse.mean():.1f}, sd {coarse.std():.1f}, "
          f"range {int(coarse.min())}-{int(coarse.max())}")
    print(f"  fine ECAL cells per event:   mean {fine.mean():.1f}, sd {fine.std():.1f}, "
          f"range {int(fine.min())}-{int(fine.max())}, {100 * n['fine_nonzero']:.0f}% nonzero")
    print(f"  fine edges per event: {n['fine_edges']:.0f}, coarse edges: {n['coarse_edges']:.0f}")
    print(f"  ECAL energy per event: coarse {e_coarse.mean():.2f} GeV, fine {e_fine.mean():.2f} GeV, "
          f"relative spread of coarse vs fine {((e_coarse - e_fine) / e_fine).std():.4f}")
    print(f"  coarse ECAL cells with empty children (noise only): {n['noise_only_cells']:.2f} per event, "
          f"{n['noise_only_energy']:.3f} GeV measured in them per event")
    data, plot = dataset.storage()[0], Path(args.plot)
    event_display(dataset[0], plot, title=f"{Path(args.input).name}, event {int(dataset[0].event)}")
    energy_histograms({"fine cells": data.fine_energy[data.fine_energy > 0].log10().numpy(),
                       "coarse cells": data.coarse_energy[data.coarse_energy > 0].log10().numpy()},
                      plot.with_name("cell_energies.png"), "log10(cell energy / GeV)")
    print(f"  plots: {plot} and {plot.with_name('cell_energies.png')}")


def _train(args):
    from graphsr.config import load_config
    from graphsr.pipelines import train

    config = load_config(args.config)
    overrides = {("data", "train"): args.data or None, ("train", "steps"): args.steps,
                 ("train", "device"): args.device or None, ("train", "time_limit"): args.time_limit,
                 ("model", "generator"): args.generator or None, ("train", "compile"): args.compile or None}
    for (section, key), value in overrides.items():  # the command line's values win over the config's
        if value is not None:
            setattr(getattr(config, section), key, value)
    result = train(config, args.out, resume=args.resume, stop_after=args.stop_after, overwrite=args.overwrite)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks for all
        print(f"checkpoint: {result.checkpoint} (step {result.step}, validation loss {result.val_loss:.4f}, "
              f"{result.events_per_second:.0f} events/s with validation and checkpoints, "
              f"{result.step_events_per_second:.0f} in the training steps alone)")


def _train_reco(args):
    from graphsr.eval.reco_report import cardinality_lines
    from graphsr.pipelines import train_reco
    from graphsr.reco import load_reco_config

    config = load_reco_config(args.config)
    if args.data:
        config.data.train = args.data
    if args.sr_files:
        config.sr_input.files = args.sr_files
    if args.sr_checkpoint:
        config.sr_input.checkpoint = args.sr_checkpoint
    for key in ("steps", "device", "time_limit"):
        if getattr(args, key) is not None:
            setattr(config.train, key, getattr(args, key))
    result = train_reco(config, args.input_type, args.out, resume=args.resume, overwrite=args.overwrite,
                        stop_after=args.stop_after)
    print(f"checkpoint: {result.checkpoint} (step {result.step}, validation loss {result.val_loss:.4f}, "
          f"cardinality accuracy {result.val_accuracy:.3f})")
    test = result.test
    if test is None:  # paused by --stop-after
        return
    print("\n".join(cardinality_lines(f"{test['events']} held-out test events ({args.input_type} cells), accuracy "
                                       "per true count:", {"learned": test["learned"],
                                                           "hand clustering": test["hand_clustering"]})))


def _plot_history(args):
    from graphsr.plotting import history_plot
    from graphsr.training.history import read_history

    rows = read_history(args.run_dir)
    run = Path(args.run_dir)
    out = Path(args.output or (run if run.is_dir() else run.parent) / "history.png")
    history_plot(rows, out)
    validations = [r for r in rows if r["val_loss"] is not None]
    last = f", last validation loss {validations[-1]['val_loss']:.4f} at step {validations[-1]['step']}" \
        if validations else ""
    print(f"{len(rows)} steps{last}: {out}")


def _resolver(args):
    """The checkpoint's model, with the command line's sampler settings that are not per call."""
    from graphsr.inference import load_resolver

    resolver = load_resolver(args.checkpoint, device=args.device, generator=args.generator, compile=args.compile)
    if args.eta is not None:
        resolver.config.sample.eta = args.eta
    return resolver


def _sample(args):
    import glob

    from graphsr.pipelines.super_resolve import expand_inputs, super_resolve_file, super_resolve_files

    inputs = expand_inputs(args.input)
    # several inputs (or a pattern, or a directory as --output): --output is a directory, one file per input
    sharded = len(args.input) > 1 or any(map(glob.has_magic, args.input)) or Path(args.output).is_dir()
    resolver = _resolver(args)
    options = dict(overwrite=args.overwrite, max_events=args.max_events, sampler=args.sampler, steps=args.steps,
                   ensemble=args.ensemble, seed=args.seed, mode=args.mode, calibrated=not args.uncalibrated)
    written = super_resolve_files(resolver, inputs, args.output, **options) if sharded else \
        {args.output: super_resolve_file(resolver, inputs[0], args.output, **options)}
    for path, n in written.items():
        print(f"wrote {n} super-resolved events to {path}")


def _evaluate(args):
    from graphsr.pipelines.evaluate import Sampling, evaluate

    sampling = Sampling(ensemble=args.ensemble, sampler=args.sampler, steps=args.steps, seed=args.seed,
                        mode=args.mode, calibrated=not args.uncalibrated)
    results, report = evaluate(_resolver(args), args.input, args.out, sampling=sampling, split=args.split,
                               events=args.events, compare=args.compare, regression=args.regression,
                               reco=args.reco or (), shifted=args.shifted_inputs, displays=args.displays,
                               device=args.device, echo=print)
    out = Path(args.out)
    ev = results["event"]
    print(f"headline: relative spread of the event ECAL energy against the fine truth: coarse "
          f"{ev['coarse']['spread']['value']:.4f}, super-resolved (mean of {args.ensemble}) "
          f"{ev['super_resolved']['spread']['value']:.4f}, ratio {ev['ratio']:.2f} (published 0.0057 -> 0.0034, 0.60); "
          f"bias coarse {ev['coarse']['bias']['value']:+.4f}, super-resolved {ev['super_resolved']['bias']['value']:+.4f}"
          f" ± {ev['super_resolved']['bias']['error']:.4f}")
    if "coverage" in results:
        cov = results["coverage"]
        print(f"coverage of the 68% intervals: event energy {cov['event_energy']['0.68']['value']:.3f}, coarse cells "
              f"{cov['coarse_cells']['0.68']['value']:.3f}, hit fine cells {cov['hit_cells']['0.68']['value']:.3f}")
    cell = results["cell"].get("ECAL2", next(iter(results["cell"].values())))
    print("per-cell RMSE (ECAL2, GeV): " + ", ".join(f"{name} {v['rmse']['value']:.4f}" for name, v in cell.items()
                                                     if name != "truth"))
    if args.reco:
        from graphsr.eval.reco_report import cardinality_lines, report_rows

        print("\n".join(cardinality_lines(f"particle counting on {results['reco']['events']} events, accuracy per "
                                           "true count:", report_rows(results["reco"]))))
    print(f"report: {report} (metrics: {out / 'metrics.json'})")


def _distill(args):
    from graphsr.pipelines import distill

    from graphsr.training.checkpoint import load_checkpoint

    path = distill(args.checkpoint, args.out, rounds=args.rounds, teacher_steps=args.teacher_steps, steps=args.steps,
                   time_limit=args.time_limit, device=args.device, batch_size=args.batch_size, resume=args.resume,
                   overwrite=args.overwrite, stop_after=args.stop_after)
    run = load_checkpoint(path).get("distill_run") or {}
    if run.get("complete", True):
        print(f"student: {path} (sample it like any checkpoint: `graphsr sample --checkpoint {path} ...`)")
    else:
        print(f"stopped in round {run['round'] + 1} of {run['rounds']} at optimiser step {run['step']}: {path} "
              "(`graphsr distill ... --resume` continues)")


def _calibrate(args):
    from graphsr.inference import occupancy_text
    from graphsr.pipelines import calibrate
    from graphsr.training.checkpoint import load_checkpoint

    calibration = calibrate(args.checkpoint, events=args.events, device=args.device, ensemble=args.ensemble,
                            sampler=args.sampler, steps=args.steps, eta=args.eta)
    replaced = len(load_checkpoint(args.checkpoint).get("replaced_calibrations", []))
    eta = f" (eta {calibration['eta']:g})" if calibration["eta"] is not None else ""
    print(f"calibrated on {calibration['events']} validation events, {calibration['sampler']} {calibration['steps']} "
          f"steps{eta}, ensembles of {calibration['ensemble']} (now the checkpoint's sampling defaults): spread "
          f"factors coarse {calibration['coarse']:.2f}, fine {calibration['fine']:.2f}; 68% coverage of the event energy "
          f"{calibration['coverage']['event_before']:.3f} -> {calibration['coverage']['event_after']:.3f}, of hit "
          f"cells {calibration['coverage']['cells_before']:.3f} -> {calibration['coverage']['cells_after']:.3f}; "
          f"{occupancy_text(calibration)}; written to {args.checkpoint}" +
          (f" (the {replaced} calibration(s) it replaced are kept in it, under 'replaced_calibrations')"
           if replaced else ""))


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
    parser.add_argument("--mode", choices=["posterior", "conserving"],
                        help="posterior: each parent's children sum to a sample of its true total given the "
                        "measurement; conserving: to the measurement itself (default: the checkpoint's)")
    parser.add_argument("--uncalibrated", action="store_true",
                        help="leave out the checkpoint's post-hoc spread calibration (raw ensemble)")
    parser.add_argument("--generator", choices=["dense", "pyramid", "boosted"],
                        help="the generator the checkpoint must have been trained with (default: whichever it was)")
    parser.add_argument("--device", default="auto", help='"cpu", "cuda", ... (default: CUDA if present)')
    parser.add_argument("--compile", action="store_true",
                        help="run the network through torch.compile: several times faster on many events, after a "
                        "first call of tens of seconds (docs/usage.md)")


def _add_run_dir_options(parser):
    """--resume / --overwrite: a command that trains into a run directory refuses one that holds a run without
    either."""
    either = parser.add_mutually_exclusive_group()
    either.add_argument("--resume", action="store_true", help="continue the run in OUT from OUT/checkpoint.pt")
    either.add_argument("--overwrite", action="store_true",
                        help="replace the run in OUT (its checkpoint and history are deleted first)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="graphsr", description="Graph super-resolution of COCOA calorimeter events: simulate events, train a "
        "diffusion model that generates fine cells from coarse ones, super-resolve files. Typical order: simulate -> "
        "summary -> train -> sample. `graphsr <command> --help` explains each command.")
    parser.add_argument("--version", action="version", version=f"graphsr {__version__}")
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
    sim.add_argument("--coarse-noise", type=_noise_list, default=None, metavar="MEV,...",
                     help="noise sigma of the coarse cells, one per layer (default: the fine sigma x --factor, as "
                     "COCOA's SR configs; the published single-electron set looks made with 13,34,41,75,50,25: "
                     "data/README.md)")
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
    tr.add_argument("--compile", action="store_true", help="set train.compile: the network through torch.compile "
                    "(faster after a first call of tens of seconds: docs/usage.md)")
    _add_run_dir_options(tr)
    tr.add_argument("--stop-after", type=int, help="leave (with a checkpoint) after this many steps, e.g. to fit a "
                    "batch-queue slot; --resume goes on as if the run had not stopped")
    tr.add_argument("--generator", choices=["dense", "pyramid", "boosted"],
                    help="override model.generator: dense (every child of every coarse cell), pyramid (which "
                    "children are hit, then energies on the hits only; the config's pyramid section) or boosted "
                    "(gradient-boosted trees, with diffusion.parameterisation: cfm; the config's boosted section)")
    tr.set_defaults(run=_train)

    reco = commands.add_parser("train-reco", help="train a particle-flow model (particle count and kinematics)",
                               description="Train the learned particle-flow model (graphsr.reco) on one input type: "
                               "coarse cells, fine truth, or super-resolved cells (`graphsr sample` of the config's "
                               "data.train, made by an SR model that never trained on them: see "
                               "graphsr/reco/training.py). Writes OUT/checkpoint.pt and OUT/test_metrics.json (the "
                               "held-out events, beside the hand-written clustering).")
    reco.add_argument("--config", required=True, help="YAML config (see configs/reco/)")
    reco.add_argument("--input-type", required=True, choices=["coarse", "truth", "sr"], help="the cells it learns from")
    reco.add_argument("--out", default="runs/reco", help="run directory for the checkpoint")
    reco.add_argument("--data", nargs="+", help="ROOT files of the events (override the config's data.train)")
    reco.add_argument("--sr-files", nargs="+", help="`graphsr sample` of --data (override sr_input.files)")
    reco.add_argument("--sr-checkpoint", help="the SR checkpoint that made --sr-files (override sr_input.checkpoint)")
    reco.add_argument("--steps", type=int, help="override train.steps")
    reco.add_argument("--time-limit", type=float, help="stop and checkpoint after this many seconds")
    reco.add_argument("--device", help='"cpu", "cuda", "cuda:1" (default: the config, "auto")')
    reco.add_argument("--stop-after", type=int, help="leave (with a checkpoint) after this many steps; --resume goes "
                      "on as if the run had not stopped")
    _add_run_dir_options(reco)
    reco.set_defaults(run=_train_reco)

    ph = commands.add_parser("plot-history", help="draw the loss curves of a training run",
                             description="Plot RUN/history.csv (written by `graphsr train`: every step's training "
                             "loss and learning rate, every validation loss) to a PNG.")
    ph.add_argument("--run", dest="run_dir", required=True, help="run directory (or its history.csv)")
    ph.add_argument("--output", help="PNG to write (default: RUN/history.png)")
    ph.set_defaults(run=_plot_history)

    sa = commands.add_parser("sample", help="super-resolve the events of a COCOA file",
                             description="Generate the fine cells of every event of a COCOA file (Low_Tree + "
                             "High_Tree, or a plain Out_Tree with coarse cells only) and write them to a new ROOT "
                             "file: High_Tree cell_e is the point estimate (per coarse cell, the members' average "
                             "number of hit children, those of highest median over the members, keeping the "
                             "parent's mean total), cell_e_mean the ensemble mean and cell_e_spread its standard "
                             "deviation (MeV); Low_Tree keeps every branch of the input's coarse tree, for the "
                             "coarse cells used, and the coarse -> fine mapping. Warns about events outside the "
                             "model's training range.")
    _add_sampling_options(sa)
    sa.add_argument("--input", required=True, nargs="+", help="COCOA ROOT file(s) with the coarse cells, or glob "
                    "patterns (quoted: 'data/run_*.root')")
    sa.add_argument("--output", required=True, help="ROOT file to write (refused if it exists); with several inputs "
                    "or a pattern (or an existing directory), a directory (created if missing) that gets one file per "
                    "input, of the same name; nothing is written if any output exists (without --overwrite)")
    sa.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    sa.add_argument("--max-events", type=int, help="super-resolve only the first events (of each input)")
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
                    help="test: the events of a training file (recognised by its content hash) that the model "
                    "neither trained nor validated on; all: every event of a file the model never saw. Anything "
                    "else is refused.")
    ev.add_argument("--events", type=int, help="evaluate at most this many events")
    ev.add_argument("--regression", help="checkpoint of a regression baseline (diffusion.parameterisation: "
                    "regression) to compare with")
    ev.add_argument("--reco", nargs="+", help="checkpoints of `graphsr train-reco` (any input types) to evaluate "
                    "downstream; they must not have trained on --input's events")
    ev.add_argument("--displays", type=int, default=2, help="event displays to draw")
    ev.add_argument("--compare", help="checkpoint of another generator (e.g. the pyramid against the dense one) "
                    "trained on the same file: evaluated on the same events, its figures side by side in the report")
    ev.add_argument("--shifted-inputs", type=int, default=0,
                    help="also simulate this many single electrons of pT 30 and 80 GeV and of |eta| 0.4-0.6 and "
                    "report how the model does on them (for models trained on the default single electrons)")
    ev.set_defaults(run=_evaluate)

    di = commands.add_parser("distill", help="distil a trained checkpoint into a few-step (down to one-step) student",
                             description="Progressive distillation (Salimans and Ho 2022): each round trains a "
                             "student to take one deterministic DDIM step where its teacher takes two, starting from "
                             "the teacher's weights; rounds halve the steps down to one by default. The student's "
                             "checkpoint stores its sampling grid and is used like any other; its spread calibration "
                             "is refitted on validation events at the end.")
    di.add_argument("--checkpoint", required=True, help="teacher checkpoint (graphsr train, or an earlier student)")
    di.add_argument("--out", required=True, help="run directory of the student")
    di.add_argument("--rounds", type=int, help="halvings (default: down to one step)")
    di.add_argument("--teacher-steps", type=int,
                    help="the teacher samples with this many DDIM steps (default: its config's); e.g. 32 with "
                    "--rounds 3 gives a 4-step student of the 32-step sampler")
    di.add_argument("--steps", type=int, default=500, help="optimiser steps per round")
    di.add_argument("--batch-size", type=int, help="events per batch (default: the teacher's config)")
    di.add_argument("--time-limit", type=float, help="seconds per round at most")
    di.add_argument("--device", default="auto", help='"cpu", "cuda", ... (default: CUDA if present)')
    di.add_argument("--stop-after", type=int, help="leave (with a checkpoint) after this many optimiser steps; "
                    "--resume goes on as if the run had not stopped")
    _add_run_dir_options(di)
    di.set_defaults(run=_distill)

    ca = commands.add_parser("calibrate", help="refit a checkpoint's post-hoc spread and occupancy calibration",
                             description="Fit the factors that widen (or narrow) the ensemble around its mean so "
                             "that central intervals cover their nominal fraction of the truth, on the checkpoint's "
                             "validation events, and the per-layer factors on the written estimate's count of hit "
                             "children that give it the truth's number of hits (occupancy), and write them into the "
                             "checkpoint (`graphsr train` does this at the end of training). The factors hold for "
                             "one sampler, step count and ensemble size: those given here become the checkpoint's "
                             "sampling defaults.")
    ca.add_argument("--checkpoint", required=True, help="checkpoint written by `graphsr train`")
    ca.add_argument("--events", type=int, default=200, help="validation events to use")
    ca.add_argument("--ensemble", type=int, help="ensemble size to calibrate for (default: the checkpoint's)")
    from graphsr.diffusion import SAMPLERS

    ca.add_argument("--sampler", choices=sorted(SAMPLERS),
                    help="sampler to calibrate for (default: the checkpoint's)")
    ca.add_argument("--steps", type=int, help="sampling steps to calibrate for (default: the checkpoint's)")
    ca.add_argument("--eta", type=float, help="ddim stochasticity to calibrate for (default: the checkpoint's)")
    ca.add_argument("--device", default="auto", help='"cpu", "cuda", ... (default: CUDA if present)')
    ca.set_defaults(run=_calibrate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # the library reports through logging (graphsr.*); the command line shows it
    logger = logging.getLogger("graphsr")
    if not logger.handlers:
        logger.addHandler(logging.StreamHandler())
        logger.setLevel(logging.INFO)
    try:
        args.run(args)
    except (FileNotFoundError, FileExistsError, ValueError) as error:
        print(f"graphsr {args.command}: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
