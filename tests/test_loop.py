"""The shared training loop: stopping rules and an exact resume, on a toy model."""

import itertools

import torch

from graphsr.training.loop import TrainingLoop


def _toy(steps=10, **options):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Dropout(0.3), torch.nn.Linear(8, 1))
    loop = TrainingLoop(model, steps=steps, lr=0.01, weight_decay=0.01, ema_decay=0.9, grad_clip=1.0,
                        schedule=lambda step, loop: min(1.0, (step + 1) / 3), **options)
    return model, loop


def _run(loop, model, noise):
    """Batches numbered by step (position = step + 1 within one epoch); the loss uses dropout (the global
    generator) and noise drawn from ``noise``."""
    x = torch.linspace(-1, 1, 32).reshape(16, 2)
    batches = ((0, i + 1, x) for i in itertools.count(loop.position))
    loop.run(batches, lambda b: (model(b) - torch.randn(16, 1, generator=noise)).pow(2).mean(), progress=False)


def test_resume_continues_exactly_as_an_uninterrupted_run():
    model, loop = _toy()
    _run(loop, model, torch.Generator().manual_seed(1))
    whole = [p.clone() for p in loop.ema.parameters()]

    model, loop = _toy(stop_after=4)
    noise = torch.Generator().manual_seed(1)
    _run(loop, model, noise)
    assert loop.step == 4 and loop.paused
    saved = {"model": {k: v.clone() for k, v in model.state_dict().items()}, **loop.state(noise)}
    torch.manual_seed(123)  # whatever ran in between
    model, loop = _toy()
    noise = torch.Generator().manual_seed(99)
    model.load_state_dict(saved["model"])
    loop.resume(saved, step=4, epoch=0, position=4, seconds=0.0, noise=noise)
    _run(loop, model, noise)
    assert loop.step == 10 and not loop.paused
    assert all(torch.equal(a, b) for a, b in zip(whole, loop.ema.parameters()))


def test_time_limit_counts_the_seconds_before_a_resume():
    model, loop = _toy(time_limit=30.0)
    saved = loop.state()
    loop.resume(saved, step=2, epoch=0, position=2, seconds=31.0)  # the run had trained 31 s before
    _run(loop, model, torch.Generator().manual_seed(1))
    assert loop.step == 3  # one step, then the limit is seen: a time limit ends a run, it does not pause it
    assert not loop.paused and loop.seconds > 31.0
