"""Write docs/results.md from evaluation reports: the measured figures, each table naming what produced it.

`graphsr evaluate` writes `reports/<name>/metrics.json` (graphsr.eval.evaluate.write_report), with a `provenance`
entry: the command line, the commit of graphsr's source and the config the evaluated checkpoint was trained from.
This script reads those files and writes one section per report: where the figures come from, then the event
energy, the coverage of the ensemble's intervals, the cells per layer, the physics distances and, where the report
has them, the particle counts. Reports written before provenance was recorded are listed with "unknown" there.
``generators.json`` files (``bench/compare_generators.py``) below the same directories get a section each: their
header (events, commit, command) and one row per model and sampling setting; so do ``speed.json`` files
(``bench/bench_speed.py``: the fast path against the reference implementation).

    python bench/results_page.py                                  # every reports/*/metrics.json -> docs/results.md
    python bench/results_page.py --reports reports/single_electron_2x/metrics.json --output /tmp/results.md

Pure Python and json: it runs without graphsr's dependencies installed.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

COMMAND = "python bench/results_page.py"
UNKNOWN = "unknown"
# cell-level estimates in the order the tables show them, with their names in words
ESTIMATES = {"super_resolved_estimate": "SR `cell_e` (written estimate)", "super_resolved_mean": "SR ensemble mean",
             "super_resolved_sample": "SR one sample", "even_split": "even split of the coarse cells",
             "regression": "regression baseline"}


def find_reports(paths: list[str | Path], name: str = "metrics.json") -> list[Path]:
    """The ``name`` files (evaluation reports; ``generators.json``: comparisons; ``speed.json``: speed) named by
    ``paths``: files of that name as given, directories searched recursively; sorted, each once."""
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found += sorted(path.rglob(name))
        elif path.is_file() and path.name == name:
            found.append(path)
    unique = []
    for path in found:
        if path.resolve() not in {p.resolve() for p in unique}:
            unique.append(path)
    return unique


def _number(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.{digits}f}"


def _pair(pair: dict | None, digits: int = 4) -> str:
    """``value ± error`` of a metrics.json pair (``{"value": v, "error": e}``)."""
    if not isinstance(pair, dict) or pair.get("value") is None:
        return ""
    if pair.get("error") is None:
        return _number(pair["value"], digits)
    return f"{pair['value']:.{digits}f} ± {pair['error']:.{digits}f}"


def _pair_g(pair: dict | None) -> str:
    """Three significant digits: distances span orders of magnitude."""
    if not isinstance(pair, dict) or pair.get("value") is None:
        return ""
    if pair.get("error") is None:
        return f"{pair['value']:.3g}"
    return f"{pair['value']:.3g} ± {pair['error']:.2g}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def _code(text: str | None) -> str:
    return f"`{text}`" if text else UNKNOWN


def provenance_lines(provenance: dict | None) -> list[str]:
    """Where a report's figures come from: commit, config, command and checkpoint ("unknown" where not
    recorded)."""
    p = provenance or {}
    commit = p.get("commit") or UNKNOWN
    if p.get("commit") and p.get("dirty"):
        commit += " (with uncommitted changes)"
    lines = [f"- commit: {commit}", f"- config: {_code(p.get('config'))}", f"- command: {_code(p.get('command'))}",
             f"- checkpoint: {_code(p.get('checkpoint'))}"]
    if p.get("train_command"):
        lines.append(f"- checkpoint trained by: `{p['train_command']}`"
                     + (f" at commit {p['train_commit']}" if p.get("train_commit") else ""))
    if p.get("created"):
        lines.append(f"- written: {p['created']}")
    return lines


def event_table(r: dict) -> list[str]:
    """Event ECAL energy against the fine truth: relative spread and bias of each estimate."""
    ev = r.get("event", {})
    names = {"coarse": "coarse cells", "super_resolved": "SR ensemble mean", "single_sample": "SR one sample",
             "regression": "regression baseline"}
    rows = [[label, _pair(ev[key].get("spread")), _pair(ev[key].get("bias"))] for key, label in names.items()
            if isinstance(ev.get(key), dict)]
    lines = _table(["event ECAL energy", "relative spread", "bias"], rows)
    if ev.get("ratio") is not None:
        published = r.get("published", {}).get("ratio")
        lines += ["", f"Spread ratio SR / coarse: {_number(ev['ratio'], 3)}"
                  + (f" (published: {_number(published, 3)})." if published is not None else ".")]
    return lines


def coverage_table(r: dict) -> list[str]:
    """Coverage of the truth by the ensemble's central intervals."""
    cov = r.get("coverage")
    if not cov:
        return []
    names = {"event_energy": "event ECAL energy", "coarse_cells": "coarse cells (sum of children)",
             "hit_cells": "hit fine cells"}
    levels = sorted({lv for key in names for lv in cov.get(key, {})}, key=float)
    rows = [[label] + [_pair(cov[key].get(lv), 3) for lv in levels] for key, label in names.items() if key in cov]
    return ["Coverage of the truth by the ensemble's central intervals:", "",
            *_table(["quantity"] + [f"{float(lv):.0%}" for lv in levels], rows)]


