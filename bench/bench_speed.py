"""Denoiser speed, the fast path against the reference implementation in one process, beside the core's matmul
peak measured in the same process.

Reference: what graphsr ran before the fast path (edge networks on every edge, modulation gathered per node, eager
with torch-scatter). Fast: the edge networks on the distinct relative positions, one modulation row when every event
has the same noise level, the backbone through ``torch.compile`` (``graphsr.nn.use_compile``) with the softmax
maxima over rank tables (``graphsr.ops.segment_rank``). Both run the same
weights (the demo config's sizes, perturbed from a 2-step training so that no gate is zero) and the outputs are
compared. Rows: one denoiser evaluation (1 / 16 / 64 events x ensemble 10), ``SuperResolver`` on 64 events (ensemble
10, 4 DDIM steps: events/s, and events/s per GFLOP/s of matmul peak) and the training steps' own rate (forward,
backward, clipping, optimiser and EMA steps of the demo's batch size; the reference with torch's default AdamW and
a per-parameter EMA), each at 1 and 2 threads. The first compiled calls of each kind (tens of seconds) are reported
apart and left out of the rates. The two implementations take turns, ``--rounds`` times each, and each row keeps
the fastest round of each: on a shared machine, a neighbour's burst then slows one round, not one side.

Usage: ``python bench/bench_speed.py [--config configs/single_electron_2x.yaml] [--threads 1 2] [--rounds 3]
[--json reports/speed/speed.json]`` (about 10 minutes on 2 cores); ``bench/results_page.py`` puts a ``speed.json``
under ``reports/`` on docs/results.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch.optim.swa_utils import AveragedModel

from graphsr.config import load_config
from graphsr.graphs import collate_events
from graphsr.inference import SuperResolver
from graphsr.io import write_cocoa
from graphsr.models.factory import build_loss
from graphsr.models.sr3 import add_inputs, state_batch
from graphsr.nn import CellTransformer, GraphTransformer, use_compile
from graphsr.simulation import SingleElectronGun, simulate_events
from graphsr.training.checkpoint import load_checkpoint, save_checkpoint
from graphsr.training.loop import ExponentialAverage, adamw, optimiser_step
from graphsr.training.trainer import fit_energy_model, load_splits, train


def reference(model: torch.nn.Module, enabled: bool) -> None:
    """Switch a model's backbones to the reference implementation (``enabled``) or to the fast path."""
    for module in model.modules():
        if isinstance(module, (GraphTransformer, CellTransformer)):
            module.per_offset = module.share_modulation = module.rank_tables = module.fused_attention = not enabled
    use_compile(model, not enabled)


def matmul_peak(repeats: int = 5) -> dict:
    """GFLOP/s of a large square matmul and of the denoiser's typical [20000 x 32] @ [32 x 128]."""
    out = {}
    for name, (m, k, n) in {"2048^3": (2048, 2048, 2048), "20000x32x128": (20000, 32, 128)}.items():
        a, b = torch.randn(m, k), torch.randn(k, n)
        a @ b
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        out[name] = 2 * m * k * n * repeats / (time.perf_counter() - start) / 1e9
    return out


def alternating(run: dict, rounds: int) -> dict:
    """The fastest of ``rounds`` timings of each ``run[name]()``, the names taking turns."""
    best = {name: float("inf") for name in run}
    for _ in range(rounds):
        for name, fn in run.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def checkpoint(config_path: str, folder: Path) -> tuple[Path, object]:
    """A checkpoint of the config's sizes on simulated events: 2 training steps, then every weight perturbed."""
    data = folder / "events.root"
    write_cocoa(data, simulate_events(SingleElectronGun(), 800, factor=2, seed=11))
    config = load_config(config_path)
    config = replace(config, data=replace(config.data, train=[str(data)], cache=str(folder / "cache")),
                     train=replace(config.train, steps=2, val_every=2, time_limit=None, device="cpu"))
    train(config, folder / "run", progress=False)
    state = load_checkpoint(folder / "run" / "checkpoint.pt")
    generator = torch.Generator().manual_seed(0)
    for key in ("model", "ema"):
        for name, value in state[key].items():
            if value.is_floating_point() and value.dim() > 0:
                value += 0.05 * torch.randn(value.shape, generator=generator)
    save_checkpoint(state, folder / "run" / "checkpoint.pt")
    return folder / "run" / "checkpoint.pt", config


def denoiser_rows(resolver: SuperResolver, test, threads: int, rounds: int) -> list[dict]:
    rows = []
    for events in (1, 16, 64):
        batch = add_inputs(collate_events(*test.storage(), torch.as_tensor(test.indices()[:events]).repeat(10)),
                           resolver.factor)
        nodes = state_batch(batch)
        x = torch.randn(nodes.numel(), 1, generator=torch.Generator().manual_seed(1))
        sigma = torch.full((batch.num_graphs,), 0.7)
        out, prepared, first = {}, {}, 0.0
        with torch.no_grad():
            for name in ("reference", "fast"):
                reference(resolver.denoiser, name == "reference")
                prepared[name] = resolver.denoiser.prepare(batch)
                start = time.perf_counter()
                out[name] = resolver.denoiser(x, sigma, nodes, data=batch, prepared=prepared[name])
                first = time.perf_counter() - start if name == "fast" else first

            def evaluation(name):
                def run():
                    reference(resolver.denoiser, name == "reference")
                    resolver.denoiser(x, sigma, nodes, data=batch, prepared=prepared[name])
                return run
            seconds = alternating({name: evaluation(name) for name in ("reference", "fast")}, 3 * rounds)
        rows.append({"row": f"denoiser, {events} events x 10", "threads": threads,
                     "reference_ms": 1000 * seconds["reference"], "fast_ms": 1000 * seconds["fast"],
                     "speedup": seconds["reference"] / seconds["fast"], "first_call_s": first,
                     "max_abs_difference": float((out["reference"] - out["fast"]).abs().max())})
    return rows


