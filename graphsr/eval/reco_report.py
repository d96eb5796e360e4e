"""The learned particle-flow model in the evaluation: per input type and per true particle count, how often the
count is right (with the confusion matrix), fake and missed particles, and the energy / eta / phi residuals of
matched particles, beside the hand-written clustering (:mod:`graphsr.eval.reconstruction`) on the same cells and
the published particle-flow figures.

Every row is matched the same way: per event, reconstructed and true particles are paired by the Hungarian
algorithm on Delta R, and pairs further apart than the match radius count as one fake and one missed particle.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from graphsr.detector import Geometry
from graphsr.eval.metrics import as_numpy
from graphsr.eval.reconstruction import MATCH_RADIUS, find_particles
from graphsr.graphs import collate_events
from graphsr.io import file_digest
from graphsr.reco.model import hungarian_match
from graphsr.simulation.guns import wrap_phi

NO_MATCH = 1e6


def _slots(event: np.ndarray, num_events: int) -> np.ndarray:
    """``[num_events, largest count]`` index of each event's particles (consecutive or not), -1 where none."""
    count = np.bincount(event, minlength=num_events)
    order = np.argsort(event, kind="stable")
    slot = np.arange(len(event)) - (np.cumsum(count) - count)[event[order]]
    index = np.full((num_events, max(int(count.max(initial=0)), 1)), -1)
    index[event[order], slot] = order
    return index


