"""Generators side by side at several numbers of network evaluations, on the same held-out events: the table of
docs/diffusion.md ("Choose your diffusion").

Each ``--model NAME=CHECKPOINT`` is sampled with deterministic DDIM at every count of ``--evaluations`` (a distilled
student at its own count only) and with Heun at ``--heun`` evaluations (2 steps - 1), each setting with its own
spread calibration fitted on the model's validation events (``--calibration-events``), never on the scored ones.
The scored events are the first ``--events`` of ``--input`` that no model trained or validated on (``--split all``:
of a file none of them saw). Rows: spread
ratio, bias, 68% coverage (event energy, hit fine cells), ECAL2 cell RMSE of the estimate, hits per event and
truth-empty energy (GeV per event) of one sample in ECAL1, classifier AUC of one sample against the truth, on
multi-particle inputs the split showers (two-particle events in which the hand clustering of
:mod:`graphsr.eval.reconstruction` finds more than two particles, on the written estimate and on one sample), training
seconds (a student's: its teacher's and its distillation's) and sampling ms per event (whole ensemble).

Usage::

    python bench/compare_generators.py --input data/single_electron_2x.root --events 300 \\
        --model edm=runs/seed1_edm/checkpoint.pt --model cfm=runs/seed1_cfm/checkpoint.pt \\
        --model "edm student=runs/seed1_edm_4step/checkpoint.pt" --json reports/compare/generators.json

``bench/results_page.py`` puts every ``generators.json`` under reports/ into docs/results.md. ``--append`` adds the
rows to an existing ``--json`` of the same input and events (its header gains this command): models scored by
several processes at once, one per core, make one table.

Networks run through ``torch.compile`` with ``--compile`` (the same function; one compilation serves them all).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import shlex
import subprocess
import sys
from pathlib import Path

import torch

from graphsr.datasets import read_events
from graphsr.eval.evaluate import compute_metrics, generate
from graphsr.inference import SuperResolver, fit_calibration, load_resolver, seen_entries
from graphsr.training.checkpoint import load_checkpoint
from graphsr.training.trainer import load_splits
from results_page import generators_table  # bench/, beside this script


def training_seconds(path: str) -> float:
    """Seconds of training behind a checkpoint: a student's teacher's and each distillation round's."""
    state = load_checkpoint(path)
    rounds = state.get("distillation") or []
    if not rounds:
        return float(state.get("seconds") or float("nan"))
    teacher = state.get("distill_run", {}).get("settings", {}).get("checkpoint")
    before = training_seconds(teacher) if teacher and Path(teacher).exists() else float("nan")
    return before + sum(r["seconds"] for r in rounds)


