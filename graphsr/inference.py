"""Super-resolve events with a trained checkpoint: ensembles in one batched pass, energies back in GeV."""

from __future__ import annotations

import glob
import warnings
from pathlib import Path

import awkward as ak
import numpy as np
import torch
from tqdm import tqdm

from graphsr.config import Config, config_from_dict
from graphsr.datasets.cocoa import warn_if_noise_differs
from graphsr.diffusion import get_sampler, karras_sigmas
from graphsr.detector import Geometry
from graphsr.detector.geometry import LAYER_NAMES
from graphsr.graphs import GraphOptions, build_storage, collate_events
from graphsr.io import ALL_BRANCHES, GRAPH_BRANCHES_HIGH, CocoaWriter, file_digest, iter_cocoa, open_cocoa
from graphsr.io.select import select_cells
from graphsr.io.writer import MAPPING_BRANCHES
from graphsr.models.sr3 import EnergyModel, add_inputs, parent_sums, state_batch
from graphsr.provenance import file_hash, provenance
from graphsr.units import HIT_THRESHOLD, MEV_PER_GEV
from graphsr.simulation.topoclustering import neighbour_edges
from graphsr.training.checkpoint import load_checkpoint
from graphsr.training.trainer import build_denoiser, resolve_device


PRETRAINED = Path(__file__).parent / "pretrained" / "single_electron_2x.pt"


def pretrained_path() -> Path:
    """The shipped GPU-trained single-electron 2x model (``--checkpoint pretrained``; README, "Pretrained model")."""
    if not PRETRAINED.exists():
        raise FileNotFoundError(f"no pretrained model shipped at {PRETRAINED}: train one with `graphsr train` "
                                "(or run bench/gpu.sh on a GPU)")
    return PRETRAINED


