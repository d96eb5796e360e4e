"""Training, checkpoints and resume, sampling to ROOT files and evaluation, on a tiny simulated dataset."""

from __future__ import annotations

import awkward as ak
import numpy as np
import pytest
import torch

from graphsr.cli import main
from graphsr.config import config_from_dict
from graphsr.eval.evaluate import compute_metrics, generate
from graphsr.inference import SuperResolver
from graphsr.io import read_cocoa, write_cocoa
from graphsr.simulation import SingleElectronGun, simulate_events
from graphsr.training.checkpoint import load_checkpoint
from graphsr.training.trainer import (
    _loss,
    build_denoiser,
    build_loss,
    fit_normalisation,
    load_splits,
    target_transform,
    train,
)
from graphsr.graphs import collate_events


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "e.root"
    write_cocoa(path, simulate_events(SingleElectronGun(), 60, factor=2, seed=5, neighbour_branches=False))
    return path


def tiny_config(data_file, cache, **train):
    return config_from_dict({
        "data": {"train": [str(data_file)], "cache": str(cache)},
        "model": {"width": 16, "depth": 1, "coarse_depth": 1, "heads": 2, "context_tokens": 2},
        "train": {"steps": 8, "batch_size": 8, "lr": 2e-3, "warmup": 2, "val_every": 4, **train},
        "sample": {"sampler": "heun", "steps": 3, "ensemble": 3},
    })


@pytest.fixture(scope="module")
def trained(data_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    config = tiny_config(data_file, out / "cache")
    result = train(config, out, progress=False)
    return config, result


def test_training_writes_a_complete_checkpoint(trained):
    config, result = trained
    state = load_checkpoint(result.checkpoint)
    assert state["step"] == 8 and np.isfinite(state["val_loss"])
    assert {"model", "ema", "optimizer", "scheduler", "config", "normalisation", "noise_generator"} <= set(state)
    assert state["config"] == config.to_dict() and state["factor"] == 2


def test_resume_continues_exactly(data_file, tmp_path):
    config = tiny_config(data_file, tmp_path / "cache")
    train(config, tmp_path / "straight", progress=False)
    train(config, tmp_path / "interrupted", progress=False, stop_after=3)
    assert load_checkpoint(tmp_path / "interrupted" / "checkpoint.pt")["step"] == 3
    train(config, tmp_path / "interrupted", resume=True, progress=False)
    a = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "interrupted" / "checkpoint.pt")
    assert b["step"] == 8
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    with pytest.raises(ValueError, match="different config"):
        train(tiny_config(data_file, tmp_path / "cache", lr=1e-3), tmp_path / "interrupted", resume=True,
              progress=False)


