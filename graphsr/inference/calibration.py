"""The post-hoc spread and occupancy calibration, fitted on validation events."""

from __future__ import annotations

import warnings

import numpy as np
import torch

from graphsr.detector import Geometry
from graphsr.detector.geometry import LAYER_NAMES
from graphsr.inference.estimate import point_estimate, spread_totals
from graphsr.inference.resolver import SuperResolver
from graphsr.units import HIT_THRESHOLD


def fit_occupancy(ensembles: list[tuple[torch.Tensor, object]], threshold: float = HIT_THRESHOLD,
                  low: float = 0.25, high: float = 4.0, rounds: int = 20) -> dict:
    """The occupancy calibration of the :func:`point_estimate`, fitted on validation events: per layer, the factor on
    the members' average count of hit children that gives the estimate as many fine cells above ``threshold`` as
    the truth has (bisected in log between ``low`` and ``high``; 1 for a layer without truth hits).

    A model short of training spreads each member's shower over more children than the truth hits (the 3-minute
    multi-particle model: +20% in ECAL1 at 8 steps); its estimate inherits that count. The factor brings the
    written occupancy to the truth's on average, without moving any coarse cell's energy; a well-trained model's
    factors are near 1.

    ``ensembles``: ``(samples [K, Nf] GeV, batch with fine_energy)`` pairs. Returns ``{"scale": [6 layers],
    "truth", "before", "after": hits per layer summed over the events}``.
    """
    layers = Geometry.cocoa().num_layers  # every calorimeter layer, kept or not

    def hits(values, i):
        return torch.bincount(ensembles[i][1].fine_layer[values > threshold], minlength=layers).double()

    truth = sum(hits(batch.fine_energy, i) for i, (_, batch) in enumerate(ensembles))

    def estimate_hits(scale):
        return sum(hits(point_estimate(samples, batch, threshold, scale), i)
                   for i, (samples, batch) in enumerate(ensembles))

    before = estimate_hits(torch.ones(layers))
    below, above = torch.full((layers,), low), torch.full((layers,), high)
    for _ in range(rounds):  # each layer's count depends on its own factor only: all layers bisected at once
        middle = (below * above).sqrt()
        short = estimate_hits(middle) < truth
        below, above = torch.where(short, middle, below), torch.where(short, above, middle)
    scale = torch.where((truth > 0) & (before > 0), (below * above).sqrt(), torch.ones(layers))
    return {"scale": scale.tolist(), "truth": truth.tolist(), "before": before.tolist(),
            "after": estimate_hits(scale).tolist()}


def occupancy_text(calibration: dict) -> str:
    """One line on a calibration's occupancy factors: per layer with truth hits, the factor and the estimate's hits
    before -> after against the truth's (validation events)."""

    occupancy = calibration.get("occupancy")
    if not occupancy:
        return "the members' (no occupancy calibration)"
    rows = [f"{LAYER_NAMES[layer]} {scale:.2f} ({before:.0f} -> {after:.0f}, truth {truth:.0f})"
            for layer, (scale, truth, before, after) in enumerate(zip(*(occupancy[k] for k in
                                                                      ("scale", "truth", "before", "after"))))
            if truth > 0]
    return "occupancy factors (written hits on the validation events) " + ", ".join(rows)


def central_coverage(samples: torch.Tensor, truth: torch.Tensor, level: float = 0.68) -> float:
    """Fraction of ``truth`` ([N]) inside the central ``level`` interval of ``samples`` ([K, N])."""
    lo, hi = torch.quantile(samples, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=samples.dtype,
                                                  device=samples.device), dim=0)
    return float(((truth >= lo) & (truth <= hi)).float().mean())


def _smallest_reaching(function, target: float, low: float = 0.25, high: float = 16.0, rounds: int = 8) -> float:
    """The smallest x in [low, high] where ``function`` reaches ``target``: scanned on a grid of steps of sqrt(2),
    then bisected in log x inside the first step that reaches it. Coverage need not grow for ever with the factor
    (members pushed far apart all land on a parent's extremes), so a plain bisection over the whole range can run
    off to its end; where nothing reaches ``target``, the x of the highest value, with a warning."""
    grid = np.geomspace(low, high, int(round(2 * np.log2(high / low))) + 1)
    values = []
    for x in grid:
        values.append(function(float(x)))
        if values[-1] >= target:
            break
    else:
        best = float(grid[int(np.argmax(values))])
        warnings.warn(f"calibration: no factor in [{low}, {high}] reaches coverage {target:.2f} (at best "
                      f"{max(values):.3f}, at {best:.2f}); using that one", stacklevel=3)
        return best
    if len(values) == 1:
        return float(grid[0])
    below, above = float(grid[len(values) - 2]), float(grid[len(values) - 1])
    for _ in range(rounds):
        middle = float(np.sqrt(below * above))
        below, above = (middle, above) if function(middle) < target else (below, middle)
    return above


