"""Every trainer resumes a stopped run exactly (the pyramid generator, distillation, the particle-flow model), and
none replaces a run without being told to."""

from __future__ import annotations

import pytest
import torch

from graphsr.cli import main
from graphsr.config import config_from_dict
from graphsr.io import write_cocoa
from graphsr.reco import load_reco_config, train_reco
from graphsr.simulation import MultiParticleGun, SingleElectronGun, simulate_events
from graphsr.training.checkpoint import load_checkpoint
from graphsr.training.distill import distill
from graphsr.training.trainer import train

from test_training import _assert_same, tiny_config


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "e.root"
    write_cocoa(path, simulate_events(SingleElectronGun(), 40, factor=2, seed=21, neighbour_branches=False))
    return path


def _same_weights(a: dict, b: dict, keys=("model", "ema", "optimizer")):
    for key in keys:
        _assert_same(a[key], b[key], key)


def test_the_pyramid_generator_resumes_exactly(data_file, tmp_path):
    config = tiny_config(data_file, tmp_path / "cache", steps=6, val_every=3)
    config = config_from_dict({**config.to_dict(), "model": {**config.to_dict()["model"], "generator": "pyramid"}})
    config.sample.calibration_events = 0
    train(config, tmp_path / "straight", progress=False)
    train(config, tmp_path / "stopped", progress=False, stop_after=4)
    assert load_checkpoint(tmp_path / "stopped" / "checkpoint.pt")["step"] == 4
    torch.manual_seed(999)  # whatever the caller's global generator does in between
    train(config, tmp_path / "stopped", resume=True, progress=False)
    a, b = (load_checkpoint(tmp_path / run / "checkpoint.pt") for run in ("straight", "stopped"))
    assert a["step"] == b["step"] == 6
    _same_weights(a, b, ("model", "ema", "optimizer", "scheduler", "noise_generator", "rng_state"))


@pytest.fixture(scope="module")
def teacher(data_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    config = tiny_config(data_file, out / "cache", steps=4, val_every=4)
    config.model.dropout = 0.1  # the global generator drives dropout: a resumed student must restore it too
    config.sample.sampler, config.sample.steps, config.sample.calibration_events = "ddim", 4, 0
    return train(config, out / "run", progress=False).checkpoint


@pytest.mark.parametrize("stop_after", [2, 3, 4])  # inside the first round, at its end, inside the second (3 steps)
def test_distillation_resumes_exactly_within_and_across_rounds(teacher, tmp_path, stop_after):
    settings = dict(rounds=2, steps=3, device="cpu", save_every=1)
    straight = distill(teacher, tmp_path / "straight", **settings)
    stopped = distill(teacher, tmp_path / "stopped", stop_after=stop_after, **settings)
    run = load_checkpoint(stopped)["distill_run"]
    # stopped at a round's end: that round is complete on disk, and resuming starts the next one
    assert (run["round"], run["step"], run["complete"]) == \
        ((0, 3, True) if stop_after == 3 else (*divmod(stop_after, 3), False))
    torch.manual_seed(999)
    distill(teacher, tmp_path / "stopped", resume=True, **settings)
    a, b = load_checkpoint(straight), load_checkpoint(stopped)
    assert [r["to_steps"] for r in b["distillation"]] == [2, 1]
    _same_weights(a, b, ("model", "ema", "optimizer", "noise_generator", "rng_state", "sampling_sigmas"))
    # resuming needs the same settings, and a directory with a run is not replaced without overwrite
    with pytest.raises(ValueError, match="steps differ"):
        distill(teacher, tmp_path / "stopped", resume=True, **{**settings, "steps": 5})
    with pytest.raises(FileExistsError, match="--resume"):
        distill(teacher, tmp_path / "stopped", **settings)


def test_the_distill_command_refuses_a_run_and_replaces_it_when_told(teacher, tmp_path, capsys):
    out = tmp_path / "student"
    args = ["distill", "--checkpoint", str(teacher), "--out", str(out), "--steps", "1", "--rounds", "1",
            "--device", "cpu"]
    assert main(args) == 0
    before = (out / "checkpoint.pt").read_bytes()
    assert main(args) == 1
    assert str(out) in capsys.readouterr().err and (out / "checkpoint.pt").read_bytes() == before
    assert main(args + ["--overwrite"]) == 0


@pytest.fixture(scope="module")
def reco_config(tmp_path_factory):
    folder = tmp_path_factory.mktemp("reco")
    events = folder / "reco_events.root"
    write_cocoa(events, simulate_events(MultiParticleGun(), 40, factor=2, seed=12, neighbour_branches=False))
    path = folder / "reco.yaml"
    path.write_text(f"data: {{train: ['{events}'], cache: '{folder / 'cache'}'}}\n"
                    "model: {width: 8, depth: 1, decoder_depth: 1, heads: 2, context_tokens: 1, k: 4, k_between: 1, "
                    "dropout: 0.1}\n"
                    "train: {steps: 6, batch_size: 8, warmup: 1, val_every: 2}\n")
    return path


def test_the_particle_flow_model_resumes_exactly(reco_config, tmp_path, capsys):
    config = load_reco_config(reco_config)
    train_reco(config, "coarse", tmp_path / "straight", progress=False)
    stopped = train_reco(config, "coarse", tmp_path / "stopped", progress=False, stop_after=3)
    assert stopped.step == 3
    torch.manual_seed(999)
    assert train_reco(config, "coarse", tmp_path / "stopped", progress=False, resume=True).step == 6
    a, b = (load_checkpoint(tmp_path / run / "checkpoint.pt") for run in ("straight", "stopped"))
    _same_weights(a, b, ("model", "ema", "optimizer", "scheduler", "rng_state"))
    with pytest.raises(ValueError, match="same config and input type"):
        train_reco(config, "truth", tmp_path / "stopped", progress=False, resume=True)
    # the command line: refused without --resume / --overwrite, nothing touched
    before = (tmp_path / "stopped" / "checkpoint.pt").read_bytes()
    args = ["train-reco", "--config", str(reco_config), "--input-type", "coarse", "--out", str(tmp_path / "stopped")]
    assert main(args) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "stopped" / "checkpoint.pt").read_bytes() == before