class SuperResolver:
    """A trained denoiser with its energy model and calibration, ready to generate fine cells.

    Args:
        checkpoint: path of a ``graphsr train`` checkpoint, or ``"pretrained"`` (the shipped GPU-trained model).
        device: where to run ("auto": CUDA if present).
        use_ema: sample with the EMA weights (recommended) rather than the raw ones.
        max_nodes: fine cells (ensemble copies included) per sampler call in :meth:`chunks`; default 5,000 on CPU,
            where larger calls spend more time mapping and unmapping memory for their big edge tensors than
            computing (measured: 1.45x slower at 16 single-electron events x 10 copies), 200,000 on CUDA.
    """

    def __init__(self, checkpoint: str | Path, device: str | torch.device = "auto", use_ema: bool = True,
                 max_nodes: int | None = None):
        checkpoint = pretrained_path() if str(checkpoint) == "pretrained" else checkpoint
        self.checkpoint = Path(checkpoint)
        state = load_checkpoint(checkpoint)
        if "energy_model" not in state:
            raise ValueError(f"{checkpoint} was written by an older graphsr (logit-fraction energy target, before "
                             "the share / total energy model): retrain it with `graphsr train`")
        self.config: Config = config_from_dict(state["config"])
        self.device = resolve_device(str(device))
        self.denoiser = build_denoiser(self.config).to(self.device).eval()
        weights = state["ema"] if use_ema else state["model"]
        if use_ema:  # AveragedModel prefixes the wrapped module's keys and counts updates
            weights = {k.removeprefix("module."): v for k, v in weights.items() if k.startswith("module.")}
        self.denoiser.load_state_dict(weights)
        self.energy_model = EnergyModel(**state["energy_model"])
        self.calibration: dict | None = state.get("calibration")
        if self.calibration and self.calibration.get("fine", 0) >= 16.0:
            # checkpoints calibrated before the search of fit_calibration took the smallest factor that reaches
            # the level: their bisection ran off to the end of its range
            warnings.warn(f"{checkpoint}: its spread calibration sits at the end of its range (share factor "
                          f"{self.calibration['fine']:.0f}), which makes single samples unrealistic; refit it with "
                          f"`graphsr calibrate --checkpoint {checkpoint}`", stacklevel=2)
        self.training_range: dict | None = state.get("training_range")
        self.events: dict = state.get("events", {})
        # checkpoints written before grid edges have no "edges": their models were trained on kNN graphs
        self.graph_options = GraphOptions(**{k: tuple(v) if isinstance(v, list) else v
                                             for k, v in {"edges": "knn", **state["graph_options"]}.items()})
        self.step, self.factor = state["step"], state["factor"]
        # a distilled student samples on the grid it was trained for (graphsr.training.distill)
        self.sampling_sigmas = state.get("sampling_sigmas")
        self.coarse_geometry = Geometry.cocoa().coarsen(self.factor)
        self.max_nodes = max_nodes or (5_000 if self.device.type == "cpu" else 200_000)

    @property
    def generative(self) -> bool:
        return self.energy_model.kind == "shares"

    def chunks(self, storage, events: torch.Tensor, ensemble: int) -> list[tuple[int, torch.Tensor]]:
        """``events`` cut into consecutive chunks of about :attr:`max_nodes` fine cells times ``ensemble`` (events
        that start within one window of ``max_nodes`` share a call), one sampler call each:
        ``[(position of the chunk's first event in events, chunk)]``."""
        events = torch.as_tensor(events)
        size = torch.diff(storage[1]["fine_layer"])[events] * ensemble
        window = (torch.cumsum(size, 0) - size) // self.max_nodes  # events starting in one window share a call
        counts = torch.unique_consecutive(window, return_counts=True)[1].tolist()
        starts = [0, *torch.cumsum(torch.tensor(counts), 0).tolist()[:-1]]
        return list(zip(starts, torch.split(events, counts)))

    def outside_training_range(self, storage, events: torch.Tensor) -> float:
        """Fraction of ``events`` whose coarse ECAL energy or hottest coarse cell lies outside the 0.1-99.9%
        range of the training events (0 when the checkpoint has no record); events without cells do not count."""
        if not self.training_range:
            return 0.0
        batch = collate_events(*storage, torch.as_tensor(events))
        total = torch.zeros(batch.num_graphs).index_add_(0, batch.coarse_batch, batch.coarse_energy)
        hottest = torch.full((batch.num_graphs,), -float("inf")).scatter_reduce_(
            0, batch.coarse_batch, batch.coarse_energy, "amax")
        outside = torch.zeros(batch.num_graphs, dtype=torch.bool)
        for value, key in ((total, "event_energy"), (hottest, "hottest_cell")):
            lo, hi = self.training_range[key]
            outside |= (value < lo) | (value > hi)
        with_cells = torch.diff(batch._slice_dict["coarse_layer"]) > 0  # nothing is generated for the others
        return float(outside[with_cells].float().mean()) if with_cells.any() else 0.0

    def warn_if_outside(self, storage, events: torch.Tensor, where: str) -> float:
        """Warn when some events lie outside the training range (:meth:`outside_training_range`)."""
        fraction = self.outside_training_range(storage, events)
        if fraction > 0:
            lo, hi = self.training_range["event_energy"]
            warnings.warn(f"{where}: {100 * fraction:.1f}% of the events have a coarse ECAL energy ({lo:.1f}-{hi:.1f} "
                          "GeV in training) or a hottest coarse cell outside the range this model was trained on; "
                          "its output there is an extrapolation (see the report's section on shifted inputs)",
                          stacklevel=2)
        return fraction

    @property
    def count_scale(self) -> torch.Tensor | None:
        """The occupancy calibration's factors per layer (:func:`fit_occupancy`); None for calibrations before it,
        whose estimate keeps the members' count."""
        occupancy = (self.calibration or {}).get("occupancy")
        return torch.tensor(occupancy["scale"]) if occupancy else None

    def sampling(self, sampler: str | None = None, steps: int | None = None, eta: float | None = None,
                 ensemble: int | None = None) -> dict:
        """The sampling settings a call with these arguments uses (``None``: the checkpoint's ``sample`` config; a
        distilled student always samples with deterministic DDIM on its own grid)."""
        sc = self.config.sample
        if self.sampling_sigmas is not None:
            return {"sampler": "ddim", "steps": len(self.sampling_sigmas) - 1, "eta": 0.0,
                    "ensemble": ensemble or sc.ensemble}
        sampler = sampler or sc.sampler
        return {"sampler": sampler, "steps": steps or sc.steps,
                "eta": (sc.eta if eta is None else eta) if sampler == "ddim" else None,
                "ensemble": ensemble or sc.ensemble}

    def check_calibration(self, settings: dict) -> bool:
        """Whether the spread calibration was fitted for these sampling ``settings`` (:meth:`sampling`); warns once
        when not: the factors depend on how sharp the members are, which the sampler and its steps change, and
        on the ensemble size. A calibration without a record of its settings was fitted with the checkpoint's."""
        if self.calibration is None:
            return True
        fitted = {**self.sampling(), **{k: self.calibration[k] for k in settings if k in self.calibration}}
        if fitted == settings:
            return True
        if not getattr(self, "_warned_calibration", False):
            self._warned_calibration = True
            describe = lambda s: (f"{s['sampler']} {s['steps']} steps" +  # noqa: E731
                                  (f" (eta {s['eta']:g})" if s["eta"] is not None else "") +
                                  f", ensembles of {s['ensemble']}")
            warnings.warn(f"{self.checkpoint}: its spread calibration was fitted for {describe(fitted)}; these "
                          f"samples use {describe(settings)}, so their intervals are calibrated only approximately. "
                          f"Refit it for them: `graphsr calibrate --checkpoint {self.checkpoint} --sampler "
                          f"{settings['sampler']} --steps {settings['steps']} --ensemble {settings['ensemble']}`",
                          stacklevel=3)
        return False

    @torch.no_grad()
    def generate(self, storage, events: torch.Tensor, *, sampler: str | None = None, steps: int | None = None,
                 ensemble: int | None = None, seed: int = 0, eta: float | None = None, mode: str | None = None,
                 record_steps: bool = False) -> dict:
        """The raw generated targets of some events: ``fine`` [K, Nf] and ``coarse`` [K, Nc] (see
        :class:`~graphsr.models.sr3.EnergyModel`), ``batch`` (one copy of the events, with the network's inputs),
        ``mode`` (how :meth:`decode` decodes them by default) and optionally ``trajectory`` ([steps, Nf + Nc]: the
        denoised state of the first copy after every step)."""
        sc, dc = self.config.sample, self.config.diffusion
        if self.sampling_sigmas is not None:
            distilled = len(self.sampling_sigmas) - 1
            if steps not in (None, distilled) or sampler not in (None, "ddim"):
                raise ValueError(f"this checkpoint is a distilled student: it samples with deterministic DDIM in "
                                 f"{distilled} step(s) only")
            sampler, steps, eta = "ddim", distilled, 0.0
            sigmas = torch.as_tensor(self.sampling_sigmas, dtype=torch.float32, device=self.device)
        else:
            sampler, steps = sampler or sc.sampler, steps or sc.steps
            sigmas = karras_sigmas(steps, dc.sigma_min, dc.sigma_max, device=self.device)
        ensemble = ensemble or sc.ensemble
        events = torch.as_tensor(events)
        # copy-major order: [all events, copy 0], [all events, copy 1], ...: node tensors reshape to [K, N]
        batch = add_inputs(collate_events(*storage, events.repeat(ensemble)).to(self.device), self.factor)
        num_fine = batch.num_nodes
        nodes = state_batch(batch)
        generator = torch.Generator(self.device).manual_seed(seed)
        x = torch.randn(nodes.numel(), 1, generator=generator, device=self.device) * sigmas[0]
        trajectory = []
        callback = (lambda info: trajectory.append(info["denoised"][:, 0].clone())) if record_steps else None
        # the graph-only work (edge embeddings, cross edges) once for every step
        net_args = {"data": batch, "prepared": self.denoiser.net.backbone.prepare(batch)}
        if not self.generative:  # deterministic baseline: one evaluation gives the prediction
            ones = torch.ones(batch.num_graphs, device=self.device)
            target = self.denoiser(torch.zeros_like(x), ones, nodes, **net_args)[:, 0]
            trajectory = [target]
        else:
            options = {"eta": sc.eta if eta is None else eta} if sampler == "ddim" else {}
            target = get_sampler(sampler)(self.denoiser, x, sigmas, batch=nodes, extra_args=net_args,
                                          callback=callback, generator=generator, disable=True,
                                          num_graphs=batch.num_graphs, **options)[:, 0]
        single = add_inputs(collate_events(*storage, events).to(self.device), self.factor)
        out = {"batch": single, "fine": target[:num_fine].view(ensemble, -1),
               "coarse": target[num_fine:].view(ensemble, -1), "mode": mode or sc.mode}
        if record_steps:
            nf, nc = single.num_nodes, single.coarse_energy.numel()
            out["trajectory"] = torch.stack([torch.cat([t[:nf], t[num_fine:num_fine + nc]]) for t in trajectory])
        return out

    def totals(self, generated: dict, mode: str = "posterior") -> torch.Tensor:
        """``[K, Nc]`` generated total of every coarse cell's children (:meth:`generate`'s targets)."""
        return self.energy_model.totals(generated["batch"], generated["coarse"], mode)

    def energies(self, generated: dict, mode: str = "posterior", totals: torch.Tensor | None = None,
                 fine_factor: float = 1.0) -> torch.Tensor:
        """``[K, Nf]`` fine energies (GeV) of :meth:`generate`'s targets, the fine targets first :func:`inflate` by
        ``fine_factor``, each coarse cell's children sharing ``totals`` (default: :meth:`totals`)."""
        fine = generated["fine"] if fine_factor == 1.0 else inflate(generated["fine"], fine_factor)
        return self.energy_model.decode(generated["batch"], fine, generated["coarse"], mode, totals)

    def decode(self, generated: dict, mode: str | None = None, calibrated: bool = True) -> torch.Tensor:
        """``[K, Nf]`` fine energies (GeV) of :meth:`generate`'s targets (in their ``mode`` by default), with the
        checkpoint's spread calibration (:func:`fit_calibration`) applied when ``calibrated`` and the ensemble has
        at least 2 members."""
        mode = mode or generated["mode"]
        if not (calibrated and self.calibration and generated["fine"].size(0) > 1) or not self.generative:
            return self.energies(generated, mode)
        totals = self.totals(generated, mode)
        if mode == "posterior":
            totals = spread_totals(totals, self.calibration["coarse"])
        return self.energies(generated, mode, totals, self.calibration["fine"])

    def decode_trajectory(self, generated: dict, mode: str) -> torch.Tensor:
        """``[steps, Nf]`` fine energies (GeV) of :meth:`generate`'s ``trajectory``."""
        nf = generated["batch"].num_nodes
        return torch.stack([self.energy_model.decode(generated["batch"], t[:nf], t[nf:], mode)
                            for t in generated["trajectory"]])

    def __call__(self, storage, events: torch.Tensor, *, sampler: str | None = None, steps: int | None = None,
                 ensemble: int | None = None, seed: int = 0, mode: str | None = None, eta: float | None = None,
                 calibrated: bool = True, record_steps: bool = False) -> dict:
        """Generate fine-cell energies for some events of a collated storage.

        Args:
            storage: ``(data, slices)`` of a dataset (:meth:`~graphsr.datasets.CocoaDataset.storage`).
            events: [E] indices of the events to super-resolve.
            sampler, steps, ensemble: default to the checkpoint's ``sample`` config.
            seed: seed of the sampling noise (same seed, same samples on the same device).
            mode: ``"posterior"`` (children sum to a sample of their true total given the measurement) or
                ``"conserving"`` (they sum to the measurement itself). Default: the config's ``sample.mode``.
            eta: the ``ddim`` sampler's stochasticity (default: the config's ``sample.eta``).
            calibrated: apply the checkpoint's post-hoc spread calibration (ensembles of 2 or more).
            record_steps: also return the decoded estimate of the first copy after every step (``trajectory``:
                [steps, Nf]).

        Returns:
            dict with ``batch`` (the events, one copy), ``samples`` ([K, Nf] GeV, calibrated), ``spread`` ([Nf]:
            their standard deviation per fine cell), ``mean`` and ``estimate`` ([Nf]: ensemble mean and
            :func:`point_estimate` of the members before the spread calibration, with the occupancy calibration
            when ``calibrated``, :func:`ensemble_summary`), ``mode`` and
            optionally ``trajectory``.
        """
        mode = mode or self.config.sample.mode
        if calibrated and self.calibration and (ensemble or self.config.sample.ensemble) > 1:
            self.check_calibration(self.sampling(sampler, steps, eta, ensemble))
        generated = self.generate(storage, events, sampler=sampler, steps=steps, ensemble=ensemble, seed=seed,
                                  eta=eta, mode=mode, record_steps=record_steps)
        raw = self.decode(generated, mode, calibrated=False)
        samples = self.decode(generated, mode) if calibrated else raw
        out = ensemble_summary(samples, generated["batch"], mode, raw,
                               self.count_scale if calibrated and samples.size(0) > 1 else None)
        if record_steps:
            out["trajectory"] = self.decode_trajectory(generated, mode)
        return out


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


