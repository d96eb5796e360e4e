"""Training of the super-resolution denoiser: AdamW, warm-up + cosine, clipping, EMA, validation, checkpoints.

The run is deterministic on CPU for a given config (seeded model, one shuffling order per epoch from
``seed + epoch``, a saved noise-generator state), so ``resume`` continues exactly where a killed run stopped: the
weights after N steps are the same with or without interruptions. On CUDA, kernels may add float-level noise.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from graphsr.config import RESUMABLE, Config, config_differences, config_from_dict
from graphsr.datasets import CocoaDataset
from graphsr.graphs import GraphLoader, collate_events
from graphsr.graphs.noise_cells import NoiseCells
from graphsr.io import file_digest

# the model factory and the loop helpers stay importable from here
from graphsr.models.factory import build_denoiser, build_loss, graph_options  # noqa: F401
from graphsr.models.sr3 import EnergyModel
from graphsr.nn import use_compile
from graphsr.provenance import provenance
from graphsr.training.checkpoint import claim_run_dir, load_checkpoint, save_checkpoint
from graphsr.training.history import History
from graphsr.training.loop import (TrainingLoop, ema_update, lr_lambda, optimiser_step,  # noqa: F401
                                   resolve_device, shuffled_batches)

CHECKPOINT = "checkpoint.pt"

logger = logging.getLogger(__name__)


def load_splits(config: Config, log: bool = False, noise_cells: float = 0.0, fractions: int = 0):
    """(train, val, test) subsets of the configured files, split by ``data.split_seed``; with ``noise_cells`` > 0
    the training events carry noise-only cells (:mod:`graphsr.graphs.noise_cells`; the same events and entries);
    with ``fractions`` K > 0 every cell carries its first K particles' energy fractions (:class:`CocoaDataset`)."""
    settings = dict(root=config.data.cache, options=graph_options(config), max_events=config.data.max_events, log=log)
    dataset = CocoaDataset(config.data.train, fractions=fractions, **settings)
    val, test = config.data.val_fraction, config.data.test_fraction
    train_set, val_set, test_set = dataset.split((1 - val - test, val, test), seed=config.data.split_seed)
    if noise_cells > 0:
        diluted = CocoaDataset(config.data.train, noise_cells=NoiseCells(noise_cells, seed=config.data.split_seed),
                               **settings)
        train_set = diluted.index_select(train_set.indices())
    return train_set, val_set, test_set


def energy_kind(config: Config) -> str:
    """The energy model of a parameterisation: the regression baseline works in energy space."""
    return "energy" if config.diffusion.parameterisation == "regression" else "shares"


def fit_energy_model(train, kind: str) -> EnergyModel:
    """The fine target's standardisation, from every training fine cell."""
    return EnergyModel.fit(kind, collate_events(*train.storage(), torch.as_tensor(train.indices())))


def seen_events(subset) -> list[dict]:
    """What a model saw of each file of a :class:`~graphsr.datasets.CocoaDataset` subset: ``[{"path", "sha256",
    "entries"}]``, entries sorted (int64 tensors), for every file of the dataset (empty where none)."""
    data, slices = subset.storage()
    index = torch.as_tensor(subset.indices())
    files, entries = data.file[slices["file"][index]], data.event[slices["event"][index]]
    return [{"path": str(path), "sha256": file_digest(path), "entries": torch.sort(entries[files == i])[0]}
            for i, path in enumerate(subset.files)]


def training_range(train, factor: int) -> dict:
    """Range of the training events' coarse ECAL energy (GeV) and of their hottest coarse cell: the 0.1% to 99.9%
    quantiles widened by a tenth of their distance on each side, so that events like the training ones are almost
    never outside. :class:`~graphsr.inference.SuperResolver` warns about inputs outside it."""
    data, slices = train.storage()
    index = torch.as_tensor(train.indices())
    starts, counts = slices["coarse_energy"][index], torch.diff(slices["coarse_energy"])[index]
    owner = torch.repeat_interleave(torch.arange(len(index)), counts)
    cells = data.coarse_energy[torch.repeat_interleave(starts, counts) + torch.arange(int(counts.sum())) -
                               torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)]
    total = torch.zeros(len(index)).index_add_(0, owner, cells)
    hottest = torch.full((len(index),), -float("inf")).scatter_reduce_(0, owner, cells, "amax")
    def widened(values):
        lo, hi = torch.quantile(values, torch.tensor([0.001, 0.999])).tolist()
        return [lo - 0.1 * (hi - lo), hi + 0.1 * (hi - lo)]

    return {"event_energy": widened(total), "hottest_cell": widened(hottest), "factor": factor}