def fit_calibration(resolver: SuperResolver, storage, events: torch.Tensor, *, ensemble: int | None = None,
                    seed: int = 20_000, level: float = 0.68, sampler: str | None = None, steps: int | None = None,
                    eta: float | None = None) -> dict:
    """The post-hoc spread calibration, fitted on validation events (never on test events).

    The ensemble members are moved away from (or towards) their mean by one factor for the coarse totals
    (:func:`spread_totals`) and one for the fine shares (:func:`inflate` in log space): the coarse factor is chosen
    so that the central ``level`` interval of the event ECAL energy covers ``level`` of the validation events, then
    the fine factor so that the same holds for the hit fine cells (truth above 1 MeV). Each is the smallest factor
    between 0.25 and 16 that reaches the level (:func:`_smallest_reaching`): the smallest widening keeps single
    members most like the truth (a fine factor of 16 made members put each parent's energy in one child). Both
    apply to ensembles of the size they were fitted with (the interval of a few members is itself narrower than the
    distribution's). The means barely move; the intervals get the width they should have.

    Both generators are fitted alike, through the resolver's :meth:`~SuperResolver.totals` and
    :meth:`~SuperResolver.energies`: for the pyramid (:class:`PyramidResolver`) the factors act on its first level's
    totals and on the log-shares of the cells each member hit; which cells are hit stays as its stage 1 drew them.

    The factors hold for the sampling settings they were fitted with (``sampler``, ``steps``, ``eta``: default the
    checkpoint's): more steps give sharper members that need other factors. They are recorded, and
    :class:`SuperResolver` warns when it samples with other settings.

    The same members, before any widening, fit the occupancy calibration of the written estimate
    (:func:`fit_occupancy`).

    Returns ``{"coarse", "fine", "occupancy", "events", "ensemble", "sampler", "steps", "eta", "level", "coverage":
    {before / after}}``, what :class:`SuperResolver` applies (the trainer stores it in the checkpoint).
    """
    settings = resolver.sampling(sampler, steps, eta, ensemble)
    ensemble = settings["ensemble"]
    if ensemble < 2:
        raise ValueError("calibration needs an ensemble of at least 2 members")
    parts = []
    for i, chunk in resolver.chunks(storage, torch.as_tensor(events), ensemble):
        generated = resolver.generate(storage, chunk, ensemble=ensemble, seed=seed + i, mode="posterior",
                                      sampler=settings["sampler"], steps=settings["steps"], eta=settings["eta"])
        parts.append({k: v.cpu() if k != "mode" else v for k, v in generated.items() if k != "trajectory"})

    def event_sums(part, coarse_factor):
        totals = spread_totals(resolver.totals(part), coarse_factor)
        return torch.zeros(len(totals), part["batch"].num_graphs).index_add_(1, part["batch"].coarse_batch, totals)

    truth = torch.cat([torch.zeros(p["batch"].num_graphs).index_add_(0, p["batch"].batch, p["batch"].fine_energy)
                       for p in parts])

    def event_coverage(coarse_factor):
        return central_coverage(torch.cat([event_sums(p, coarse_factor) for p in parts], dim=1), truth, level)

    def cell_coverage(coarse_factor, fine_factor):
        inside, count = 0.0, 0
        for p in parts:
            energy = resolver.energies(p, totals=spread_totals(resolver.totals(p), coarse_factor),
                                       fine_factor=fine_factor)
            hit = p["batch"].fine_energy > HIT_THRESHOLD
            inside += central_coverage(energy[:, hit], p["batch"].fine_energy[hit], level) * int(hit.sum())
            count += int(hit.sum())
        return inside / max(count, 1)

    coarse = _smallest_reaching(event_coverage, level)
    fine = _smallest_reaching(lambda f: cell_coverage(coarse, f), level)
    occupancy = fit_occupancy([(resolver.decode(p, "posterior", calibrated=False), p["batch"]) for p in parts])
    return {"coarse": coarse, "fine": fine, "occupancy": occupancy, "events": len(events), **settings,
            "level": level,
            "coverage": {"event_before": event_coverage(1.0), "event_after": event_coverage(coarse),
                         "cells_before": cell_coverage(1.0, 1.0), "cells_after": cell_coverage(coarse, fine)}}
