"""Plots: HEP-style histograms with ratio panels, event displays on (eta, phi) axes, matplotlib left alone."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import TOY_CELLS, make_toy_events

from graphsr import plotting
from graphsr.graphs import GraphOptions, build_storage
from graphsr.graphs.loader import collate_events


def test_importing_graphsr_leaves_matplotlibs_backend_alone(tmp_path):
    """A notebook's backend (here: pdf, chosen before graphsr is imported) must survive import and plotting."""
    code = ("import matplotlib, numpy as np\n"
            "import graphsr.plotting, graphsr.eval.evaluate, graphsr.cli\n"
            f"graphsr.plotting.energy_histograms({{'fine truth': np.arange(50.0)}}, r'{tmp_path / 'h.png'}', 'x')\n"
            "print(matplotlib.get_backend())\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "MPLBACKEND": "pdf"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "pdf" and (tmp_path / "h.png").stat().st_size > 0


def test_histograms_with_ratio_panel(tmp_path):
    rng = np.random.default_rng(0)
    path = plotting.energy_histograms({"fine truth": rng.normal(size=500), "model": rng.normal(0.2, 1, 500)},
                                      tmp_path / "h.png", "x", bins=20)
    assert path.stat().st_size > 0
    # the bin contents and errors drawn: counts and sqrt(counts), normalised (hand computation)
    edges = np.linspace(0, 1, 5)
    h = plotting._histogram(np.array([0.1, 0.1, 0.3, 0.6, 0.9, 0.95, 0.97, np.nan]), edges)
    assert h.values().tolist() == [2, 1, 1, 3] and np.allclose(np.sqrt(h.variances()), np.sqrt([2, 1, 1, 3]))


def test_event_display_axes_are_eta_and_phi(tmp_path):
    low, high = make_toy_events(TOY_CELLS)
    data, slices = build_storage(low, high, GraphOptions(), factor=2)
    event = collate_events(data, slices, torch.tensor([0]))
    assert plotting.event_display(event, tmp_path / "display.png", event.fine_energy * 0.5).stat().st_size > 0
    # the window around a cell: 2 half_width fine cells of 6 / 256 in eta and 2 pi / 256 in phi, phi across pi
    eta_min, eta_max, phi_min, phi_max = plotting.layer_window(0, (0.01, 3.1), half_width=4)
    assert eta_max - eta_min == pytest.approx(8 * 6 / 256) and phi_max - phi_min == pytest.approx(8 * 2 * np.pi / 256)
    assert eta_min < 0.01 < eta_max and phi_min < 3.1 < phi_max
    eta_min, eta_max, phi_min, phi_max = plotting.layer_window(0, (0.0, -3.13), half_width=4)
    assert phi_min < -3.13 < phi_max
