"""The training loop every trainer runs (the denoiser, the distilled student, the particle-flow model):
:class:`TrainingLoop` owns the optimiser, the learning-rate schedule, the EMA copy, the step / epoch / position
counters, the stopping rules (steps, time limit, ``stop_after``), the agreement of ranks under ``torch.distributed``
and the state that lets a killed run resume exactly. A trainer gives it batches and the loss of a batch."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator

import torch
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from graphsr.graphs import GraphLoader

logger = logging.getLogger(__name__)


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
    are not dominated by the random initial weights. For ``AveragedModel(multi_avg_fn=...)``: every tensor in one
    multi-tensor lerp, averaged += (1 - d) (current - averaged), instead of a Python loop over the parameters."""
    def update(averaged: list, current: list, num_averaged):
        n = float(num_averaged)
        torch._foreach_lerp_(averaged, current, 1 - min(decay, (1 + n) / (10 + n)))
    return update


class ExponentialAverage(AveragedModel):
    """The EMA copy of a model: torch's ``AveragedModel`` (its ``module``, its state dict) with :func:`ema_update`'s
    decay, updated by two multi-tensor operations over the parameters, where ``AveragedModel.update_parameters``
    loops over them in Python (most of a millisecond per 50 parameters). Buffers follow the model's, as there."""

    def __init__(self, model: torch.nn.Module, decay: float):
        super().__init__(model, multi_avg_fn=ema_update(decay))
        self._pairs = None  # (model, the copy's parameters, the model's): the same Parameter objects every step

    @torch.no_grad()
    def update_parameters(self, model: torch.nn.Module) -> None:
        if self._pairs is None or self._pairs[0] is not model:
            self._pairs = (model, list(self.module.parameters()), list(model.parameters()))
        _, averaged, current = self._pairs
        if int(self.n_averaged) == 0:
            torch._foreach_copy_(averaged, current)
        else:
            self.multi_avg_fn(averaged, current, self.n_averaged)
        for mine, theirs in zip(self.module.buffers(), model.buffers()):
            mine.copy_(theirs)
        self.n_averaged += 1


def clip_gradients(parameters, max_norm: float) -> None:
    """``torch.nn.utils.clip_grad_norm_``: every gradient scaled by min(1, max_norm / (total norm + 1e-6)), with the
    norms and the scaling as multi-tensor operations on every device (torch's own loops over the parameters in
    Python on the CPU)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if grads:
        total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        torch._foreach_mul_(grads, torch.clamp(max_norm / (total + 1e-6), max=1.0))


def adamw(parameters, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW as one fused kernel over all parameters (CPU and CUDA) where torch has it, else the multi-tensor one;
    the same update, a fraction of the per-parameter overhead that small models are dominated by."""
    parameters = list(parameters)
    try:
        return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):  # an older torch or a device without the fused kernel
        return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)


def optimiser_step(loss: torch.Tensor | None, model: torch.nn.Module, optimizer, scheduler, ema,
                   grad_clip: float) -> None:
    """One update, the same for every trainer: backward, clip the gradient norm, step the optimiser and the
    learning-rate schedule, then the EMA copy.

    Under ``torch.distributed`` the ranks' gradients are summed (:func:`sum_gradients`) before clipping: each rank's
    ``loss`` must then be its part of the whole batch's loss (None for a rank without events this step)."""
    optimizer.zero_grad(set_to_none=True)
    if loss is not None:
        loss.backward()
    if _distributed():
        sum_gradients(model)
    clip_gradients(model.parameters(), grad_clip)
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


def shuffled_batches(dataset, batch_size: int, seed: int, epoch: int = 0, position: int = 0, *,
                     part: tuple[int, int] | None = None, pin_memory: bool = False) -> Iterator[tuple]:
    """Batches of ``dataset`` for ever: epoch ``e`` in the order drawn from ``seed + e`` (the last incomplete batch
    dropped when there is a whole one), from batch ``position`` of ``epoch`` on. Yields ``(epoch, position, batch)``
    with the position after the batch, which is where a resumed run starts again.

    ``part``: ``(rank, world_size)`` of distributed training; ``batch`` is then ``(this rank's share, share)``
    (:meth:`~graphsr.graphs.GraphLoader.shares`). ``pin_memory``: batches in page-locked memory (CUDA)."""
    while True:
        loader = GraphLoader(dataset, batch_size, shuffle=True, drop_last=len(dataset) >= batch_size,
                             generator=torch.Generator().manual_seed(seed + epoch), pin_memory=pin_memory,
                             part=part or (0, 1))
        for i, item in enumerate(loader.shares()):
            if i >= position:  # resuming mid-epoch: the batches before were trained on
                yield epoch, i + 1, item if part is not None else item[0]
        epoch, position = epoch + 1, 0


def loop_state(optimizer, scheduler, ema, noise: torch.Generator | None = None) -> dict:
    """The state besides the weights that a resumed run needs to go on exactly: optimiser, schedule, EMA and every
    random generator (the global one drives dropout; on CUDA the device's too)."""
    state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "ema": ema.state_dict(),
             "rng_state": torch.get_rng_state()}
    if noise is not None:
        state["noise_generator"], state["noise_device"] = noise.get_state(), noise.device.type
        if noise.device.type == "cuda":
            state["cuda_rng_state"] = torch.cuda.get_rng_state(noise.device)
    return state


