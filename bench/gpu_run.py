"""The GPU run behind bench/gpu.sh: simulate, train the full-size single-electron model, distil it to one step, time
training and super-resolution, evaluate held-out events, keep slim checkpoints.

Targets (issue 13): >= 3,000 events/s trained and >= 10,000 single-electron events/s super-resolved with 4 network
evaluations and an ensemble of 10. Everything printed also goes to ``OUT/gpu_log.txt``; ``OUT/gpu_metrics.json``
holds the figures, ``OUT/teacher.pt`` and ``OUT/student.pt`` the EMA weights with everything sampling needs (no
optimiser state), ``OUT/history.csv`` the training history when the trainer writes one.

Usage: ``python bench/gpu_run.py --out reports/gpu [--device cuda] [--tiny]`` (``--tiny``: a few events and steps,
for a check of every step on any machine).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from graphsr.config import load_config
from graphsr.datasets import CocoaDataset
from graphsr.eval.evaluate import compute_metrics, generate
from graphsr.inference import SuperResolver, unseen_events
from graphsr.models.factory import graph_options
from graphsr.pipelines import distill, train  # each ends calibrated, as graphsr train / distill
from graphsr.training.checkpoint import slim_checkpoint


class Tee:
    """Print to the terminal and to the log file."""

    def __init__(self, path: Path):
        self.file = open(path, "w")

    def __call__(self, *parts):
        line = " ".join(str(p) for p in parts)
        print(line, flush=True)
        self.file.write(line + "\n")
        self.file.flush()


def simulate(job: tuple[str, int, int]) -> str:
    """One file of single electrons (a worker process's share)."""
    from graphsr.io import write_cocoa
    from graphsr.simulation import SingleElectronGun, simulate_events

    path, events, seed = job
    torch.set_num_threads(1)
    write_cocoa(path, simulate_events(SingleElectronGun(), events, factor=2, seed=seed, neighbour_branches=False))
    return path


def synchronize(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def throughput(resolver: SuperResolver, storage, events: torch.Tensor, ensemble: int) -> float:
    """Events per second super-resolved (sampling and decoding, ensemble of ``ensemble``), after a warm-up call."""
    chunks = resolver.chunks(storage, events, ensemble)
    resolver(storage, chunks[0][1], ensemble=ensemble)
    synchronize(resolver.device)
    start = time.perf_counter()
    for _, chunk in chunks:
        resolver(storage, chunk, ensemble=ensemble)
    synchronize(resolver.device)
    return len(events) / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="reports/gpu")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="a few events and steps (a check of every step)")
    parser.add_argument("--config", default="configs/single_electron_2x_gpu.yaml")
    parser.add_argument("--events", type=int, default=100_000, help="single electrons simulated for training")
    parser.add_argument("--train-seconds", type=float, default=210.0)
    parser.add_argument("--distill-seconds", type=float, default=35.0, help="per halving round")
    parser.add_argument("--timed-events", type=int, default=20_000, help="events super-resolved for the timing")
    parser.add_argument("--eval-events", type=int, default=1_000, help="held-out events evaluated per model")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--compile", action="store_true",
                        help="also time the teacher through torch.compile (graphsr.nn.use_compile)")
    args = parser.parse_args()
    if args.tiny:
        args.events, args.train_seconds, args.distill_seconds = 160, 5.0, 3.0
        args.timed_events, args.eval_events, args.workers = 6, 6, min(args.workers, 2)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = out / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    log = Tee(out / "gpu_log.txt")
    figures = {"device": args.device, "tiny": args.tiny, "torch": torch.__version__}

    def save_figures():  # after every stage: a run cut short still brings back what it measured
        figures["seconds"] = time.perf_counter() - started
        (out / "gpu_metrics.json").write_text(json.dumps(figures, indent=2, default=float))

    log(f"graphsr GPU run: device {args.device}, torch {torch.__version__}, {args.workers} CPU workers")
    started = time.perf_counter()

    # 1. simulate on the CPU cores, one file per worker
    shares = [args.events // args.workers + (i < args.events % args.workers) for i in range(args.workers)]
    jobs = [(str(work / f"e_{i}.root"), n, 1000 + i) for i, n in enumerate(shares) if n]
    t = time.perf_counter()
    with ProcessPoolExecutor(len(jobs)) as pool:
        files = list(pool.map(simulate, jobs))
    figures["simulation_events_per_s"] = args.events / (time.perf_counter() - t)
    log(f"simulated {args.events} events in {time.perf_counter() - t:.1f} s "
        f"({figures['simulation_events_per_s']:.0f} events/s on {len(jobs)} processes)")

    if torch.device(args.device).type == "cuda":  # CUDA only after the workers have forked
        figures["gpu"] = torch.cuda.get_device_name()
        log(f"GPU: {figures['gpu']}")

    # 2. graphs, then training (bf16 autocast on CUDA); the rate is the trainer's own, graph building excluded
    config = load_config(args.config)
    config.data.train, config.data.cache = files, str(work / "cache")
    config.train.device, config.train.time_limit = args.device, args.train_seconds
    if args.tiny:
        config.model.width, config.model.depth, config.train.batch_size = 16, 1, 16
        config.train.val_every, config.sample.calibration_events = 5, 8
        config.data.val_fraction = config.data.test_fraction = 0.1
    t = time.perf_counter()
    CocoaDataset(files, root=config.data.cache, options=graph_options(config), log=False)
    figures["graph_building_events_per_s"] = args.events / (time.perf_counter() - t)
    log(f"built the graphs in {time.perf_counter() - t:.1f} s ({figures['graph_building_events_per_s']:.0f} events/s)")
    result = train(config, work / "teacher", progress=False)
    figures["training"] = {"steps": result.step, "events_per_s": result.events_per_second,
                           "step_events_per_s": result.step_events_per_second,
                           "val_loss": result.val_loss, "seconds": args.train_seconds}
    log(f"trained {result.step} steps of {config.train.batch_size} events: {result.step_events_per_second:.0f} "
        f"events/s in the training steps ({result.events_per_second:.0f} with validation and checkpoints; target "
        f"3000), validation loss {result.val_loss:.4f}")
    slim_checkpoint(result.checkpoint, out / "teacher.pt")
    save_figures()

    # 3. distil to one network evaluation
    t = time.perf_counter()
    student_path = distill(result.checkpoint, work / "student", steps=10**9, time_limit=args.distill_seconds,
                           device=args.device)
    log(f"distilled to one step in {time.perf_counter() - t:.0f} s")
    slim_checkpoint(student_path, out / "student.pt")
    save_figures()

    # 4. super-resolution throughput and 5. evaluation, on events neither model saw
    teacher = SuperResolver(result.checkpoint, device=args.device)
    student = SuperResolver(student_path, device=args.device)
    dataset = CocoaDataset(files, root=config.data.cache, options=teacher.graph_options, log=False)
    held_out = unseen_events(teacher, dataset)[0]
    storage = dataset.storage()
    figures["held_out_events"] = len(held_out)
    timed = held_out[:args.timed_events]
    timings = [("teacher_4_evaluations", teacher), ("student_1_evaluation", student)]
    if args.compile:  # the warm-up call of throughput() compiles
        timings.append(("teacher_4_evaluations_compiled", SuperResolver(result.checkpoint, device=args.device,
                                                                        compile=True)))
    for name, resolver in timings:
        rate = throughput(resolver, storage, timed, 10)
        figures.setdefault("super_resolution_events_per_s", {})[name] = rate
        log(f"super-resolution, {name.replace('_', ' ')}, ensemble 10: {rate:.0f} events/s "
            f"({len(timed)} events; target 10000 with 4 evaluations)")
        save_figures()
    evaluated = held_out[-args.eval_events:]
    for name, resolver in (("teacher", teacher), ("student", student)):
        t = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # small-sample warnings of --tiny
            metrics = compute_metrics(generate(resolver, storage, evaluated, ensemble=10, progress=False))
        ev, cov = metrics["event"], metrics.get("coverage", {})
        figures.setdefault("evaluation", {})[name] = {
            "events": len(evaluated), "coarse_spread": ev["coarse"]["spread"], "sr_spread": ev["super_resolved"]["spread"],
            "ratio": ev["ratio"], "sr_bias": ev["super_resolved"]["bias"], "coverage": cov,
            "cell": {layer: {k: v[k]["rmse"] for k in ("super_resolved_mean", "even_split")}
                     for layer, v in metrics["cell"].items()},
            "classifier_auc": metrics["physics_distances"]["super_resolved_sample"]["classifier_auc"]}
        log(f"{name}: {len(evaluated)} held-out events, relative spread of the ECAL energy coarse "
            f"{ev['coarse']['spread']['value']:.4f} -> SR {ev['super_resolved']['spread']['value']:.4f} "
            f"(ratio {ev['ratio']:.3f}), bias {ev['super_resolved']['bias']['value']:+.4f} "
            f"± {ev['super_resolved']['bias']['error']:.4f}, 68% coverage: event "
            f"{cov.get('event_energy', {}).get('0.68', {}).get('value', float('nan')):.3f}, hit cells "
            f"{cov.get('hit_cells', {}).get('0.68', {}).get('value', float('nan')):.3f} ({time.perf_counter() - t:.0f} s)")
        save_figures()

    # 6. what comes back besides the slim checkpoints
    history = work / "teacher" / "history.csv"
    if history.exists():
        shutil.copy(history, out / "history.csv")
    save_figures()
    log(f"done in {figures['seconds']:.0f} s: {out}/gpu_metrics.json, teacher.pt, student.pt")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