def cell_table(r: dict) -> list[str]:
    """Per layer and estimate: RMSE, hits per event against the truth's, hit precision / recall, energy in cells
    empty in truth."""
    rows = []
    for layer, entry in r.get("cell", {}).items():
        truth_hits = entry.get("truth", {}).get("hits_per_event")
        rows.append([layer, "fine truth", "", _number(truth_hits, 1), "", "", ""])
        for key, label in ESTIMATES.items():
            e = entry.get(key)
            if not isinstance(e, dict):
                continue
            occupancy = e.get("occupancy") or {}
            rows.append([layer, label, _pair(e.get("rmse")), _number(e.get("hits_per_event"), 1),
                         _number(occupancy.get("precision"), 3), _number(occupancy.get("recall"), 3),
                         _number(e.get("hallucinated_gev_per_event"), 4)])
    if not rows:
        return []
    return _table(["layer", "estimate", "RMSE / GeV", "hits / event", "hit precision", "hit recall",
                   "GeV / event in truth-empty cells"], rows)


def physics_table(r: dict) -> list[str]:
    """FPD, KPD and the classifier AUC of each estimate against the truth."""
    physics = r.get("physics_distances")
    if not physics:
        return []
    rows = [[ESTIMATES.get(name, name), _pair_g(v.get("fpd")), _pair_g(v.get("kpd")), _pair(v.get("classifier_auc"), 3)]
            for name, v in physics.items()]
    return _table(["estimate", "FPD", "KPD", "classifier AUC"], rows)


def cardinality_table(rows: dict[str, dict], title: str) -> list[str]:
    """Cardinality accuracy per true particle count, and the energy residual of matched particles."""
    rows = {name: v for name, v in rows.items() if isinstance(v, dict) and "cardinality" in v}
    if not rows:
        return []
    # true counts in order, then what is not a count (the learned models' "all")
    counts = sorted({n for v in rows.values() for n in v["cardinality"]},
                    key=lambda n: (0, int(n), "") if str(n).isdigit() else (1, 0, str(n)))
    body = []
    for name, v in rows.items():
        card = v["cardinality"]
        body.append([name] + [f"{100 * card[n]['value']:.1f}%" if n in card else "" for n in counts]
                    + [_pair(v.get("energy"), 3)])
    return [title, "", *_table(["input"] + [f"{n} true" if str(n).isdigit() else str(n) for n in counts]
                               + ["energy residual"], body)]