class PyramidResolver(SuperResolver):
    """A trained pyramid generator (:class:`~graphsr.models.pyramid.Pyramid`) behind the :class:`SuperResolver`
    calls: the same outputs on every child of every coarse cell (those the pyramid leaves empty are zero), so
    evaluation, :func:`fit_calibration` and :func:`super_resolve_file` treat both generators alike. Its raw targets
    are, per member, each fine cell's log-share of its coarse cell's total (-inf where that member has no hit) and
    the first level's totals, generated in one ``mode``; ``trajectory`` is the last level's estimate along its
    sampler."""

    @torch.no_grad()
    def generate(self, storage, events: torch.Tensor, *, sampler: str | None = None, steps: int | None = None,
                 ensemble: int | None = None, seed: int = 0, eta: float | None = None, mode: str | None = None,
                 record_steps: bool = False) -> dict:
        """The raw generated ensemble of some events: ``fine`` [K, Nf] (log-shares), ``totals`` [K, Nc],
        ``batch`` (one copy of the events), ``mode`` (later levels see the first level's energies, so the ensemble
        decodes in this mode only) and optionally ``trajectory`` ([steps, Nf] GeV, the first copy)."""
        sc, dc = self.config.sample, self.config.diffusion
        sampler, steps, ensemble = sampler or sc.sampler, steps or sc.steps, ensemble or sc.ensemble
        mode = mode or sc.mode
        events = torch.as_tensor(events)
        copies = collate_events(*storage, events.repeat(ensemble)).to(self.device)  # copy-major, as the dense path
        options = {"eta": sc.eta if eta is None else eta} if sampler == "ddim" else {}
        occupancy_steps = self.config.pyramid.occupancy_steps
        if occupancy_steps is not None:
            options["occupancy_sigmas"] = karras_sigmas(occupancy_steps, dc.sigma_min, dc.sigma_max,
                                                        device=self.device)
        out = self.denoiser.sample(copies, self.factor, sigmas=karras_sigmas(steps, dc.sigma_min, dc.sigma_max,
                                                                             device=self.device),
                                   generator=torch.Generator(self.device).manual_seed(seed), sampler=sampler,
                                   mode=mode, record_steps=record_steps, **options)
        single = collate_events(*storage, events).to(self.device)
        generated = {"batch": single, "fine": out["log_shares"].view(ensemble, -1),
                     "totals": out["totals"].view(ensemble, -1), "mode": mode}
        if record_steps:
            generated["trajectory"] = out["trajectory"][:, :single.num_nodes]
        return generated

    def totals(self, generated: dict, mode: str = "posterior") -> torch.Tensor:
        self._check_mode(generated, mode)
        return generated["totals"]

    def energies(self, generated: dict, mode: str = "posterior", totals: torch.Tensor | None = None,
                 fine_factor: float = 1.0) -> torch.Tensor:
        self._check_mode(generated, mode)
        fine = generated["fine"] if fine_factor == 1.0 else inflate(generated["fine"], fine_factor)
        totals = generated["totals"] if totals is None else totals
        # log-shares are the dense path's targets with mean 0 and std 1; a coarse cell none of whose children a
        # member hit has no shares (0 / 0): it holds no energy
        energy = EnergyModel("shares").decode(generated["batch"], fine, None, mode, totals)
        return torch.where(torch.isfinite(fine), energy, 0.0)

    def decode_trajectory(self, generated: dict, mode: str) -> torch.Tensor:
        return generated["trajectory"]

    @staticmethod
    def _check_mode(generated: dict, mode: str) -> None:
        if mode != generated["mode"]:
            raise ValueError(f"this pyramid ensemble was generated in {generated['mode']} mode and decodes in it "
                             f"only, not {mode}: generate it with mode={mode!r}")