def resolver_row(resolver: SuperResolver, test, threads: int, peak: float, rounds: int) -> dict:
    events = torch.as_tensor(test.indices()[:64])
    settings = dict(sampler="ddim", steps=4, ensemble=10, seed=3, calibrated=False)
    out, first = {}, 0.0
    for name in ("reference", "fast"):
        reference(resolver.denoiser, name == "reference")
        start = time.perf_counter()
        resolver(test.storage(), events[:8], **settings)  # the compiled code for every chunk shape comes later
        first = time.perf_counter() - start if name == "fast" else first

    def resolve(name):
        def run():
            reference(resolver.denoiser, name == "reference")
            out[name] = resolver(test.storage(), events, **settings)["samples"]
        return run
    seconds = alternating({name: resolve(name) for name in ("reference", "fast")}, rounds)
    rate = {name: len(events) / seconds[name] for name in seconds}
    return {"row": "SuperResolver, 64 events, ensemble 10, 4 DDIM steps", "threads": threads,
            "reference_events_per_s": rate["reference"], "fast_events_per_s": rate["fast"],
            "speedup": rate["fast"] / rate["reference"], "reference_per_gflops": rate["reference"] / peak,
            "fast_per_gflops": rate["fast"] / peak, "first_call_s": first,
            "max_abs_difference_gev": float((out["reference"] - out["fast"]).abs().max())}


def training_row(resolver: SuperResolver, config, train_set, threads: int, rounds: int, steps: int = 16,
                 warmup: int = 3) -> dict:
    """Whole optimiser steps (forward, backward, clipping, AdamW, EMA) of the demo's batch size. The reference
    runs torch's default AdamW, ``clip_grad_norm_`` and a per-parameter EMA as before; the fast path the loop's own
    (``optimiser_step``: fused AdamW, multi-tensor clipping and EMA)."""
    energy_model = fit_energy_model(train_set, "shares")
    loss_fn = build_loss(config)
    size = config.train.batch_size
    batches = [collate_events(*train_set.storage(), torch.as_tensor(train_set.indices()[i * size:(i + 1) * size]))
               for i in range(steps + warmup)]
    model = resolver.denoiser.train()
    first, steppers = 0.0, {}
    for name in ("reference", "fast"):
        if name == "reference":
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
            ema = AveragedModel(model, avg_fn=lambda a, c, n: 0.999 * a + 0.001 * c)
        else:
            optimizer, ema = adamw(model.parameters(), 1e-4, 0.0), ExponentialAverage(model, 0.999)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 1.0)
        generator = torch.Generator().manual_seed(0)

        def steps_of(name, optimizer, scheduler, ema, generator):
            def run(chosen=batches[warmup:]):
                reference(model, name == "reference")
                for batch in chosen:
                    loss = model.loss(loss_fn, batch, generator, resolver.factor, energy_model=energy_model)
                    if name == "fast":
                        optimiser_step(loss, model, optimizer, scheduler, ema, 1.0)
                        continue
                    optimizer.zero_grad(set_to_none=True)  # the step as graphsr took it before
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                    optimizer.step()
                    scheduler.step()
                    ema.update_parameters(model)
            return run
        steppers[name] = steps_of(name, optimizer, scheduler, ema, generator)
        start = time.perf_counter()
        steppers[name](batches[:warmup])  # the compiled code of the first batch shapes
        first = time.perf_counter() - start if name == "fast" else first
    seconds = alternating(steppers, rounds)
    rate = {name: steps * size / seconds[name] for name in seconds}
    model.eval()
    return {"row": f"training steps, batch {size}", "threads": threads, "reference_events_per_s": rate["reference"],
            "fast_events_per_s": rate["fast"], "speedup": rate["fast"] / rate["reference"], "first_call_s": first}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/single_electron_2x.yaml")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=3, help="turns of each implementation per row")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        path, config = checkpoint(args.config, Path(folder))
        train_set, _, test = load_splits(config)
        resolver = SuperResolver(path, device="cpu")
        for threads in args.threads:
            torch.set_num_threads(threads)
            peak = matmul_peak()
            print(f"{threads} thread(s): matmul peak {peak['2048^3']:.0f} GFLOP/s (2048^3), "
                  f"{peak['20000x32x128']:.0f} GFLOP/s ([20000x32]@[32x128])", flush=True)
            for row in [*denoiser_rows(resolver, test, threads, args.rounds),
                        resolver_row(resolver, test, threads, peak["2048^3"], args.rounds),
                        training_row(resolver, config, train_set, threads, args.rounds)]:
                row["matmul_peak_gflops"] = peak["2048^3"]
                rows.append(row)
                print("  " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                       for k, v in row.items() if k != "matmul_peak_gflops"), flush=True)
    if args.json:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "graphsr", "bench"], capture_output=True,
                               text=True).stdout.strip()
        header = (f"{args.config}'s model sizes on `{platform.processor() or platform.machine()}` "
                  f"({torch.backends.cpu.get_cpu_capability()}), torch {torch.__version__}; commit {commit}"
                  f"{' (with uncommitted changes)' if dirty else ''}; best of {args.rounds} alternating rounds; "
                  f"`python {' '.join(shlex.quote(a) for a in sys.argv)}`")
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"header": header, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
