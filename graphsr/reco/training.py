"""Training and running the particle-flow model, per input type: ``coarse`` cells, fine ``truth`` or ``sr``
(super-resolved cells written by ``graphsr sample``).

Leakage between the super-resolution (SR) model and the reconstruction: a reco model on SR input must learn from SR
output as it is on events the SR model never saw, because that is what it will be evaluated on. So the reco model
trains on other events than the SR model: ``data.train`` of the reco config holds events simulated apart from the
SR model's (another file, another seed), ``sr_input.files`` is ``graphsr sample`` of those files with the SR
checkpoint ``sr_input.checkpoint``. :func:`check_sr_input` refuses reco files that trained the SR model and SR files
that are not the sampled reco files. Evaluation (:mod:`graphsr.eval.reco_report`) runs on the SR model's held-out
test events, which neither model trained on. The coarse and truth models train on the same reco events, so all
three see the same events.

CPU training is deterministic for a given config and input type, unless ``train.time_limit`` is set: the learning
rate then anneals to zero by the time limit (or the last step, whichever comes first), at the machine's pace.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import awkward as ak
import numpy as np
import torch

from graphsr.config import config_from_dict
from graphsr.graphs import GraphLoader, GraphOptions, cell_graph, cells_of, collate_events
from graphsr.io import file_digest, iter_cocoa, open_cocoa
from graphsr.reco.config import RecoConfig
from graphsr.reco.model import ParticleFlow, particle_classes, set_loss
from graphsr.training.checkpoint import claim_run_dir, load_checkpoint, model_weights, save_checkpoint
from graphsr.training.loop import TrainingLoop, lr_lambda, resolve_device, shuffled_batches
from graphsr.training.trainer import data_factor, load_splits, seen_events

CHECKPOINT = "checkpoint.pt"
INPUT_TYPES = {"coarse": "coarse", "truth": "fine", "sr": "fine"}  # input type -> the cells it reads


def cell_options(config: RecoConfig) -> GraphOptions:
    """How the model's cell graphs are built (the configured layers; the model's k, k_between)."""
    return GraphOptions(layers=tuple(config.data.layers), k=config.model.k, k_between=config.model.k_between)


def _check_input_type(input_type: str):
    if input_type not in INPUT_TYPES:
        raise ValueError(f"unknown input type {input_type!r}; choose one of {sorted(INPUT_TYPES)}")


def _same_events(a: str | Path, b: str | Path, events: int = 50) -> bool:
    """Whether two COCOA files start with the same events (the same particles in their first ``events``)."""
    first = [next(iter_cocoa(path, low_branches=("particle_e",), max_events=events)).low.particle_e for path in (a, b)]
    return ak.num(first[0]).tolist() == ak.num(first[1]).tolist() and \
        bool(np.allclose(ak.flatten(first[0]), ak.flatten(first[1]), rtol=1e-5))


def check_sr_input(config: RecoConfig) -> None:
    """Refuse super-resolved inputs that would leak (see the module docstring).

    Raises ValueError when ``sr_input`` is incomplete, when a ``data.train`` file trained or validated the SR
    checkpoint (recognised by its content hash, whatever its name), or when an SR file is not ``graphsr sample`` of
    its ``data.train`` file (another event count or other particles).
    """
    sr = config.sr_input
    if not sr.files or not sr.checkpoint:
        raise ValueError("input type 'sr' needs sr_input.files (`graphsr sample` of each data.train file, same order) "
                         "and sr_input.checkpoint (the super-resolution checkpoint that made them)")
    if len(sr.files) != len(config.data.train):
        raise ValueError(f"sr_input.files has {len(sr.files)} files, data.train {len(config.data.train)}: one "
                         "super-resolved file per data.train file")
    seen = load_checkpoint(sr.checkpoint).get("events", {})
    used = {f["sha256"] for part in ("train", "val") for f in seen.get(part, []) if len(f["entries"])}
    for source in config.data.train:
        if file_digest(source) in used:
            raise ValueError(f"{source} holds events that trained the super-resolution model {sr.checkpoint}; its "
                             "output there is better than on new events, so a reconstruction trained on it would not "
                             "learn what it is evaluated on. Train the reconstruction on events the SR model never saw "
                             "(simulate another file with another seed and `graphsr sample` it)")
    for source, sampled in zip(config.data.train, sr.files):
        if open_cocoa(source).num_events != open_cocoa(sampled).num_events or not _same_events(source, sampled):
            raise ValueError(f"{sampled} is not `graphsr sample` of {source}: their events differ")


def reco_files(config: RecoConfig, input_type: str) -> list[str]:
    """The files whose events a model of ``input_type`` reads (``sr``: checked by :func:`check_sr_input`)."""
    _check_input_type(input_type)
    if input_type == "sr":
        check_sr_input(config)
        return list(config.sr_input.files)
    return list(config.data.train)


def targets(batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """True particles of a batch: counts ``[B]``, kinematics ``[P, 3]`` (GeV, eta, phi), classes ``[P]``."""
    if "particle_kin" not in batch:
        raise ValueError("the events have no true particles (particle_* branches): the reconstruction cannot learn")
    return batch.num_particles, batch.particle_kin, particle_classes(batch.particle_pdgid)


def with_truth_fractions(sr_set, truth_set) -> None:
    """Give the super-resolved cells of ``sr_set`` (a dataset of ``graphsr sample`` files) the particle fractions
    of the truth's fine cells (``truth_set``: the sampled files, read with fractions), in place; both datasets
    (or any of their subsets) must hold the same events, fine cells in the same order, else ValueError."""
    sr, truth = sr_set.storage()[0], truth_set.storage()[0]
    for key in ("event", "file", "fine_cell"):
        if sr[key].shape != truth[key].shape or not torch.equal(sr[key], truth[key]):
            raise ValueError(f"the super-resolved files {[str(f) for f in sr_set.files]} and the files they were "
                             f"sampled from {[str(f) for f in truth_set.files]} differ in their events' {key}: "
                             "not `graphsr sample` of them with the same layers")
    sr_set.set_cell_values("fine_fraction", truth.fine_fraction, like="fine_layer")


@dataclass
class RecoTrainResult:
    checkpoint: Path
    step: int
    val_loss: float
    val_accuracy: float
    test_set: object          # the held-out test events (a dataset subset)
    paused: bool = False      # left early by stop_after, to be resumed
    test: dict | None = None  # their metrics (graphsr.pipelines.train_reco)


@torch.no_grad()
def validate(model, loader, which: str, options: GraphOptions, threshold: float, device,
             incidence_weight: float = 0.0) -> tuple[float, float]:
    """Mean loss and cardinality accuracy over a loader's events."""
    model.eval()
    loss_sum, correct, count = 0.0, 0, 0
    for batch in loader:
        batch = batch.to(device)
        cells = cells_of(batch, which, options, threshold)
        out = model(cells)
        n, kin, classes = targets(batch)
        loss, _ = set_loss(out, cells, n, kin, classes, incidence_weight)
        loss_sum += float(loss) * batch.num_graphs
        correct += int((out["cardinality"].argmax(1) == n.clamp(max=model.max_particles)).sum())
        count += batch.num_graphs
    return loss_sum / max(count, 1), correct / max(count, 1)


