"""Progressive distillation: on Gaussian data, whose optimal denoiser is known in closed form, a student trained
to the target takes one step where its teacher takes two; and a tiny run end to end."""

from __future__ import annotations

import pytest
import torch

from graphsr.cli import main
from graphsr.diffusion import get_sampler, karras_sigmas
from graphsr.inference import SuperResolver
from graphsr.io import write_cocoa
from graphsr.simulation import SingleElectronGun, simulate_events
from graphsr.training.checkpoint import load_checkpoint
from graphsr.training.distill import distillation_target
from graphsr.training.trainer import train

from test_training import tiny_config

MU, S = 1.5, 0.4  # the toy data: N(MU, S^2)


def gaussian_teacher(x, sigma):
    """The optimal denoiser of N(MU, S^2) data, E[x0 | x0 + sigma eps = x]."""
    return MU + S**2 / (S**2 + sigma**2) * (x - MU)


def teacher_steps(x, sigmas):
    """The teacher's deterministic DDIM steps down ``sigmas``, in closed form: a step x' = x + (s' - s)(x - D) / s
    with x - D = (x - MU) s^2 / (S^2 + s^2) gives x' - MU = (x - MU)(S^2 + s s') / (S^2 + s^2)."""
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        x = MU + (x - MU) * (S**2 + s * s_next) / (S**2 + s**2)
    return x


def test_one_ddim_step_to_the_target_lands_where_the_teachers_two_do():
    # two events, levels per event as distill_round draws them: one ends at sigma_next > 0, the other at 0
    batch = torch.tensor([0, 0, 0, 1, 1, 1])
    x = torch.tensor([[-2.0], [1.5], [4.0], [-1.0], [0.5], [3.0]], dtype=torch.float64)
    sigma, mid, nxt = (torch.tensor(v, dtype=torch.float64) for v in ([2.0, 1.0], [0.8, 0.4], [0.25, 0.0]))
    per_node = lambda s: s[batch].unsqueeze(1)  # noqa: E731
    target = distillation_target(x, sigma, mid, nxt, lambda y, s: gaussian_teacher(y, per_node(s)), per_node)
    s, s_next = per_node(sigma), per_node(nxt)
    student_step = x + (s_next - s) * (x - target) / s  # the student's one DDIM step, denoising to the target
    two_steps = torch.cat([teacher_steps(x[:3], [2.0, 0.8, 0.25]), teacher_steps(x[3:], [1.0, 0.4, 0.0])])
    assert torch.allclose(student_step, two_steps, rtol=0, atol=1e-12)
    # by hand, x = 4 of the first event: 1.5 + 2.5 (0.16 + 1.6) / 4.16 (0.16 + 0.2) / 0.8
    assert float(student_step[2]) == pytest.approx(1.5 + 2.5 * 1.76 / 4.16 * 0.36 / 0.8, abs=1e-12)
    # at sigma_next = 0 a DDIM step lands on its denoised value: the target is the teacher's sample
    assert torch.allclose(target[3:], two_steps[3:], rtol=0, atol=1e-12)


def test_a_student_fitted_to_the_target_samples_in_half_the_teachers_steps():
    teacher_grid = karras_sigmas(4, 0.002, 80.0).double()
    student_grid = teacher_grid[::2]
    g = torch.Generator().manual_seed(0)
    # the student: a x + b per level of its grid, fitted by least squares to the target on noisy training states
    # x0 + sigma eps, as distill_round draws them. For a Gaussian teacher the target is linear in x, so the fit is
    # exact up to rounding (float64: ~1e-13 here) and a wrong target cannot be fitted into a right one
    fitted = {}
    for i in range(len(student_grid) - 1):
        sigma, mid, nxt = teacher_grid[2 * i], teacher_grid[2 * i + 1], teacher_grid[2 * i + 2]
        x0 = MU + S * torch.randn(2000, 1, generator=g, dtype=torch.float64)
        x = x0 + sigma * torch.randn(2000, 1, generator=g, dtype=torch.float64)
        target = distillation_target(x, sigma, mid, nxt, gaussian_teacher)
        fitted[float(sigma)] = torch.linalg.lstsq(torch.cat([x, torch.ones_like(x)], 1), target).solution[:, 0]
    student = lambda x, sigma, batch: fitted[float(sigma[0])][0] * x + fitted[float(sigma[0])][1]  # noqa: E731
    # fresh noise, sampled by graphsr's deterministic DDIM sampler on the student's grid
    noise = 80.0 * torch.randn(5000, 1, generator=g, dtype=torch.float64)
    samples = get_sampler("ddim")(student, noise, student_grid, batch=torch.zeros(5000, dtype=torch.long))
    assert torch.allclose(samples, teacher_steps(noise, teacher_grid.tolist()), rtol=0, atol=1e-9)


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


@pytest.mark.parametrize("compiled", [False, True])
def test_teacher_and_student_are_compiled_where_the_teachers_run_was(compiled):
    from graphsr.config import Config
    from graphsr.models.factory import build_denoiser
    from graphsr.training.distill import _teacher_and_student

    config = Config()
    config.train.compile = compiled
    state = {"ema": {f"module.{k}": v for k, v in build_denoiser(config).state_dict().items()}}
    teacher, student = _teacher_and_student(state, config, torch.device("cpu"))
    flags = [m.compile_backbone for net in (teacher, student) for m in net.modules() if hasattr(m, "compile_backbone")]
    assert flags and all(flag == compiled for flag in flags)
    assert all(p.requires_grad for p in student.parameters())
    assert not any(p.requires_grad for p in teacher.parameters())
