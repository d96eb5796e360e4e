"""Boosted-tree flow matching (BUFF-style): gradient-boosted trees instead of a network, the baseline a CPU-only user
tries first.

Conditional flow matching (``diffusion.parameterisation: cfm``, :mod:`graphsr.diffusion.preconditioning`) needs a
velocity F(x_t, t | coarse event) per state node. Here two LightGBM regressors give it, one for the fine cells and
one for the coarse totals, each from features of its own node (:func:`node_features`):

* fine cell: its own state x_t, the states of all its parent's children in a fixed order (its siblings', NaN where
  a parent has fewer), its slot in that order and its position in the parent, its layer and eta, the parent's
  measured energy, signal-to-noise and state, and the mean and largest measured energy of the parent's
  neighbours;
* coarse cell: its own state, measured energy, signal-to-noise, layer and eta, its neighbours' mean and largest
  measured energy, and the mean and largest state of its children;

and the flow time t. Trees see no message passing: what the network learns from the whole event, they see through
these features only. Training rows are the training events, each drawn ``boosted.draws`` times at its own t ~ U(0, 1)
with fresh noise; the target is the velocity ``n - x0`` and each row weighs as the network's loss weighs its node
(:func:`~graphsr.models.sr3.node_weights`). The trees are wrapped as the raw network of a :class:`Denoiser`, so the
energy model, samplers and calibration work unchanged; their text is kept in the state dict as bytes, so
checkpoints stay plain tensors.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from graphsr import ops
from graphsr.config import BoostedConfig
from graphsr.models.sr3 import SNR_SCALE
from graphsr.detector.geometry import ETA_MAX
from graphsr.nn.transformer import fine_cell_size, relative_positions

FINE_FEATURES = ("state", "t", "slot", "inside_eta", "inside_phi", "layer", "eta", "parent_input", "parent_snr",
                 "parent_state", "neighbours_mean_input", "neighbours_max_input")  # then the S sibling states
COARSE_FEATURES = ("state", "t", "input", "snr", "layer", "eta", "neighbours_mean_input", "neighbours_max_input",
                   "children_mean_state", "children_max_state")


def _lightgbm():
    try:
        import lightgbm
    except ImportError as error:  # pragma: no cover - depends on the host
        raise ImportError("the boosted-tree generator needs LightGBM: `pip install 'graphsr[trees]'` (make install "
                          "installs it)") from error
    return lightgbm


def child_slots(data, cell_size: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``(slot [Nf], inside [Nf, 2], S)``: each fine cell's rank among its parent's children ordered by their
    position in the parent (eta, then phi), that position in fine cells, and the most children of any parent."""
    parent = data.fine_parent
    inside = relative_positions(cell_size, data.coarse_pos[parent], data.coarse_layer[parent], data.fine_pos,
                                data.fine_layer)[:, :2]
    order = torch.arange(parent.numel(), device=parent.device)
    for key in (inside[:, 1], inside[:, 0], parent):  # a stable sort per key, the last the primary one
        order = order[torch.sort(key[order].round(decimals=3) if key.is_floating_point() else key[order],
                                 stable=True)[1]]
    count = torch.bincount(parent, minlength=data.coarse_layer.numel())
    first = torch.cumsum(count, 0) - count
    slot = torch.empty_like(parent)
    slot[order] = torch.arange(parent.numel(), device=parent.device) - first[parent[order]]
    return slot, inside, int(count.max()) if count.numel() else 0


