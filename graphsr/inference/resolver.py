"""A trained generator ready to super-resolve events: ensembles in one batched pass, energies back in GeV."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from graphsr.config import Config, config_from_dict
from graphsr.detector import Geometry
from graphsr.diffusion import get_sampler, karras_sigmas
from graphsr.graphs import GraphOptions, collate_events
from graphsr.inference.estimate import ensemble_summary, inflate, spread_totals
from graphsr.models.factory import build_denoiser
from graphsr.models.sr3 import EnergyModel, add_inputs, state_batch
from graphsr.nn import use_compile
from graphsr.training.checkpoint import load_checkpoint, model_weights
from graphsr.training.loop import resolve_device

PRETRAINED = Path(__file__).parents[1] / "pretrained" / "single_electron_2x.pt"


def pretrained_path() -> Path:
    """The shipped GPU-trained single-electron 2x model (``--checkpoint pretrained``; docs/gpu.md)."""
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
            computing, 200,000 on CUDA.
        compile: run the network through ``torch.compile`` (:func:`graphsr.nn.use_compile`): the same outputs
            within float rounding, several times faster once compiled (its first call takes tens of seconds on CPU);
            worth it for more than a few hundred events.
    """

    def __init__(self, checkpoint: str | Path, device: str | torch.device = "auto", use_ema: bool = True,
                 max_nodes: int | None = None, compile: bool = False):
        checkpoint = pretrained_path() if str(checkpoint) == "pretrained" else checkpoint
        self.checkpoint = Path(checkpoint)
        state = load_checkpoint(checkpoint)
        if "energy_model" not in state:
            raise ValueError(f"{checkpoint} was written by an older graphsr (logit-fraction energy target, before "
                             "the share / total energy model): retrain it with `graphsr train`")
        self.config: Config = config_from_dict(state["config"])
        self.device = resolve_device(str(device))
        self.denoiser = build_denoiser(self.config).to(self.device).eval()
        self.denoiser.load_state_dict(model_weights(state, use_ema))
        use_compile(self.denoiser, compile)
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

    def grid(self, steps: int) -> torch.Tensor:
        """The noise levels of ``steps`` sampling steps (and a final 0): ``sample.grid`` "karras" (EDM's), or
        "learned" (evenly in t of the model's learned schedule, :mod:`graphsr.diffusion.schedule`)."""
        sc, dc = self.config.sample, self.config.diffusion
        if sc.grid == "karras":
            return karras_sigmas(steps, dc.sigma_min, dc.sigma_max, device=self.device)
        learned = getattr(self.denoiser, "learned_schedule", None)
        if sc.grid != "learned":
            raise ValueError(f"unknown sample.grid {sc.grid!r}; choose 'karras' or 'learned'")
        if learned is None:
            raise ValueError(f"{self.checkpoint} has no learned schedule to take a grid from (diffusion."
                             "learned_schedule: true trains one): use sample.grid: karras")
        return learned.grid(steps, device=self.device)

    @torch.no_grad()
    def generate(self, storage, events: torch.Tensor, *, sampler: str | None = None, steps: int | None = None,
                 ensemble: int | None = None, seed: int = 0, eta: float | None = None, mode: str | None = None,
                 record_steps: bool = False) -> dict:
        """The raw generated targets of some events: ``fine`` [K, Nf] and ``coarse`` [K, Nc] (see
        :class:`~graphsr.models.sr3.EnergyModel`), ``batch`` (one copy of the events, with the network's inputs),
        ``mode`` (how :meth:`decode` decodes them by default) and optionally ``trajectory`` ([steps, Nf + Nc]: the
        denoised state of the first copy after every step)."""
        sc = self.config.sample
        if self.sampling_sigmas is not None:
            distilled = len(self.sampling_sigmas) - 1
            if steps not in (None, distilled) or sampler not in (None, "ddim"):
                raise ValueError(f"this checkpoint is a distilled student: it samples with deterministic DDIM in "
                                 f"{distilled} step(s) only")
            sampler, steps, eta = "ddim", distilled, 0.0
            sigmas = torch.as_tensor(self.sampling_sigmas, dtype=torch.float32, device=self.device)
        else:
            sampler, steps = sampler or sc.sampler, steps or sc.steps
            sigmas = self.grid(steps)
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
        # the graph-only work (edge embeddings, cross edges) once for every step and every copy
        single = add_inputs(collate_events(*storage, events).to(self.device), self.factor)
        net_args = {"data": batch, "prepared": self.denoiser.prepare(single, copies=ensemble)}
        if not self.generative:  # deterministic baseline: one evaluation gives the prediction
            ones = torch.ones(batch.num_graphs, device=self.device)
            target = self.denoiser(torch.zeros_like(x), ones, nodes, **net_args)[:, 0]
            trajectory = [target]
        else:
            options = {"eta": sc.eta if eta is None else eta} if sampler == "ddim" else {}
            target = get_sampler(sampler)(self.denoiser, x, sigmas, batch=nodes, extra_args=net_args,
                                          callback=callback, generator=generator, disable=True,
                                          num_graphs=batch.num_graphs, **options)[:, 0]
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
