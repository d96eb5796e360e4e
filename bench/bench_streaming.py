"""Memory of `graphsr simulate`, `sample` and `evaluate` on a large single-electron file: flat over time, and not
growing with the file.

Each command runs as a subprocess while a thread samples the resident memory (RSS) of it and its children every
0.2 s (psutil). Reported per command: the peak RSS and the RSS at 10%, 50% and 90% of its run time, in a table and in
JSON, and the peak in each fifth of the run (a growth over time would show there). The commands:

1. ``graphsr simulate`` of ``--events`` single electrons (default 1,000,000; ``--no-neighbour-branches``, as
   graphsr reads no neighbour branches; chunks of 1,000 events) -> the large file; and of ``--small-events``
   (default 10,000) -> the small file, with the same settings.
2. A model: ``--checkpoint`` (``pretrained`` is the shipped one), or by default a tiny one trained for
   ``--train-seconds`` on 2,000 other events (a separate file, so both files are unseen: ``--split all``).
3. ``graphsr sample --max-events`` (``--sample-events``) on the large and on the small file: the same events, so any
   difference in peak RSS comes from the file's size.
4. ``graphsr evaluate --events`` (``--eval-events``, default 200) on the large and on the small file, and 5x as
   many events on the large file: how much its memory grows per scored event.

Sampling every event of a 1M file takes hours on a CPU (about 0.2 s per event for the pretrained model with an
ensemble of 2), so sample and evaluate run on the first events of it: what is checked is that their memory does not
depend on how large the file is (and stays flat as the events stream through).

Usage: ``python bench/bench_streaming.py [--events 1000000] [--small-events 10000] [--out data/bench_streaming]
[--json reports/bench_streaming.json]``. Needs a few GB of disk (about 3.4 kB per event).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import yaml

GRAPHSR = [sys.executable, "-m", "graphsr"]


def tree_rss(process: psutil.Process) -> int:
    """Resident bytes of a process and all its descendants."""
    total = 0
    for p in [process, *process.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def run_sampled(name: str, command: list[str], interval: float = 0.2) -> dict:
    """Run ``command``, sampling its RSS every ``interval`` seconds; the peak and the RSS at 10/50/90% of the run."""
    print(f"[{name}] {' '.join(command[2:])}", flush=True)
    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    process, trace = psutil.Process(child.pid), []

    def poll():
        while child.poll() is None:
            try:
                trace.append((time.perf_counter() - started, tree_rss(process)))
            except psutil.NoSuchProcess:
                return
            time.sleep(interval)

    sampler = threading.Thread(target=poll, daemon=True)
    sampler.start()
    output = child.communicate()[0]
    sampler.join()
    seconds = time.perf_counter() - started
    if child.returncode != 0:
        raise RuntimeError(f"{name} failed ({child.returncode}):\n{output[-3000:]}")
    mb = lambda b: round(b / 2**20, 1)  # noqa: E731

    def at(fraction):
        return mb(min(trace, key=lambda s: abs(s[0] - fraction * seconds))[1]) if trace else None

    fifths = [[r for t, r in trace if k * seconds / 5 <= t < (k + 1) * seconds / 5] for k in range(5)]
    return {"command": " ".join(command[2:]), "seconds": round(seconds, 1), "samples": len(trace),
            "peak_mb": mb(max(r for _, r in trace)) if trace else None,
            "peak_by_fifth_mb": [mb(max(f)) if f else None for f in fifths],  # a trend would show here
            "rss_10_mb": at(0.1), "rss_50_mb": at(0.5), "rss_90_mb": at(0.9),
            "trace_mb": [(round(t, 1), mb(r)) for t, r in trace[::max(1, len(trace) // 200)]],
            "last_line": output.strip().splitlines()[-1] if output.strip() else ""}


def tiny_checkpoint(out: Path, seconds: float) -> Path:
    """A tiny model trained for ``seconds`` on 2,000 single electrons of their own file."""
    data = out / "train.root"
    subprocess.run([*GRAPHSR, "simulate", "--events", "2000", "--seed", "2", "--output", str(data), "--overwrite",
                    "--no-neighbour-branches"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    config = {"data": {"train": [str(data)], "cache": str(out / "cache")},
              "model": {"width": 16, "depth": 1, "coarse_depth": 1, "heads": 2, "context_tokens": 2},
              "train": {"steps": 100_000, "batch_size": 16, "warmup": 10, "val_every": 50, "time_limit": seconds},
              "sample": {"sampler": "ddim", "steps": 4, "ensemble": 2, "calibration_events": 50}}
    (out / "tiny.yaml").write_text(yaml.safe_dump(config))
    subprocess.run([*GRAPHSR, "train", "--config", str(out / "tiny.yaml"), "--out", str(out / "run"),
                    "--device", "cpu"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return out / "run" / "checkpoint.pt"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="events of the large file")
    parser.add_argument("--small-events", type=int, default=10_000, help="events of the small file")
    parser.add_argument("--sample-events", type=int, default=5000, help="events `graphsr sample` super-resolves")
    parser.add_argument("--eval-events", type=int, default=200, help="events `graphsr evaluate` scores")
    parser.add_argument("--ensemble", type=int, default=2)
    parser.add_argument("--checkpoint", help="default: a tiny model trained here for --train-seconds")
    parser.add_argument("--train-seconds", type=float, default=30)
    parser.add_argument("--out", default="data/bench_streaming", help="work directory (files, model, outputs)")
    parser.add_argument("--json", default="reports/bench_streaming.json")
    parser.add_argument("--keep", action="store_true", help="keep the simulated files")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    large, small = out / f"e_{args.events}.root", out / f"e_{args.small_events}.root"
    runs = {}
    for name, path, n in (("simulate large", large, args.events), ("simulate small", small, args.small_events)):
        runs[name] = run_sampled(name, [*GRAPHSR, "simulate", "--events", str(n), "--seed", "1", "--output",
                                        str(path), "--overwrite", "--no-neighbour-branches"])
        runs[name]["file_mb"] = round(path.stat().st_size / 2**20, 1)
    checkpoint = args.checkpoint or str(tiny_checkpoint(out, args.train_seconds))
    sampling = ["--checkpoint", checkpoint, "--device", "cpu", "--ensemble", str(args.ensemble)]
    for size, path in (("large", large), ("small", small)):
        runs[f"sample {size}"] = run_sampled(f"sample {size}", [
            *GRAPHSR, "sample", *sampling, "--input", str(path), "--output", str(out / f"sr_{size}.root"),
            "--overwrite", "--max-events", str(args.sample_events)])
        runs[f"evaluate {size}"] = run_sampled(f"evaluate {size}", [
            *GRAPHSR, "evaluate", *sampling, "--input", str(path), "--out", str(out / f"eval_{size}"),
            "--split", "all", "--events", str(args.eval_events), "--displays", "0"])
    # what grows per scored event: the graphs and the generated cells kept for the metrics
    runs["evaluate large 5x"] = run_sampled("evaluate large 5x", [
        *GRAPHSR, "evaluate", *sampling, "--input", str(large), "--out", str(out / "eval_large_5x"), "--split", "all",
        "--events", str(5 * args.eval_events), "--displays", "0"])
    print(f"\n{'command':<18}{'events':>10}{'file MB':>9}{'s':>8}{'RSS 10%':>9}{'50%':>8}{'90%':>8}{'peak MB':>9}")
    events = {"simulate large": args.events, "simulate small": args.small_events,
              "sample large": args.sample_events, "sample small": args.sample_events,
              "evaluate large": args.eval_events, "evaluate small": args.eval_events,
              "evaluate large 5x": 5 * args.eval_events}
    for name, r in runs.items():
        file_mb = r.get("file_mb") or round((large if "large" in name else small).stat().st_size / 2**20, 1)
        print(f"{name:<18}{events[name]:>10,}{file_mb:>9,.0f}{r['seconds']:>8.0f}{r['rss_10_mb']:>9.0f}"
              f"{r['rss_50_mb']:>8.0f}{r['rss_90_mb']:>8.0f}{r['peak_mb']:>9.0f}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"events": events, "checkpoint": checkpoint, "runs": runs}, indent=1))
    print("\npeak RSS (MB) in each fifth of the run: " + "; ".join(
        f"{name} {', '.join(f'{v:.0f}' for v in r['peak_by_fifth_mb'] if v is not None)}" for name, r in runs.items()))
    growth = (runs["evaluate large 5x"]["peak_mb"] - runs["evaluate large"]["peak_mb"]) / (4 * args.eval_events)
    print(f"evaluate: peak RSS grows by {1024 * growth:.0f} kB per scored event (ensemble {args.ensemble})")
    print(f"\n{args.json}")
    if not args.keep:
        for path in (large, small, out / "sr_large.root", out / "sr_small.root"):
            path.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
