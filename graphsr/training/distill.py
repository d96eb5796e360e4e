"""Progressive distillation (Salimans and Ho, arXiv 2202.00512): a student that takes one sampler step where its
teacher takes two, halved round after round down to a one-step generator.

A round starts the student from the teacher's weights. For a training event, the clean targets are noised to a
level ``sigma_i`` of the student's grid (every other level of the teacher's); the teacher takes its two
deterministic DDIM steps ``sigma_i -> sigma_mid -> sigma_next``; the student is trained so that its single DDIM step
``sigma_i -> sigma_next`` lands on the same point, i.e. its denoised estimate must be
``x - sigma_i (x_teacher - x) / (sigma_next - sigma_i)`` (at ``sigma_next = 0``: the teacher's sample itself).
The student samples on exactly that grid, which its checkpoint stores (``sampling_sigmas``). Distillation keeps the
teacher's energy model and graphs; its spread calibration is refitted afterwards (:mod:`graphsr.pipelines`).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import torch

from graphsr.config import config_from_dict
from graphsr.diffusion import karras_sigmas
from graphsr.models.factory import build_denoiser
from graphsr.nn import use_compile
from graphsr.models.sr3 import EnergyModel, add_inputs, node_weights, state_batch
from graphsr.training.checkpoint import claim_run_dir, load_checkpoint, model_weights, save_checkpoint
from graphsr.training.loop import TrainingLoop, resolve_device, shuffled_batches
from graphsr.training.trainer import CHECKPOINT, load_splits

log = logging.getLogger(__name__)


def teacher_grid(state: dict) -> torch.Tensor:
    """The sampling grid of a checkpoint: its distilled grid, or the Karras grid of its config's steps."""
    if state.get("sampling_sigmas") is not None:
        return torch.as_tensor(state["sampling_sigmas"], dtype=torch.float32)
    config = config_from_dict(state["config"])
    d = config.diffusion
    return karras_sigmas(config.sample.steps, d.sigma_min, d.sigma_max)


def _ddim_step(x, denoised, sigma, sigma_next):
    """Deterministic DDIM (Euler on the probability-flow ODE) from per-node ``sigma`` to ``sigma_next``."""
    return x + (sigma_next - sigma) * (x - denoised) / sigma


def distillation_target(x, sigma, sigma_mid, sigma_next, denoise, per_node=lambda s: s):
    """The student's denoised target at ``x``: the value whose single DDIM step ``sigma -> sigma_next`` lands where
    the teacher's two steps ``sigma -> sigma_mid -> sigma_next`` do, ``x - sigma (x_teacher - x) / (sigma_next -
    sigma)``; at ``sigma_next = 0``, where a DDIM step lands on the denoised value itself, the teacher's sample.

    Args:
        x: ``[N, F]`` noisy states at ``sigma``.
        sigma, sigma_mid, sigma_next: noise levels as ``denoise`` takes them (e.g. one per event).
        denoise: the teacher, ``denoise(x, sigma) -> denoised``.
        per_node: the levels broadcast against ``x`` (e.g. one per event -> ``[N, 1]``).
    """
    s, mid, nxt = per_node(sigma), per_node(sigma_mid), per_node(sigma_next)
    x_mid = _ddim_step(x, denoise(x, sigma), s, mid)
    x_teacher = _ddim_step(x_mid, denoise(x_mid, sigma_mid), mid, nxt)
    return torch.where(nxt > 0, x - s * (x_teacher - x) / (nxt - s), x_teacher)


def _distillable_grid(state: dict, config) -> torch.Tensor:
    """The teacher's sampling grid, refused where a round cannot halve it."""
    if config.diffusion.parameterisation == "regression":
        raise ValueError("the regression baseline takes one step already: there is nothing to distil")
    if config.model.generator != "dense":
        raise ValueError(f"distillation of the {config.model.generator} generator is not implemented: distil a dense "
                         "checkpoint")
    grid = teacher_grid(state)
    if len(grid) < 3 or (len(grid) - 1) % 2:
        raise ValueError(f"the teacher samples with {len(grid) - 1} step(s): distillation halves an even number")
    return grid


def _teacher_and_student(state: dict, config, device) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The frozen teacher (its EMA weights) and a trainable copy of it, the student; both compiled where the
    teacher's run was (``train.compile``)."""
    teacher = use_compile(build_denoiser(config).to(device).eval(), config.train.compile)
    teacher.load_state_dict(model_weights(state))
    for p in teacher.parameters():
        p.requires_grad_(False)
    student = copy.deepcopy(teacher).train()
    for p in student.parameters():
        p.requires_grad_(True)
    return teacher, student