def settings(resolver: SuperResolver, evaluations: list[int], heun: list[int]) -> list[tuple[str, int]]:
    """(sampler, steps) of a model: its own grid for a student, else DDIM at each count and Heun at each count."""
    if resolver.sampling_sigmas is not None:
        return [("ddim", len(resolver.sampling_sigmas) - 1)]
    return [("ddim", n) for n in evaluations] + [("heun", (n + 1) // 2) for n in heun]


def row(results: dict, name: str, sampler: str, steps: int, train_s: float) -> dict:
    ev, coverage, cells = results["event"], results.get("coverage", {}), results["cell"]
    value = lambda pair: None if pair is None else pair["value"]  # noqa: E731
    split = {f"split_{kind}": value(results.get("particles", {}).get(f"super_resolved_{kind}", {})
                                     .get("excess", {}).get("2")) for kind in ("estimate", "sample")}
    return {
        "model": name, "sampler": sampler, "steps": steps,
        "evaluations": 2 * steps - 1 if sampler == "heun" else steps,
        "spread_ratio": ev["ratio"], "bias": value(ev["super_resolved"]["bias"]),
        "bias_error": ev["super_resolved"]["bias"]["error"],
        "coverage_event": value(coverage.get("event_energy", {}).get("0.68")),
        "coverage_hit_cells": value(coverage.get("hit_cells", {}).get("0.68")),
        "rmse_ecal2": value(cells["ECAL2"]["super_resolved_estimate"]["rmse"]),
        "hits_ecal1": cells["ECAL1"]["super_resolved_sample"]["hits_per_event"],
        "hits_ecal1_truth": cells["ECAL1"]["truth"]["hits_per_event"],
        "empty_gev_ecal1": cells["ECAL1"]["super_resolved_sample"]["hallucinated_gev_per_event"],
        "auc": value(results["physics_distances"]["super_resolved_sample"]["classifier_auc"]), **split,
        "train_s": train_s, "ms_per_event": results["ms_per_event"]}


def write_table(path: Path, table: dict, append: bool) -> dict:
    """Write ``table`` to ``path``, or with ``append`` add its rows to the table there (locked: processes may finish
    together); returns what was written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        handle.seek(0)
        before = handle.read()
        if append and before:
            old = json.loads(before)
            if (old.get("input"), old.get("events")) != (table["input"], table["events"]):
                raise SystemExit(f"{path} scores {old.get('events')} events of {old.get('input')}, not "
                                 f"{table['events']} of {table['input']}: cannot append")
            table = {**old, "header": old["header"] + "\n\nAnd: " + table["header"],
                     "rows": old["rows"] + table["rows"]}
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(table, indent=1))
    return table


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True)
    parser.add_argument("--model", action="append", required=True, help="NAME=CHECKPOINT (repeat)")
    parser.add_argument("--events", type=int, default=300)
    parser.add_argument("--split", choices=["test", "all"], default="test",
                        help="test: the held-out events of a file the models trained on; all: every event of a file "
                        "none of them saw")
    parser.add_argument("--evaluations", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--heun", type=int, nargs="*", default=[3, 7, 15])
    parser.add_argument("--ensemble", type=int, default=10)
    parser.add_argument("--calibration-events", type=int, default=100)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--grid", choices=["karras", "learned"], help="override sample.grid of every model (learned: "
                        "evenly in t of a model's learned schedule)")
    parser.add_argument("--json")
    parser.add_argument("--append", action="store_true", help="add the rows to --json, which must score the same "
                        "input and events")
    parser.add_argument("--markdown")
    args = parser.parse_args()
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()  # the code run
    models = dict(m.split("=", 1) for m in args.model)
    resolvers = {name: load_resolver(path, device="cpu", compile=args.compile) for name, path in models.items()}
    for resolver in resolvers.values():
        resolver.config.sample.grid = args.grid or resolver.config.sample.grid
    seen = [s for r in resolvers.values() if (s := seen_entries(r, args.input, args.split)) is not None]
    seen = torch.cat(seen).unique() if seen else None
    first = next(iter(resolvers.values()))
    storage = read_events(args.input, first.graph_options, exclude=seen, max_events=args.events, factor=first.factor)
    chosen = torch.arange(len(storage[1]["event"]) - 1)
    rows = []
    for name, resolver in resolvers.items():
        _, val_set, _ = load_splits(resolver.config)
        calibration_events = torch.as_tensor(val_set.indices()[:args.calibration_events])
        for sampler, steps in settings(resolver, args.evaluations, args.heun):
            resolver.calibration = fit_calibration(resolver, val_set.storage(), calibration_events, sampler=sampler,
                                                   steps=steps, ensemble=args.ensemble)
            generated = generate(resolver, storage, chosen, ensemble=args.ensemble, sampler=sampler, steps=steps,
                                 progress=False)
            rows.append(row(compute_metrics(generated), name, sampler, steps, training_seconds(models[name])))
            print(json.dumps(rows[-1]), flush=True)
    header = (f"{len(chosen)} held-out events of `{args.input}` (unseen by every model), ensembles of {args.ensemble}, "
              f"each setting calibrated on {len(calibration_events)} validation events; commit {commit}; "
              f"`python {' '.join(shlex.quote(a) for a in sys.argv)}`")
    table = {"header": header, "input": args.input, "events": len(chosen), "rows": rows}
    if args.json:
        table = write_table(Path(args.json), table, args.append)
    text = "\n".join(generators_table(table))
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
