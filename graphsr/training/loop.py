"""What every training loop shares (the denoiser, the distilled student, the particle-flow model): the device, the
learning-rate schedule, the EMA, one optimiser step, the order of batches over epochs, and the state that lets a
killed run resume exactly."""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from graphsr.graphs import GraphLoader


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``"auto"``: CUDA when present, else the CPU; anything else as torch names it (``"cuda:1"``)."""
    if str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


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


def optimiser_step(loss: torch.Tensor | None, model: torch.nn.Module, optimizer, scheduler, ema,
                   grad_clip: float) -> None:
    """One update, the same for every trainer: backward, clip the gradient norm, step the optimiser and the
    learning-rate schedule, then the EMA copy.

    Under ``torch.distributed`` the ranks' gradients are summed (:func:`sum_gradients`) before clipping: each rank's
    ``loss`` must then be its part of the whole batch's loss (None for a rank without events this step)."""
    optimizer.zero_grad(set_to_none=True)
    if loss is not None:
        loss.backward()
    if torch.distributed.is_available() and torch.distributed.is_initialized() and \
            torch.distributed.get_world_size() > 1:
        sum_gradients(model)
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    scheduler.step()
    ema.update_parameters(model)


def sum_gradients(model: torch.nn.Module) -> None:
    """Sum every parameter's gradient over the ranks, in one all-reduce. A parameter without a gradient on every
    rank keeps none (as in one process, where the optimiser skips it); one with a gradient somewhere gets the sum.
    Unlike DistributedDataParallel's average, the sum lets ranks hold unequal shares of a batch, or none."""
    from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

    params = [p for p in model.parameters() if p.requires_grad]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    has = torch.tensor([float(p.grad is not None) for p in params], device=grads[0].device)
    flat = torch.cat([_flatten_dense_tensors(grads), has])
    torch.distributed.all_reduce(flat)
    for p, g, present in zip(params, _unflatten_dense_tensors(flat[:-len(params)], grads), flat[-len(params):]):
        p.grad = g if present > 0 else None


def shuffled_batches(dataset, batch_size: int, seed: int, epoch: int = 0, position: int = 0) -> Iterator[tuple]:
    """Batches of ``dataset`` for ever: epoch ``e`` in the order drawn from ``seed + e`` (the last incomplete batch
    dropped when there is a whole one), from batch ``position`` of ``epoch`` on. Yields ``(epoch, position, batch)``
    with the position after the batch, which is where a resumed run starts again."""
    while True:
        loader = GraphLoader(dataset, batch_size, shuffle=True, drop_last=len(dataset) >= batch_size,
                             generator=torch.Generator().manual_seed(seed + epoch))
        for i, batch in enumerate(loader):
            if i >= position:  # resuming mid-epoch: the batches before were trained on
                yield epoch, i + 1, batch
        epoch, position = epoch + 1, 0


def loop_state(optimizer, scheduler, ema, noise: torch.Generator | None = None) -> dict:
    """The state besides the weights that a resumed run needs to go on exactly: optimiser, schedule, EMA and every
    random generator (the global one drives dropout)."""
    state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "ema": ema.state_dict(),
             "rng_state": torch.get_rng_state()}
    if noise is not None:
        state["noise_generator"] = noise.get_state()
    return state


def restore_loop_state(state: dict, optimizer, scheduler, ema, noise: torch.Generator | None = None) -> None:
    """Undo :func:`loop_state`."""
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    ema.load_state_dict(state["ema"])
    torch.set_rng_state(state["rng_state"])
    if noise is not None:
        noise.set_state(state["noise_generator"])