def particle_tables(r: dict) -> list[str]:
    lines = []
    if r.get("particles"):
        lines += cardinality_table({k: v for k, v in r["particles"].items() if k != "energy_coverage"},
                                   "Particle counting by the hand-written clustering (`graphsr.eval.reconstruction`), "
                                   "accuracy per true count:")
    reco = r.get("reco")
    if reco:
        rows = {f"learned, {k}": v for k, v in reco.get("learned", {}).items()}
        rows |= {f"hand clustering, {k}": v for k, v in reco.get("hand_clustering", {}).items()}
        lines += ([""] if lines else []) + cardinality_table(
            rows, f"Particle-flow models (`graphsr train-reco`) on {reco.get('events', '?')} events, accuracy per "
                  "true count:")
    return lines


def comparison_table(r: dict) -> list[str]:
    """``graphsr evaluate --compare``: both generators side by side."""
    table = r.get("comparison")
    if not table:
        return []
    names = list(dict.fromkeys(n for v in table.values() for n in v))
    rows = [[figure] + [_number(v.get(n), 4) for n in names] for figure, v in table.items()]
    return ["Generators side by side (`--compare`):", "", *_table(["figure"] + names, rows)]


# bench/compare_generators.py's rows: (key, format, heading)
GENERATOR_COLUMNS = [("model", "{}", "model"), ("sampler", "{}", "sampler"), ("evaluations", "{}", "evaluations"),
                     ("spread_ratio", "{:.3f}", "spread ratio"), ("bias", "{:+.4f}", "bias"),
                     ("coverage_event", "{:.3f}", "68% cov. event"), ("coverage_hit_cells", "{:.3f}",
                                                                     "68% cov. hit cells"),
                     ("rmse_ecal2", "{:.3f}", "ECAL2 RMSE / GeV"), ("hits_ecal1", "{:.1f}", "ECAL1 hits, one sample"),
                     ("empty_gev_ecal1", "{:.3f}", "ECAL1 truth-empty GeV"), ("auc", "{:.3f}", "AUC, one sample"),
                     ("split_estimate", "{:.1%}", "2 true, more found: estimate"),
                     ("split_sample", "{:.1%}", "2 true, more found: one sample"),
                     ("train_s", "{:.0f}", "training s"), ("ms_per_event", "{:.0f}", "ms / event")]
OPTIONAL_COLUMNS = ("split_estimate", "split_sample")  # multi-particle inputs only


def generators_table(data: dict) -> list[str]:
    """A ``bench/compare_generators.py`` JSON (``{"header", "rows"}``): its header (events, commit, command) and one
    row per model and sampling setting (the split-shower columns where the rows have them)."""
    columns = [c for c in GENERATOR_COLUMNS
               if c[0] not in OPTIONAL_COLUMNS or any(row.get(c[0]) is not None for row in data["rows"])]
    rows = [["n/a" if row.get(key) is None else fmt.format(row[key]) for key, fmt, _ in columns]
            for row in data["rows"]]
    return [data["header"], "", *_table([heading for *_, heading in columns], rows)]


def speed_table(data: dict) -> list[str]:
    """A ``bench/bench_speed.py`` JSON (``{"header", "rows"}``): its header (model, machine, commit, command) and one
    row per measurement: milliseconds per denoiser evaluation, events per second otherwise."""
    rows = []
    for row in data["rows"]:
        if "reference_ms" in row:
            reference, fast = f"{row['reference_ms']:.1f} ms", f"{row['fast_ms']:.1f} ms"
        else:
            reference = f"{row['reference_events_per_s']:.1f} events/s"
            fast = f"{row['fast_events_per_s']:.1f} events/s"
        per_peak = (f"{row['reference_per_gflops']:.4f} / {row['fast_per_gflops']:.4f}"
                    if "fast_per_gflops" in row else "n/a")
        difference = next((f"{row[key]:.1e}" for key in ("max_abs_difference", "max_abs_difference_gev") if key in row),
                          "n/a")
        rows.append([row["row"], str(row["threads"]), f"{row['matmul_peak_gflops']:.0f}", reference, fast,
                     f"{row['speedup']:.2f}x", per_peak, difference])
    return [data["header"], "", *_table(["measured", "threads", "matmul peak GFLOP/s", "reference", "fast path",
                                         "speed-up", "events/s per GFLOP/s: reference / fast", "largest difference"],
                                        rows)]


