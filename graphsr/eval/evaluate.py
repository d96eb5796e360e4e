"""Evaluate a super-resolution model against the fine truth and the baselines, and write the report.

:func:`generate` runs the model (and the baselines) over held-out events; :func:`compute_metrics` turns the result
into one nested dict of metrics (JSON-ready); :func:`write_report` adds plots and a Markdown report.

Baselines, evaluated exactly like the model: ``coarse`` (the measured coarse cells; at cell level each coarse cell
is spread evenly over its children, which is the ``even split``; at event level both equal the coarse sum), and
optionally ``regression``, a deterministic model on the same backbone trained with MSE
(``diffusion.parameterisation: regression``), which shows what the diffusion buys over a blurry mean.

Deterministic for a given checkpoint, events, sampler, steps and seed on CPU.
"""

from __future__ import annotations

import json
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from graphsr.eval import metrics as m
from graphsr.eval.compare import comparison_markdown
from graphsr.graphs import collate_events
from graphsr.detector.geometry import LAYER_NAMES
from graphsr.inference import PRETRAINED, occupancy_text
from graphsr.units import HIT_THRESHOLD

# The published figures (arXiv 2409.16052), shown beside ours: single electrons 2x (event ECAL energy), and the
# multi-particle 4x set through a trained particle-flow model (coarse -> super-resolved input)
PUBLISHED = {"coarse_spread": 0.0057, "sr_spread": 0.0034, "ratio": 0.0034 / 0.0057,
             "ensemble_spread": {1: None, 2: 0.0041, 5: 0.0036, 10: 0.0034, 25: 0.0032},
             "multi_particle": {"cardinality": {"1": (0.9938, 0.9941), "2": (0.8852, 0.9102), "3": (0.7762, 0.8197),
                                                "4": (0.8132, 0.8142)},
                                "energy": (0.37, 0.27), "eta": (0.03, 0.02), "phi": (0.11, 0.09)}}
# shower shapes and the event features of FPD / KPD / AUC use the cells within this distance in eta and in phi of
# each layer's leading cell: the shower (the multi-particle gun's photons lie ~0.1 from the electron), without the
# noise-only clusters elsewhere, whose energy in the super-resolved output would set the widths (it is counted with
# the hallucinated energy instead)
SHOWER_WINDOW = 0.2
COVERAGE_LEVELS = (0.50, 0.68, 0.95)


@dataclass
class Generated:
    """Flat fine cells of the evaluated events (GeV) with the model's ensemble and the baselines."""

    truth: np.ndarray          # [Nf]
    samples: np.ndarray        # [K, Nf] model ensemble
    estimate: np.ndarray       # [Nf] the point estimate graphsr sample writes (graphsr.inference.point_estimate)
    even_split: np.ndarray     # [Nf]
    layer: np.ndarray          # [Nf]
    eta: np.ndarray
    phi: np.ndarray
    event: np.ndarray          # [Nf] 0..E-1
    parent: np.ndarray         # [Nf] into coarse arrays
    coarse_energy: np.ndarray  # [Nc]
    coarse_layer: np.ndarray
    coarse_event: np.ndarray
    num_events: int
    seconds: float
    regression: np.ndarray | None = None  # [Nf] the regression baseline's prediction
    mode: str = "posterior"               # how ``samples`` were made (graphsr.models.sr3.MODES)
    factor: int = 2                       # fine cells per coarse cell per side
    fine_cell: np.ndarray | None = None   # [Nf] cell ids (fine geometry)
    coarse_cell: np.ndarray | None = None  # [Nc] cell ids (coarse geometry)
    particle_count: np.ndarray | None = None  # [E] true particles per event
    particle_e: np.ndarray | None = None  # [P] true particle energy (GeV), particles of an event consecutive
    particle_eta: np.ndarray | None = None
    particle_phi: np.ndarray | None = None
    center: np.ndarray | None = None      # [Nf] ensemble mean before the spread calibration (SuperResolver "mean")

    def ensemble_sums(self, size: int) -> np.ndarray:
        """[E] event sums of the mean of the first ``size`` members."""
        return m.per_event_sum(self.samples[:size].mean(0), self.event, self.num_events)

    @property
    def baselines(self) -> dict[str, np.ndarray]:
        """Cell-level baselines: the even split and, when given, the regression model."""
        out = {"even_split": self.even_split}
        if self.regression is not None:
            out["regression"] = self.regression
        return out

    @property
    def mean(self) -> np.ndarray:
        """[Nf] the ensemble mean (before the spread calibration, which widens intervals but does not move it)."""
        return self.samples.mean(0) if self.center is None else self.center


