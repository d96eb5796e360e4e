"""The shared training loop: stopping rules and an exact resume, on a toy model; its AdamW, clipping and EMA by hand."""

import itertools

import torch
from torch.optim.swa_utils import AveragedModel

from graphsr.training.loop import ExponentialAverage, TrainingLoop, clip_gradients, ema_update, optimiser_step


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


def test_one_optimiser_step_is_adamw_and_the_ema_warms_up_by_hand():
    """The loop's AdamW (fused where torch has it) and EMA against the update computed by hand: AdamW's first step
    moves each weight by lr * g / (|g| + eps) after the decoupled decay (the bias-corrected moments are g and g^2);
    the EMA copies the first weights, then keeps d = min(decay, (1 + n) / (10 + n)) of them after n updates."""
    model = torch.nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, -2.0, 0.5]]))
    start = model.weight.detach().clone()
    lr, wd = 0.1, 0.01
    loop = TrainingLoop(model, steps=2, lr=lr, weight_decay=wd, ema_decay=0.9, grad_clip=1e9,
                        schedule=lambda i, _: 1.0)
    loop.ema.update_parameters(model)  # the first update copies
    gradient = torch.tensor([[0.3, -4.0, 2.0]])
    loss = (model.weight * gradient).sum()  # d loss / d weight = gradient
    optimiser_step(loss, model, loop.optimizer, loop.scheduler, loop.ema, loop.grad_clip)
    expected = start * (1 - lr * wd) - lr * gradient / (gradient.abs() + 1e-8)
    assert torch.allclose(model.weight.detach(), expected, atol=1e-6)
    d = min(0.9, 2 / 11)  # the second update: n = 1
    assert torch.allclose(loop.ema.module.weight.detach(), d * start + (1 - d) * expected, atol=1e-6)


def test_gradients_are_clipped_to_the_total_norm_by_hand():
    """Gradients (3, 4) and (12): total norm 13. A limit of 6.5 halves them; a limit above 13 leaves them."""
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(1))
    unused = torch.nn.Parameter(torch.zeros(1))  # no gradient: skipped
    for limit, factor in ((6.5, 0.5), (20.0, 1.0)):
        a.grad, b.grad = torch.tensor([3.0, 4.0]), torch.tensor([12.0])
        clip_gradients([a, b, unused], limit)
        assert torch.allclose(a.grad, factor * torch.tensor([3.0, 4.0]), rtol=1e-6)
        assert torch.allclose(b.grad, factor * torch.tensor([12.0]), rtol=1e-6)
    assert unused.grad is None


def test_the_ema_copy_follows_buffers_and_reads_an_averaged_models_state():
    """Buffers are copied at every update (not averaged); the state dict is AveragedModel's (checkpoints written
    with it load), and updates go on from its count."""
    model = torch.nn.BatchNorm1d(2)
    ema = ExponentialAverage(model, 0.9)
    with torch.no_grad():
        model.weight.fill_(2.0)
        model.running_mean.fill_(5.0)
    ema.update_parameters(model)
    assert torch.equal(ema.module.running_mean, model.running_mean) and torch.equal(ema.module.weight, model.weight)
    old = AveragedModel(model, multi_avg_fn=ema_update(0.9))
    old.update_parameters(model)
    old.update_parameters(model)
    restored = ExponentialAverage(model, 0.9)
    restored.load_state_dict(old.state_dict())
    assert int(restored.n_averaged) == 2 and sorted(restored.state_dict()) == sorted(old.state_dict())
    with torch.no_grad():
        model.weight.fill_(0.0)
    restored.update_parameters(model)  # n = 2: keeps d = min(0.9, 3 / 12) of the average
    assert torch.allclose(restored.module.weight, torch.full((2,), 0.25 * 2.0))