def data_factor(train) -> int:
    """Fine cells per coarse cell per side of the training data (every coarse cell has factor**2 children)."""
    data = train.storage()[0]
    return round((data.fine_layer.numel() / max(data.coarse_layer.numel(), 1)) ** 0.5)


@dataclass
class TrainResult:
    checkpoint: Path
    step: int
    train_loss: float
    val_loss: float
    events_per_second: float
    paused: bool = False  # left early by stop_after, to be resumed (a time limit ends a run: it is not paused)
    step_events_per_second: float = float("nan")  # the training steps' own rate: validation and checkpoints left out


def _loss(loss_fn, denoiser, batch, energy_model: EnergyModel, generator, factor: int, coarse_weight: float,
          sigma: torch.Tensor | None = None, noise: torch.Tensor | None = None):
    """The loss of a batch, whichever the generator (:mod:`graphsr.models.factory`); ``sigma`` and ``noise`` fix
    the dense generator's noise level of each event and noise of each node."""
    return denoiser.loss(loss_fn, batch, generator, factor, coarse_weight, energy_model=energy_model, sigma=sigma,
                         noise=noise)


def _share_of_draws(loss_fn, share: dict, generator, denoiser) -> tuple[torch.Tensor, torch.Tensor]:
    """The noise levels and noise of a whole batch, drawn as one process draws them, and this rank's part of them
    (:meth:`~graphsr.graphs.GraphLoader.shares`): so every rank's events get the numbers they would get in
    single-process training, whatever the number of ranks; with the denoiser's learned schedule, if it has one."""
    (e0, e1, events), (f0, f1, fine), (c0, c1, coarse) = share["events"], share["fine"], share["coarse"]
    device = generator.device
    sigma = loss_fn.sample_sigma(events, device, generator, denoiser.learned_schedule)
    noise = torch.randn(fine + coarse, 1, device=device, generator=generator)
    return sigma[e0:e1], torch.cat([noise[f0:f1], noise[fine + c0:fine + c1]])


