"""Training, checkpoints and resume, sampling to ROOT files and evaluation, on a tiny simulated dataset."""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import platform
from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import torch
import torch_geometric

from test_io_writer import with_every_cocoa_branch

from graphsr.cli import main
from graphsr.config import config_from_dict
from graphsr.eval.evaluate import compute_metrics, generate
from graphsr.inference import SuperResolver
from graphsr.io import open_cocoa, read_cocoa, write_cocoa
from graphsr.simulation import SingleElectronGun, simulate_events
from graphsr.training.checkpoint import load_checkpoint, save_checkpoint
from graphsr.pipelines import train  # training, then the calibration, as graphsr train
from graphsr.training.trainer import _loss, build_denoiser, build_loss, fit_energy_model, load_splits
from graphsr.datasets import CocoaDataset
from graphsr.graphs import GraphOptions, collate_events


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
    assert {"model", "ema", "optimizer", "scheduler", "config", "energy_model", "noise_generator", "rng_state",
            "events", "training_range", "calibration"} <= set(state)
    assert state["config"] == config.to_dict() and state["factor"] == 2
    # the record of what the model saw: 48 training and 6 validation entries of the one file, disjoint
    train_entries, val_entries = state["events"]["train"][0]["entries"], state["events"]["val"][0]["entries"]
    assert len(train_entries) == 48 and len(val_entries) == 6
    assert not set(train_entries.tolist()) & set(val_entries.tolist())
    import hashlib

    assert state["events"]["train"][0]["sha256"] == hashlib.sha256(open(config.data.train[0], "rb").read()).hexdigest()
    # fitted on the validation events at the end of training
    assert state["calibration"]["events"] == 6 and state["calibration"]["ensemble"] == 3
    # the occupancy calibration counted the truth's hits of those 6 events, per layer (counted here from the file)
    high = read_cocoa(config.data.train[0])["High_Tree"]
    val = val_entries.tolist()
    energy, layer = ak.flatten(high["cell_e"][val]).to_numpy(), ak.flatten(high["cell_layer"][val]).to_numpy()
    occupancy = state["calibration"]["occupancy"]
    assert occupancy["truth"][:3] == [float(np.sum((energy > 1.0) & (layer == la))) for la in range(3)]
    assert all(0.25 <= s <= 4 for s in occupancy["scale"])
    record = state["provenance"]
    assert record["command"] == "train" and record["seed"] == config.train.seed
    assert record["config"] == config.to_dict() and record["versions"]["torch"] == torch.__version__
    (data,) = config.data.train
    assert record["inputs"] == {data: "sha256:" + hashlib.sha256(Path(data).read_bytes()).hexdigest()}


def _assert_same(a, b, where=""):
    """Nested dicts / lists of tensors and numbers are equal, exactly."""
    if isinstance(a, dict):
        assert set(a) == set(b), where
        for key in a:
            _assert_same(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}/{i}")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    else:
        assert a == b or (a != a and b != b), where  # NaN equals NaN here


def test_history_records_every_step_and_validation(trained, tmp_path, capsys):
    from graphsr.training.history import read_history

    config, result = trained
    rows = read_history(result.checkpoint.parent)
    assert [r["step"] for r in rows] == list(range(1, 9))
    # validations every 4 steps; the last one is the checkpoint's
    assert [r["step"] for r in rows if r["val_loss"] is not None] == [4, 8]
    assert rows[-1]["val_loss"] == pytest.approx(load_checkpoint(result.checkpoint)["val_loss"])
    # linear warm-up over 2 steps to lr 2e-3 (the first step uses half), then cosine decay over 6 steps: step 5 is
    # 2 steps into it
    assert rows[0]["lr"] == pytest.approx(1e-3) and rows[1]["lr"] == pytest.approx(2e-3)
    assert rows[4]["lr"] == pytest.approx(2e-3 * 0.5 * (1 + np.cos(np.pi * 2 / 6)))
    assert all(np.isfinite(r["train_loss"]) and r["events_per_s"] > 0 for r in rows)
    if importlib.util.find_spec("tensorboard") is not None:
        assert list((result.checkpoint.parent / "tensorboard").glob("events.out.tfevents.*"))
    out = tmp_path / "history.png"
    assert main(["plot-history", "--run", str(result.checkpoint.parent), "--output", str(out)]) == 0
    assert out.stat().st_size > 0 and "8 steps, last validation loss" in capsys.readouterr().out


