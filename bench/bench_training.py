"""Training throughput: events per second of the full training step (forward, backward, AdamW, EMA) per config.

Runs ``graphsr.training.train`` for a few steps on simulated events and reports the steady rate (the first steps,
with the allocator warming up, are left out by timing two runs of different length). Usage:
``python bench/bench_training.py [--configs configs/single_electron_2x.yaml ...] [--device cpu] [--steps 40]``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from graphsr.config import load_config
from graphsr.io import write_cocoa
from graphsr.simulation import MultiParticleGun, SingleElectronGun, simulate_events
from graphsr.training.trainer import train


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["configs/single_electron_2x.yaml",
                                                         "configs/multi_particle_4x.yaml",
                                                         "configs/multi_particle_4x_large.yaml"])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=40, help="timed steps (after as many warm-up steps / 4)")
    parser.add_argument("--events", type=int, default=1000, help="events simulated per dataset")
    args = parser.parse_args()
    print(f"torch threads {torch.get_num_threads()}, device {args.device}")
    print(f"{'config':<36} {'width':>5} {'depth':>5} {'batch':>5} {'params':>8} {'ms/step':>8} {'events/s':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        files = {}
        for config_path in args.configs:
            config = load_config(config_path)
            multi = "multi" in Path(config.data.train[0]).name
            if multi not in files:
                files[multi] = Path(tmp) / f"{'multi' if multi else 'single'}.root"
                gun, factor = (MultiParticleGun(), 4) if multi else (SingleElectronGun(), 2)
                write_cocoa(files[multi], simulate_events(gun, args.events, factor=factor, seed=0,
                                                          neighbour_branches=False))
            config.data.train, config.data.cache = [str(files[multi])], str(Path(tmp) / "cache")
            config.train.device, config.train.time_limit = args.device, None
            config.train.val_every = 10**9  # one validation at the end, on a small split
            config.data.val_fraction = config.data.test_fraction = 0.02
            rates = []
            for steps in (args.steps // 4, args.steps // 4 + args.steps):
                config.train.steps = steps
                result = train(config, Path(tmp) / f"run{steps}", progress=False)
                rates.append((steps, steps * config.train.batch_size / result.events_per_second))
            (n0, t0), (n1, t1) = rates
            seconds_per_step = (t1 - t0) / (n1 - n0)
            params = sum(p.numel() for p in torch.load(result.checkpoint, weights_only=True)["model"].values())
            print(f"{Path(config_path).name:<36} {config.model.width:>5} {config.model.depth:>5} "
                  f"{config.train.batch_size:>5} {params:>8} {1000 * seconds_per_step:>8.1f} "
                  f"{config.train.batch_size / seconds_per_step:>9.1f}", flush=True)


if __name__ == "__main__":
    main()