def load_resolver(checkpoint: str | Path, device: str | torch.device = "auto", *, generator: str | None = None,
                  **kwargs) -> SuperResolver:
    """The resolver of a checkpoint's generator: :class:`SuperResolver` (dense) or :class:`PyramidResolver`.

    ``generator``: when given, the checkpoint must have been trained with it (else ValueError)."""
    checkpoint = pretrained_path() if str(checkpoint) == "pretrained" else checkpoint
    trained = config_from_dict(load_checkpoint(checkpoint)["config"]).model.generator
    if generator is not None and generator != trained:
        raise ValueError(f"{checkpoint} was trained with the {trained} generator, not {generator}: train one with "
                         f"`graphsr train --generator {generator}`")
    return (PyramidResolver if trained == "pyramid" else SuperResolver)(checkpoint, device, **kwargs)


def seen_entries(resolver: SuperResolver, path: str | Path, split: str = "test") -> torch.Tensor | None:
    """The entries of one file that the model trained or validated (calibrated) on, once ``split`` may score the
    file at all; None for a file the model never saw.

    ``test``: the file must be one the model trained on (same content hash, whatever its name); ``all``: one it
    never saw. Anything else is refused (ValueError), so that training events are never scored as held-out ones.
    """
    if split not in ("test", "all"):
        raise ValueError(f"unknown split {split!r}: 'test' (a training file's held-out events) or 'all' (a file "
                         "the model never saw)")
    digest = file_digest(path)
    used = {part: next((f["entries"] for f in resolver.events.get(part, []) if f["sha256"] == digest), None)
            for part in ("train", "val")}
    if used["train"] is None:
        if split == "test":
            raise ValueError(f"{path} is not a file this model trained on (no file with its content hash in "
                             "the checkpoint), so it has no held-out test events: pass --split all to score all "
                             "its events")
        return None
    seen = torch.cat([used["train"], used["val"] if used["val"] is not None else used["train"][:0]])
    if split == "all":
        raise ValueError(f"{path} holds {len(used['train'])} training and {len(seen) - len(used['train'])} "
                         "validation events of this model: --split all would score them; use --split test")
    return seen


