"""Simulator throughput: events per second for both guns, split into showering, cells + clustering, and writing.

Target (issues 2 and 9): >= 1000 single-electron 2x events/s on one core with COCOA's full branch set ("full"); "no-edges" leaves out the cell neighbour branches. Usage: ``python bench/bench_simulator.py [--events N]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from graphsr.io import write_cocoa
from graphsr.simulation import MultiParticleGun, SingleElectronGun, simulate_events, simulate_showers


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2000)
    args = parser.parse_args()
    print(f"{'gun':<16} {'factor':>6} {'showers evt/s':>14} {'full evt/s':>11} {'no-edges evt/s':>15} "
          f"{'write evt/s':>12} {'MB/1k evt':>10}")
    for name, gun, factor in (("single-electron", SingleElectronGun(), 2), ("multi-particle", MultiParticleGun(), 4)):
        particles = gun.sample(args.events, np.random.default_rng(0))
        simulate_events(gun, 50, factor=factor, seed=0)  # warm-up of the showers and of the rest, untimed
        _, t_showers = timed(lambda: simulate_showers(particles, np.random.default_rng(0)))
        events, t_full = timed(lambda: simulate_events(gun, args.events, factor=factor, seed=1))
        _, t_lean = timed(lambda: simulate_events(gun, args.events, factor=factor, seed=1, neighbour_branches=False))
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "bench.root"
            _, t_write = timed(lambda: write_cocoa(path, events))
            size = path.stat().st_size / 1e6
        n = args.events
        print(f"{name:<16} {factor:>6} {n / t_showers:>14.0f} {n / t_full:>11.0f} {n / t_lean:>15.0f} {n / t_write:>12.0f} "
              f"{1000 * size / n:>10.2f}")


if __name__ == "__main__":
    main()
