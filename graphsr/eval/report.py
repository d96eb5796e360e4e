"""The evaluation report: ``metrics.json``, the plots and ``report.md`` from :func:`graphsr.eval.evaluate.compute_metrics`
and the :class:`~graphsr.eval.evaluate.Generated` cells it scored."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from graphsr.detector.geometry import LAYER_NAMES
from graphsr.eval import metrics as m
from graphsr.eval.compare import comparison_markdown
from graphsr.eval.reco_report import reco_markdown
from graphsr.eval.reference import COVERAGE_LEVELS, PUBLISHED, SHOWER_WINDOW
from graphsr.inference import PRETRAINED, occupancy_text
from graphsr.training.checkpoint import load_checkpoint
from graphsr.units import HIT_THRESHOLD


def report_provenance(argv: list[str] | None = None) -> dict:
    """What made a report (:func:`graphsr.provenance.report_provenance`): the command line (default ``sys.argv``),
    the commit of graphsr's source, and the checkpoint given as ``--checkpoint`` with the config it was trained
    from (read from the checkpoint's own provenance; None where the checkpoint does not record it)."""
    from graphsr.provenance import option_value
    from graphsr.provenance import report_provenance as record

    argv = list(sys.argv if argv is None else argv)
    checkpoint = option_value(argv, "--checkpoint")
    training = None
    if checkpoint:
        path = PRETRAINED if checkpoint == "pretrained" else Path(checkpoint)
        path = path / "checkpoint.pt" if path.is_dir() else path
        try:
            training = load_checkpoint(path).get("provenance")
        except Exception:  # a missing or foreign file: the report still says what ran
            training = None
    return record(argv, checkpoint=checkpoint, training=training)


def write_report(g, results: dict, out_dir: str | Path, *, title: str = "graphsr evaluation",
                 displays: list | None = None, provenance: dict | None = None) -> Path:
    """``metrics.json``, PNG plots and ``report.md`` in ``out_dir`` for the cells ``g`` (a
    :class:`~graphsr.eval.evaluate.Generated`) and their ``results``; returns the report's path.

    ``displays``: optional list of (label, png path) of event displays made by the caller, linked in the report.
    ``provenance``: what made the report, stored as ``metrics.json``'s ``provenance`` (``bench/results_page.py``
    names the commit, config and command of each table from it); default :func:`report_provenance` of the running
    command.
    """
    from graphsr import plotting

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = {**results, "provenance": report_provenance() if provenance is None else provenance}
    (out_dir / "metrics.json").write_text(json.dumps(results, indent=2, default=float))
    ev = results["event"]
    sizes = [int(s) for s in ev["ensemble_size"]]
    plotting.line_plot(
        {"super-resolved (ours)": (sizes, [ev["ensemble_size"][str(s)]["value"] for s in sizes],
                                   [ev["ensemble_size"][str(s)]["error"] for s in sizes]),
         "published SR": ([s for s, v in PUBLISHED["ensemble_spread"].items() if v],
                          [v for v in PUBLISHED["ensemble_spread"].values() if v], None)},
        out_dir / "ensemble_size.png", "ensemble size", "relative spread of ECAL energy", logx=True,
        hlines={"coarse (ours)": ev["coarse"]["spread"]["value"], "coarse (published)": PUBLISHED["coarse_spread"]})
    e_true = m.per_event_sum(g.truth, g.event, g.num_events)
    e_coarse = m.per_event_sum(g.coarse_energy, g.coarse_event, g.num_events)
    e_sr = m.per_event_sum(g.mean, g.event, g.num_events)
    plotting.energy_histograms({"coarse": (e_coarse - e_true) / e_true, "super-resolved": (e_sr - e_true) / e_true},
                               out_dir / "event_energy_residual.png", "(E - E_true) / E_true, ECAL", log=False)
    for layer in np.unique(g.layer):
        sel = g.layer == layer
        logs = lambda x: np.log10(x[x > 1e-4])  # noqa: E731
        plotting.energy_histograms({"fine truth": logs(g.truth[sel]), "super-resolved": logs(g.samples[0][sel]),
                                    **{name.replace("_", " "): logs(v[sel]) for name, v in g.baselines.items()}},
                                   out_dir / f"cells_{LAYER_NAMES[layer]}.png", "log10(fine cell energy / GeV)")
    # calibration: coverage of the ensemble's central intervals against their nominal level, per cell
    if g.samples.shape[0] > 1:
        levels = np.array([0.2, 0.4, 0.5, 0.6, 0.68, 0.8, 0.9, 0.95])
        hit = g.truth > HIT_THRESHOLD
        observed = [m.coverage(g.samples[:, hit], g.truth[hit], lv)[0] for lv in levels]
        sums = np.stack([m.per_event_sum(s, g.event, g.num_events) for s in g.samples])
        observed_events = [m.coverage(sums, e_true, lv)[0] for lv in levels]
        plotting.line_plot({"hit cells": (levels, observed, None), "event ECAL energy": (levels, observed_events, None)},
                           out_dir / "calibration.png", "nominal central interval", "observed coverage",
                           diagonal=True)
    sel = g.layer == 1  # ECAL2 holds most of the shower
    if sel.any():
        args = (g.eta[sel], g.phi[sel], g.event[sel], g.num_events, HIT_THRESHOLD, SHOWER_WINDOW)
        estimates = {"fine truth": g.truth, "super-resolved": g.samples[0],
                     **{name.replace("_", " "): v for name, v in g.baselines.items()}}
        shapes = {label: m.shower_shapes(v[sel], *args) for label, v in estimates.items()}
        for shape in ("width_eta", "width_phi", "leading_fraction", "cells_above"):
            plotting.energy_histograms({label: s[shape] for label, s in shapes.items()},
                                       out_dir / f"shape_ECAL2_{shape}.png", f"ECAL2 {shape}", bins=40, log=False)
    path = out_dir / "report.md"
    path.write_text(_markdown(results, title, displays or []))
    return path


def _fmt(pair, digits=4):
    return "n/a" if pair is None else f"{pair['value']:.{digits}f} ± {pair['error']:.{digits}f}"


def _fmt_g(pair):
    """Three significant digits: distances span orders of magnitude (a fixed count of decimals shows 0.00000)."""
    return f"{pair['value']:.3g} ± {pair['error']:.2g}"


def _particles_markdown(particles: dict) -> list[str]:
    """The downstream table: our stand-in reconstruction on each input, and the published particle-flow model."""
    from graphsr.eval import reconstruction as reco

    published = PUBLISHED["multi_particle"]
    particles = {name: v for name, v in particles.items() if name != "energy_coverage"}
    counts = sorted({n for v in particles.values() for n in v["cardinality"]}, key=int)
    lines = ["## Downstream: how many particles, their energies and directions", "",
             f"A simple deterministic reconstruction (`graphsr.eval.reconstruction`: ECAL2 local maxima above "
             f"{reco.SEED_THRESHOLD} GeV seed particles, cells within {reco.RADIUS} in (eta, phi) join the nearest "
             f"seed, greedy Delta R < {reco.MATCH_RADIUS} matching) run on each input. "
             "Cardinality: events whose reconstructed count equals the true count, per true count; more found: "
             f"events with more particles found than true ones (split showers), per true count {' / '.join(counts)}. "
             "Residuals: std of matched particles' (E - E_true) / E_true, eta - eta_true, phi - phi_true.", "",
             "| input | " + " | ".join(f"cardinality {n}" for n in counts) +
             " | more found | efficiency | fakes | energy | eta | phi |", "|---|" + "---|" * (len(counts) + 6)]
    for name, v in particles.items():
        card = " | ".join(f"{100 * v['cardinality'][n]['value']:.1f}%" if n in v["cardinality"] else "" for n in counts)
        excess = " / ".join(f"{100 * v['excess'][n]['value']:.0f}" if n in v.get("excess", {}) else "-"
                            for n in counts)
        lines.append(f"| {name} | {card} | {excess}% | {v['efficiency']:.3f} | {v['fake_rate']:.3f} | "
                     f"{_fmt(v['energy'], 3)} | {_fmt(v['eta'], 4)} | {_fmt(v['phi'], 4)} |")
    for i, label in enumerate(("coarse", "super-resolved")):
        card = " | ".join(f"{100 * published['cardinality'][n][i]:.2f}%" if n in published["cardinality"] else ""
                          for n in counts)
        lines.append(f"| published particle-flow model, {label} input (multi-particle 4x) | {card} | | | | "
                     f"{published['energy'][i]} | {published['eta'][i]} | {published['phi'][i]} |")
    lines += ["", "The published rows come from a trained particle-flow model on COCOA's multi-particle set, ours "
              "from the simple reconstruction on our simulation: compare how each input moves the figures, not "
              "the absolute values.", ""]
    return lines


def _markdown(r: dict, title: str, displays: list) -> str:
    """``report.md``: one section after the other, each written from its part of the results."""
    lines = [f"# {title}", "",
             f"{r['events']} held-out events, {r['fine_cells']} fine cells, ensemble of {r['ensemble']} samples, "
             f"{r['ms_per_event']:.0f} ms per event (all samples).", ""]
    lines += _event_markdown(r) + _cells_markdown(r)
    if "particles" in r:
        lines += _particles_markdown(r["particles"])
    if "reco" in r:
        lines += reco_markdown(r["reco"], PUBLISHED["multi_particle"])
    lines += _coverage_markdown(r) + _shifted_markdown(r)
    if "comparison" in r:
        lines += comparison_markdown(r["comparison"])
    if displays:
        lines += ["## Event displays", ""] + [f"![{label}]({Path(p).name})" for label, p in displays] + [""]
    return "\n".join(lines + _provenance_markdown(r))


def _event_markdown(r: dict) -> list[str]:
    ev = r["event"]
    published = ", ".join(f"{s}: {v}" for s, v in PUBLISHED["ensemble_spread"].items() if v)
    return ["## How close: event ECAL energy against the fine truth", "",
            "| | relative spread | bias | published |", "|---|---|---|---|",
            f"| coarse cells | {_fmt(ev['coarse']['spread'])} | {_fmt(ev['coarse']['bias'])} | "
            f"{PUBLISHED['coarse_spread']} |",
            f"| super-resolved (ensemble mean, {r['mode']} mode) | {_fmt(ev['super_resolved']['spread'])} | "
            f"{_fmt(ev['super_resolved']['bias'])} | {PUBLISHED['sr_spread']} |",
            f"| super-resolved (one sample) | {_fmt(ev['single_sample']['spread'])} | "
            f"{_fmt(ev['single_sample']['bias'])} | |",
            *([f"| regression baseline | {_fmt(ev['regression']['spread'])} | {_fmt(ev['regression']['bias'])} | |"]
              if "regression" in ev else []),
            f"| ratio SR / coarse | {ev['ratio']:.3f} | | {PUBLISHED['ratio']:.3f} |", "",
            "Ensemble size: " + ", ".join(f"{s}: {_fmt(v)}" for s, v in ev["ensemble_size"].items()),
            f" (published: {published}).", "",
            "![ensemble size](ensemble_size.png) ![residuals](event_energy_residual.png)", "",
            "Per layer (relative spread, coarse -> super-resolved): " + "; ".join(
                f"{name}: {_fmt(v['coarse_spread'])} -> {_fmt(v['super_resolved_spread'])}"
                for name, v in ev["per_layer"].items()), ""]


def _cells_markdown(r: dict) -> list[str]:
    lines = ["## Where wrong: cells, shapes and invented energy", "",
             "| layer | estimate | RMSE / GeV | W1 / GeV | hits / event | hit precision | hit recall | "
             "hallucinated | hallucinated GeV / event |",
             "|---|---|---|---|---|---|---|---|---|"]
    for layer, entry in r["cell"].items():
        lines.append(f"| {layer} | fine truth | | | {entry['truth']['hits_per_event']:.1f} | | | | |")
        for name in [n for n in entry if n != "truth"]:
            e = entry[name]
            lines.append(f"| {layer} | {name} | {_fmt(e['rmse'])} | {_fmt(e['wasserstein'])} | "
                         f"{e['hits_per_event']:.1f} | {e['occupancy']['precision']:.3f} | "
                         f"{e['occupancy']['recall']:.3f} | {e['hallucinated_fraction']:.3f} | "
                         f"{e['hallucinated_gev_per_event']:.4f} |")
    lines += ["", f"Hit: above {1000 * HIT_THRESHOLD:g} MeV. Hallucinated: the positive energy placed in cells whose "
              "true energy is zero (fraction of the estimate's, and GeV per event). `super_resolved_estimate` is what "
              "`graphsr sample` writes as `cell_e` (`graphsr.inference.point_estimate`; its count of hit children: "
              f"{occupancy_text(r.get('calibration') or {})}).", "",
              "Shower shapes (Wasserstein-1 to the truth; one model sample against the baselines):", ""]
    names = list(next(iter(r["shower_shapes"].values())))
    lines += ["| layer | shape | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for layer, entry in r["shower_shapes"].items():
        for shape in entry["super_resolved_sample"]:
            lines.append(f"| {layer} | {shape} | " + " | ".join(_fmt(entry[n][shape]) for n in names) + " |")
    lines += ["", "High-level physics distances (features standardised by the truth):", "",
              "| estimate | FPD (extrapolated to infinite N) | KPD (median, half 16-84% range) | classifier AUC |",
              "|---|---|---|---|"]
    for name, v in r["physics_distances"].items():
        lines.append(f"| {name} | {_fmt_g(v['fpd'])} | {_fmt_g(v['kpd'])} | {_fmt(v['classifier_auc'], 3)} |")
    lines += ["", "![cells](cells_ECAL2.png) ![width](shape_ECAL2_width_eta.png)", ""]
    return lines


def _coverage_markdown(r: dict) -> list[str]:
    lines = ["## How sure: ensemble calibration", ""]
    if "coverage" in r:
        cov = r["coverage"]
        rows = [("event ECAL energy", cov["event_energy"]), ("coarse cells (sum of children)", cov["coarse_cells"]),
                ("hit fine cells (truth above 1 MeV)", cov["hit_cells"])]
        if "energy_coverage" in r.get("particles", {}):
            rows.append((f"particle energy ({r['particles']['energy_coverage']['particles']} particles found on "
                         "the truth)", r["particles"]["energy_coverage"]))
        lines += ["Coverage of the truth by the ensemble's central intervals (a calibrated ensemble covers the "
                  "nominal level):", "", "| quantity | " + " | ".join(f"{float(lv):.0%}" for lv in COVERAGE_LEVELS) +
                  " |", "|---|" + "---|" * len(COVERAGE_LEVELS)]
        lines += [f"| {name} | " + " | ".join(_fmt(v[str(lv)], 3) for lv in COVERAGE_LEVELS) + " |"
                  for name, v in rows]
        lines += ["", "68% coverage of hit cells per layer: " + ", ".join(
            f"{layer} {_fmt(v, 3)}" for layer, v in cov["hit_cells_per_layer"].items()) +
            f". Calibration: {r.get('calibration') or 'none (raw ensemble)'}. Cells whose truth is zero are not "
            "counted (see the hallucinated energy above).", ""]
    lines += ["![calibration](calibration.png)", "",
              "## Consistency with the measured coarse cells", "",
              f"Children of a parent sum to within {r['consistency']['parent_sum_mean_abs_gev']:.4f} GeV of the "
              f"measured parent on average, {r['consistency']['parent_minus_measured_in_noise_sd']:.2f} noise sigmas "
              "(sd): the posterior mode removes noise, so it moves totals off the measurement by about the noise; "
              "`--mode conserving` holds them to the measurement.", ""]
    return lines


def _shifted_markdown(r: dict) -> list[str]:
    if "shifted_inputs" not in r:
        return []
    lines = ["## Inputs outside the training range", "",
             "Single electrons simulated for this report, unlike the training events (which are pT 50 GeV at "
             "eta ~ 0 for the default model): what the model does off its training distribution. The CLI "
             "warns when an input's coarse energies lie outside the training range.", "",
             "| events | outside training range | coarse spread | SR spread | ratio | SR bias | 68% coverage |",
             "|---|---|---|---|---|---|---|"]
    for name, v in r["shifted_inputs"].items():
        lines.append(f"| {name} ({v['events']}) | {100 * v['outside_training_range']:.0f}% | "
                     f"{_fmt(v['coarse_spread'])} | {_fmt(v['super_resolved_spread'])} | {v['ratio']:.2f} | "
                     f"{_fmt(v['super_resolved_bias'])} | {_fmt(v['coverage_68'], 3)} |")
    lines.append("")
    return lines


def _provenance_markdown(r: dict) -> list[str]:
    if not r.get("provenance"):
        return []
    made = r["provenance"]
    return ["## Provenance", "",
            f"Command: `{made.get('command') or 'unknown'}`; commit {made.get('commit') or 'unknown'}"
            f"{' (with uncommitted changes)' if made.get('dirty') else ''}; checkpoint "
            f"{made.get('checkpoint') or 'unknown'}, trained from config {made.get('config') or 'unknown'}.", ""]
