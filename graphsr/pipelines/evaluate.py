"""``graphsr evaluate`` as one call: choose the events the model may be scored on, super-resolve them, compute every
metric (and the optional comparisons), draw the event displays and write the report."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from graphsr.datasets import read_events
from graphsr.eval.compare import side_by_side
from graphsr.eval.evaluate import compute_metrics, evaluate_other, generate, shifted_summary, write_report
from graphsr.eval.reco_report import evaluate_reco
from graphsr.graphs import build_storage
from graphsr.inference import SuperResolver, load_resolver, seen_entries
from graphsr.io import open_cocoa
from graphsr.plotting import event_display
from graphsr.simulation import SingleElectronGun, simulate_events

logger = logging.getLogger(__name__)

# single electrons off the default training distribution (pT 50 GeV at eta ~ 0)
SHIFTED_GUNS = {"pT 30 GeV, eta ~ 0": dict(pt_min=30_000, pt_max=31_000),
                "pT 80 GeV, eta ~ 0": dict(pt_min=80_000, pt_max=81_000),
                "pT 50 GeV, |eta| 0.4-0.6": dict(eta_min=0.4, eta_max=0.6)}


@dataclass
class Sampling:
    """How the evaluated ensembles are drawn (``None``: the checkpoint's setting)."""
    ensemble: int = 10
    sampler: str | None = None
    steps: int | None = None
    seed: int = 0
    mode: str | None = None
    calibrated: bool = True

    def args(self) -> dict:
        return dict(ensemble=self.ensemble, sampler=self.sampler, steps=self.steps, seed=self.seed, mode=self.mode,
                    calibrated=self.calibrated)


def shifted_inputs(resolver: SuperResolver, events: int, sampling: Sampling, seed: int = 7) -> dict:
    """The model on ``events`` single electrons of each :data:`SHIFTED_GUNS`, simulated here: spread ratio, bias and
    coverage of the event energy, and the fraction outside the model's training range."""
    out = {}
    for i, (name, settings) in enumerate(SHIFTED_GUNS.items()):
        trees = simulate_events(SingleElectronGun(**settings), events, factor=resolver.factor, seed=seed + i,
                                neighbour_branches=False)
        storage = build_storage(trees["Low_Tree"], trees["High_Tree"], resolver.graph_options, factor=resolver.factor)
        indices = torch.arange(len(storage[1]["event"]) - 1)
        outside = resolver.outside_training_range(storage, indices)
        generated = generate(resolver, storage, indices, progress=False, **sampling.args())
        out[name] = {**shifted_summary(generated), "outside_training_range": outside}
    return out


def event_displays(resolver: SuperResolver, storage, events: torch.Tensor, out: Path, sampling: Sampling) -> list:
    """For each event: the coarse cells, the truth, one sample and the estimate; and the denoised estimate along
    the sampler's steps. Returns ``[(label, path)]``."""
    displays = []
    for i, event in enumerate(events.tolist()):
        single = resolver(storage, torch.tensor([event]), record_steps=True, **sampling.args())
        data = single["batch"].cpu()
        path = event_display(data, out / f"event_{i}.png", {"one sample": single["samples"][0].cpu(),
                                                          f"estimate of {single['samples'].shape[0]}":
                                                          single["estimate"].cpu()},
                             title=f"event {int(data.event)}: coarse / truth / super-resolved")
        trajectory = single["trajectory"].cpu()
        picks = sorted({0, len(trajectory) // 3, 2 * len(trajectory) // 3, len(trajectory) - 1})
        steps_path = event_display(data, out / f"event_{i}_denoising.png",
                                   {f"step {s + 1} estimate": trajectory[s] for s in picks},
                                   title=f"event {int(data.event)}: denoised estimate along the sampler's steps")
        displays += [(f"event {i}", path), (f"event {i} denoising", steps_path)]
    return displays


def evaluate(resolver: SuperResolver, path: str | Path, out: str | Path, *, sampling: Sampling = Sampling(),
             split: str = "test", events: int | None = None, compare: str | Path | None = None,
             regression: str | Path | None = None, reco=(), shifted: int = 0, displays: int = 2,
             device: str = "auto", echo: Callable[[str], None] = logger.info) -> tuple[dict, Path]:
    """Score ``resolver`` on the events of ``path`` it may be scored on (:func:`~graphsr.inference.seen_entries`:
    ``split`` "test", a training file's held-out events; "all", a file it never saw), beside the baselines and, when
    given, a second generator (``compare``, on the same events), a regression baseline, particle-flow models
    (``reco``) and ``shifted`` simulated events off the training distribution; write ``out/metrics.json``,
    ``out/report.md`` and the plots. Returns ``(results, report path)``; ``echo`` says which events it scores."""
    other = load_resolver(compare, device=device) if compare else None
    seen = [seen_entries(r, path, split) for r in (resolver, other) if r is not None]
    seen = torch.cat([s for s in seen if s is not None] or [torch.zeros(0, dtype=torch.long)]).unique()  # by either
    # reads only the events it scores, chunk by chunk: memory grows with `events`, not with the file
    storage = read_events(path, resolver.graph_options, exclude=seen, max_events=events or None,
                          factor=resolver.factor)
    chosen = torch.arange(len(storage[1]["event"]) - 1)
    entries = open_cocoa(path).num_events
    where = (f"the {entries - len(seen)} events of {path} the model neither trained nor validated on"
             if split == "test" else f"all {entries} events of {path} (a file the model never saw)")
    where = f"{where}, unseen by {compare} too" if other is not None else where
    echo(f"evaluating {resolver.step}-step checkpoint on {len(chosen)} events ({where})")
    resolver.warn_if_outside(storage, chosen, str(path))
    baseline = SuperResolver(regression, device=device) if regression else None
    generated = generate(resolver, storage, chosen, regression=baseline, **sampling.args())
    results = compute_metrics(generated)
    results["calibration"] = resolver.calibration if sampling.calibrated else None
    if other is not None:
        results["comparison"] = side_by_side({
            f"{resolver.config.model.generator}: {resolver.checkpoint}": results,
            f"{other.config.model.generator}: {compare}": evaluate_other(other, storage, chosen, **sampling.args())})
    if shifted:
        results["shifted_inputs"] = shifted_inputs(resolver, shifted, sampling)
    if reco:
        results["reco"] = evaluate_reco(generated, reco, path, device=device)
    out = Path(out)
    drawn = event_displays(resolver, storage, chosen[:displays], out, sampling)
    report = write_report(generated, results, out, title=f"graphsr evaluation: {Path(path).name}", displays=drawn)
    return results, report