def test_resume_continues_exactly(data_file, tmp_path):
    # dropout on: the global generator that drives it must be restored too
    config = config_from_dict({**tiny_config(data_file, tmp_path / "cache").to_dict(),
                               "model": {"width": 16, "depth": 1, "coarse_depth": 1, "heads": 2, "context_tokens": 2,
                                         "dropout": 0.2}})
    config.sample.calibration_events = 0
    train(config, tmp_path / "straight", progress=False)
    train(config, tmp_path / "interrupted", progress=False, stop_after=3)
    assert load_checkpoint(tmp_path / "interrupted" / "checkpoint.pt")["step"] == 3
    torch.manual_seed(12345)  # whatever the caller's global generator does in between
    train(config, tmp_path / "interrupted", resume=True, progress=False)
    a = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "interrupted" / "checkpoint.pt")
    assert b["step"] == 8
    for key in ("model", "ema", "optimizer", "scheduler", "noise_generator", "rng_state", "energy_model", "events"):
        _assert_same(a[key], b[key], key)
    with_train = lambda **changes: config_from_dict({**config.to_dict(),  # noqa: E731
                                                     "train": {**config.to_dict()["train"], **changes}})
    with pytest.raises(ValueError, match=r"different config \(train.lr differ\)"):
        train(with_train(lr=1e-3), tmp_path / "interrupted", resume=True, progress=False)
    # where it runs and how long this call may take may change
    resumed = train(with_train(device="cpu", time_limit=600.0), tmp_path / "interrupted", resume=True, progress=False)
    assert resumed.step == 8