def _resumed_state(path: Path, config: RecoConfig, input_type: str) -> dict:
    """The checkpoint a resumed run goes on from, refused when written for another config or input type."""
    state = load_checkpoint(path)
    if state.get("input_type") != input_type or state["config"] != config.to_dict():
        raise ValueError(f"{path} was trained on {state.get('input_type')!r} input with another config: resume needs "
                         "the same config and input type")
    if "optimizer" not in state:
        raise ValueError(f"{path} holds no optimiser state (written by an older graphsr): it cannot be resumed")
    return state


def _splits(config: RecoConfig, input_type: str, files: list[str]):
    """(train, val, test) events of ``files``. The incidence loss needs each cell's true particle fractions: from
    the files' own trees, or for SR cells from the truth at the same fine cells."""
    fractions = config.model.max_particles if config.model.incidence_weight > 0 else 0
    train_set, val_set, test_set = load_splits(replace(config, data=replace(config.data, train=files)),
                                               fractions=0 if input_type == "sr" else fractions)
    if input_type == "sr" and fractions:
        with_truth_fractions(train_set, load_splits(config, fractions=fractions)[0])
    if len(train_set) == 0:
        raise ValueError(f"no training events in {files}")
    return train_set, val_set, test_set


def _time_annealed(tc):
    """Warm-up + cosine over train.steps, or over the steps that fit in train.time_limit at the rate so far if
    fewer: a time-limited run ends annealed (and, like any time-limited run, depends on the machine's speed)."""
    def schedule(step: int, loop: TrainingLoop) -> float:
        total = tc.steps
        if tc.time_limit is not None and step >= tc.warmup:
            total = min(total, int(step * tc.time_limit / max(loop.seconds, 1e-9)))
        return lr_lambda(tc.warmup, total)(step)
    return schedule