def generate(resolver, storage, events, *, ensemble: int = 10, sampler: str | None = None, steps: int | None = None,
             seed: int = 0, mode: str | None = None, regression=None, calibrated: bool = True,
             progress: bool = True) -> Generated:
    """Super-resolve ``events`` of a collated storage with ``ensemble`` samples each; truth and baselines alongside.

    ``regression``: an optional :class:`~graphsr.inference.SuperResolver` of a regression checkpoint (baseline).
    ``calibrated``: apply the checkpoint's post-hoc spread calibration.
    """
    import time

    events = torch.as_tensor(events)
    if "fine_energy" not in storage[0]:
        raise ValueError("evaluation needs the fine truth (a High_Tree): the input has coarse cells only")
    parts, start = [], time.perf_counter()
    coarse_offset = 0
    for i, chunk in tqdm(resolver.chunks(storage, events, ensemble), disable=None if progress else True,
                         desc="evaluating", unit="batch"):
        out = resolver(storage, chunk, sampler=sampler, steps=steps, ensemble=ensemble, seed=seed + i,
                       mode=mode, calibrated=calibrated)
        b = out["batch"].cpu()
        parts.append(dict(truth=b.fine_energy, samples=out["samples"].cpu(), estimate=out["estimate"].cpu(),
                          center=out["mean"].cpu(),
                          layer=b.fine_layer, eta=b.fine_pos[:, 0], phi=b.fine_pos[:, 1], event=b.batch + i,
                          parent=b.fine_parent + coarse_offset, coarse_energy=b.coarse_energy,
                          coarse_layer=b.coarse_layer, coarse_event=b.coarse_batch + i, fine_cell=b.fine_cell,
                          coarse_cell=b.coarse_cell))
        if "particle_kin" in b:
            kin = b.particle_kin.T
            parts[-1].update(particle_count=b.num_particles, particle_e=kin[0], particle_eta=kin[1],
                             particle_phi=kin[2])
        if regression is not None:
            parts[-1]["regression"] = regression(storage, chunk, ensemble=1)["mean"].cpu()
        coarse_offset += b.coarse_energy.numel()
    seconds = time.perf_counter() - start
    cat = {k: torch.cat([p[k] for p in parts], dim=-1).numpy() for k in parts[0]}
    cat = {k: v.astype(np.float64 if np.issubdtype(v.dtype, np.floating) else np.int64) for k, v in cat.items()}
    return Generated(even_split=m.even_split(cat["coarse_energy"], cat["parent"]), num_events=len(events),
                     seconds=seconds, mode=out["mode"], factor=resolver.factor, **cat)


def _pair(value_error):
    value, error = value_error
    return {"value": value, "error": error}


def _event_features(g: Generated, energy: np.ndarray) -> np.ndarray:
    """High-level features per event for FPD / KPD / AUC: per layer, energy fraction, widths, leading fraction,
    cells above threshold."""
    columns = []
    total = np.bincount(g.event, weights=energy, minlength=g.num_events)
    for layer in np.unique(g.layer):
        sel = g.layer == layer
        s = m.shower_shapes(energy[sel], g.eta[sel], g.phi[sel], g.event[sel], g.num_events, HIT_THRESHOLD,
                            SHOWER_WINDOW)
        columns += [s["energy"] / total, s["width_eta"], s["width_phi"], s["leading_fraction"], s["cells_above"]]
    return np.nan_to_num(np.stack(columns, axis=1))


