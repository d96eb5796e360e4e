"""The notebooks run top to bottom (on tiny data here); committed notebooks carry no outputs."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from graphsr.config import config_from_dict
from graphsr.io import write_cocoa
from graphsr.simulation import SingleElectronGun, simulate_events
from graphsr.pipelines import train

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("nb")
    data = root / "e.root"
    write_cocoa(data, simulate_events(SingleElectronGun(), 40, factor=2, seed=9, neighbour_branches=False))
    config = config_from_dict({
        "data": {"train": [str(data)], "cache": str(root / "cache")},
        "model": {"width": 16, "depth": 1, "coarse_depth": 1, "heads": 2, "context_tokens": 2},
        "train": {"steps": 4, "batch_size": 8, "warmup": 1, "val_every": 4},
        "sample": {"steps": 2, "ensemble": 2}})
    train(config, root / "run", progress=False)
    config.model.generator = "pyramid"
    train(config, root / "pyramid", progress=False)
    return root, data


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_without_outputs(path):
    book = nbformat.read(path, as_version=4)
    assert all(not cell.get("outputs") for cell in book.cells if cell.cell_type == "code")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, tiny_run, tmp_path, monkeypatch):
    from nbclient import NotebookClient

    root, data = tiny_run
    monkeypatch.setenv("GRAPHSR_ROOT", str(tmp_path))
    monkeypatch.setenv("GRAPHSR_DATA", str(data))
    monkeypatch.setenv("GRAPHSR_CACHE", str(root / "cache"))
    monkeypatch.setenv("GRAPHSR_CHECKPOINT", str(root / "run" / "checkpoint.pt"))
    monkeypatch.setenv("GRAPHSR_PYRAMID_CHECKPOINT", str(root / "pyramid" / "checkpoint.pt"))
    monkeypatch.setenv("GRAPHSR_MAX_EVENTS", "40")
    monkeypatch.setenv("GRAPHSR_EVENTS", "4")
    book = nbformat.read(path, as_version=4)
    NotebookClient(book, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    assert (tmp_path / "reports" / "notebooks").is_dir()