@pytest.mark.slow  # a second process, killed and resumed (~15 s); resume itself is in the default suite
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
    # the same thread count as this process's straight run below: float sums depend on it
    process = subprocess.Popen([sys.executable, "-m", "graphsr.cli", "train", "--config", str(config_file), "--out",
                                str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())})
    deadline = time.monotonic() + 120
    while not (out / "checkpoint.pt").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert load_checkpoint(out / "checkpoint.pt")["step"] < 60  # killed mid-run, checkpoint readable
    assert main(["train", "--config", str(config_file), "--out", str(out), "--resume"]) == 0
    from graphsr.training.history import read_history

    assert [r["step"] for r in read_history(out)] == list(range(1, 61))  # rows after the checkpoint were dropped
    straight = train(config, tmp_path / "straight", progress=False)
    a, b = load_checkpoint(straight.checkpoint), load_checkpoint(out / "checkpoint.pt")
    assert b["step"] == 60 and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_tiny_model_overfits_a_handful_of_events(data_file, tmp_path):
    config = tiny_config(data_file, tmp_path / "cache")
    train_set, _, _ = load_splits(config)
    energy_model = fit_energy_model(train_set, "shares")
    batch = collate_events(train_set._data, train_set.slices, torch.as_tensor(train_set.indices()[:4]))
    torch.manual_seed(0)
    denoiser, loss_fn = build_denoiser(config), build_loss(config)
    optimizer = torch.optim.Adam(denoiser.parameters(), lr=3e-3)

    def fixed_loss():  # the same noise every time, at sigma = 1 (the scale of the standardised targets)
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            return float(_loss(loss_fn, denoiser, batch, energy_model, g, 2, 1.0, sigma=torch.ones(4)))

    before = fixed_loss()
    g = torch.Generator().manual_seed(1)
    for _ in range(150):
        loss = _loss(loss_fn, denoiser, batch, energy_model, g, 2, 1.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert fixed_loss() < 0.75 * before  # (0.69 measured) the noise realisations of the totals stay unpredictable


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
    # ensemble members differ; the spread is theirs, the mean that of the members before calibration
    raw = resolver(storage, events, seed=1, calibrated=False)["samples"]
    assert torch.allclose(a["mean"], raw.mean(0)) and torch.allclose(a["spread"], a["samples"].std(0))
    assert a["spread"].max() > 0
    c = resolver(storage, events, seed=1, mode="conserving")
    batch = c["batch"]
    sums = torch.zeros_like(batch.coarse_energy).index_add_(0, batch.fine_parent, c["samples"][0])
    assert torch.allclose(sums, batch.coarse_energy, rtol=1e-5, atol=1e-6)


def test_checkpoints_carry_their_graph_options(trained, tmp_path):
    config, result = trained
    state = load_checkpoint(result.checkpoint)
    assert SuperResolver(result.checkpoint).graph_options == GraphOptions()  # grid edges, the default
    # written before grid edges: no "edges" in graph_options, and a model trained on kNN graphs, which sampling
    # rebuilds (every fine cell gets k = 8 neighbours in its layer, which grid edges give only inside showers)
    del state["graph_options"]["edges"], state["graph_options"]["reach"], state["graph_options"]["radius"]
    save_checkpoint(state, tmp_path / "old.pt")
    resolver = SuperResolver(tmp_path / "old.pt", device="cpu")
    assert resolver.graph_options == GraphOptions(edges="knn", k=8, k_between=4)
    dataset = CocoaDataset(config.data.train, root=tmp_path / "cache", options=resolver.graph_options, log=False)
    out = resolver(dataset.storage(), torch.arange(2), seed=0)
    assert torch.isfinite(out["mean"]).all()
    batch = out["batch"]
    src, dst = batch.fine_edge_index
    in_layer = torch.bincount(dst[batch.fine_layer[src] == batch.fine_layer[dst]], minlength=batch.num_nodes)
    assert (in_layer == 8).all()


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
    # provenance beside the trees: versions, the checkpoint's config, the input's content hash, the seed
    record = open_cocoa(out).provenance
    assert record["command"] == "sample" and record["seed"] == 0 and record["generated_trees"] == ["High_Tree"]
    assert record["inputs"] == {str(data_file): "sha256:" + hashlib.sha256(data_file.read_bytes()).hexdigest()}
    assert record["checkpoint"]["hash"] == "sha256:" + hashlib.sha256(result.checkpoint.read_bytes()).hexdigest()
    assert record["versions"] == {"graphsr": importlib.metadata.version("graphsr"), "torch": torch.__version__,
                                  "torch_geometric": torch_geometric.__version__, "python": platform.python_version()}
    assert record["config"] == load_checkpoint(result.checkpoint)["config"]
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


def test_sample_command_reads_detector_data_without_particles(trained, data_file, tmp_path, capsys):
    _, result = trained
    trees = read_cocoa(data_file, entry_stop=3)
    cells_only = tmp_path / "detector.root"
    write_cocoa(cells_only, {"Out_Tree": trees["Low_Tree"][["cell_layer", "cell_eta", "cell_phi", "cell_e"]]})
    out = tmp_path / "sr_detector.root"
    assert main(["sample", "--checkpoint", str(result.checkpoint), "--input", str(cells_only), "--output", str(out),
                 "--device", "cpu"]) == 0
    low, high = read_cocoa(out)["Low_Tree"], read_cocoa(out)["High_Tree"]
    assert len(high) == 3 and not any(f.startswith("particle_") for f in low.fields)
    assert np.array_equal(ak.num(high.cell_e).to_numpy(), 4 * ak.num(low.cell_e).to_numpy())
    # COCOA's default granularity (the fine cells) is not what a 2x model takes
    fine = tmp_path / "fine.root"
    write_cocoa(fine, {"Out_Tree": trees["High_Tree"][["cell_layer", "cell_eta", "cell_phi", "cell_e"]]})
    assert main(["sample", "--checkpoint", str(result.checkpoint), "--input", str(fine), "--output",
                 str(tmp_path / "refused.root"), "--device", "cpu"]) == 1
    error = capsys.readouterr().err
    assert "granularity factor 1" in error and "expected 2" in error and "'Out_Tree'" in error
    assert not (tmp_path / "refused.root").exists()


def test_sample_command_keeps_every_branch_of_the_input(trained, data_file, tmp_path):
    _, result = trained
    trees = with_every_cocoa_branch(read_cocoa(data_file, entry_stop=4), seed=1)
    full = write_cocoa(tmp_path / "full.root", trees)
    out = tmp_path / "sr_full.root"
    assert main(["sample", "--checkpoint", str(result.checkpoint), "--input", str(full), "--output", str(out),
                 "--device", "cpu"]) == 0
    low, before = read_cocoa(out)["Low_Tree"], trees["Low_Tree"]
    assert set(before.fields) <= set(low.fields)
    ecal = before.cell_layer < 3  # the coarse cells the model used
    for name in ("cell_e", "cell_che", "cell_parent_list", "cell_conv_el_idx"):
        assert ak.array_equal(low[name], before[name][ecal]), name
    for name in ("particle_e", "particle_isIso", "topo_jet_pt", "true_jet_truth_id", "track_x_layer_3",
                 "supercluster_topos", "node_edge_start"):
        assert ak.array_equal(low[name], before[name]), name
    assert np.array_equal(ak.num(read_cocoa(out)["High_Tree"].cell_e).to_numpy(), 4 * ak.num(low.cell_e).to_numpy())


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
    assert set(particles) == {"fine_truth", "super_resolved_mean", "super_resolved_estimate", "super_resolved_sample",
                              "coarse", "even_split", "regression", "energy_coverage"}
    assert particles["energy_coverage"]["particles"] >= 11  # the electrons found on the fine truth
    truth = particles["fine_truth"]
    assert truth["cardinality"]["1"]["events"] == 12 and truth["cardinality"]["1"]["value"] >= 0.9
    assert truth["efficiency"] >= 0.9 and truth["energy"]["value"] < 0.05
    assert truth["excess"]["1"]["value"] <= 0.1  # a single electron's fine shower has one maximum


def test_evaluate_command_writes_metrics_report_and_plots(trained, data_file, tmp_path, capsys):
    import json

    _, result = trained
    out = tmp_path / "report"
    args = ["evaluate", "--checkpoint", str(result.checkpoint), "--input", str(data_file), "--out", str(out),
            "--ensemble", "3", "--displays", "1", "--device", "cpu", "--shifted-inputs", "4"]
    with pytest.warns(UserWarning):  # a tiny held-out set
        assert main(args) == 0
    printed = capsys.readouterr().out
    assert "headline" in printed and "coverage of the 68% intervals" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["events"] == 6 and metrics["mode"] == "posterior"  # 60 events less 48 trained, 6 validated on
    assert metrics["calibration"]["ensemble"] == 3
    assert {"event", "cell", "coverage", "shower_shapes", "physics_distances", "consistency", "particles",
            "shifted_inputs"} <= set(metrics)
    assert set(metrics["coverage"]["event_energy"]) == {"0.5", "0.68", "0.95"}
    assert set(metrics["shifted_inputs"]) == {"pT 30 GeV, eta ~ 0", "pT 80 GeV, eta ~ 0", "pT 50 GeV, |eta| 0.4-0.6"}
    # trained at 50 GeV: 30 and 80 GeV electrons lie outside the training range, eta 0.5 ones (barely) not
    assert metrics["shifted_inputs"]["pT 80 GeV, eta ~ 0"]["outside_training_range"] == 1.0
    assert metrics["shifted_inputs"]["pT 30 GeV, eta ~ 0"]["outside_training_range"] == 1.0
    report = (out / "report.md").read_text()
    for section in ("How close", "Where wrong", "Downstream", "How sure", "Inputs outside the training range",
                    "Event displays"):
        assert f"## {section}" in report
    assert "| more found |" in report and "| super_resolved_estimate |" in report
    occupancy = metrics["calibration"]["occupancy"]  # the estimate's count, as fitted, beside its table
    assert f"ECAL2 {occupancy['scale'][1]:.2f} (" in report and f"truth {occupancy['truth'][1]:.0f})" in report
    for png in ("ensemble_size", "event_energy_residual", "cells_ECAL2", "calibration", "event_0",
                "event_0_denoising"):
        assert (out / f"{png}.png").stat().st_size > 0


def test_evaluate_never_scores_seen_events(trained, data_file, tmp_path, capsys):
    import shutil

    _, result = trained
    base = ["evaluate", "--checkpoint", str(result.checkpoint), "--ensemble", "2", "--displays", "0", "--device",
            "cpu"]
    # the training file under another name is still recognised (content hash): --split all would score training
    # events and is refused; --split test scores the 6 events never seen
    copy = tmp_path / "renamed.root"
    shutil.copy(data_file, copy)
    assert main(base + ["--input", str(copy), "--out", str(tmp_path / "a"), "--split", "all"]) == 1
    assert "48 training and 6 validation events" in capsys.readouterr().err
    with pytest.warns(UserWarning):
        assert main(base + ["--input", str(copy), "--out", str(tmp_path / "b"), "--events", "3"]) == 0
    assert "the 6 events of" in capsys.readouterr().out
    # a file the model never saw has no held-out split: it must be asked for explicitly
    other = tmp_path / "other.root"
    write_cocoa(other, simulate_events(SingleElectronGun(), 8, factor=2, seed=99, neighbour_branches=False))
    assert main(base + ["--input", str(other), "--out", str(tmp_path / "c")]) == 1
    assert "--split all" in capsys.readouterr().err
    with pytest.warns(UserWarning):
        assert main(base + ["--input", str(other), "--out", str(tmp_path / "d"), "--split", "all"]) == 0
    assert "all 8 events" in capsys.readouterr().out


def test_energy_model_represents_every_truth():
    from types import SimpleNamespace

    from graphsr.models.sr3 import SHARE_FLOOR, EnergyModel

    # two parents: one whose child exceeds a noise-low measurement (the old 1.2-margin target clipped it), one with
    # a negative measurement over empty children
    data = SimpleNamespace(fine_energy=torch.tensor([3.0, 0.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0]),
                           fine_parent=torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]),
                           coarse_energy=torch.tensor([2.9, -0.05]), coarse_noise=torch.tensor([0.068, 0.068]))
    model = EnergyModel("shares", mean=-2.0, std=3.0)
    fine, coarse = model.encode(data)
    # z is the noise in units of sigma: (2.9 - 3.5) / 0.068 and -0.05 / 0.068
    assert coarse.tolist() == pytest.approx([-0.6 / 0.068, -0.05 / 0.068], rel=1e-5)
    energy = model.decode(data, fine, coarse)
    assert torch.allclose(energy, data.fine_energy, atol=4 * SHARE_FLOOR)
    assert float(energy[:4].sum()) == pytest.approx(3.5, rel=1e-6)  # children sum to the true total
    # conserving mode: the same shares of the measured energy
    kept = model.decode(data, fine, coarse, "conserving")
    assert float(kept[:4].sum()) == pytest.approx(2.9, rel=1e-6) and float(kept[0]) == pytest.approx(3.0 / 3.5 * 2.9,
                                                                                                     rel=1e-4)
    # the regression baseline's target is the energy itself
    regression = EnergyModel("energy", std=2.0)
    assert torch.allclose(regression.decode(data, *regression.encode(data)), data.fine_energy)