def distributed_setup(device_name: str = "auto") -> tuple[int, int, torch.device]:
    """``(rank, world_size, device)``: under ``torchrun`` (``WORLD_SIZE`` > 1) the process group is started
    (nccl on CUDA, gloo on CPU) and each rank takes the GPU of its ``LOCAL_RANK``; otherwise ``(0, 1, device)``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(device_name)
    if world == 1:
        return 0, 1, device
    import torch.distributed as dist

    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


@torch.no_grad()
def validation_loss(loss_fn, denoiser, loader, energy_model, device, factor: int, coarse_weight: float,
                    seed: int = 1234) -> float:
    """Mean loss over the validation set with a fixed noise stream, so values are comparable across steps."""
    generator = torch.Generator(device).manual_seed(seed)
    total, count = 0.0, 0
    for batch in loader:
        loss = _loss(loss_fn, denoiser, batch.to(device), energy_model, generator, factor, coarse_weight)
        total += float(loss) * batch.num_graphs
        count += batch.num_graphs
    return total / max(count, 1)


def _training_events(config: Config, rank: int, world: int):
    """The training and validation events; under torch.distributed rank 0 builds (or checks) the graph cache first,
    the other ranks then read it."""
    import torch.distributed as dist

    if config.model.generator == "boosted":
        raise ValueError("boosted trees are fitted, not trained in steps: graphsr.training.boosted.train_boosted (or "
                         "graphsr.pipelines.train, as `graphsr train` does)")
    if world > 1 and config.model.generator != "dense":
        raise ValueError("distributed training supports the dense generator only")
    if world > 1 and rank > 0:
        dist.barrier()
    pyramid = config.model.generator == "pyramid"
    train_set, val_set, _ = load_splits(config, noise_cells=config.pyramid.noise_cells if pyramid else 0.0)
    if world > 1 and rank == 0:
        dist.barrier()
    if len(train_set) == 0:
        raise ValueError(f"no training events in {config.data.train}")
    return train_set, val_set


def _resumed_state(path: Path, config: Config) -> dict:
    """The checkpoint a resumed run goes on from, refused when it was written with another config (except the
    settings in :data:`~graphsr.config.RESUMABLE`)."""
    state = load_checkpoint(path)
    # through the dataclass: settings added since the run was written take their defaults, not "differ"
    changed = [key for key in config_differences(config_from_dict(state["config"]).to_dict(), config.to_dict())
               if key not in RESUMABLE]
    if changed:
        raise ValueError(f"{path} was written with a different config ({', '.join(changed)} differ); resume needs "
                         f"the same one, except {' and '.join(RESUMABLE)}")
    return state


def _model_and_loop(config: Config, state: dict | None, train_set, device, stop_after: int | None):
    """The generator (seeded; fitted to the training events, or a resumed run's), its training loop and the
    training noise generator."""
    tc = config.train
    torch.manual_seed(tc.seed)  # model initialisation; afterwards the global generator drives dropout
    denoiser = use_compile(build_denoiser(config).to(device), tc.compile)
    if not state:  # what the generator standardises on the training events (the pyramid: each level's log-shares)
        denoiser.fit(collate_events(*train_set.storage(), torch.as_tensor(train_set.indices())).to(device))
    loop = TrainingLoop(denoiser, steps=tc.steps, lr=tc.lr, weight_decay=tc.weight_decay, ema_decay=tc.ema_decay,
                        grad_clip=tc.grad_clip, schedule=lambda i, _: lr_lambda(tc.warmup, tc.steps)(i),
                        time_limit=tc.time_limit, stop_after=stop_after)
    noise = torch.Generator(device).manual_seed(tc.seed + 1)
    if state:
        denoiser.load_state_dict(state["model"])
        loop.resume(state, step=state["step"], epoch=state["epoch"], position=state["position"],
                    seconds=state.get("seconds", 0.0), noise=noise)
    return denoiser, loop, noise


def _run_record(config: Config, state: dict | None, train_set, val_set, energy_model: EnergyModel,
                factor: int) -> dict:
    """What a run's checkpoints hold besides the weights and the loop's state."""
    return {"config": config.to_dict(), "energy_model": energy_model.state(),
            "graph_options": {**asdict(graph_options(config)), "layers": list(config.data.layers)}, "factor": factor,
            # what the model saw (file content hashes and entries), so that evaluation can refuse to score it
            "events": state["events"] if state else {"train": seen_events(train_set), "val": seen_events(val_set)},
            "training_range": state["training_range"] if state else training_range(train_set, factor),
            "calibration": None,
            "provenance": provenance("train", config=config.to_dict(), inputs=config.data.train,
                                     seed=config.train.seed)}


def train(config: Config, out_dir: str | Path, resume: bool = False, progress: bool = True,
          stop_after: int | None = None, overwrite: bool = False) -> TrainResult:
    """Train (or, with ``resume``, continue training) and write ``out_dir/checkpoint.pt`` and
    ``out_dir/history.csv`` (:mod:`graphsr.training.history`: every step's loss and learning rate, every
    validation loss; TensorBoard too when installed). The spread calibration is the next step:
    :func:`graphsr.pipelines.train` runs both, as ``graphsr train`` does.

    ``stop_after``: leave (with a checkpoint) after this many steps in this call, e.g. to fit a batch-queue slot;
    a later ``resume`` goes on exactly as if the run had not stopped. ``train.time_limit`` counts the seconds of
    all calls of a run together.

    A directory that holds a run is refused unless ``resume`` or ``overwrite`` is given
    (:func:`~graphsr.training.checkpoint.claim_run_dir`).
    """
    out_dir, tc = Path(out_dir), config.train
    rank, world, device = distributed_setup(tc.device)
    main = rank == 0  # writes checkpoints, history and logs
    train_set, val_set = _training_events(config, rank, world)
    if main:
        claim_run_dir(out_dir, resume=resume, overwrite=overwrite)
    state = _resumed_state(out_dir / CHECKPOINT, config) if resume else None
    energy_model = EnergyModel(**state["energy_model"]) if state else fit_energy_model(train_set,
                                                                                          energy_kind(config))
    factor, coarse_weight = data_factor(train_set), config.diffusion.coarse_weight

    denoiser, loop, noise = _model_and_loop(config, state, train_set, device, stop_after)
    loss_fn = build_loss(config)
    run = _run_record(config, state, train_set, val_set, energy_model, factor)
    history = History(out_dir, resume_step=loop.step if state else None) if main else None
    pin = device.type == "cuda"  # page-locked batches copy to the GPU while it computes
    val_loader = GraphLoader(val_set, tc.batch_size)
    use_amp = tc.amp and device.type == "cuda"
    started, events_seen = time.perf_counter(), 0
    aside = 0.0  # seconds of validation and checkpoints, which the training steps' own rate leaves out
    train_loss = val_loss = float("nan")

    def batch_loss(item):
        nonlocal events_seen
        batch, share = item
        batch = batch.to(device, non_blocking=pin)
        draws = dict(zip(("sigma", "noise"), _share_of_draws(loss_fn, share, noise, denoiser))) \
            if denoiser.draws_whole_batch else {}
        first, stop, total = share["events"]
        events_seen += total
        if stop == first:  # a rank gets no event when the batch holds fewer than there are ranks
            return None
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            loss = _loss(loss_fn, denoiser, batch, energy_model, noise, factor, coarse_weight, **draws)
        return loss * ((stop - first) / total)  # this rank's part of the whole batch's mean over events

    def after_step(loss: float, stop: bool):
        nonlocal train_loss, val_loss, aside
        train_loss, rate, set_aside = loss, events_seen / (time.perf_counter() - started), time.perf_counter()
        loop.bar.set_postfix(loss=f"{train_loss:.4f}", events_per_s=f"{rate:.0f}")
        validate = (loop.step % tc.val_every == 0 or loop.step == tc.steps or stop) and main
        if validate:
            loop.ema.module.eval()
            val_loss = validation_loss(loss_fn, loop.ema.module, val_loader, energy_model, device, factor,
                                       coarse_weight)
            logger.info(f"step {loop.step}: train loss {train_loss:.4f}, validation loss (EMA) {val_loss:.4f}")
        if main:  # the row before the checkpoint: a resumed run keeps the rows up to the checkpoint's step
            history.log(loop.step, epoch=loop.epoch, seconds=loop.seconds, lr=loop.lr, train_loss=train_loss,
                        val_loss=val_loss if validate else None, events_per_s=rate)
        if validate:
            save_checkpoint({**run, "model": denoiser.state_dict(), **loop.state(noise), "step": loop.step,
                             "epoch": loop.epoch, "position": loop.position, "val_loss": val_loss,
                             "seconds": loop.seconds}, out_dir / CHECKPOINT)
        aside += time.perf_counter() - set_aside

    batches = shuffled_batches(train_set, tc.batch_size, tc.seed, loop.epoch, loop.position, part=(rank, world),
                               pin_memory=pin)
    loop.run(batches, batch_loss, after_step, progress=progress and main)
    if world > 1:
        torch.distributed.barrier()  # rank 0's last checkpoint is written
        torch.distributed.destroy_process_group()
    elapsed = time.perf_counter() - started
    if main:
        history.close()
    return TrainResult(out_dir / CHECKPOINT, loop.step, train_loss, val_loss, events_seen / max(elapsed, 1e-9),
                       loop.paused, events_seen / max(elapsed - aside, 1e-9))