def match_by_distance(reco_event, reco_eta, reco_phi, true_event, true_eta, true_phi, num_events: int, *,
                      max_dr: float = MATCH_RADIUS) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of reconstructed and true particles of the same event with the least total Delta R (Hungarian),
    keeping pairs closer than ``max_dr``. Returns ``(reco_index, true_index)``."""
    reco_event, true_event = (np.asarray(a, dtype=np.int64) for a in (reco_event, true_event))
    r_slot, t_slot = _slots(reco_event, num_events), _slots(true_event, num_events)
    # a dummy particle at the end: the empty slots (-1) read it
    reco_eta, reco_phi, true_eta, true_phi = (np.append(a, 0.0) for a in (reco_eta, reco_phi, true_eta, true_phi))
    dr = np.hypot(reco_eta[r_slot][:, :, None] - true_eta[t_slot][:, None, :],
                  wrap_phi(reco_phi[r_slot][:, :, None] - true_phi[t_slot][:, None, :]))
    dr[(r_slot < 0)[:, :, None] | (t_slot < 0)[:, None, :]] = NO_MATCH
    gated = np.where(dr < max_dr, dr, NO_MATCH)
    event, row, col = (a.numpy() for a in hungarian_match(torch.as_tensor(gated), (r_slot >= 0).sum(1),
                                                          (t_slot >= 0).sum(1)))
    keep = gated[event, row, col] < NO_MATCH
    return r_slot[event, row][keep], t_slot[event, col][keep]


def _sd(x: np.ndarray) -> dict:
    if len(x) < 2:
        return {"value": float("nan"), "error": float("nan")}
    s = float(np.std(x, ddof=1))
    return {"value": s, "error": s / np.sqrt(2 * (len(x) - 1))}


def particle_flow_metrics(reco: dict, true_count, true_energy, true_eta, true_phi, *, max_dr: float = MATCH_RADIUS,
                          max_count: int = 4) -> dict:
    """Per true particle count ``"1".."max_count"`` and ``"all"``: cardinality accuracy, confusion row, fakes and
    missed particles per event, and the spread of matched particles' residuals.

    Args:
        reco: ``count`` [E] and ``event``, ``energy`` (GeV), ``eta``, ``phi`` [R] (particles of an event need not
            be consecutive), e.g. :func:`~graphsr.eval.reconstruction.find_particles` or
            :class:`~graphsr.reco.ParticleFlowReco`.
        true_count: ``[E]``; true_energy, true_eta, true_phi: ``[P]``, particles of an event consecutive.

    Returns:
        ``cardinality[n]``: {value, error, events}; ``confusion[n]``: events by predicted count 0..max_count, then
        more; ``fakes[n]`` / ``missed[n]``: mean per event; ``energy[n]``: sd of (E - E_true) / E_true, ``eta[n]``,
        ``phi[n]``: sd of the differences ({value, error}); ``efficiency`` (true particles matched) and
        ``fake_rate`` (reconstructed particles unmatched) over all events.
    """
    true_count = np.asarray(as_numpy(true_count), dtype=np.int64)
    true_energy, true_eta, true_phi = (as_numpy(a) for a in (true_energy, true_eta, true_phi))
    num_events = len(true_count)
    true_event = np.repeat(np.arange(num_events), true_count)
    reco_event, reco_count = np.asarray(reco["event"], dtype=np.int64), np.asarray(reco["count"], dtype=np.int64)
    r, t = match_by_distance(reco_event, as_numpy(reco["eta"]), as_numpy(reco["phi"]), true_event, true_eta, true_phi,
                             num_events, max_dr=max_dr)
    matched = np.bincount(true_event[t], minlength=num_events)
    fakes, missed = reco_count - matched, true_count - matched
    residual = {"energy": (as_numpy(reco["energy"])[r] - true_energy[t]) / true_energy[t],
                "eta": as_numpy(reco["eta"])[r] - true_eta[t], "phi": wrap_phi(as_numpy(reco["phi"])[r] - true_phi[t])}
    out = {key: {} for key in ("cardinality", "confusion", "fakes", "missed", "energy", "eta", "phi")}
    groups = {str(n): true_count == n for n in range(1, max_count + 1)} | {"all": np.ones(num_events, dtype=bool)}
    for name, sel in groups.items():
        if not sel.any():
            continue
        p = float((reco_count[sel] == true_count[sel]).mean())
        out["cardinality"][name] = {"value": p, "error": float(np.sqrt(p * (1 - p) / sel.sum())),
                                    "events": int(sel.sum())}
        if name != "all":
            out["confusion"][name] = np.bincount(np.minimum(reco_count[sel], max_count + 1),
                                                 minlength=max_count + 2).tolist()
        out["fakes"][name], out["missed"][name] = float(fakes[sel].mean()), float(missed[sel].mean())
        pair = sel[true_event[t]]
        for key, values in residual.items():
            out[key][name] = _sd(values[pair])
    out["efficiency"] = len(t) / max(len(true_event), 1)
    out["fake_rate"] = 1 - len(r) / max(len(reco_event), 1)
    return out


def test_split_metrics(reco, test_set) -> dict:
    """A trained model on the held-out test events of its own data, beside the hand-written clustering on the same
    cells (:func:`graphsr.reco.train_reco` writes it to ``test_metrics.json``)."""
    events = torch.as_tensor(test_set.indices())
    batch = collate_events(*test_set.storage(), events)
    if reco.cell_set == "coarse":
        energy, pos, layer, event, cell = (batch.coarse_energy, batch.coarse_pos, batch.coarse_layer,
                                           batch.coarse_batch, batch.coarse_cell)
        geometry = Geometry.cocoa().coarsen(reco.factor)
    else:
        energy, pos, layer, event, cell = (batch.fine_energy, batch.fine_pos, batch.fine_layer, batch.batch,
                                           batch.fine_cell)
        geometry = Geometry.cocoa()
    n = batch.num_graphs
    truth = (batch.num_particles, *batch.particle_kin.T)
    options = {"max_dr": reco.config.model.match_radius, "max_count": reco.config.model.max_particles}
    return {"events": n, "input_type": reco.input_type, "step": reco.step,
            "learned": particle_flow_metrics(reco(energy, pos, layer, event, n), *truth, **options),
            "hand_clustering": particle_flow_metrics(find_particles(energy, cell, event, n, geometry), *truth,
                                                     **options)}


def cardinality_lines(title: str, rows: dict[str, dict]) -> list[str]:
    """Printable lines: ``title``, then the cardinality accuracy per true count of each row
    (:func:`particle_flow_metrics`)."""
    width = max(map(len, rows))
    return [title] + [f"  {label:{width}s}  " + "  ".join(f"{n}: {100 * c['value']:5.1f}% ({c['events']})"
                                                         for n, c in v["cardinality"].items())
                       for label, v in rows.items()]


def reco_inputs(g) -> dict[str, tuple]:
    """The cell sets a reconstruction can read for the evaluated events (:class:`graphsr.eval.evaluate.Generated`):
    ``{name: (energy GeV, positions [N, 2], layer, event, cell index, geometry)}`` for ``coarse``, ``truth``, ``sr``
    (what ``graphsr sample`` writes as ``cell_e``: the point estimate, which SR-input models learn from),
    ``sr_mean`` (the ensemble mean) and ``sr_sample`` (one sample)."""
    fine, coarse = Geometry.cocoa(), Geometry.cocoa().coarsen(g.factor)
    coarse_pos = np.stack(coarse.cell_center(*coarse.cell_index(g.coarse_cell)), 1)
    fine_pos = np.stack([g.eta, g.phi], 1)
    return {"coarse": (g.coarse_energy, coarse_pos, g.coarse_layer, g.coarse_event, g.coarse_cell, coarse),
            "truth": (g.truth, fine_pos, g.layer, g.event, g.fine_cell, fine),
            "sr": (g.estimate, fine_pos, g.layer, g.event, g.fine_cell, fine),
            "sr_mean": (g.mean, fine_pos, g.layer, g.event, g.fine_cell, fine),
            "sr_sample": (g.samples[0], fine_pos, g.layer, g.event, g.fine_cell, fine)}


def evaluate_reco(g, checkpoints: list[str | Path], input_path: str | Path, device: str = "auto") -> dict:
    """Learned particle-flow models on the evaluated events (:class:`graphsr.eval.evaluate.Generated`), each on its
    own input type; the truth-trained one also on the super-resolved cells (``sr``: the point estimate that
    ``graphsr sample`` writes as ``cell_e``, which SR-input models train on; ``sr_mean``: the ensemble mean;
    ``sr_sample``: one sample), and the hand-written clustering on coarse, truth, ``sr`` and ``sr_mean`` cells.

    Refuses a model that trained or validated on events of ``input_path`` (recognised by the file's content hash):
    the evaluation must run on events it never saw.
    """
    from graphsr.reco import ParticleFlowReco

    if g.particle_count is None:
        raise ValueError(f"{input_path} has no true particles (particle_* branches): no particle-flow evaluation")
    cells = reco_inputs(g)
    truth = (g.particle_count, g.particle_e, g.particle_eta, g.particle_phi)
    learned, models, digest = {}, {}, file_digest(input_path)
    for path in checkpoints:
        reco = ParticleFlowReco(path, device=device)
        if any(f["sha256"] == digest and len(f["entries"]) for part in reco.events.values() for f in part):
            raise ValueError(f"{path} trained or validated on events of {input_path} (same content hash): evaluate "
                             "it on events it never saw")
        options = {"max_dr": reco.config.model.match_radius, "max_count": reco.config.model.max_particles}
        inputs = ["truth", "sr", "sr_mean", "sr_sample"] if reco.input_type == "truth" else [reco.input_type]
        for name in inputs:
            energy, pos, layer, event, _, _ = cells[name]
            label = f"{reco.input_type}-trained on {name}"
            learned[label] = particle_flow_metrics(reco(energy, pos, layer, event, g.num_events), *truth, **options)
        models[reco.input_type] = {"checkpoint": str(path), "step": reco.step, "trained_on": reco.source_files}
    hand = {f"on {name}": particle_flow_metrics(find_particles(energy, cell, event, g.num_events, geometry), *truth)
            for name, (energy, _, _, event, cell, geometry) in cells.items() if name != "sr_sample"}
    return {"events": g.num_events, "models": models, "learned": learned, "hand_clustering": hand}


def report_rows(results: dict) -> dict[str, dict]:
    """Every row of :func:`evaluate_reco`: ``{"learned, <model> on <input>" or "hand clustering, on <input>":
    metrics}``."""
    return {f"learned, {k}": v for k, v in results["learned"].items()} | \
        {f"hand clustering, {k}": v for k, v in results["hand_clustering"].items()}


def _percent(entry: dict | None) -> str:
    return "" if entry is None else f"{100 * entry['value']:.1f} ± {100 * entry['error']:.1f}%"


def reco_markdown(results: dict, published: dict) -> list[str]:
    """The report section: tables of :func:`evaluate_reco` beside ``published`` (``PUBLISHED["multi_particle"]``
    of :mod:`graphsr.eval.evaluate`)."""
    rows = report_rows(results)
    counts = sorted({n for v in rows.values() for n in v["confusion"]}, key=int)
    lines = ["## Downstream: the learned particle-flow model", "",
             f"{results['events']} held-out events. Learned models (`graphsr train-reco`: "
             + ", ".join(f"{t} from {m['checkpoint']}, step {m['step']}" for t, m in results["models"].items())
             + ") trained on events apart from the super-resolution model's; each runs on its own input type, the "
             "truth-trained one also on super-resolved cells: does the SR look like truth to it? `sr` is what "
             "`graphsr sample` writes as `cell_e` (the point estimate), the input SR-input models train on; "
             "`sr_mean` the ensemble mean; `sr_sample` one sample. The hand-written clustering runs on the same "
             "cells. Particles are matched by the Hungarian algorithm on Delta R (< the match radius).", "",
             "Cardinality accuracy per true count:", "",
             "| input | " + " | ".join(f"{n} particle{'s' * (n != '1')}" for n in counts) + " | all |",
             "|---|" + "---|" * (len(counts) + 1)]
    for label, v in rows.items():
        lines.append(f"| {label} | " + " | ".join(_percent(v["cardinality"].get(n)) for n in counts) +
                     f" | {_percent(v['cardinality'].get('all'))} |")
    for i, label in enumerate(("coarse", "super-resolved")):
        lines.append(f"| published particle-flow model, {label} input | " + " | ".join(
            f"{100 * published['cardinality'][n][i]:.2f}%" if n in published["cardinality"] else "" for n in counts)
            + " | |")
    lines += ["", "Fake / missed particles per event, per true count:", "",
              "| input | " + " | ".join(f"{n} particle{'s' * (n != '1')}" for n in counts) + " | all |",
              "|---|" + "---|" * (len(counts) + 1)]
    for label, v in rows.items():
        lines.append(f"| {label} | " + " | ".join(f"{v['fakes'][n]:.3f} / {v['missed'][n]:.3f}" if n in v["fakes"]
                                                  else "" for n in counts + ["all"]) + " |")
    lines += ["", "Matched particles, spread of the residuals: (E - E_true) / E_true, eta - eta_true, phi - phi_true:",
              "", "| input | " + " | ".join(f"{n} particle{'s' * (n != '1')}" for n in counts) + " | all |",
              "|---|" + "---|" * (len(counts) + 1)]
    for label, v in rows.items():
        lines.append(f"| {label} | " + " | ".join(
            f"{v['energy'][n]['value']:.3f} / {v['eta'][n]['value']:.4f} / {v['phi'][n]['value']:.4f}"
            if n in v["energy"] else "" for n in counts + ["all"]) + " |")
    lines.append(f"| published particle-flow model, coarse -> super-resolved | | | | | "
                 f"{published['energy'][0]} -> {published['energy'][1]} / {published['eta'][0]} -> "
                 f"{published['eta'][1]} / {published['phi'][0]} -> {published['phi'][1]} |")
    columns = len(next(iter(rows.values()))["confusion"][counts[0]]) if counts else 0
    lines += ["", "Confusion matrices (events; rows: true count, columns: reconstructed count, the last one "
              "more):", ""]
    for label, v in rows.items():
        lines += [f"{label}:", "", "| true \\ reco | " + " | ".join(
            [str(c) for c in range(columns - 1)] + [f">{columns - 2}"]) + " |", "|---|" + "---|" * columns]
        lines += [f"| {n} | " + " | ".join(map(str, v["confusion"][n])) + " |" for n in counts if n in v["confusion"]]
        lines.append("")
    lines += ["The published figures come from a particle-flow model trained on COCOA's multi-particle set "
              "(their energy residual's definition may differ); ours from our simulation.", ""]
    return lines