def test_calibration_widens_or_narrows_around_the_mean(trained):
    from graphsr.inference import inflate, spread_totals

    members = torch.tensor([[1.0, 10.0], [3.0, 14.0], [5.0, 12.0]])
    wide = inflate(members, 2.0)
    assert torch.allclose(wide.mean(0), members.mean(0))
    assert torch.allclose(wide - wide.mean(0), 2 * (members - members.mean(0)))
    # totals: the mean and the signs stay; tight hot cells widen linearly; near zero nothing goes negative
    totals = torch.tensor([[100.0, 0.0, 0.02], [101.0, 0.01, 0.0], [99.0, 0.05, 0.01]])
    spread = spread_totals(totals, 3.0)
    assert torch.allclose(spread.mean(0), totals.mean(0), rtol=1e-5) and bool((spread >= 0).all())
    assert float(spread[:, 0].std()) == pytest.approx(3.0 * float(totals[:, 0].std()), rel=1e-3)
    assert float(spread[0, 1]) == 0.0 and float(spread[:, 1].std()) > 1.2 * float(totals[:, 1].std())
    # the checkpoint's factors are applied to sampled ensembles unless asked not to
    config, result = trained
    resolver = SuperResolver(result.checkpoint, device="cpu")
    train_set, _, _ = load_splits(config)
    storage = (train_set._data, train_set.slices)
    raw = resolver.generate(storage, torch.arange(3), seed=4)
    resolver.calibration = {"coarse": 3.0, "fine": 1.5}
    calibrated = resolver(storage, torch.arange(3), seed=4)["samples"]
    model, batch = resolver.energy_model, raw["batch"]
    expected = model.decode(batch, inflate(raw["fine"], 1.5), raw["coarse"],
                            totals=spread_totals(model.totals(batch, raw["coarse"]), 3.0))
    assert torch.allclose(calibrated, expected)
    assert torch.allclose(resolver(storage, torch.arange(3), seed=4, calibrated=False)["samples"],
                          resolver.decode(raw, calibrated=False))
    # the calibration widens the spread but never moves the mean or the point estimate written to files
    wide, narrow = resolver(storage, torch.arange(3), seed=4), resolver(storage, torch.arange(3), seed=4,
                                                                        calibrated=False)
    assert torch.equal(wide["mean"], narrow["mean"]) and torch.equal(wide["estimate"], narrow["estimate"])
    assert float(wide["spread"].mean()) > float(narrow["spread"].mean())