def train_reco(config: RecoConfig, input_type: str, out_dir: str | Path, progress: bool = True, *,
               resume: bool = False, overwrite: bool = False, stop_after: int | None = None) -> RecoTrainResult:
    """Train a particle-flow model on ``input_type`` cells of the config's events and write ``out_dir/checkpoint.pt``
    (at every validation, atomically). Scoring it on its held-out test events is the next step
    (:func:`graphsr.pipelines.train_reco` runs both, as ``graphsr train-reco`` does).

    A directory that holds a run is refused unless ``resume`` (continue it exactly: without ``train.time_limit`` the
    weights are those of an uninterrupted run) or ``overwrite``; ``stop_after`` leaves (with a checkpoint) after
    this many steps in this call."""
    out_dir = Path(out_dir)
    tc, which = config.train, INPUT_TYPES.get(input_type)
    files = reco_files(config, input_type)
    claim_run_dir(out_dir, resume=resume, overwrite=overwrite)  # (reco_files checked the inputs)
    state = _resumed_state(out_dir / CHECKPOINT, config, input_type) if resume else None
    device = resolve_device(tc.device)
    train_set, val_set, test_set = _splits(config, input_type, files)
    options, threshold = cell_options(config), config.model.cell_threshold

    torch.manual_seed(tc.seed)
    model = ParticleFlow(config.model).to(device)
    loop = TrainingLoop(model, steps=tc.steps, lr=tc.lr, weight_decay=tc.weight_decay, ema_decay=tc.ema_decay,
                        grad_clip=tc.grad_clip, schedule=_time_annealed(tc), time_limit=tc.time_limit,
                        stop_after=stop_after)
    if state:
        model.load_state_dict(state["model"])
        loop.resume(state, step=state["step"], epoch=state["epoch"], position=state["position"],
                    seconds=state["seconds"])
    val_loader = GraphLoader(val_set, tc.batch_size)
    use_amp = tc.amp and device.type == "cuda"
    val_loss, val_accuracy = (state["val_loss"], state["val_accuracy"]) if state else (float("nan"), float("nan"))
    seen = _seen_by(config, input_type, train_set, val_set)
    parts = {}

    def batch_loss(batch):
        batch = batch.to(device)
        cells = cells_of(batch, which, options, threshold)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            out = model(cells)
        loss, found = set_loss({k: v.float() if v.is_floating_point() else v for k, v in out.items()}, cells,
                               *targets(batch), config.model.incidence_weight)
        parts.update(found)
        return loss

    def after_step(loss: float, stop: bool):
        nonlocal val_loss, val_accuracy
        loop.bar.set_postfix(loss=f"{loss:.3f}", card=f"{parts['cardinality']:.3f}")
        if loop.step % tc.val_every == 0 or loop.step == tc.steps or stop:
            val_loss, val_accuracy = validate(loop.ema.module, val_loader, which, options, threshold, device,
                                              config.model.incidence_weight)
            loop.bar.write(f"step {loop.step}: validation loss (EMA) {val_loss:.4f}, cardinality accuracy "
                           f"{val_accuracy:.3f}")
            save_checkpoint({
                "model": model.state_dict(), **loop.state(), "step": loop.step, "epoch": loop.epoch,
                "position": loop.position, "seconds": loop.seconds, "config": config.to_dict(),
                "input_type": input_type, "source_files": list(config.data.train), "events": seen,
                "factor": data_factor(train_set), "val_loss": val_loss, "val_accuracy": val_accuracy},
                out_dir / CHECKPOINT)

    loop.run(shuffled_batches(train_set, tc.batch_size, tc.seed, loop.epoch, loop.position), batch_loss, after_step,
             progress=progress, desc=f"training reco ({input_type})")
    return RecoTrainResult(out_dir / CHECKPOINT, loop.step, val_loss, val_accuracy, test_set, loop.paused)