def unseen_events(resolver: SuperResolver, dataset, split: str = "test") -> tuple[torch.Tensor, str]:
    """The events of a :class:`~graphsr.datasets.CocoaDataset` (whole, any number of files) that ``split`` may
    score (:func:`seen_entries`), and a sentence saying which."""
    data = dataset.storage()[0]
    files, entries = data.file, data.event
    keep = torch.zeros(len(entries), dtype=torch.bool)
    said = []
    for i, path in enumerate(dataset.files):
        seen = seen_entries(resolver, path, split)
        mine = files == i
        if seen is None:
            keep |= mine
            said.append(f"all {int(mine.sum())} events of {path} (a file the model never saw)")
            continue
        unseen = mine & ~torch.isin(entries, seen)
        keep |= unseen
        said.append(f"the {int(unseen.sum())} events of {path} the model neither trained nor validated on")
    return torch.nonzero(keep).squeeze(1), "; ".join(said)


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
    are hit but not on which, their mean gives several children above the threshold (on the multi-particle 4x
    events, 5 points of excess ECAL1 hits over the members' own). Counting per parent gives the estimate the
    members' occupancy on average and the ensemble mean's energy in every coarse cell.

    Which children: the median (for an even K, the lower of the two middle members) is where the typical member
    puts energy; the mean also ranks high a child that a few members fill with a whole shower core. On the
    multi-particle 4x CPU model's 300 held-out events, ranking by the median instead of the mean put 7% less energy
    into truth-empty ECAL1 children (0.97 -> 0.90 GeV per event), with the same hits and RMSE."""
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


def _unflatten(values: torch.Tensor, counts: np.ndarray, dtype) -> ak.Array:
    return ak.unflatten(np.asarray(values.detach().cpu().numpy(), dtype=dtype), counts)


def output_trees(data, slices, estimate: torch.Tensor, mean: torch.Tensor, spread: torch.Tensor,
                 geometry: Geometry | None = None, inputs: ak.Array | None = None, layers=None) -> dict:
    """COCOA super-resolution trees of generated events: ``Low_Tree`` the coarse cells used, ``High_Tree`` the
    generated fine cells in block order (MeV: ``cell_e`` the :func:`point_estimate`, ``cell_e_mean`` the ensemble
    mean, ``cell_e_spread`` the ensemble standard deviation) and their neighbour graph
    (``cell_to_cell_edge_start/_end``, as COCOA writes it), with the mapping between them. Readable by
    :func:`graphsr.io.iter_cocoa` like any COCOA file.

    ``inputs``: the input's coarse-tree events, whose branches ``Low_Tree`` keeps, restricted to the coarse cells
    of ``layers`` (those used: :func:`graphsr.io.select.select_cells`); graphsr's own coarse branches then only
    fill in what the input lacks, and the mapping is always the new one.
    """
    geometry = geometry or Geometry.cocoa()
    nc = np.diff(slices["coarse_layer"].numpy())
    nf = np.diff(slices["fine_layer"].numpy())
    factor = round(np.sqrt(len(data.fine_layer) / max(len(data.coarse_layer), 1))) or 1
    coarse_geometry = geometry.coarsen(factor)

    def cells(cell_ids, geom, counts, energy, edges=False):
        layer, ieta, iphi = geom.cell_index(cell_ids.numpy())
        eta, phi = geom.cell_center(layer, ieta, iphi)
        x, y, z = geom.cell_position(layer, ieta, iphi)
        columns = {"cell_layer": (layer, np.int32), "cell_x": (x, np.float32), "cell_y": (y, np.float32),
                   "cell_z": (z, np.float32), "cell_eta": (eta, np.float32), "cell_phi": (phi, np.float32)}
        out = {name: ak.unflatten(np.asarray(v, dtype=dt), counts) for name, (v, dt) in columns.items()}
        out["cell_e"] = _unflatten(energy * MEV_PER_GEV, counts, np.float32)
        if edges:  # COCOA's cell neighbour graph: per event, (neighbour, cell) pairs of in-event cell indices
            event = np.repeat(np.arange(len(counts)), counts)
            start, end = neighbour_edges(event, layer, ieta, iphi, geom)
            first = np.cumsum(counts) - counts
            per_event = np.bincount(event[end], minlength=len(counts))
            out["cell_to_cell_edge_start"] = ak.unflatten((start - first[event[start]]).astype(np.int32), per_event)
            out["cell_to_cell_edge_end"] = ak.unflatten((end - first[event[end]]).astype(np.int32), per_event)
        return out

    low = cells(data.coarse_cell, coarse_geometry, nc, data.coarse_energy)
    low["low_cell_to_high_cell_edge"] = _unflatten(data.fine_parent, nf, np.int32)
    fine_ptr = slices["fine_layer"]
    owner = torch.arange(len(nf)).repeat_interleave(torch.as_tensor(nf))
    low["high_cell_to_low_cell_edge"] = _unflatten(torch.arange(int(fine_ptr[-1])) - fine_ptr[owner], nf, np.int32)
    if "particle_kin" in data:
        counts = np.diff(slices["particle_kin"].numpy())
        e, eta, phi = data.particle_kin.T
        for name, value in (("particle_e", e * MEV_PER_GEV), ("particle_pt", e * MEV_PER_GEV / torch.cosh(eta)),
                            ("particle_eta", eta), ("particle_phi", phi)):
            low[name] = _unflatten(value, counts, np.float32)
        low["particle_pdgid"] = _unflatten(data.particle_pdgid, counts, np.int32)
    high = cells(data.fine_cell, geometry, nf, estimate, edges=True)
    high["cell_e_mean"] = _unflatten(mean * MEV_PER_GEV, nf, np.float32)
    high["cell_e_spread"] = _unflatten(spread * MEV_PER_GEV, nf, np.float32)
    if inputs is not None:
        used = np.isin(ak.to_numpy(ak.flatten(inputs.cell_layer)), layers)
        kept = select_cells(inputs, ak.unflatten(used, ak.num(inputs.cell_layer)))
        low = {**low, **{name: kept[name] for name in kept.fields if name not in MAPPING_BRANCHES}}
    return {"Low_Tree": ak.zip(low, depth_limit=1), "High_Tree": ak.zip(high, depth_limit=1)}


def super_resolve_file(resolver: SuperResolver, input_path: str | Path, output_path: str | Path, *,
                       overwrite: bool = False, step_size: int = 1000,
                       max_events: int | None = None, progress: bool = True, **sample_args) -> int:
    """Super-resolve every event of a COCOA file (``Low_Tree`` + ``High_Tree`` or plain ``Out_Tree``) into a
    new file (:func:`output_trees`), one output entry per input entry. ``Low_Tree`` keeps every branch of the
    input's coarse tree (particles, topoclusters, jets, tracks, ...) for the coarse cells used; the input's
    ``High_Tree`` is replaced by the generated one. Returns the number of events written.

    ``sample_args`` go to :meth:`SuperResolver.__call__` (sampler, steps, ensemble, seed, mode, eta). Warns when
    events lie outside the model's training range (:meth:`SuperResolver.warn_if_outside`).
    """
    info = open_cocoa(input_path)
    warn_if_noise_differs(input_path, info)
    high_branches = GRAPH_BRANCHES_HIGH if info.high_tree else None
    written = 0
    # the generated High_Tree is no noise-free truth (graphsr.io.reader accepts its negative energies)
    record = provenance("sample", config=resolver.config.to_dict(), inputs=[input_path],
                        seed=sample_args.get("seed", 0), generated_trees=["High_Tree"],
                        checkpoint={"path": str(resolver.checkpoint), "hash": file_hash(resolver.checkpoint),
                                    "step": resolver.step},
                        sampling={k: v for k, v in sample_args.items() if v is not None})
    with CocoaWriter(output_path, overwrite=overwrite, provenance=record) as writer, \
            tqdm(total=min(info.num_events, max_events or info.num_events), unit="event",
                 disable=None if progress else True, desc="super-resolving") as bar:
        for chunk in iter_cocoa(input_path, low_branches=ALL_BRANCHES, high_branches=high_branches,
                                step_size=step_size, max_events=max_events, factor=resolver.factor):
            data, slices = build_storage(chunk.low, chunk.high, resolver.graph_options, factor=resolver.factor,
                                         first_event=chunk.entry_start)
            resolver.warn_if_outside((data, slices), torch.arange(len(chunk)),
                                     f"{input_path}, entries {chunk.entry_start}-{chunk.entry_stop - 1}")
            parts = {"estimate": [], "mean": [], "spread": []}
            ensemble = sample_args.get("ensemble") or resolver.config.sample.ensemble
            for _, events in resolver.chunks((data, slices), torch.arange(len(chunk)), ensemble):
                result = resolver((data, slices), events, **sample_args)
                for key, values in parts.items():
                    values.append(result[key].cpu())
                bar.update(len(events))
            writer.write(output_trees(data, slices, *(torch.cat(parts[k]) for k in ("estimate", "mean", "spread")),
                                      inputs=chunk.low, layers=resolver.graph_options.layers))
            written += len(chunk)
    return written


def expand_inputs(patterns) -> list[Path]:
    """Files named by paths and glob patterns (``data/run_*.root``), in the order given, each pattern's matches
    sorted, each file once. FileNotFoundError names a missing file or a pattern that matches nothing."""
    files, resolved = [], set()
    for pattern in map(str, patterns):
        magic = glob.has_magic(pattern)
        matches = [m for m in sorted(glob.glob(pattern)) if Path(m).is_file()] if magic else [pattern]
        if not matches or not Path(matches[0]).is_file():
            raise FileNotFoundError(f"no file matches {pattern}" if magic else f"no file {pattern}")
        for path in map(Path, matches):
            if path.resolve() not in resolved:
                files.append(path)
                resolved.add(path.resolve())
    return files


def shard_outputs(inputs, output_dir: str | Path, *, overwrite: bool = False) -> list[Path]:
    """The output of each input in ``output_dir``: a file of the same name. Refuses (ValueError or
    FileExistsError, naming the files) two inputs of the same name, an output that is one of the inputs, and,
    without ``overwrite``, an output that exists, so that a refused call writes nothing."""
    inputs = [Path(p) for p in inputs]
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"{output_dir} is a file: with several inputs, the output must be a directory")
    outputs, named = [], {}
    for path in inputs:
        if path.name in named:
            raise ValueError(f"{named[path.name]} and {path} would both be written to {output_dir / path.name}")
        named[path.name] = path
        outputs.append(output_dir / path.name)
    for path, out in zip(inputs, outputs):
        if out.exists() and out.resolve() in {p.resolve() for p in inputs}:
            raise ValueError(f"{out} is an input: its output would replace it; choose another output directory")
        if out.exists() and not overwrite:
            raise FileExistsError(f"{out} (the output of {path}) exists; pass --overwrite to replace it")
    return outputs


def super_resolve_files(resolver: SuperResolver, inputs, output_dir: str | Path, *, overwrite: bool = False,
                        **kwargs) -> dict[Path, int]:
    """Super-resolve several COCOA files, one output each in ``output_dir`` (:func:`shard_outputs`; created if
    missing), one file at a time (:func:`super_resolve_file`, with ``kwargs``). Every input is opened and every
    output checked before anything is written. Returns the events written per output."""
    inputs = [Path(p) for p in inputs]
    outputs = shard_outputs(inputs, output_dir, overwrite=overwrite)
    for path in inputs:
        open_cocoa(path)  # a missing or malformed input is refused before any output exists
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    return {out: super_resolve_file(resolver, path, out, overwrite=overwrite, **kwargs)
            for path, out in zip(inputs, outputs)}