def _distillation_loss(batch, teacher, student, grid, energy_model, generator, coarse_weight: float) -> torch.Tensor:
    """The student's weighted squared error to :func:`distillation_target` at a random level of its grid (every
    other level of the teacher's ``grid``) per event, averaged per event, then over events."""
    fine, coarse = energy_model.encode(batch)
    x0 = torch.cat([fine, coarse]).unsqueeze(1)
    nodes = state_batch(batch)
    kwargs = {"data": batch, "prepared": teacher.prepare(batch)}
    # a student grid level per event (not the last, 0), and the teacher's two levels below it
    index = torch.randint(0, (len(grid) - 1) // 2, (batch.num_graphs,), device=grid.device, generator=generator)
    sigma, mid, nxt = grid[2 * index], grid[2 * index + 1], grid[2 * index + 2]
    node = lambda s: s[nodes].unsqueeze(1)  # noqa: E731
    x = x0 + node(sigma) * torch.randn(x0.shape, device=grid.device, generator=generator)
    with torch.no_grad():
        target = distillation_target(x, sigma, mid, nxt, lambda y, s: teacher(y, s, nodes, **kwargs), node)
    error = (student(x, sigma, nodes, data=batch, prepared=student.prepare(batch)) - target).pow(2)[:, 0]
    weight = node_weights(batch, coarse_weight)
    per_event = torch.zeros(batch.num_graphs, device=grid.device).index_add_(0, nodes, weight * error)
    return (per_event / torch.zeros_like(per_event).index_add_(0, nodes, weight)).mean()


def distill_round(state: dict, out: str | Path, *, steps: int = 500, batch_size: int | None = None,
                  lr: float | None = None, time_limit: float | None = None, device: str = "auto",
                  seed: int = 0, progress: dict | None = None, save_every: int = 100,
                  stop_after: int | None = None) -> dict:
    """One round: a student with half the teacher's steps. Returns (and writes to ``out/checkpoint.pt``) the
    student's checkpoint state (without calibration); its ``"distill_run"`` entry says whether the round is
    ``complete``.

    Args:
        state: the teacher's checkpoint (from ``graphsr train`` or an earlier round).
        out: run directory of the student.
        steps, batch_size, lr: the student's optimisation (default batch size and learning rate: the teacher's
            config, the learning rate a third of it, constant after a short warm-up).
        time_limit: end the round (complete, with a checkpoint) after this many seconds.
        device: where to train.
        seed: seed of the student's noise.
        progress: the ``"distill_run"`` record to carry in the checkpoint (:func:`distill`); when it holds a
            ``"student"`` (the checkpoint of this round, interrupted), the round goes on from there exactly.
        save_every: optimiser steps between the checkpoints of an unfinished round.
        stop_after: leave (with a checkpoint, the round incomplete) after this many optimiser steps.
    """
    config = config_from_dict(state["config"])
    device = resolve_device(device)
    tc = config.train
    batch_size, lr = batch_size or tc.batch_size, lr or tc.lr / 3
    grid = _distillable_grid(state, config).to(device)
    student_grid = grid[::2]
    energy_model = EnergyModel(**state["energy_model"])
    teacher, student = _teacher_and_student(state, config, device)
    warmup = min(50, steps // 10 + 1)
    loop = TrainingLoop(student, steps=steps, lr=lr, weight_decay=tc.weight_decay, ema_decay=tc.ema_decay,
                        grad_clip=tc.grad_clip, schedule=lambda i, _: min(1.0, (i + 1) / warmup),
                        time_limit=time_limit, stop_after=stop_after)
    train_set, _, _ = load_splits(config)
    generator = torch.Generator(device).manual_seed(seed)
    progress = dict(progress or {})
    resumed = progress.pop("student", None)
    torch.manual_seed(seed)  # the global generator drives dropout: a round does not depend on what ran before
    if resumed is not None:
        student.load_state_dict(resumed["model"])
        run = resumed["distill_run"]
        loop.resume(resumed, step=run["step"], epoch=run["epoch"], position=run["position"], seconds=run["seconds"],
                    noise=generator)

    def checkpoint(complete: bool) -> dict:
        student_state = {**state, "model": student.state_dict(), **loop.state(generator),
                         "sampling_sigmas": student_grid.cpu().tolist(), "calibration": None,
                         "distill_run": {**progress, "complete": complete, "step": loop.step, "epoch": loop.epoch,
                                         "position": loop.position, "seconds": loop.seconds,
                                         "teacher": None if complete else state}}
        if complete:
            student_state["distillation"] = [*state.get("distillation", []),
                                             {"from_steps": len(grid) - 1, "to_steps": len(student_grid) - 1,
                                              "optimiser_steps": loop.step, "seconds": loop.seconds}]
        save_checkpoint(student_state, Path(out) / CHECKPOINT)
        return student_state

    def batch_loss(batch):
        batch = add_inputs(batch.to(device), state["factor"])
        return _distillation_loss(batch, teacher, student, grid, energy_model, generator,
                                  config.diffusion.coarse_weight)

    losses = []

    def after_step(loss: float, stop: bool):
        losses.append(loss)
        if not stop and loop.step % save_every == 0 and loop.step < steps:
            checkpoint(complete=False)

    loop.run(shuffled_batches(train_set, batch_size, seed + 1000, loop.epoch, loop.position), batch_loss, after_step,
             desc=f"distilling {len(grid) - 1} -> {len(student_grid) - 1} steps")
    if loop.paused:
        return checkpoint(complete=False)
    log.info("distilled %d -> %d sampling steps in %d optimiser steps (%.0f s), last loss %.4g",
             len(grid) - 1, len(student_grid) - 1, loop.step, loop.seconds,
             sum(losses[-20:]) / max(len(losses[-20:]), 1))
    return checkpoint(complete=True)


def distill(checkpoint: str | Path, out: str | Path, *, rounds: int | None = None, teacher_steps: int | None = None,
            resume: bool = False, overwrite: bool = False, stop_after: int | None = None, **round_args) -> Path:
    """Progressive distillation of a trained checkpoint: ``rounds`` halvings (default: down to one step), each
    written over ``out/checkpoint.pt``. The student's spread calibration is the next step:
    :func:`graphsr.pipelines.distill` runs both, as ``graphsr distill`` does.

    ``teacher_steps``: the teacher samples on the Karras grid of this many DDIM steps instead of its config's, so
    that, e.g., 32 steps and 3 rounds give a 4-step student that follows the 32-step sampler (whose ensemble mean is
    unbiased where 4 plain DDIM steps are not; docs/distillation.md).

    A directory that holds a run is refused unless ``resume`` (continue it exactly, with the same settings: the
    student's weights are those of an uninterrupted run) or ``overwrite``. ``stop_after``: leave (with a
    checkpoint, uncalibrated) after this many optimiser steps in this call."""
    path = Path(out) / CHECKPOINT
    settings = {"checkpoint": str(checkpoint), "rounds": rounds, "teacher_steps": teacher_steps,
                **{k: v for k, v in round_args.items() if k not in ("device", "save_every")}}
    first_round, interrupted = 0, None  # the checkpoint of a round to go on with, when resuming inside one
    if resume:
        claim_run_dir(out, resume=True, overwrite=overwrite)
        saved = load_checkpoint(path)
        run = saved.get("distill_run")
        if run is None:
            raise ValueError(f"{path} is not an interrupted distillation (no distill_run record): it cannot be resumed")
        if run["settings"] != settings:
            differ = sorted(k for k in settings.keys() | run["settings"].keys()
                            if settings.get(k) != run["settings"].get(k))
            raise ValueError(f"{path} was distilled with other settings ({', '.join(differ)} differ); resume needs "
                             "the same ones")
        first_round, rounds = run["round"] + run["complete"], run["rounds"]
        state = {**saved, "distill_run": None} if run["complete"] else run["teacher"]
        interrupted = None if run["complete"] else saved
    else:
        state = load_checkpoint(checkpoint)
        if teacher_steps is not None:
            if state.get("sampling_sigmas") is not None:
                raise ValueError(f"{checkpoint} is a distilled student: it samples on its own grid only, so "
                                 "teacher_steps cannot change it; distil the checkpoint of graphsr train")
            d = config_from_dict(state["config"]).diffusion
            state = {**state, "sampling_sigmas": karras_sigmas(teacher_steps, d.sigma_min, d.sigma_max).tolist()}
        steps = len(teacher_grid(state)) - 1
        rounds = rounds if rounds is not None else max(steps.bit_length() - 1, 0)
        if rounds < 1 or steps % (2 ** rounds):
            raise ValueError(f"{checkpoint} samples with {steps} steps: {rounds} halving round(s) do not fit")
        claim_run_dir(out, overwrite=overwrite)
    state.pop("distill_run", None)
    done = 0
    for r in range(first_round, rounds):
        progress = {"settings": settings, "rounds": rounds, "round": r}
        if interrupted is not None and r == first_round:
            progress["student"] = interrupted
        left = None if stop_after is None else stop_after - done
        if left is not None and left <= 0:  # stopped between rounds: the last one is complete on disk
            return path
        before = interrupted["distill_run"]["step"] if "student" in progress else 0
        state = distill_round(state, out, progress=progress, stop_after=left, **round_args)
        if not state["distill_run"]["complete"]:
            return path
        done += state["distill_run"]["step"] - before
        state = {**state, "distill_run": None}
    return path