def compute_metrics(g: Generated, ensemble_sizes=(1, 2, 5, 10, 25)) -> dict:
    """Every metric of the report as a nested, JSON-ready dict (values with their standard errors)."""
    k = g.samples.shape[0]
    sizes = [s for s in ensemble_sizes if s <= k]
    e_true = m.per_event_sum(g.truth, g.event, g.num_events)
    e_coarse = m.per_event_sum(g.coarse_energy, g.coarse_event, g.num_events)
    e_sr = m.per_event_sum(g.mean, g.event, g.num_events)
    sample_sums = np.stack([m.per_event_sum(s, g.event, g.num_events) for s in g.samples])  # [K, E]
    out = {"events": g.num_events, "ensemble": k, "mode": g.mode, "fine_cells": int(len(g.truth)),
           "seconds": g.seconds, "ms_per_event": 1000 * g.seconds / max(g.num_events, 1)}

    def spread_and_bias(estimate):
        return {"spread": _pair(m.relative_residual_spread(estimate, e_true)),
                "bias": _pair(m.relative_residual_mean(estimate, e_true))}

    # event level: the headline figure
    coarse_spread = m.relative_residual_spread(e_coarse, e_true)
    sr_spread = m.relative_residual_spread(e_sr, e_true)
    out["event"] = {
        "coarse": spread_and_bias(e_coarse),
        "super_resolved": spread_and_bias(e_sr),
        "single_sample": spread_and_bias(sample_sums[0]),
        "ratio": sr_spread[0] / coarse_spread[0],
        "ensemble_size": {str(s): _pair(m.relative_residual_spread(g.ensemble_sums(s), e_true)) for s in sizes},
    }
    if g.regression is not None:
        out["event"]["regression"] = spread_and_bias(m.per_event_sum(g.regression, g.event, g.num_events))
    per_layer = {}
    for layer in np.unique(g.layer):
        name = LAYER_NAMES[layer]
        sel, csel = g.layer == layer, g.coarse_layer == layer
        t = m.per_event_sum(g.truth[sel], g.event[sel], g.num_events)
        ok = t > 0.05 * np.median(t[t > 0]) if np.any(t > 0) else t > 0  # layers with almost no energy: skip events
        c = m.per_event_sum(g.coarse_energy[csel], g.coarse_event[csel], g.num_events)
        s = m.per_event_sum(g.mean[sel], g.event[sel], g.num_events)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            per_layer[name] = {"coarse_spread": _pair(m.relative_residual_spread(c[ok], t[ok])),
                               "super_resolved_spread": _pair(m.relative_residual_spread(s[ok], t[ok])),
                               "events": int(ok.sum())}
    out["event"]["per_layer"] = per_layer

    # cell level, per layer
    estimates = {"super_resolved_mean": g.mean, "super_resolved_estimate": g.estimate,
                 "super_resolved_sample": g.samples[0], **g.baselines}
    cells = {}
    for layer in np.unique(g.layer):
        sel = g.layer == layer
        truth = g.truth[sel]
        entry = {"truth": {"hits_per_event": float(np.sum(truth > HIT_THRESHOLD) / g.num_events)}}
        for name, est in estimates.items():
            entry[name] = {
                "rmse": _pair(m.cell_error(est[sel], truth)),
                "wasserstein": _pair(m.wasserstein(est[sel], truth)),
                "occupancy": m.occupancy(est[sel], truth, HIT_THRESHOLD),
                "hits_per_event": float(np.sum(est[sel] > HIT_THRESHOLD) / g.num_events),
                "hallucinated_fraction": m.hallucinated_fraction(est[sel], truth),
                "hallucinated_gev_per_event": float(np.clip(est[sel], 0, None)[truth == 0].sum() / g.num_events),
            }
        cells[LAYER_NAMES[layer]] = entry
    out["cell"] = cells

    # how sure: coverage of the truth by the ensemble's central intervals; cells whose truth is zero are not counted
    # (an interval reaching zero covers them for free): their energy is the hallucinated energy above
    if k > 1:
        hit = g.truth > HIT_THRESHOLD
        totals = np.stack([np.bincount(g.parent, weights=s, minlength=len(g.coarse_energy)) for s in g.samples])
        coarse_truth = np.bincount(g.parent, weights=g.truth, minlength=len(g.coarse_energy))
        out["coverage"] = {
            "event_energy": {str(lv): _pair(m.coverage(sample_sums, e_true, lv)) for lv in COVERAGE_LEVELS},
            "coarse_cells": {str(lv): _pair(m.coverage(totals, coarse_truth, lv)) for lv in COVERAGE_LEVELS},
            "hit_cells": {str(lv): _pair(m.coverage(g.samples[:, hit], g.truth[hit], lv)) for lv in COVERAGE_LEVELS},
            "hit_cells_per_layer": {LAYER_NAMES[la]: _pair(m.coverage(g.samples[:, hit & (g.layer == la)],
                                                                      g.truth[hit & (g.layer == la)]))
                                    for la in np.unique(g.layer)},
        }

    # shower shapes: distance of each shape's distribution to the truth's
    shapes = {}
    for layer in np.unique(g.layer):
        sel = g.layer == layer
        args = (g.eta[sel], g.phi[sel], g.event[sel], g.num_events, HIT_THRESHOLD, SHOWER_WINDOW)
        truth_shapes = m.shower_shapes(g.truth[sel], *args)
        layer_out = {}
        for name, est in (("super_resolved_sample", g.samples[0]), ("super_resolved_estimate", g.estimate),
                          *g.baselines.items()):
            est_shapes = m.shower_shapes(est[sel], *args)
            layer_out[name] = {}
            for shape in m.SHOWER_SHAPES:
                a, b = est_shapes[shape], truth_shapes[shape]
                ok = np.isfinite(a) & np.isfinite(b)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    layer_out[name][shape] = _pair(m.wasserstein(a[ok], b[ok]))
        shapes[LAYER_NAMES[layer]] = layer_out
    out["shower_shapes"] = shapes

    # high-level physics distances, standardised by the truth
    truth_features = _event_features(g, g.truth)
    mu, sd = truth_features.mean(0), truth_features.std(0) + 1e-12
    physics = {}
    for name, est in (("super_resolved_sample", g.samples[0]), ("super_resolved_estimate", g.estimate),
                      *g.baselines.items()):
        features = (_event_features(g, est) - mu) / sd
        reference = (truth_features - mu) / sd
        physics[name] = {"fpd": _pair(m.frechet_physics_distance(features, reference)),
                         "kpd": _pair(m.kernel_physics_distance(features, reference)),
                         "classifier_auc": _pair(m.classifier_auc(reference, features))}
    out["physics_distances"] = physics

    # consistency with the measured parents: the posterior moves each total off the measurement by about the
    # noise (in units of the noise, the differences should look like the noise itself)
    from graphsr.detector import Geometry

    sums = np.bincount(g.parent, weights=g.mean, minlength=len(g.coarse_energy))
    sigma = Geometry.cocoa().coarsen(g.factor).noise[g.coarse_layer] / 1000.0
    out["consistency"] = {
        "parent_sum_max_relative": m.parent_sum_residual(g.mean, g.parent, g.coarse_energy),
        "parent_sum_mean_abs_gev": float(np.abs(sums - g.coarse_energy).mean()),
        "parent_minus_measured_in_noise_sd": float(np.std((sums - g.coarse_energy) / sigma)),
    }
    if g.particle_count is not None:
        out["particles"] = particle_reconstruction(g)
    out["published"] = PUBLISHED
    return out