def test_a_calibration_at_the_end_of_its_range_is_flagged(trained, tmp_path):
    _, result = trained
    state = load_checkpoint(result.checkpoint)
    state["calibration"] = {**(state.get("calibration") or {}), "coarse": 3.0, "fine": 16.0}
    save_checkpoint(state, tmp_path / "old_calibration.pt")
    with pytest.warns(UserWarning, match="graphsr calibrate --checkpoint"):
        SuperResolver(tmp_path / "old_calibration.pt", device="cpu")


def test_a_calibration_holds_for_the_sampling_it_was_fitted_with(trained, tmp_path):
    import shutil
    import warnings

    _, result = trained
    path = tmp_path / "checkpoint.pt"
    shutil.copy(result.checkpoint, path)
    # fitted at the end of training with the config's sampling: heun, 3 steps, ensembles of 3
    state = load_checkpoint(path)
    assert {k: state["calibration"][k] for k in ("sampler", "steps", "eta", "ensemble")} == \
        {"sampler": "heun", "steps": 3, "eta": None, "ensemble": 3}
    resolver = SuperResolver(path, device="cpu")
    config, _ = trained
    train_set, _, _ = load_splits(config)
    storage = (train_set._data, train_set.slices)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resolver(storage, torch.arange(2), seed=0)  # the settings it was fitted for: no warning
    assert not [w for w in caught if "fitted for" in str(w.message)]
    with pytest.warns(UserWarning, match="fitted for heun 3 steps.*these samples use ddim 2 steps.*--steps 2"):
        resolver(storage, torch.arange(2), seed=0, sampler="ddim", steps=2)
    # refitted for other settings, which become the checkpoint's sampling defaults
    assert main(["calibrate", "--checkpoint", str(path), "--events", "4", "--sampler", "ddim", "--steps", "2",
                 "--eta", "0.5", "--ensemble", "2", "--device", "cpu"]) == 0
    before = state["calibration"]
    state = load_checkpoint(path)
    assert {k: state["calibration"][k] for k in ("sampler", "steps", "eta", "ensemble", "events")} == \
        {"sampler": "ddim", "steps": 2, "eta": 0.5, "ensemble": 2, "events": 4}
    # the calibration it replaced stays in the checkpoint, with the sampling defaults it held for
    (replaced,) = state["replaced_calibrations"]
    assert replaced["calibration"] == before
    assert {k: replaced["sample"][k] for k in ("sampler", "steps", "ensemble")} == \
        {"sampler": "heun", "steps": 3, "ensemble": 3}
    assert {k: state["config"]["sample"][k] for k in ("sampler", "steps", "eta", "ensemble")} == \
        {"sampler": "ddim", "steps": 2, "eta": 0.5, "ensemble": 2}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        SuperResolver(path, device="cpu")(storage, torch.arange(2), seed=0)
    assert not [w for w in caught if "fitted for" in str(w.message)]


