"""Streaming at scale: sharded `graphsr sample` over many files, and evaluation that reads only the events it scores."""

from __future__ import annotations

import awkward as ak
import numpy as np
import pytest
import torch

import graphsr.datasets.cocoa as cocoa
from graphsr.cli import main
from graphsr.datasets import read_events
from graphsr.inference import SuperResolver, seen_entries
from graphsr.io import read_cocoa, write_cocoa
from graphsr.simulation import SingleElectronGun, simulate_events
from graphsr.training.checkpoint import load_checkpoint
from graphsr.pipelines import train

from test_training import tiny_config


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    data = root / "train.root"
    write_cocoa(data, simulate_events(SingleElectronGun(), 40, factor=2, seed=3, neighbour_branches=False))
    config = tiny_config(data, root / "cache", steps=2, warmup=1, val_every=2)
    config.sample.sampler, config.sample.steps, config.sample.ensemble = "ddim", 2, 2
    config.sample.calibration_events = 4
    return train(config, root / "run", progress=False).checkpoint, data


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Two small files of different events in one directory: a.root (5 events), b.root (3 events)."""
    folder = tmp_path_factory.mktemp("inputs")
    for name, events, seed in (("a.root", 5, 11), ("b.root", 3, 12)):
        write_cocoa(folder / name, simulate_events(SingleElectronGun(), events, factor=2, seed=seed,
                                                   neighbour_branches=False))
    return folder


def _sample(checkpoint, *args):
    return main(["sample", "--checkpoint", str(checkpoint), "--device", "cpu", "--ensemble", "2", *map(str, args)])


def _ecal_coarse_energies(path):
    """Per event, the ECAL (layers 0-2) coarse cell energies (MeV) the file stores, sorted."""
    low = read_cocoa(path, high_branches=None)["Low_Tree"]
    return [sorted(e) for e in ak.to_list(low.cell_e[low.cell_layer < 3])]


def _assert_output_of(output, source):
    """The output holds the source's events, in order: the same coarse ECAL cells and the same true particles."""
    assert _ecal_coarse_energies(output) == _ecal_coarse_energies(source)
    out, src = read_cocoa(output)["Low_Tree"], read_cocoa(source)["Low_Tree"]
    assert ak.to_list(out.particle_e) == ak.to_list(src.particle_e)
    high = read_cocoa(output)["High_Tree"]
    assert np.array_equal(ak.num(high.cell_e).to_numpy(), 4 * ak.num(out.cell_e).to_numpy())


def test_sample_writes_one_output_per_input(checkpoint, inputs, tmp_path, capsys):
    out = tmp_path / "sr"  # created
    assert _sample(checkpoint[0], "--input", inputs / "a.root", inputs / "b.root", "--output", out) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.root", "b.root"]
    _assert_output_of(out / "a.root", inputs / "a.root")
    _assert_output_of(out / "b.root", inputs / "b.root")
    printed = capsys.readouterr().out
    assert f"wrote 5 super-resolved events to {out / 'a.root'}" in printed
    assert f"wrote 3 super-resolved events to {out / 'b.root'}" in printed


def test_sample_takes_a_glob(checkpoint, inputs, tmp_path):
    out = tmp_path / "sr"
    assert _sample(checkpoint[0], "--input", inputs / "*.root", "--output", out, "--max-events", "2") == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.root", "b.root"]
    assert [len(read_cocoa(out / n)["High_Tree"]) for n in ("a.root", "b.root")] == [2, 2]
    # a pattern is a directory output even when it matches one file
    one = tmp_path / "one"
    assert _sample(checkpoint[0], "--input", inputs / "b*.root", "--output", one) == 0
    _assert_output_of(one / "b.root", inputs / "b.root")