def evaluate_other(resolver, storage, events, **generate_args) -> dict:
    """:func:`compute_metrics` of another checkpoint on the same events and settings (:func:`generate`), for
    :func:`graphsr.eval.compare.side_by_side`."""
    return compute_metrics(generate(resolver, storage, events, **generate_args))


def shifted_summary(g: Generated) -> dict:
    """The event-energy figures of :func:`compute_metrics` alone: spread ratio, biases and the 68% coverage."""
    e_true = m.per_event_sum(g.truth, g.event, g.num_events)
    e_coarse = m.per_event_sum(g.coarse_energy, g.coarse_event, g.num_events)
    sums = np.stack([m.per_event_sum(s, g.event, g.num_events) for s in g.samples])
    coarse, sr = m.relative_residual_spread(e_coarse, e_true), m.relative_residual_spread(sums.mean(0), e_true)
    return {"events": g.num_events, "coarse_spread": _pair(coarse), "super_resolved_spread": _pair(sr),
            "ratio": sr[0] / coarse[0], "coarse_bias": _pair(m.relative_residual_mean(e_coarse, e_true)),
            "super_resolved_bias": _pair(m.relative_residual_mean(sums.mean(0), e_true)),
            "coverage_68": _pair(m.coverage(sums, e_true)) if len(sums) > 1 else None}