def test_calibration_takes_the_smallest_factor_that_reaches_the_level():
    from graphsr.inference.calibration import _smallest_reaching

    # coverage that rises to 0.70 at x = 4 and falls beyond (members pushed apart land on a parent's extremes):
    # 0.70 - 0.05 (log2 x - 2)^2 = 0.68 at log2 x = 2 - sqrt(0.4), x = 2.583; a bisection over [0.25, 16] ran to 16
    def hump(x, top=0.70):
        return top - 0.05 * (np.log2(x) - 2) ** 2

    assert _smallest_reaching(hump, 0.68) == pytest.approx(2 ** (2 - 0.4 ** 0.5), rel=0.01)
    assert _smallest_reaching(lambda x: 0.9, 0.68) == 0.25  # over-dispersed already: narrowed as far as allowed
    with pytest.warns(UserWarning, match="no factor"):  # never reaches: the best one, said aloud
        assert _smallest_reaching(lambda x: hump(x, top=0.6), 0.68) == pytest.approx(4.0)


def test_the_shipped_pretrained_model_improves_on_the_coarse_energy(tmp_path):
    """The GPU-trained model in graphsr/pretrained (docs/gpu.md) loads on the CPU and, on events it
    never saw (another seed), estimates the event ECAL energy closer to the fine truth than the coarse cells do."""
    path = tmp_path / "unseen.root"
    write_cocoa(path, simulate_events(SingleElectronGun(), 12, factor=2, seed=99, neighbour_branches=False))
    resolver = SuperResolver("pretrained", device="cpu")
    assert resolver.factor == 2 and resolver.generative and resolver.calibration is not None
    dataset = CocoaDataset([path], root=tmp_path / "cache", options=resolver.graph_options, log=False)
    out = resolver(dataset.storage(), torch.arange(12), ensemble=4, seed=0)
    batch = out["batch"]
    truth = torch.zeros(12).index_add_(0, batch.batch, batch.fine_energy)
    coarse = torch.zeros(12).index_add_(0, batch.coarse_batch, batch.coarse_energy)
    sr = torch.zeros(12).index_add_(0, batch.batch, out["mean"])
    # coarse: noise (~1% of 50 GeV) and the +2% bias of the topocluster selection; an untrained model is far off
    sr_error, coarse_error = ((sr - truth) / truth).abs().mean(), ((coarse - truth) / truth).abs().mean()
    assert sr_error < 0.6 * coarse_error and sr_error < 0.01