def test_sample_refuses_clashes_existing_outputs_and_its_inputs(checkpoint, inputs, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    write_cocoa(other / "a.root", simulate_events(SingleElectronGun(), 2, factor=2, seed=13, neighbour_branches=False))
    out = tmp_path / "sr"
    # two inputs called a.root: one output would replace the other
    assert _sample(checkpoint[0], "--input", inputs / "a.root", other / "a.root", "--output", out) == 1
    error = capsys.readouterr().err
    assert str(inputs / "a.root") in error and str(other / "a.root") in error and not out.exists()
    # an existing output is named and left alone, and no other output is written either
    out.mkdir()
    (out / "b.root").write_bytes(b"keep me")
    assert _sample(checkpoint[0], "--input", inputs / "a.root", inputs / "b.root", "--output", out) == 1
    assert str(out / "b.root") in capsys.readouterr().err
    assert (out / "b.root").read_bytes() == b"keep me" and not (out / "a.root").exists()
    assert _sample(checkpoint[0], "--input", inputs / "a.root", inputs / "b.root", "--output", out,
                   "--overwrite") == 0
    _assert_output_of(out / "b.root", inputs / "b.root")
    # the inputs' own directory: even --overwrite must not replace an input by its output
    before = (inputs / "a.root").read_bytes()
    assert _sample(checkpoint[0], "--input", inputs / "*.root", "--output", inputs, "--overwrite") == 1
    assert "is an input" in capsys.readouterr().err and (inputs / "a.root").read_bytes() == before
    # a pattern that matches nothing, a missing file: named, nothing written
    assert _sample(checkpoint[0], "--input", inputs / "z*.root", "--output", tmp_path / "none") == 1
    assert f"no file matches {inputs / 'z*.root'}" in capsys.readouterr().err
    assert _sample(checkpoint[0], "--input", inputs / "a.root", inputs / "c.root", "--output", tmp_path / "none") == 1
    assert str(inputs / "c.root") in capsys.readouterr().err and not (tmp_path / "none").exists()


def test_read_events_reads_only_what_it_keeps(checkpoint, monkeypatch):
    path = checkpoint[1]  # 40 events
    read = []
    chunks = cocoa.iter_cocoa

    def recording(*args, **kwargs):
        for chunk in chunks(*args, **kwargs):
            read.append((chunk.entry_start, chunk.entry_stop))
            yield chunk

    monkeypatch.setattr(cocoa, "iter_cocoa", recording)
    data, slices = read_events(path, exclude=[0, 2, 3, 11], max_events=8, step_size=5)
    assert data.event.tolist() == [1, 4, 5, 6, 7, 8, 9, 10]
    assert read == [(0, 5), (5, 10), (10, 15)]  # stops at the chunk that completes the 8 events
    # the graphs are those of the entries: the coarse ECAL energy of each event, as the file stores it (MeV -> GeV)
    sums = torch.zeros(8).index_add_(0, torch.arange(8).repeat_interleave(torch.diff(slices["coarse_layer"])),
                                     data.coarse_energy)
    stored = [sum(_ecal_coarse_energies(path)[e]) / 1000 for e in data.event.tolist()]
    assert sums.tolist() == pytest.approx(stored, rel=1e-5)


def test_evaluation_reads_the_first_unseen_entries(checkpoint):
    path, data_file = checkpoint[0], checkpoint[1]
    resolver = SuperResolver(path, device="cpu")
    state = load_checkpoint(path)
    used = {int(e) for part in ("train", "val") for e in state["events"][part][0]["entries"]}
    assert set(seen_entries(resolver, data_file).tolist()) == used
    data, _ = read_events(data_file, resolver.graph_options, exclude=seen_entries(resolver, data_file), max_events=3)
    assert data.event.tolist() == sorted(set(range(40)) - used)[:3]
    with pytest.raises(ValueError, match="--split test"):
        seen_entries(resolver, data_file, "all")
    with pytest.raises(ValueError, match="unknown split 'events.root'"):  # a typo never scores training events
        seen_entries(resolver, data_file, "events.root")
