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

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from graphsr.detector import Geometry
from graphsr.detector.geometry import LAYER_NAMES
from graphsr.eval import metrics as m
from graphsr.eval.reference import COVERAGE_LEVELS, PUBLISHED, SHOWER_WINDOW  # noqa: F401
from graphsr.eval.report import report_provenance, write_report  # noqa: F401 (importable from here)
from graphsr.units import HIT_THRESHOLD, MEV_PER_GEV


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
    """Every metric of the report as a nested, JSON-ready dict (values with their standard errors), one key per
    report section."""
    out = {"events": g.num_events, "ensemble": g.samples.shape[0], "mode": g.mode, "fine_cells": int(len(g.truth)),
           "seconds": g.seconds, "ms_per_event": 1000 * g.seconds / max(g.num_events, 1),
           "event": event_metrics(g, ensemble_sizes), "cell": cell_metrics(g)}
    if g.samples.shape[0] > 1:
        out["coverage"] = coverage_metrics(g)
    out["shower_shapes"] = shower_shape_metrics(g)
    out["physics_distances"] = physics_distances(g)
    out["consistency"] = consistency_metrics(g)
    if g.particle_count is not None:
        out["particles"] = particle_reconstruction(g)
    out["published"] = PUBLISHED
    return out


def event_metrics(g: Generated, ensemble_sizes=(1, 2, 5, 10, 25)) -> dict:
    """The headline: spread and bias of the event ECAL energy against the truth (coarse, ensemble mean, one sample,
    the regression baseline), their ratio, the spread against the ensemble size, and per layer."""
    e_true = m.per_event_sum(g.truth, g.event, g.num_events)
    e_coarse = m.per_event_sum(g.coarse_energy, g.coarse_event, g.num_events)
    e_sr = m.per_event_sum(g.mean, g.event, g.num_events)

    def spread_and_bias(estimate):
        return {"spread": _pair(m.relative_residual_spread(estimate, e_true)),
                "bias": _pair(m.relative_residual_mean(estimate, e_true))}

    out = {"coarse": spread_and_bias(e_coarse), "super_resolved": spread_and_bias(e_sr),
           "single_sample": spread_and_bias(m.per_event_sum(g.samples[0], g.event, g.num_events)),
           "ratio": m.relative_residual_spread(e_sr, e_true)[0] / m.relative_residual_spread(e_coarse, e_true)[0],
           "ensemble_size": {str(s): _pair(m.relative_residual_spread(g.ensemble_sums(s), e_true))
                             for s in ensemble_sizes if s <= g.samples.shape[0]}}
    if g.regression is not None:
        out["regression"] = spread_and_bias(m.per_event_sum(g.regression, g.event, g.num_events))
    per_layer = {}
    for layer in np.unique(g.layer):
        sel, csel = g.layer == layer, g.coarse_layer == layer
        t = m.per_event_sum(g.truth[sel], g.event[sel], g.num_events)
        ok = t > 0.05 * np.median(t[t > 0]) if np.any(t > 0) else t > 0  # layers with almost no energy: skip events
        c = m.per_event_sum(g.coarse_energy[csel], g.coarse_event[csel], g.num_events)
        s = m.per_event_sum(g.mean[sel], g.event[sel], g.num_events)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            per_layer[LAYER_NAMES[layer]] = {"coarse_spread": _pair(m.relative_residual_spread(c[ok], t[ok])),
                                             "super_resolved_spread": _pair(m.relative_residual_spread(s[ok], t[ok])),
                                             "events": int(ok.sum())}
    out["per_layer"] = per_layer
    return out


def cell_metrics(g: Generated) -> dict:
    """Per layer and estimate (ensemble mean, point estimate, one sample, the baselines): RMSE, Wasserstein distance,
    occupancy, hits and the energy placed in truth-empty cells."""
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
    return cells


def coverage_metrics(g: Generated) -> dict:
    """How sure: coverage of the truth by the ensemble's central intervals (event energy, coarse cells, hit fine
    cells). Cells whose truth is zero are not counted (an interval reaching zero covers them for free): their
    energy is the hallucinated energy of :func:`cell_metrics`."""
    e_true = m.per_event_sum(g.truth, g.event, g.num_events)
    sample_sums = np.stack([m.per_event_sum(s, g.event, g.num_events) for s in g.samples])  # [K, E]
    hit = g.truth > HIT_THRESHOLD
    totals = np.stack([np.bincount(g.parent, weights=s, minlength=len(g.coarse_energy)) for s in g.samples])
    coarse_truth = np.bincount(g.parent, weights=g.truth, minlength=len(g.coarse_energy))
    return {
        "event_energy": {str(lv): _pair(m.coverage(sample_sums, e_true, lv)) for lv in COVERAGE_LEVELS},
        "coarse_cells": {str(lv): _pair(m.coverage(totals, coarse_truth, lv)) for lv in COVERAGE_LEVELS},
        "hit_cells": {str(lv): _pair(m.coverage(g.samples[:, hit], g.truth[hit], lv)) for lv in COVERAGE_LEVELS},
        "hit_cells_per_layer": {LAYER_NAMES[la]: _pair(m.coverage(g.samples[:, hit & (g.layer == la)],
                                                                  g.truth[hit & (g.layer == la)]))
                                for la in np.unique(g.layer)},
    }


def shower_shape_metrics(g: Generated) -> dict:
    """Per layer and estimate: the Wasserstein distance of each shower shape's distribution to the truth's."""
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
    return shapes


def physics_distances(g: Generated) -> dict:
    """High-level physics distances of each estimate's event features to the truth's (standardised by the truth):
    FPD, KPD and a classifier's AUC."""
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
    return physics


def consistency_metrics(g: Generated) -> dict:
    """Consistency with the measured parents: the posterior moves each total off the measurement by about the
    noise (in units of the noise, the differences should look like the noise itself)."""
    sums = np.bincount(g.parent, weights=g.mean, minlength=len(g.coarse_energy))
    sigma = Geometry.cocoa().coarsen(g.factor).noise[g.coarse_layer] / MEV_PER_GEV
    return {"parent_sum_max_relative": m.parent_sum_residual(g.mean, g.parent, g.coarse_energy),
            "parent_sum_mean_abs_gev": float(np.abs(sums - g.coarse_energy).mean()),
            "parent_minus_measured_in_noise_sd": float(np.std((sums - g.coarse_energy) / sigma))}


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
    the point estimate that ``graphsr sample`` writes, one sample, the coarse cells (on their own grid) and the
    cell-level baselines, against the true particles."""
    from graphsr.eval.reconstruction import find_particles, particle_metrics

    fine = Geometry.cocoa()
    inputs = {"fine_truth": (g.truth, g.fine_cell, g.event, fine),
              "super_resolved_mean": (g.mean, g.fine_cell, g.event, fine),
              "super_resolved_estimate": (g.estimate, g.fine_cell, g.event, fine),
              "super_resolved_sample": (g.samples[0], g.fine_cell, g.event, fine),
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