def test_a_run_directory_that_holds_a_run_is_never_replaced_silently(trained, data_file, tmp_path, capsys):
    import shutil

    import yaml

    config, result = trained
    run = tmp_path / "run"
    run.mkdir()
    for name in ("checkpoint.pt", "history.csv"):
        shutil.copy(result.checkpoint.parent / name, run / name)
    before = {name: (run / name).read_bytes() for name in ("checkpoint.pt", "history.csv")}
    short = config_from_dict({**config.to_dict(), "train": {**config.to_dict()["train"], "steps": 2}})
    short.sample.calibration_events = 0
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(short.to_dict()))
    args = ["train", "--config", str(config_file), "--out", str(run), "--device", "cpu"]
    assert main(args) == 1
    error = capsys.readouterr().err
    assert str(run) in error and "--resume" in error and "--overwrite" in error
    assert {name: (run / name).read_bytes() for name in before} == before  # nothing lost
    with pytest.raises(SystemExit):  # argparse: not both
        main(args + ["--resume", "--overwrite"])
    with pytest.raises(ValueError, match="choose one"):
        train(short, run, resume=True, overwrite=True, progress=False)
    with pytest.raises(FileNotFoundError, match="no checkpoint to resume"):
        train(short, tmp_path / "empty", resume=True, progress=False)
    assert (run / "checkpoint.pt").read_bytes() == before["checkpoint.pt"]
    # --overwrite replaces the run: a 2-step checkpoint and a 2-row history
    assert main(args + ["--overwrite"]) == 0
    assert load_checkpoint(run / "checkpoint.pt")["step"] == 2
    assert len((run / "history.csv").read_text().splitlines()) == 3


def _without_cells(events: ak.Array, empty: np.ndarray, particle_nodes: bool = False) -> ak.Array:
    """The events with no cells (and nothing that points at a cell) where ``empty`` holds: a legal COCOA file.
    ``particle_nodes``: keep the particles' node lists, whose indices then point past the (no) cells, at tracks, as
    COCOA numbers them."""
    from graphsr.io.writer import counter_name

    out = {}
    for name in events.fields:
        column = events[name]
        if counter_name(name) in ("ncell", "nlow_high_cell_edge", "ncell_to_cell_edge") or \
                (name.startswith("particle_to_node") and not particle_nodes):
            column = ak.where(empty, column[:, :0] if name.startswith("cell") or "cell_edge" in name
                              else column[:, :, :0], column)
        out[name] = column
    return ak.zip(out, depth_limit=1)


def test_events_without_cells_flow_through_every_command(trained, data_file, tmp_path, capsys):
    _, result = trained
    trees = read_cocoa(data_file, entry_stop=20)
    empty = np.arange(20) % 5 == 4  # every fifth event
    path = write_cocoa(tmp_path / "holes.root", {name: _without_cells(t, empty) for name, t in trees.items()})
    assert main(["summary", "--input", str(path), "--plot", str(tmp_path / "summary" / "display.png"),
                 "--cache", str(tmp_path / "cache")]) == 0
    assert f"{path}: 16 events with ECAL cells" in capsys.readouterr().out
    out = tmp_path / "sr.root"
    assert main(["sample", "--checkpoint", str(result.checkpoint), "--input", str(path), "--output", str(out),
                 "--device", "cpu"]) == 0
    back = read_cocoa(out)
    low, high = back["Low_Tree"], back["High_Tree"]
    assert len(low) == len(high) == 20  # one entry per input entry, the empty ones empty
    assert ak.num(high.cell_e).to_numpy()[empty].tolist() == [0] * 4
    assert np.array_equal(ak.num(high.cell_e).to_numpy(), 4 * ak.num(low.cell_e).to_numpy())
    assert (ak.num(high.cell_e).to_numpy()[~empty] > 0).all()
    # a chunk of the file in which no event has cells (entries 0-4, read 5 at a time)
    from graphsr.pipelines.super_resolve import super_resolve_file

    leading = np.arange(20) < 5
    source = write_cocoa(tmp_path / "leading.root", {name: _without_cells(t, leading, particle_nodes=True)
                                                     for name, t in trees.items()})
    resolver = SuperResolver(result.checkpoint, device="cpu")
    assert super_resolve_file(resolver, source, tmp_path / "leading_sr.root", step_size=5, progress=False) == 20
    written = ak.num(read_cocoa(tmp_path / "leading_sr.root")["High_Tree"].cell_e).to_numpy()
    assert (written[:5] == 0).all() and (written[5:] > 0).all()
    assert main(["evaluate", "--checkpoint", str(result.checkpoint), "--input", str(path), "--split", "all",
                 "--out", str(tmp_path / "report"), "--ensemble", "2", "--displays", "0", "--device", "cpu"]) == 0
    assert "on 16 events" in capsys.readouterr().out
    # training leaves them out: the 16 events with cells split into train / validation / test
    config = tiny_config(path, tmp_path / "cache", steps=2, val_every=2)
    config.sample.calibration_events = 0
    state = load_checkpoint(train(config, tmp_path / "run", progress=False).checkpoint)
    assert sum(len(state["events"][part][0]["entries"]) for part in ("train", "val")) <= 16
    assert not set(state["events"]["train"][0]["entries"].tolist()) & set(np.flatnonzero(empty).tolist())


