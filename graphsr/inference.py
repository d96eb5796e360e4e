"""Super-resolve events with a trained checkpoint: ensembles in one batched pass, energies back in GeV."""

from __future__ import annotations

from pathlib import Path

import awkward as ak
import numpy as np
import torch
from tqdm import tqdm

from graphsr.config import Config, config_from_dict
from graphsr.diffusion import get_sampler, karras_sigmas
from graphsr.detector import Geometry
from graphsr.graphs import GraphOptions, build_storage, collate_events
from graphsr.graphs.build import MEV_PER_GEV
from graphsr.io import GRAPH_BRANCHES_HIGH, GRAPH_BRANCHES_LOW, CocoaWriter, iter_cocoa, open_cocoa
from graphsr.models.sr3 import MODES, add_inputs, conserve, fuse, target_transform
from graphsr.training.checkpoint import load_checkpoint
from graphsr.training.trainer import build_denoiser, resolve_device


class SuperResolver:
    """A trained denoiser with its data normalisation, ready to generate fine cells.

    Args:
        checkpoint: path of a ``graphsr train`` checkpoint.
        device: where to run ("auto": CUDA if present).
        use_ema: sample with the EMA weights (recommended) rather than the raw ones.
        max_nodes: fine cells (ensemble copies included) per sampler call in :meth:`chunks`; default 5,000 on CPU,
            where larger calls spend more time mapping and unmapping memory for their big edge tensors than
            computing (measured: 1.45x slower at 16 single-electron events x 10 copies), 200,000 on CUDA.
    """

    def __init__(self, checkpoint: str | Path, device: str | torch.device = "auto", use_ema: bool = True,
                 max_nodes: int | None = None):
        state = load_checkpoint(checkpoint)
        self.config: Config = config_from_dict(state["config"])
        self.device = resolve_device(str(device))
        self.denoiser = build_denoiser(self.config).to(self.device).eval()
        weights = state["ema"] if use_ema else state["model"]
        if use_ema:  # AveragedModel prefixes the wrapped module's keys and counts updates
            weights = {k.removeprefix("module."): v for k, v in weights.items() if k.startswith("module.")}
        self.denoiser.load_state_dict(weights)
        self.transform = target_transform(**state["normalisation"])
        self.graph_options = GraphOptions(**{k: tuple(v) if isinstance(v, list) else v
                                             for k, v in state["graph_options"].items()})
        self.step, self.factor = state["step"], state["factor"]
        self.coarse_geometry = Geometry.cocoa().coarsen(self.factor)
        self.max_nodes = max_nodes or (5_000 if self.device.type == "cpu" else 200_000)

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

    @torch.no_grad()
    def __call__(self, storage, events: torch.Tensor, *, sampler: str | None = None, steps: int | None = None,
                 ensemble: int | None = None, seed: int = 0, mode: str | None = None,
                 spread_scale: float | None = None, energy_scale: float | None = None, eta: float | None = None,
                 record_steps: bool = False) -> dict:
        """Generate fine-cell energies for some events of a collated storage.

        Args:
            storage: ``(data, slices)`` of a dataset (:meth:`~graphsr.datasets.CocoaDataset.storage`).
            events: [E] indices of the events to super-resolve.
            sampler, steps, ensemble: default to the checkpoint's ``sample`` config.
            seed: seed of the sampling noise (same seed, same samples on the same device).
            mode: ``"free"`` (children as generated: they may also remove the coarse noise), ``"conserving"``
                (each parent's children sum exactly to its measured energy) or ``"fused"`` (they sum to the
                measurement and the ensemble's estimate combined by their uncertainties: :func:`~graphsr.models.sr3.fuse`;
                needs ensemble >= 2). Default: the config's ``sample.mode``.
            spread_scale, energy_scale: fused mode's factors on the ensemble's spread and sums (default: the
                config's; :func:`graphsr.eval.evaluate.calibrate_fusion` chooses them on validation events).
            eta: the ``ddim`` sampler's stochasticity (default: the config's ``sample.eta``).
            record_steps: also return the denoised estimate after every step (``trajectory``: [steps, Nf]).

        Returns:
            dict with ``batch`` (the events, one copy), ``mean`` and ``spread`` ([Nf] GeV: ensemble mean and
            standard deviation per fine cell), ``samples`` ([K, Nf] GeV, in ``mode``), ``free_samples`` (the same
            before any conserving / fused projection), ``mode`` and optionally ``trajectory``.
        """
        sc, dc = self.config.sample, self.config.diffusion
        sampler, steps, ensemble = sampler or sc.sampler, steps or sc.steps, ensemble or sc.ensemble
        mode = mode or sc.mode
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose one of {MODES}")
        events = torch.as_tensor(events)
        # copy-major order: [all events, copy 0], [all events, copy 1], ...: node tensors reshape to [K, Nf]
        batch = add_inputs(collate_events(*storage, events.repeat(ensemble)).to(self.device))
        generator = torch.Generator(self.device).manual_seed(seed)
        sigmas = karras_sigmas(steps, dc.sigma_min, dc.sigma_max, device=self.device)
        x = torch.randn(batch.num_nodes, 1, generator=generator, device=self.device) * sigmas[0]
        trajectory = []
        callback = (lambda info: trajectory.append(info["denoised"][:, 0].clone())) if record_steps else None
        # the graph-only work (edge embeddings, cross edges) once for every step
        net_args = {"data": batch, "prepared": self.denoiser.net.backbone.prepare(batch)}
        if dc.parameterisation == "regression":  # deterministic baseline: one evaluation gives the prediction
            ones = torch.ones(batch.num_graphs, device=self.device)
            target = self.denoiser(torch.zeros_like(x), ones, batch.batch, **net_args)[:, 0]
            trajectory = [target]
        else:
            options = {"eta": sc.eta if eta is None else eta} if sampler == "ddim" else {}
            target = get_sampler(sampler)(self.denoiser, x, sigmas, batch=batch.batch, extra_args=net_args,
                                          callback=callback, generator=generator, disable=True,
                                          num_graphs=batch.num_graphs, **options)[:, 0]
        energy = self.transform.inverse(batch, target)
        if mode == "conserving":
            energy = conserve(energy, batch)
        samples = free = energy.view(ensemble, -1)
        single = collate_events(*storage, events).to(self.device)
        if mode == "fused":
            noise = torch.as_tensor(self.coarse_geometry.noise, dtype=samples.dtype, device=self.device) / MEV_PER_GEV
            samples = fuse(samples, single, noise[single.coarse_layer],
                           sc.spread_scale if spread_scale is None else spread_scale,
                           sc.energy_scale if energy_scale is None else energy_scale)
        out = {"batch": single, "samples": samples, "free_samples": free, "mode": mode, "mean": samples.mean(0),
               "spread": samples.std(0) if ensemble > 1 else torch.zeros_like(samples[0])}
        if record_steps:
            out["trajectory"] = torch.stack([self.transform.inverse(batch, t).view(ensemble, -1)[0]
                                             for t in trajectory])
        return out