def _seen_by(config: RecoConfig, input_type: str, train_set, val_set) -> dict:
    """What the model saw (content hashes and entries; for SR input also of the files that were super-resolved),
    so that evaluation can refuse to score it on those events."""
    seen = {"train": seen_events(train_set), "val": seen_events(val_set)}
    if input_type == "sr":
        seen = {part: files + [{"path": str(source), "sha256": file_digest(source), "entries": f["entries"]}
                               for source, f in zip(config.data.train, files)] for part, files in seen.items()}
    return seen


class ParticleFlowReco:
    """A trained particle-flow model, ready to reconstruct the particles of cells.

    Args:
        checkpoint: written by :func:`train_reco` (``graphsr train-reco``).
        device: where to run ("auto": CUDA if present).
        use_ema: the EMA weights (recommended) rather than the raw ones.
        batch_events: events per model call.

    Attributes:
        input_type: the cells it was trained on (``coarse``, ``truth`` or ``sr``); cell_set: ``coarse`` or
        ``fine``; source_files: the files of the events it trained on (``data.train``); events: what it trained and
        validated on (``{"train", "val"}``: ``[{"path", "sha256", "entries"}]``); factor: of its data.
    """

    def __init__(self, checkpoint: str | Path, device: str | torch.device = "auto", use_ema: bool = True,
                 batch_events: int = 64):
        state = load_checkpoint(checkpoint)
        if "input_type" not in state:
            raise ValueError(f"{checkpoint} is not a particle-flow checkpoint (`graphsr train-reco` writes them)")
        self.path = Path(checkpoint)
        self.config: RecoConfig = config_from_dict(state["config"], RecoConfig)
        self.device = resolve_device(str(device))
        self.model = ParticleFlow(self.config.model).to(self.device).eval()
        self.model.load_state_dict(model_weights(state, use_ema))
        self.input_type, self.step, self.factor = state["input_type"], state["step"], state["factor"]
        self.cell_set, self.source_files = INPUT_TYPES[self.input_type], state["source_files"]
        self.events = state["events"]
        self.options, self.threshold = cell_options(self.config), self.config.model.cell_threshold
        self.batch_events = batch_events

    @torch.no_grad()
    def __call__(self, energy, pos, layer, event, num_events: int) -> dict[str, np.ndarray]:
        """Particles of flat cells (any input the model may read: its own type, or e.g. SR cells for a truth model).

        Args:
            energy: ``[N]`` GeV; pos: ``[N, 2]`` (eta, phi); layer: ``[N]``; event: ``[N]`` event of each cell,
                sorted, 0..num_events-1 (tensors or arrays).

        Returns:
            ``count`` [num_events]; ``event``, ``energy``, ``eta``, ``phi``, ``pdgid`` [R] (numpy), as
            :meth:`ParticleFlow.particles`.
        """
        tensors = [torch.as_tensor(np.asarray(a)) for a in (energy, pos, layer, event)]
        energy, pos = (t.to(self.device, torch.float32) for t in tensors[:2])
        layer, event = (t.to(self.device, torch.long) for t in tensors[2:])
        bounds = torch.searchsorted(event, torch.arange(0, num_events + self.batch_events, self.batch_events,
                                                        device=self.device).clamp(max=num_events))
        parts = []
        for i, (a, b) in enumerate(zip(bounds[:-1].tolist(), bounds[1:].tolist())):
            start = i * self.batch_events
            n = min(self.batch_events, num_events - start)
            if n <= 0:
                break
            cells = cell_graph(energy[a:b], pos[a:b], layer[a:b], event[a:b] - start, n, self.options, self.threshold)
            found = ParticleFlow.particles(self.model(cells))
            found["event"] = found["event"] + start
            parts.append(found)
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def reconstruct_events(self, storage, events, cell_set: str | None = None) -> dict[str, np.ndarray]:
        """Particles of some events of a collated storage (:meth:`~graphsr.datasets.CocoaDataset.storage`), from
        their ``cell_set`` cells (default: the model's own)."""
        batch = collate_events(*storage, torch.as_tensor(events))
        cells = cells_of(batch, cell_set or self.cell_set)
        return self(cells.energy, cells.pos, cells.layer, cells.batch, batch.num_graphs)