def particle_reconstruction(g: Generated) -> dict:
    """Downstream check: :mod:`graphsr.eval.reconstruction` run on the fine truth, the super-resolved ensemble mean,
    the coarse cells (on their own grid) and the cell-level baselines, against the true particles."""
    from graphsr.detector import Geometry
    from graphsr.eval.reconstruction import find_particles, particle_metrics

    fine = Geometry.cocoa()
    inputs = {"fine_truth": (g.truth, g.fine_cell, g.event, fine),
              "super_resolved_mean": (g.mean, g.fine_cell, g.event, fine),
              "coarse": (g.coarse_energy, g.coarse_cell, g.coarse_event, fine.coarsen(g.factor)),
              **{name: (v, g.fine_cell, g.event, fine) for name, v in g.baselines.items()}}
    truth = (g.particle_count, g.particle_e, g.particle_eta, g.particle_phi)
    out = {name: particle_metrics(find_particles(energy, cell, event, g.num_events, geometry), *truth)
           for name, (energy, cell, event, geometry) in inputs.items()}
    if g.samples.shape[0] > 1:
        out["energy_coverage"] = particle_energy_coverage(g)
    return out


def particle_energy_coverage(g: Generated) -> dict:
    """How sure, downstream: for each true particle that the reconstruction finds on the fine truth, the central
    intervals of the energies the ensemble members' reconstructions give it (members that miss it count as zero
    energy), against the fine-truth reconstruction's energy. ``{level: (coverage, error)}`` and the particles used."""
    from graphsr.detector import Geometry
    from graphsr.eval.reconstruction import find_particles, match_particles

    fine = Geometry.cocoa()
    true_event = np.repeat(np.arange(g.num_events), g.particle_count)

    def matched_energy(energy):
        reco = find_particles(energy, g.fine_cell, g.event, g.num_events, fine)
        r, t = match_particles(reco["event"], reco["eta"], reco["phi"], true_event, g.particle_eta, g.particle_phi)
        out = np.full(len(true_event), np.nan)
        out[t] = reco["energy"][r]
        return out

    reference = matched_energy(g.truth)
    members = np.nan_to_num(np.stack([matched_energy(s) for s in g.samples]), nan=0.0)
    found = np.isfinite(reference)
    return {"particles": int(found.sum()),
            **{str(lv): _pair(m.coverage(members[:, found], reference[found], lv)) for lv in COVERAGE_LEVELS}}


def report_provenance(argv: list[str] | None = None) -> dict:
    """What made a report (:func:`graphsr.provenance.report_provenance`): the command line (default ``sys.argv``),
    the commit of graphsr's source, and the checkpoint given as ``--checkpoint`` with the config it was trained
    from (read from the checkpoint's own provenance; None where the checkpoint does not record it)."""
    from graphsr.provenance import option_value, report_provenance as record

    argv = list(sys.argv if argv is None else argv)
    checkpoint = option_value(argv, "--checkpoint")
    training = None
    if checkpoint:
        path = PRETRAINED if checkpoint == "pretrained" else Path(checkpoint)
        path = path / "checkpoint.pt" if path.is_dir() else path
        try:
            training = torch.load(path, map_location="cpu", weights_only=True).get("provenance")
        except Exception:  # a missing or foreign file: the report still says what ran
            training = None
    return record(argv, checkpoint=checkpoint, training=training)