def node_features(data, state: torch.Tensor, t: torch.Tensor, cell_size: torch.Tensor,
                  slots: tuple | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(fine [Nf, 12 + S], coarse [Nc, 10])`` features (:data:`FINE_FEATURES`, :data:`COARSE_FEATURES`; the
    module docstring) of a batch with the network's inputs (:func:`~graphsr.models.sr3.add_inputs`). ``state``:
    ``[Nf + Nc]`` x_t, fine nodes first; ``t``: ``[num_graphs]`` flow time per event; ``slots``:
    :func:`child_slots` of ``data`` (computed when not given)."""
    num_fine, num_coarse = data.fine_parent.numel(), data.coarse_layer.numel()
    parent = data.fine_parent
    slot, inside, most = child_slots(data, cell_size) if slots is None else slots
    fine_state, coarse_state = state[:num_fine], state[num_fine:]
    src, dst = data.coarse_edge_index
    neighbours = [ops.scatter(data.coarse_input[src], dst, num_coarse, reduce) for reduce in ("mean", "max")]
    siblings = torch.full((num_coarse, most), float("nan"), device=state.device)
    siblings[parent, slot] = fine_state
    coarse_eta = data.coarse_pos[:, 0] / ETA_MAX
    fine = torch.cat([torch.stack([
        fine_state, t[data.batch], slot.float(), inside[:, 0], inside[:, 1], data.fine_layer.float(),
        data.fine_pos[:, 0] / ETA_MAX, data.coarse_input[parent], data.coarse_snr[parent] / SNR_SCALE,
        coarse_state[parent], neighbours[0][parent], neighbours[1][parent]], dim=1), siblings[parent]], dim=1)
    coarse = torch.stack([
        coarse_state, t[data.coarse_batch], data.coarse_input, data.coarse_snr / SNR_SCALE,
        data.coarse_layer.float(), coarse_eta, neighbours[0], neighbours[1],
        ops.scatter(fine_state, parent, num_coarse, "mean"), ops.scatter(fine_state, parent, num_coarse, "max")], dim=1)
    return fine, coarse


class BoostedVelocity(nn.Module):
    """The velocity of conditional flow matching from two gradient-boosted tree ensembles (the module docstring),
    called as the raw network of a :class:`~graphsr.diffusion.Denoiser` with ``parameterisation="cfm"``: its input
    is then x_t itself and ``c_noise = ln(sigma) / 4`` with ``t = sigma / (1 + sigma)``.

    The trees live in two byte buffers (``fine_trees``, ``coarse_trees``: LightGBM's model text), so that
    ``state_dict`` / ``load_state_dict`` carry them like weights; :meth:`fit` trains them.
    """

    def __init__(self, config: BoostedConfig = BoostedConfig()):
        super().__init__()
        self.config = config
        self.register_buffer("cell_size", fine_cell_size())
        self.register_buffer("fine_trees", torch.zeros(0, dtype=torch.uint8))
        self.register_buffer("coarse_trees", torch.zeros(0, dtype=torch.uint8))
        self._boosters: tuple | None = None

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in ("fine_trees", "coarse_trees"):  # the trees' text has its own length
            if prefix + name in state_dict:
                setattr(self, name, torch.zeros_like(state_dict[prefix + name]))
        self._boosters = None
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def fitted(self) -> bool:
        return self.fine_trees.numel() > 0

    def boosters(self) -> tuple:
        """The two LightGBM boosters, read from the buffers once."""
        if not self.fitted:
            raise RuntimeError("these boosted trees are not fitted yet: train them (graphsr train with "
                               "model.generator: boosted)")
        if self._boosters is None:
            lightgbm = _lightgbm()
            self._boosters = tuple(lightgbm.Booster(model_str=bytes(b.cpu().numpy()).decode())
                                   for b in (self.fine_trees, self.coarse_trees))
        return self._boosters

    def fit(self, fine: tuple, coarse: tuple, *, seed: int = 0, time_limit: float | None = None,
            valid: tuple | None = None) -> dict:
        """Train both ensembles on ``(features, target, weight)`` numpy rows each; ``valid``: ``(fine, coarse)``
        rows of the same form, scored (weighted MSE) after the fit. ``time_limit`` (seconds, both together, shared
        by their numbers of rows) stops boosting early. Returns ``{"rounds": [fine, coarse], "seconds", "valid_mse":
        [fine, coarse]}``."""
        lightgbm, c = _lightgbm(), self.config
        params = {"objective": "regression", "learning_rate": c.learning_rate, "num_leaves": c.leaves,
                  "min_child_samples": c.min_child_samples, "seed": seed, "deterministic": True,
                  "force_row_wise": True, "num_threads": torch.get_num_threads(), "verbosity": -1}
        started, out = time.perf_counter(), {"rounds": [], "valid_mse": []}
        models = []
        share = len(fine[1]) / max(len(fine[1]) + len(coarse[1]), 1)  # of the time limit, by rows
        for i, (features, target, weight) in enumerate((fine, coarse)):
            deadline = None if time_limit is None else started + time_limit * (share if i == 0 else 1.0)

            def stop_at_deadline(env, deadline=deadline):
                if deadline is not None and time.perf_counter() > deadline:
                    raise lightgbm.callback.EarlyStopException(env.iteration, env.evaluation_result_list)

            booster = lightgbm.train(params, lightgbm.Dataset(features, target, weight=weight),
                                     num_boost_round=c.rounds, callbacks=[stop_at_deadline])
            models.append(booster)
            out["rounds"].append(booster.current_iteration())
            if valid is not None:
                x, y, w = valid[i]
                out["valid_mse"].append(float(np.average((booster.predict(x) - y) ** 2, weights=w)))
        out["seconds"] = time.perf_counter() - started
        for name, booster in zip(("fine_trees", "coarse_trees"), models):
            text = np.frombuffer(booster.model_to_string().encode(), dtype=np.uint8).copy()
            setattr(self, name, torch.from_numpy(text).to(self.cell_size.device))
        self._boosters = None
        return out

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, batch: torch.Tensor, data,
                prepared: dict | None = None) -> torch.Tensor:
        """x: ``[Nf + Nc, 1]`` x_t; c_noise: ``[num_graphs]``; data: the batch with the network's inputs ->
        ``[Nf + Nc, 1]`` velocity. ``prepared``: :func:`child_slots` of ``data`` under ``"slots"`` (reused across
        a sampler's steps)."""
        sigma = (4 * c_noise.double()).exp()
        t = (sigma / (1 + sigma)).float()
        slots = prepared.get("slots") if prepared else None
        fine, coarse = node_features(data, x[:, 0], t, self.cell_size, slots)
        fine_trees, coarse_trees = self.boosters()
        out = [torch.from_numpy(trees.predict(f.cpu().numpy(), num_threads=torch.get_num_threads()))
               for trees, f in ((fine_trees, fine), (coarse_trees, coarse))]
        return torch.cat(out).to(x.device, x.dtype).unsqueeze(1)


def flow_rows(data, x0: torch.Tensor, weight: torch.Tensor, cell_size: torch.Tensor, draws: int,
              generator: torch.Generator) -> tuple[tuple, tuple]:
    """Training rows of a batch with the network's inputs: ``draws`` times each event at its own t ~ U(0, 1) with
    fresh unit noise n, x_t = (1 - t) x0 + t n, target n - x0; ``((fine features, target, weight), (coarse ...))``
    as numpy arrays. ``x0``: ``[Nf + Nc]`` targets of the energy model; ``weight``: ``[Nf + Nc]`` node weights."""
    num_fine = data.fine_parent.numel()
    nodes = torch.cat([data.batch, data.coarse_batch])
    slots = child_slots(data, cell_size)
    parts: list = [[], []]
    for _ in range(draws):
        t = torch.rand(data.num_graphs, generator=generator, device=x0.device)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device)
        x_t = (1 - t[nodes]) * x0 + t[nodes] * noise
        features = node_features(data, x_t, t, cell_size, slots)
        target = noise - x0
        for i, rows in enumerate((slice(0, num_fine), slice(num_fine, None))):
            parts[i].append((features[i], target[rows], weight[rows]))
    return tuple(tuple(torch.cat(column).cpu().numpy() for column in zip(*part)) for part in parts)
