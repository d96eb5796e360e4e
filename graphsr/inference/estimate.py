"""What an ensemble of generated fine cells gives: its spread widened or narrowed by the calibration factors, and the
point estimate that ``graphsr sample`` writes as ``cell_e``."""

from __future__ import annotations

import torch

from graphsr.models.sr3 import parent_sums
from graphsr.units import HIT_THRESHOLD


def inflate(values: torch.Tensor, factor: float) -> torch.Tensor:
    """Ensemble members ``[K, N]`` moved away from their mean by ``factor`` (> 1 widens, < 1 narrows).

    A value of -inf marks a member without that entry (a pyramid member that left the cell empty: its log-share):
    it stays -inf, and the mean is over the members that have the entry."""
    present = torch.isfinite(values)
    mean = torch.where(present, values, 0).sum(0, keepdim=True) / present.sum(0, keepdim=True).clamp_min(1)
    return torch.where(present, mean + factor * (values - mean), values)


def spread_totals(totals: torch.Tensor, factor: float) -> torch.Tensor:
    """Ensemble members' totals ``[K, Nc]`` (non-negative) spread by a power around their mean:
    ``T_k' = mean(T) (T_k / mean(T))**factor / mean_k((T_k / mean(T))**factor)``. Each cell's ensemble mean and
    the sign of every member are kept; where the members lie close together relative to their mean (hot cells) it is
    :func:`inflate` by ``factor``; near zero (cells that are probably noise) it widens without pushing members
    below zero, which a linear inflation followed by a clamp would do, biasing the mean upwards."""
    mean = totals.mean(0, keepdim=True)
    powered = (totals / mean.clamp_min(1e-12)).clamp_min(0).pow(factor)
    return powered / powered.mean(0, keepdim=True).clamp_min(1e-30) * mean


def point_estimate(samples: torch.Tensor, data, threshold: float = HIT_THRESHOLD,
                   count_scale: torch.Tensor | None = None) -> torch.Tensor:
    """One energy per fine cell from an ensemble ``[K, Nf]``: for each coarse cell, as many children as the members
    hit on average (above ``threshold``, rounded half up), those of highest median over the members (ties: highest
    mean), with the ensemble mean's energies scaled to keep the parent's mean total; its other children zero.
    Parents whose members hit less than half a child on average keep the plain mean.

    ``count_scale``: [layers] factors on the members' average count per coarse-cell layer before rounding (the
    occupancy calibration, :func:`fit_occupancy`); ``None`` keeps the members' count.

    The plain mean spreads a little energy over every child any member hit, so it shows more, fainter hits than the
    truth has. Keeping the children that half the members hit did too: where the members agree on how many children
    are hit but not on which, their mean gives several children above the threshold. Counting per parent gives the
    estimate the members' occupancy on average and the ensemble mean's energy in every coarse cell.

    Which children: the median (for an even K, the lower of the two middle members) is where the typical member
    puts energy; the mean also ranks high a child that a few members fill with a whole shower core, which puts
    energy into children the truth leaves empty."""
    mean = samples.mean(0)
    parent = data.fine_parent
    # hits summed over members and children (exact in float), then divided by the members and rounded half up
    hits = parent_sums((samples > threshold).float().sum(0), data).long()
    if count_scale is None:
        count = torch.div(2 * hits + len(samples), 2 * len(samples), rounding_mode="floor")
    else:
        scale = count_scale.to(mean)[data.coarse_layer]
        count = torch.floor(hits * scale / len(samples) + 0.5).long()
    # rank of each child within its parent by decreasing median, then mean (ties: the first child first)
    order = torch.argsort(mean, descending=True, stable=True)
    order = order[torch.argsort(samples.median(0).values[order], descending=True, stable=True)]
    order = order[torch.argsort(parent[order], stable=True)]
    sorted_parent = parent[order]
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order), device=order.device) - torch.searchsorted(sorted_parent, sorted_parent)
    keep = rank < count[parent]
    total = parent_sums(mean, data)
    kept = parent_sums(mean * keep, data)
    scale = torch.where(kept > 0, total / kept.clamp_min(1e-30), torch.ones_like(kept))
    keep = keep | (kept <= 0)[parent]
    return mean * keep * scale[parent]


def ensemble_summary(samples: torch.Tensor, batch, mode: str, raw: torch.Tensor | None = None,
                     count_scale: torch.Tensor | None = None) -> dict:
    """What a resolver returns for an ensemble ``[K, Nf]`` (GeV) of the events of ``batch``: the samples and their
    spread; the mean and :func:`point_estimate` (with the occupancy calibration's ``count_scale``) of ``raw``, the
    same members before the spread calibration (default: ``samples``). The calibration widens the intervals and
    must not move the estimate: widened log-shares average to a smeared mean with more, fainter hits (on
    multi-particle events, false local maxima)."""
    raw = samples if raw is None else raw
    return {"batch": batch, "samples": samples, "mode": mode, "mean": raw.mean(0),
            "spread": samples.std(0) if samples.size(0) > 1 and samples[0].numel() else torch.zeros_like(samples[0]),
            "estimate": point_estimate(raw, batch, count_scale=count_scale)}