def write_report(g: Generated, results: dict, out_dir: str | Path, *, title: str = "graphsr evaluation",
                 displays: list | None = None, provenance: dict | None = None) -> Path:
    """``metrics.json``, PNG plots and ``report.md`` in ``out_dir``; returns the report's path.

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
             "Cardinality: events whose reconstructed count equals the true count, per true count. Residuals: std "
             "of matched particles' (E - E_true) / E_true, eta - eta_true, phi - phi_true.", "",
             "| input | " + " | ".join(f"cardinality {n}" for n in counts) +
             " | efficiency | fakes | energy | eta | phi |", "|---|" + "---|" * (len(counts) + 5)]
    for name, v in particles.items():
        card = " | ".join(f"{100 * v['cardinality'][n]['value']:.1f}%" if n in v["cardinality"] else "" for n in counts)
        lines.append(f"| {name} | {card} | {v['efficiency']:.3f} | {v['fake_rate']:.3f} | "
                     f"{_fmt(v['energy'], 3)} | {_fmt(v['eta'], 4)} | {_fmt(v['phi'], 4)} |")
    for i, label in enumerate(("coarse", "super-resolved")):
        card = " | ".join(f"{100 * published['cardinality'][n][i]:.2f}%" if n in published["cardinality"] else ""
                          for n in counts)
        lines.append(f"| published particle-flow model, {label} input (multi-particle 4x) | {card} | | | "
                     f"{published['energy'][i]} | {published['eta'][i]} | {published['phi'][i]} |")
    lines += ["", "The published rows come from a trained particle-flow model on COCOA's multi-particle set, ours "
              "from the simple reconstruction on our simulation: compare how each input moves the figures, not "
              "the absolute values.", ""]
    return lines


def _markdown(r: dict, title: str, displays: list) -> str:
    ev = r["event"]
    lines = [f"# {title}", "",
             f"{r['events']} held-out events, {r['fine_cells']} fine cells, ensemble of {r['ensemble']} samples, "
             f"{r['ms_per_event']:.0f} ms per event (all samples).", "",
             "## How close: event ECAL energy against the fine truth", "",
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
             " (published: 2: 0.0041, 5: 0.0036, 10: 0.0034, 25: 0.0032).", "",
             "![ensemble size](ensemble_size.png) ![residuals](event_energy_residual.png)", "",
             "Per layer (relative spread, coarse -> super-resolved): " + "; ".join(
                 f"{name}: {_fmt(v['coarse_spread'])} -> {_fmt(v['super_resolved_spread'])}"
                 for name, v in ev["per_layer"].items()), "",
             "## Where wrong: cells, shapes and invented energy", "",
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
    if "particles" in r:
        lines += _particles_markdown(r["particles"])
    if "reco" in r:
        from graphsr.eval.reco_report import reco_markdown

        lines += reco_markdown(r["reco"], PUBLISHED["multi_particle"])
    lines += ["## How sure: ensemble calibration", ""]
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
    lines += [              "![calibration](calibration.png)", "",
              "## Consistency with the measured coarse cells", "",
              f"Children of a parent sum to within {r['consistency']['parent_sum_mean_abs_gev']:.4f} GeV of the "
              f"measured parent on average, {r['consistency']['parent_minus_measured_in_noise_sd']:.2f} noise sigmas "
              "(sd): the posterior mode removes noise, so it moves totals off the measurement by about the noise; "
              "`--mode conserving` holds them to the measurement.", ""]
    if "shifted_inputs" in r:
        lines += ["## Inputs outside the training range", "",
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
    if "comparison" in r:
        lines += comparison_markdown(r["comparison"])
    if displays:
        lines += ["## Event displays", ""] + [f"![{label}]({Path(p).name})" for label, p in displays] + [""]
    if r.get("provenance"):
        made = r["provenance"]
        lines += ["## Provenance", "",
                  f"Command: `{made.get('command') or 'unknown'}`; commit {made.get('commit') or 'unknown'}"
                  f"{' (with uncommitted changes)' if made.get('dirty') else ''}; checkpoint "
                  f"{made.get('checkpoint') or 'unknown'}, trained from config {made.get('config') or 'unknown'}.", ""]
    return "\n".join(lines)
