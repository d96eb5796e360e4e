"""Progressive distillation: the student's target, and a tiny run end to end."""

from __future__ import annotations

import pytest
import torch

from graphsr.cli import main
from graphsr.inference import SuperResolver
from graphsr.io import write_cocoa
from graphsr.simulation import SingleElectronGun, simulate_events
from graphsr.training.checkpoint import load_checkpoint
from graphsr.training.distill import _ddim_step
from graphsr.training.trainer import train

from test_training import tiny_config


def test_one_student_step_lands_where_two_teacher_steps_do():
    # the student's target denoised value, by construction of progressive distillation
    x = torch.tensor([[1.5], [-0.3]])
    sigma, mid, nxt = torch.tensor(2.0), torch.tensor(0.8), torch.tensor(0.25)
    d1, d2 = torch.tensor([[0.4], [0.1]]), torch.tensor([[0.5], [-0.2]])  # what the teacher denoises to
    x_teacher = _ddim_step(_ddim_step(x, d1, sigma, mid), d2, mid, nxt)
    target = x - sigma * (x_teacher - x) / (nxt - sigma)
    assert torch.allclose(_ddim_step(x, target, sigma, nxt), x_teacher, atol=1e-6)
    # by hand for the first value: x_mid = 1.5 + (0.8 - 2)(1.5 - 0.4)/2 = 0.84, x' = 0.84 + (0.25 - 0.8)(0.84 - 0.5)/0.8
    assert float(x_teacher[0]) == pytest.approx(0.84 - 0.55 * 0.34 / 0.8)


def test_distill_command_makes_a_one_step_student(tmp_path, capsys):
    data = tmp_path / "e.root"
    write_cocoa(data, simulate_events(SingleElectronGun(), 40, factor=2, seed=8, neighbour_branches=False))
    config = tiny_config(data, tmp_path / "cache")
    config.sample.sampler, config.sample.steps = "ddim", 4
    teacher = train(config, tmp_path / "teacher", progress=False).checkpoint
    out = tmp_path / "student"
    assert main(["distill", "--checkpoint", str(teacher), "--out", str(out), "--steps", "3", "--device", "cpu"]) == 0
    state = load_checkpoint(out / "checkpoint.pt")
    # two rounds, 4 -> 2 -> 1 steps, on every other level of the teacher's grid, recalibrated
    assert [r["to_steps"] for r in state["distillation"]] == [2, 1]
    assert state["sampling_sigmas"] == [pytest.approx(config.diffusion.sigma_max), 0.0] and state["calibration"] is not None
    seen = load_checkpoint(teacher)["events"]["train"][0]
    assert torch.equal(state["events"]["train"][0]["entries"], seen["entries"])  # what the teacher saw, it saw
    resolver = SuperResolver(out / "checkpoint.pt", device="cpu")
    storage = resolver_storage(config)
    calls = []
    original = resolver.denoiser.forward
    resolver.denoiser.forward = lambda *a, **k: calls.append(1) or original(*a, **k)
    out_samples = resolver(storage, torch.arange(2), ensemble=3, seed=1)["samples"]
    assert len(calls) == 1 and out_samples.shape[0] == 3  # one network evaluation for the whole ensemble
    assert not torch.equal(out_samples[0], out_samples[1])  # members differ through their initial noise
    with pytest.raises(ValueError, match="distilled student"):
        resolver(storage, torch.arange(2), steps=4)
    # a student of a finer sampler than the config's: 8 teacher steps, 2 rounds -> 2 student steps on every 4th level
    # of the 8-step grid, EDM's eq. 5: sigma_i = (a + i / 7 (b - a))^7, a = sigma_max^(1/7), b = sigma_min^(1/7)
    out2 = tmp_path / "student8"
    assert main(["distill", "--checkpoint", str(teacher), "--out", str(out2), "--steps", "2", "--rounds", "2",
                 "--teacher-steps", "8", "--device", "cpu"]) == 0
    a, b = config.diffusion.sigma_max ** (1 / 7), config.diffusion.sigma_min ** (1 / 7)
    assert load_checkpoint(out2 / "checkpoint.pt")["sampling_sigmas"] == [
        pytest.approx(config.diffusion.sigma_max), pytest.approx((a + 4 / 7 * (b - a)) ** 7, rel=1e-5), 0.0]
    assert [r["from_steps"] for r in load_checkpoint(out2 / "checkpoint.pt")["distillation"]] == [8, 4]
    capsys.readouterr()
    assert main(["distill", "--checkpoint", str(out / "checkpoint.pt"), "--out", str(tmp_path / "s3"),
                 "--teacher-steps", "8", "--device", "cpu"]) != 0  # a student's grid is its own
    assert "is a distilled student" in capsys.readouterr().err and not (tmp_path / "s3").exists()


def resolver_storage(config):
    from graphsr.training.trainer import load_splits

    train_set, _, _ = load_splits(config)
    return train_set._data, train_set.slices