def restore_loop_state(state: dict, optimizer, scheduler, ema, noise: torch.Generator | None = None,
                       step: int = 0) -> None:
    """Undo :func:`loop_state`. A noise generator's state does not carry over between CPU and CUDA: a run resumed
    on the other kind of device goes on with the stream of the generator's seed plus ``step``."""
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    ema.load_state_dict(state["ema"])
    torch.set_rng_state(state["rng_state"])
    if noise is None:
        return
    if state.get("noise_device", noise.device.type) == noise.device.type:
        noise.set_state(state["noise_generator"])
    else:
        noise.manual_seed(noise.initial_seed() + step)
    if noise.device.type == "cuda" and "cuda_rng_state" in state:
        torch.cuda.set_rng_state(state["cuda_rng_state"], noise.device)


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized() and \
        torch.distributed.get_world_size() > 1


class TrainingLoop:
    """One run of optimiser steps: AdamW, a learning-rate schedule, an EMA copy of the model, gradient clipping,
    and the counters that a resumed run restores (``step``, ``epoch`` and ``position`` in the epoch's batch order,
    ``seconds`` trained in all calls together).

    Args:
        model: the module trained (its parameters are optimised).
        steps: the run's optimiser steps in all.
        lr, weight_decay: AdamW's.
        ema_decay: of the EMA copy (:func:`ema_update`).
        grad_clip: gradient-norm clipping.
        schedule: learning-rate factor of a step, ``schedule(step, loop)`` (the loop for schedules that follow the
            time trained, :attr:`seconds`).
        time_limit: stop once the run (all its calls) has trained this many seconds.
        stop_after: stop after this many steps in this call (:attr:`paused` then says so).
    """

    def __init__(self, model: torch.nn.Module, *, steps: int, lr: float, weight_decay: float, ema_decay: float,
                 grad_clip: float, schedule: Callable[[int, TrainingLoop], float],
                 time_limit: float | None = None, stop_after: int | None = None):
        self.model, self.steps, self.grad_clip = model, steps, grad_clip
        self.time_limit, self.stop_after = time_limit, stop_after
        self.step = self.epoch = self.position = 0
        self.seconds_before, self.started = 0.0, time.perf_counter()
        self.first_step, self.lr = 0, lr
        self.ema = ExponentialAverage(model, ema_decay)
        self.optimizer = adamw(model.parameters(), lr, weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda i: schedule(i, self))

    @property
    def seconds(self) -> float:
        """Seconds trained, in this call and the ones before a resume."""
        return self.seconds_before + time.perf_counter() - self.started

    @property
    def paused(self) -> bool:
        """Left early by ``stop_after``, to be resumed (a time limit ends a run: it is not paused)."""
        return self.stop_after is not None and self.step - self.first_step >= self.stop_after and \
            self.step < self.steps

    def state(self, noise: torch.Generator | None = None) -> dict:
        """:func:`loop_state` of this loop."""
        return loop_state(self.optimizer, self.scheduler, self.ema, noise)

    def resume(self, state: dict, *, step: int, epoch: int, position: int, seconds: float,
               noise: torch.Generator | None = None) -> None:
        """Go on from a checkpoint: its loop state (:func:`loop_state`) and counters. The model's own weights are
        the trainer's to load."""
        restore_loop_state(state, self.optimizer, self.scheduler, self.ema, noise, step)
        self.step, self.epoch, self.position, self.seconds_before = step, epoch, position, seconds
        self.first_step, self.started = step, time.perf_counter()

    def out_of_time(self) -> bool:
        return (self.time_limit is not None and self.seconds > self.time_limit) or \
            (self.stop_after is not None and self.step - self.first_step >= self.stop_after)

    def run(self, batches: Iterator[tuple], batch_loss: Callable, after_step: Callable | None = None, *,
            progress: bool = True, desc: str = "training") -> None:
        """Train until ``steps``, the time limit or ``stop_after``.

        Args:
            batches: ``(epoch, position, batch)`` from the run's position on (:func:`shuffled_batches`).
            batch_loss: ``batch -> loss`` (None for a rank without events in this step); under
                ``torch.distributed`` a rank's part of the whole batch's loss (:func:`optimiser_step`).
            after_step: ``after_step(loss, stop)`` after every step (``loss``: the step's loss as a float, summed
                over ranks; ``stop``: whether the run stops here, the same on every rank): logging, validation,
                checkpoints. :attr:`lr` is the learning rate the step used.
            progress: a progress bar where stderr is a terminal (tqdm's ``disable=None``).
        """
        self.bar = tqdm(total=self.steps, initial=self.step, disable=None if progress else True, desc=desc,
                        unit="step")
        while self.step < self.steps:
            self.epoch, self.position, batch = next(batches)
            self.model.train()
            loss = batch_loss(batch)
            self.lr = self.scheduler.get_last_lr()[0]
            optimiser_step(loss, self.model, self.optimizer, self.scheduler, self.ema, self.grad_clip)
            self.step += 1
            value, stop = loss.item() if loss is not None else 0.0, self.out_of_time()
            if _distributed():  # the whole batch's loss; every rank stops at the same step
                flags = torch.tensor([value, float(stop)], device=next(self.model.parameters()).device)
                torch.distributed.all_reduce(flags)
                value, stop = float(flags[0]), bool(flags[1] > 0)
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{value:.4f}")
            if after_step is not None:
                after_step(value, stop)
            if stop:
                break
        self.bar.close()
        if self.step < self.steps:
            logger.info(f"{desc}: stopped at step {self.step} of {self.steps} (time limit {self.time_limit} s, "
                        f"stop_after {self.stop_after}); resume continues")
