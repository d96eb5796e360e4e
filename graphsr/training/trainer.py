"""Training of the super-resolution denoiser: AdamW, warm-up + cosine, clipping, EMA, validation, checkpoints.

The run is deterministic on CPU for a given config (seeded model, one shuffling order per epoch from
``seed + epoch``, a saved noise-generator state), so ``resume`` continues exactly where a killed run stopped: the
weights after N steps are the same with or without interruptions. On CUDA, kernels may add float-level noise.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from graphsr.config import Config
from graphsr.datasets import CocoaDataset
from graphsr.diffusion import Denoiser, DiffusionLoss
from graphsr.graphs import GraphLoader, GraphOptions, collate_events
from graphsr.models.sr3 import SR3Network, add_inputs, target_transform
from graphsr.training.checkpoint import load_checkpoint, save_checkpoint

CHECKPOINT = "checkpoint.pt"


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def graph_options(config: Config) -> GraphOptions:
    return GraphOptions(layers=tuple(config.data.layers), k=config.data.k, k_between=config.data.k_between)


def load_splits(config: Config, log: bool = False):
    """(train, val, test) subsets of the configured files, split by ``data.split_seed``."""
    dataset = CocoaDataset(config.data.train, root=config.data.cache, options=graph_options(config),
                           max_events=config.data.max_events, log=log)
    val, test = config.data.val_fraction, config.data.test_fraction
    return dataset.split((1 - val - test, val, test), seed=config.data.split_seed)


def fit_normalisation(train, margin: float) -> dict:
    """Mean and std of the logit-fraction target over all training fine cells."""
    batch = collate_events(train._data, train.slices, torch.as_tensor(train.indices()))
    raw = target_transform(margin)(batch).fine_target
    return {"margin": margin, "mean": float(raw.mean()), "std": float(raw.std())}


def data_factor(train) -> int:
    """Fine cells per coarse cell per side of the training data (every coarse cell has factor**2 children)."""
    return round((train._data.fine_layer.numel() / max(train._data.coarse_layer.numel(), 1)) ** 0.5)


def build_denoiser(config: Config) -> Denoiser:
    d = config.diffusion
    return Denoiser(SR3Network(config.model), parameterisation=d.parameterisation, sigma_data=d.sigma_data,
                    schedule=d.schedule)


def build_loss(config: Config) -> DiffusionLoss:
    d = config.diffusion
    return DiffusionLoss(parameterisation=d.parameterisation, schedule=d.schedule, sigma_data=d.sigma_data,
                         p_mean=d.p_mean, p_std=d.p_std, min_snr_gamma=d.min_snr_gamma)


def lr_lambda(warmup: int, total: int):
    """Linear warm-up, then cosine decay to zero."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1 + math.cos(math.pi * progress))
    return factor


def ema_update(decay: float):
    """EMA step with a warm-up: decay min(decay, (1 + n) / (10 + n)) after n updates, so that early checkpoints
    are not dominated by the random initial weights."""
    def update(averaged, current, num_averaged):
        n = float(num_averaged)
        d = min(decay, (1 + n) / (10 + n))
        return d * averaged + (1 - d) * current
    return update


@dataclass
class TrainResult:
    checkpoint: Path
    step: int
    train_loss: float
    val_loss: float
    events_per_second: float


def _loss(loss_fn, denoiser, batch, transform, generator):
    batch = add_inputs(batch, transform)
    return loss_fn(denoiser, batch.fine_target.unsqueeze(1), batch=batch.batch, num_graphs=batch.num_graphs,
                   generator=generator, data=batch)


@torch.no_grad()
def validation_loss(loss_fn, denoiser, loader, transform, device, seed: int = 1234) -> float:
    """Mean loss over the validation set with a fixed noise stream, so values are comparable across steps."""
    generator = torch.Generator(device).manual_seed(seed)
    total, count = 0.0, 0
    for batch in loader:
        total += float(_loss(loss_fn, denoiser, batch.to(device), transform, generator)) * batch.num_graphs
        count += batch.num_graphs
    return total / max(count, 1)