def test_a_killed_training_process_resumes_to_the_same_weights(data_file, tmp_path):
    """SIGKILL (no chance to clean up) right after the first checkpoint, then ``--resume``."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import yaml

    config = tiny_config(data_file, tmp_path / "cache", steps=60, val_every=2)
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(config.to_dict()))
    out = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-m", "graphsr.cli", "train", "--config", str(config_file), "--out",
                                str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (out / "checkpoint.pt").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert load_checkpoint(out / "checkpoint.pt")["step"] < 60  # killed mid-run, checkpoint readable
    assert main(["train", "--config", str(config_file), "--out", str(out), "--resume"]) == 0
    straight = train(config, tmp_path / "straight", progress=False)
    a, b = load_checkpoint(straight.checkpoint), load_checkpoint(out / "checkpoint.pt")
    assert b["step"] == 60 and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_tiny_model_overfits_a_handful_of_events(data_file, tmp_path):
    config = tiny_config(data_file, tmp_path / "cache")
    train_set, _, _ = load_splits(config)
    norm = fit_normalisation(train_set, config.diffusion.margin)
    transform = target_transform(**norm)
    batch = collate_events(train_set._data, train_set.slices, torch.as_tensor(train_set.indices()[:4]))
    torch.manual_seed(0)
    denoiser, loss_fn = build_denoiser(config), build_loss(config)
    optimizer = torch.optim.Adam(denoiser.parameters(), lr=3e-3)

    def fixed_loss():  # the same noise every time, at moderate noise levels
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            return float(_loss(loss_fn, denoiser, batch, transform, g))

    before = fixed_loss()
    g = torch.Generator().manual_seed(1)
    for _ in range(300):
        loss = _loss(loss_fn, denoiser, batch, transform, g)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert fixed_loss() < 0.65 * before  # the loss at high noise levels cannot go to zero


def test_sampling_is_seeded_and_conserving_mode_holds_parents(trained):
    config, result = trained
    resolver = SuperResolver(result.checkpoint, device="cpu")
    train_set, _, test_set = load_splits(config)
    storage = (train_set._data, train_set.slices)
    events = torch.as_tensor(test_set.indices()[:3])
    a = resolver(storage, events, seed=1)
    b = resolver(storage, events, seed=1)
    assert torch.equal(a["samples"], b["samples"]) and a["samples"].shape[0] == 3
    assert not torch.equal(a["samples"], resolver(storage, events, seed=2)["samples"])
    # ensemble members differ; mean and spread agree with them
    assert torch.allclose(a["mean"], a["samples"].mean(0)) and a["spread"].max() > 0
    c = resolver(storage, events, seed=1, mode="conserving")
    batch = c["batch"]
    sums = torch.zeros_like(batch.coarse_energy).index_add_(0, batch.fine_parent, c["samples"][0])
    assert torch.allclose(sums, batch.coarse_energy, rtol=1e-5, atol=1e-6)


def test_sampler_calls_are_chunked_by_fine_cells(trained):
    config, result = trained
    train_set, _, _ = load_splits(config)
    storage = (train_set._data, train_set.slices)
    events = torch.arange(20)
    size = torch.diff(storage[1]["fine_layer"])[events] * 3
    resolver = SuperResolver(result.checkpoint, device="cpu", max_nodes=int(size.max()) * 2)
    chunks = resolver.chunks(storage, events, ensemble=3)
    assert torch.equal(torch.cat([c for _, c in chunks]), events)  # every event once, in order
    assert [start for start, _ in chunks] == [0, *np.cumsum([len(c) for _, c in chunks])[:-1].tolist()]
    assert len(chunks) > 1 and all(size[s:s + len(c)].sum() <= 3 * size.max() for s, c in chunks)
    one_each = SuperResolver(result.checkpoint, device="cpu", max_nodes=1).chunks(storage, events, ensemble=3)
    assert [len(c) for _, c in one_each] == [1] * 20


def test_sample_command_writes_cocoa_file_and_refuses_to_overwrite(trained, data_file, tmp_path, capsys):
    _, result = trained
    out = tmp_path / "sr.root"
    args = ["sample", "--checkpoint", str(result.checkpoint), "--input", str(data_file), "--output", str(out),
            "--max-events", "5", "--device", "cpu"]
    assert main(args) == 0
    trees = read_cocoa(out)
    low, high = trees["Low_Tree"], trees["High_Tree"]
    assert len(low) == 5 and "cell_e_spread" in high.fields
    assert np.array_equal(ak.num(high.cell_e).to_numpy(), 4 * ak.num(low.cell_e).to_numpy())
    before = out.read_bytes()
    assert main(args) == 1 and "exists" in capsys.readouterr().err
    assert out.read_bytes() == before  # nothing overwritten


def test_sample_command_reads_a_plain_out_tree(trained, data_file, tmp_path):
    _, result = trained
    low = read_cocoa(data_file, high_branches=None)["Low_Tree"]
    plain = tmp_path / "plain.root"
    write_cocoa(plain, {"Out_Tree": low[[f for f in low.fields if "high_cell" not in f and "low_cell" not in f]]})
    out = tmp_path / "sr_plain.root"
    assert main(["sample", "--checkpoint", str(result.checkpoint), "--input", str(plain), "--output", str(out),
                 "--max-events", "4", "--device", "cpu"]) == 0
    high = read_cocoa(out)["High_Tree"]
    assert len(high) == 4 and ak.all(ak.num(high.cell_e) > 0)


def test_evaluation_metrics_on_a_tiny_run(trained, data_file, tmp_path):
    config, result = trained
    resolver = SuperResolver(result.checkpoint, device="cpu")
    regression_config = config_from_dict({**config.to_dict(), "diffusion": {"parameterisation": "regression"}})
    regression = SuperResolver(train(regression_config, tmp_path, progress=False).checkpoint, device="cpu")
    train_set, _, _ = load_splits(config)
    storage = (train_set._data, train_set.slices)
    with pytest.warns(UserWarning):  # far fewer events than a trustworthy sample
        generated = generate(resolver, storage, torch.arange(12), ensemble=3, progress=False, regression=regression)
        metrics = compute_metrics(generated, ensemble_sizes=(1, 2, 3))
    # the regression baseline is deterministic: ensemble members agree (to float rounding of their batch position)
    again = regression(storage, torch.arange(12), ensemble=2, seed=5)["samples"]
    assert torch.allclose(again[0], again[1], rtol=1e-5, atol=1e-9) and "regression" in metrics["event"]
    assert set(metrics["cell"]["ECAL1"]) >= {"super_resolved_mean", "even_split", "regression"}
    assert set(metrics["event"]["ensemble_size"]) == {"1", "2", "3"}
    assert metrics["event"]["coarse"]["spread"]["value"] > 0
    assert set(metrics["cell"]) == {"ECAL1", "ECAL2", "ECAL3"}
    split = metrics["cell"]["ECAL2"]["even_split"]
    assert split["occupancy"]["recall"] > 0.5 and 0 <= split["hallucinated_fraction"] <= 1
    # downstream: single 50 GeV electrons are found in the fine truth, one per event, with a small energy residual
    particles = metrics["particles"]
    assert set(particles) == {"fine_truth", "super_resolved_mean", "coarse", "even_split", "regression"}
    truth = particles["fine_truth"]
    assert truth["cardinality"]["1"]["events"] == 12 and truth["cardinality"]["1"]["value"] >= 0.9
    assert truth["efficiency"] >= 0.9 and truth["energy"]["value"] < 0.05


def test_evaluate_command_writes_metrics_report_and_plots(trained, data_file, tmp_path, capsys):
    import json

    _, result = trained
    out = tmp_path / "report"
    args = ["evaluate", "--checkpoint", str(result.checkpoint), "--input", str(data_file), "--out", str(out),
            "--ensemble", "2", "--mode", "fused", "--calibration-events", "4", "--displays", "1", "--device", "cpu"]
    with pytest.warns(UserWarning):  # a tiny held-out set
        assert main(args) == 0
    printed = capsys.readouterr().out
    assert "spread scale" in printed and "headline" in printed  # fused mode calibrated on validation events
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["events"] == 6 and metrics["mode"] == "fused"  # the run's 10% held-out test events of 60
    calibration = metrics["calibration"]
    assert calibration["events"] == 4 and calibration["spread_scale"] > 0 and calibration["energy_scale"] > 0
    assert min(calibration["rms"].values()) == calibration["rms"][f"{calibration['spread_scale']},"
                                                                  f"{calibration['energy_scale']}"]
    assert {"event", "cell", "shower_shapes", "physics_distances", "consistency", "particles"} <= set(metrics)
    report = (out / "report.md").read_text()
    for section in ("How close", "Where wrong", "Downstream", "How sure", "Event displays"):
        assert f"## {section}" in report
    for png in ("ensemble_size", "event_energy_residual", "cells_ECAL2", "calibration", "event_0",
                "event_0_denoising"):
        assert (out / f"{png}.png").stat().st_size > 0


def test_fused_mode_sums_between_measurement_and_model(trained):
    from graphsr.models.sr3 import fuse, parent_sums

    config, result = trained
    resolver = SuperResolver(result.checkpoint, device="cpu")
    train_set, _, _ = load_splits(config)
    storage = (train_set._data, train_set.slices)
    out = resolver(storage, torch.arange(4), ensemble=4, seed=3, mode="free")
    batch, samples = out["batch"], out["samples"]
    noise = torch.full_like(batch.coarse_energy, 0.05)
    sums = parent_sums(samples, batch)
    # a tiny spread scale trusts the model, a huge one the measurement
    trust_model = parent_sums(fuse(samples, batch, noise, spread_scale=1e-6), batch)
    trust_measurement = parent_sums(fuse(samples, batch, noise, spread_scale=1e6), batch)
    assert torch.allclose(trust_model, sums.mean(0).expand_as(trust_model), atol=1e-4)
    # the energy scale corrects the model's sums before they are combined
    rescaled = parent_sums(fuse(samples, batch, noise, spread_scale=1e-6, energy_scale=1.5), batch)
    assert torch.allclose(rescaled, 1.5 * sums.mean(0).expand_as(rescaled), atol=1e-4)
    assert torch.allclose(trust_measurement, batch.coarse_energy.expand_as(trust_measurement), atol=1e-4)
    # every member is rescaled to the same per-parent total, keeping its own shares
    fused = fuse(samples, batch, noise, spread_scale=3.0)
    totals = parent_sums(fused, batch)
    assert torch.allclose(totals[0], totals[1], atol=1e-5)
    with pytest.raises(ValueError, match="at least 2"):
        fuse(samples[:1], batch, noise)
    assert resolver(storage, torch.arange(2), ensemble=2, mode="fused")["mode"] == "fused"