def report_section(path: Path, name: str) -> list[str]:
    """One report's section of the page."""
    r = json.loads(Path(path).read_text())
    lines = [f"## {name}", "", f"From `{path}`:", "", *provenance_lines(r.get("provenance")), ""]
    summary = [f"{r['events']} events" if "events" in r else None,
               f"ensemble of {r['ensemble']}" if "ensemble" in r else None,
               f"{r['mode']} mode" if "mode" in r else None,
               f"{r['ms_per_event']:.0f} ms per event" if isinstance(r.get("ms_per_event"), (int, float)) else None]
    if any(summary):
        lines += ["Evaluated: " + ", ".join(s for s in summary if s) + ".", ""]
    for part in (event_table(r), coverage_table(r), cell_table(r), physics_table(r), particle_tables(r),
                 comparison_table(r)):
        if part:
            lines += part + [""]
    return lines


def _name(path: Path, roots: list[Path]) -> str:
    """A report's name: its directory relative to the ``--reports`` directory holding it."""
    for root in roots:
        if root.is_dir():
            try:
                relative = path.parent.resolve().relative_to(root.resolve())
            except ValueError:
                continue
            return str(relative) if str(relative) != "." else path.parent.name
    return path.parent.name or str(path)


def render(paths: list[Path], roots: list[Path] | None = None, comparisons: list[Path] | None = None,
           speeds: list[Path] | None = None) -> str:
    """The whole page for the metrics.json files ``paths``, the ``bench/compare_generators.py`` files
    ``comparisons`` and the ``bench/bench_speed.py`` files ``speeds``."""
    lines = ["# Results", "",
             f"<!-- generated by `{COMMAND}`: do not edit by hand -->",
             f"This page is generated by `{COMMAND}` from the evaluation reports' `metrics.json` (written by "
             "`graphsr evaluate`); do not edit it by hand. Each section names the commit, config and command that "
             "produced its figures. What each figure means: [evaluation.md](evaluation.md).", ""]
    if not paths and not comparisons and not speeds:
        lines += ["No reports yet: run `make demo`, then `python bench/results_page.py`.", ""]
        return "\n".join(lines)
    lines += ["Reports: " + ", ".join(f"[{_name(p, roots or [])}](#{_anchor(_name(p, roots or []))})"
                                      for p in paths) + ".", ""]
    for path in paths:
        lines += report_section(path, _name(path, roots or []))
    for path in comparisons or []:
        lines += [f"## Generators compared: {_name(path, roots or [])}", "", f"From `{path}`:", "",
                  *generators_table(json.loads(Path(path).read_text())), ""]
    for path in speeds or []:
        lines += [f"## Denoiser speed: {_name(path, roots or [])}", "", f"From `{path}`:", "",
                  *speed_table(json.loads(Path(path).read_text())), ""]
    return "\n".join(lines).rstrip() + "\n"


def _anchor(title: str) -> str:
    """GitHub's anchor of a heading."""
    return "".join(c for c in title.lower().replace(" ", "-") if c.isalnum() or c in "-_")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reports", nargs="+", default=["reports"],
                        help="report directories (searched for metrics.json) or metrics.json files (default: reports)")
    parser.add_argument("--output", default="docs/results.md", help="the page to write (default: docs/results.md)")
    args = parser.parse_args(argv)
    paths, comparisons = find_reports(args.reports), find_reports(args.reports, "generators.json")
    speeds = find_reports(args.reports, "speed.json")
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(render(paths, [Path(p) for p in args.reports], comparisons, speeds))
    print(f"{output}: {len(paths)} report{'s' * (len(paths) != 1)}, {len(comparisons)} comparison(s), "
          f"{len(speeds)} speed measurement(s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