def _unflatten(values: torch.Tensor, counts: np.ndarray, dtype) -> ak.Array:
    return ak.unflatten(np.asarray(values.detach().cpu().numpy(), dtype=dtype), counts)


def output_trees(data, slices, mean: torch.Tensor, spread: torch.Tensor, geometry: Geometry | None = None) -> dict:
    """COCOA super-resolution trees of generated events: ``Low_Tree`` the coarse cells used, ``High_Tree`` the
    generated fine cells (``cell_e`` = ensemble mean, ``cell_e_spread`` = ensemble standard deviation; MeV) in
    block order, with the mapping between them. Readable by :func:`graphsr.io.iter_cocoa` like any COCOA file.
    """
    geometry = geometry or Geometry.cocoa()
    nc = np.diff(slices["coarse_layer"].numpy())
    nf = np.diff(slices["fine_layer"].numpy())
    factor = round(np.sqrt(len(data.fine_layer) / max(len(data.coarse_layer), 1))) or 1
    coarse_geometry = geometry.coarsen(factor)

    def cells(cell_ids, geom, counts, energy):
        layer, ieta, iphi = geom.cell_index(cell_ids.numpy())
        eta, phi = geom.cell_center(layer, ieta, iphi)
        x, y, z = geom.cell_position(layer, ieta, iphi)
        columns = {"cell_layer": (layer, np.int32), "cell_x": (x, np.float32), "cell_y": (y, np.float32),
                   "cell_z": (z, np.float32), "cell_eta": (eta, np.float32), "cell_phi": (phi, np.float32)}
        out = {name: ak.unflatten(np.asarray(v, dtype=dt), counts) for name, (v, dt) in columns.items()}
        out["cell_e"] = _unflatten(energy * MEV_PER_GEV, counts, np.float32)
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
    high = cells(data.fine_cell, geometry, nf, mean)
    high["cell_e_spread"] = _unflatten(spread * MEV_PER_GEV, nf, np.float32)
    return {"Low_Tree": ak.zip(low, depth_limit=1), "High_Tree": ak.zip(high, depth_limit=1)}


def super_resolve_file(resolver: SuperResolver, input_path: str | Path, output_path: str | Path, *,
                       overwrite: bool = False, step_size: int = 1000,
                       max_events: int | None = None, progress: bool = True, **sample_args) -> int:
    """Super-resolve every event of a COCOA file (``Low_Tree`` + ``High_Tree`` or plain ``Out_Tree``) into a
    new file (:func:`output_trees`), one output entry per input entry. Returns the number of events written.

    ``sample_args`` go to :meth:`SuperResolver.__call__` (sampler, steps, ensemble, seed, mode, spread_scale,
    energy_scale).
    """
    info = open_cocoa(input_path)
    high_branches = GRAPH_BRANCHES_HIGH if info.high_tree else None
    written = 0
    with CocoaWriter(output_path, overwrite=overwrite) as writer, \
            tqdm(total=min(info.num_events, max_events or info.num_events), unit="event", disable=not progress,
                 desc="super-resolving") as bar:
        for chunk in iter_cocoa(input_path, low_branches=GRAPH_BRANCHES_LOW, high_branches=high_branches,
                                step_size=step_size, max_events=max_events):
            if chunk.factor is not None and chunk.factor != resolver.factor:
                raise ValueError(f"{input_path}: coarse cells merge {chunk.factor}x{chunk.factor} fine cells, the "
                                 f"checkpoint was trained on {resolver.factor}x{resolver.factor}")
            data, slices = build_storage(chunk.low, chunk.high, resolver.graph_options, factor=resolver.factor,
                                         first_event=chunk.entry_start)
            means, spreads = [], []
            ensemble = sample_args.get("ensemble") or resolver.config.sample.ensemble
            for _, events in resolver.chunks((data, slices), torch.arange(len(chunk)), ensemble):
                result = resolver((data, slices), events, **sample_args)
                means.append(result["mean"].cpu())
                spreads.append(result["spread"].cpu())
                bar.update(len(events))
            writer.write(output_trees(data, slices, torch.cat(means), torch.cat(spreads)))
            written += len(chunk)
    return written