def test_sample_writes_the_resolvers_numbers_in_mev_on_the_right_cells(trained, data_file, tmp_path):
    from graphsr.datasets import read_events
    from graphsr.detector import Geometry
    from graphsr.detector.geometry import ETA_MAX

    _, result = trained
    out = tmp_path / "sr.root"
    assert main(["sample", "--checkpoint", str(result.checkpoint), "--input", str(data_file), "--output", str(out),
                 "--max-events", "6", "--seed", "3", "--ensemble", "3", "--mode", "conserving",
                 "--device", "cpu"]) == 0
    resolver = SuperResolver(result.checkpoint, device="cpu")
    storage = read_events(data_file, resolver.graph_options, max_events=6, factor=2)
    expected = resolver(storage, torch.arange(6), seed=3, ensemble=3, mode="conserving")
    back = read_cocoa(out)
    low, high = back["Low_Tree"], back["High_Tree"]
    # cell by cell, in MeV: the point estimate, the ensemble mean and its standard deviation, each where it belongs
    for branch, key in (("cell_e", "estimate"), ("cell_e_mean", "mean"), ("cell_e_spread", "spread")):
        written = ak.to_numpy(ak.flatten(high[branch])).astype(np.float64)
        assert np.allclose(written, 1000 * expected[key].double().numpy(), rtol=1e-6, atol=1e-3), branch
    # conserving: each coarse cell's children sum to its measured energy (the input's Low_Tree cell_e, in MeV)
    measured = read_cocoa(data_file, entry_stop=6)["Low_Tree"]
    ecal = measured.cell_layer < 3
    assert ak.all(low.cell_e == measured.cell_e[ecal])
    parent = ak.flatten(low.low_cell_to_high_cell_edge + np.cumsum(ak.num(low.cell_e)) - ak.num(low.cell_e))
    child = ak.flatten(low.high_cell_to_low_cell_edge + np.cumsum(ak.num(high.cell_e)) - ak.num(high.cell_e))
    coarse_e = ak.to_numpy(ak.flatten(low.cell_e)).astype(np.float64)
    for branch in ("cell_e", "cell_e_mean"):
        fine_e = ak.to_numpy(ak.flatten(high[branch])).astype(np.float64)
        sums = np.zeros_like(coarse_e)
        np.add.at(sums, ak.to_numpy(parent), fine_e[ak.to_numpy(child)])
        assert np.allclose(sums, coarse_e, atol=1e-3 + 1e-5 * np.abs(coarse_e).max()), branch
    # every fine cell sits in its parent: a 2x2 block's centres average to the parent's centre
    def centres(axis):  # phi as unit vectors, so that blocks across the +-pi seam average right
        fine = ak.to_numpy(ak.flatten(high[axis])).astype(np.float64)[ak.to_numpy(child)]
        coarse = ak.to_numpy(ak.flatten(low[axis])).astype(np.float64)
        to_plane = (lambda a: np.exp(1j * a)) if axis == "cell_phi" else (lambda a: a + 0j)  # noqa: E731
        centre = np.zeros(len(coarse), complex)
        np.add.at(centre, ak.to_numpy(parent), to_plane(fine) / 4)
        return centre, to_plane(coarse)

    for axis in ("cell_eta", "cell_phi"):
        centre, coarse = centres(axis)
        assert np.abs(np.angle(centre / coarse) if axis == "cell_phi" else centre - coarse).max() < 1e-4, axis
    # the fine cell graph, as COCOA writes it: in-event indices, both directions, neighbours one cell apart
    start, end = high.cell_to_cell_edge_start, high.cell_to_cell_edge_end
    assert ak.all(ak.num(start) == ak.num(end)) and ak.all(ak.num(start) > 0)
    for e in range(6):
        a, b = start[e].to_numpy(), end[e].to_numpy()
        assert a.min() >= 0 and max(a.max(), b.max()) < len(high.cell_e[e]) and not (a == b).any()
        assert set(zip(a.tolist(), b.tolist())) == set(zip(b.tolist(), a.tolist()))
        layer, eta = high.cell_layer[e].to_numpy(), high.cell_eta[e].to_numpy()
        same = layer[a] == layer[b]
        pitch = 2 * ETA_MAX / Geometry.cocoa().n[layer[a]]  # in-layer neighbours: at most one cell apart in eta
        assert same.any() and (np.abs(eta[a] - eta[b])[same] <= 1.001 * pitch[same]).all()