def train(config: Config, out_dir: str | Path, resume: bool = False, progress: bool = True,
          stop_after: int | None = None) -> TrainResult:
    """Train (or, with ``resume``, continue training) and write ``out_dir/checkpoint.pt``.

    ``stop_after``: leave (with a checkpoint) after this many steps in this call, e.g. to fit a batch-queue slot;
    a later ``resume`` goes on exactly as if the run had not stopped.
    """
    out_dir = Path(out_dir)
    tc = config.train
    device = resolve_device(tc.device)
    train_set, val_set, _ = load_splits(config)
    if len(train_set) == 0:
        raise ValueError(f"no training events in {config.data.train}")

    state = load_checkpoint(out_dir / CHECKPOINT) if resume else None
    if resume and state["config"] != config.to_dict():
        raise ValueError(f"{out_dir / CHECKPOINT} was written with a different config; resume needs the same one")
    norm = state["normalisation"] if state else fit_normalisation(train_set, config.diffusion.margin)
    transform = target_transform(**norm)

    torch.manual_seed(tc.seed)  # model initialisation
    denoiser = build_denoiser(config).to(device)
    ema = AveragedModel(denoiser, avg_fn=ema_update(tc.ema_decay))
    loss_fn = build_loss(config)
    optimizer = torch.optim.AdamW(denoiser.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(tc.warmup, tc.steps))
    noise = torch.Generator(device).manual_seed(tc.seed + 1)
    step, epoch, position = 0, 0, 0
    if state:
        denoiser.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        noise.set_state(state["noise_generator"])
        step, epoch, position = state["step"], state["epoch"], state["position"]

    val_loader = GraphLoader(val_set, tc.batch_size)
    use_amp = tc.amp and device.type == "cuda"
    started, events_seen, first_step = time.perf_counter(), 0, step
    train_loss = val_loss = float("nan")

    def checkpoint():
        return save_checkpoint({
            "model": denoiser.state_dict(), "ema": ema.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "noise_generator": noise.get_state(), "step": step,
            "epoch": epoch, "position": position, "config": config.to_dict(), "normalisation": norm,
            "graph_options": {"layers": list(config.data.layers), "k": config.data.k,
                              "k_between": config.data.k_between},
            "factor": data_factor(train_set), "val_loss": val_loss,
        }, out_dir / CHECKPOINT)

    bar = tqdm(total=tc.steps, initial=step, disable=not progress, desc="training", unit="step")
    while step < tc.steps:
        loader = GraphLoader(train_set, tc.batch_size, shuffle=True, drop_last=len(train_set) >= tc.batch_size,
                             generator=torch.Generator().manual_seed(tc.seed + epoch))
        for i, batch in enumerate(loader):
            if i < position:  # resuming mid-epoch: skip the batches already trained on
                continue
            denoiser.train()
            batch = batch.to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                loss = _loss(loss_fn, denoiser, batch, transform, noise)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(denoiser.parameters(), tc.grad_clip)
            optimizer.step()
            scheduler.step()
            ema.update_parameters(denoiser)
            step, position, events_seen = step + 1, i + 1, events_seen + batch.num_graphs
            train_loss = loss.item()
            rate = events_seen / (time.perf_counter() - started)
            bar.update(1)
            bar.set_postfix(loss=f"{train_loss:.4f}", events_per_s=f"{rate:.0f}")
            out_of_time = (tc.time_limit is not None and time.perf_counter() - started > tc.time_limit) or \
                (stop_after is not None and step - first_step >= stop_after)
            if step % tc.val_every == 0 or step == tc.steps or out_of_time:
                ema.module.eval()
                val_loss = validation_loss(loss_fn, ema.module, val_loader, transform, device)
                bar.write(f"step {step}: train loss {train_loss:.4f}, validation loss (EMA) {val_loss:.4f}")
                checkpoint()
            if step >= tc.steps or out_of_time:
                break
        else:
            epoch, position = epoch + 1, 0
            continue
        break
    bar.close()
    if step < tc.steps:
        print(f"stopped at step {step} of {tc.steps} (time limit {tc.time_limit} s, stop_after {stop_after}); "
              "`--resume` continues")
    return TrainResult(out_dir / CHECKPOINT, step, train_loss, val_loss,
                       events_seen / max(time.perf_counter() - started, 1e-9))
