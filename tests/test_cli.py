"""The command line as a user starts it: ``python -m graphsr``, ``graphsr --version``."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "graphsr", *args], capture_output=True, text=True, timeout=120)


def test_python_m_graphsr_runs_the_command_line():
    done = run("--version")
    assert done.returncode == 0
    assert done.stdout.strip() == f"graphsr {importlib.metadata.version('graphsr')}"  # the installed package's
    done = run("sample", "--help")
    assert done.returncode == 0 and "--checkpoint" in done.stdout
    done = run("no-such-command")
    assert done.returncode == 2 and "invalid choice" in done.stderr


def test_simulate_records_its_provenance_and_readers_ignore_it(tmp_path):
    from graphsr.cli import main
    from graphsr.io import open_cocoa, read_cocoa

    path = tmp_path / "e.root"
    assert main(["simulate", "--events", "3", "--seed", "7", "--output", str(path)]) == 0
    info = open_cocoa(path)
    record = info.provenance
    assert record["command"] == "simulate" and record["seed"] == 7 and record["inputs"] == {}
    assert record["config"] == {"gun": "single-electron", "factor": 2, "events": 3, "chunk": 1000,
                                "neighbour_branches": True}
    assert record["versions"]["graphsr"] == importlib.metadata.version("graphsr")
    assert set(read_cocoa(path)) == {"Low_Tree", "High_Tree"} and info.mode == "super-resolution"
    # another coarse noise is recorded, and bad values are refused before any file is written
    noisy = tmp_path / "fine_noise.root"
    assert main(["simulate", "--events", "3", "--coarse-noise", "13,34,41,75,50,25", "--output", str(noisy)]) == 0
    assert open_cocoa(noisy).provenance["config"]["coarse_noise"] == [13, 34, 41, 75, 50, 25]
    assert main(["simulate", "--events", "3", "--coarse-noise", "13,34", "--output", str(tmp_path / "bad.root")]) == 1
    assert not (tmp_path / "bad.root").exists()


def test_summary_counts_the_noise_only_coarse_cells(tmp_path, capsys):
    import re

    import awkward as ak
    import uproot

    from graphsr.cli import main

    path = tmp_path / "e.root"
    assert main(["simulate", "--events", "60", "--seed", "3", "--output", str(path)]) == 0
    capsys.readouterr()
    assert main(["summary", "--input", str(path), "--cache", str(tmp_path / "cache"),
                 "--plot", str(tmp_path / "display.png")]) == 0
    line = next(s for s in capsys.readouterr().out.splitlines() if "empty children" in s)
    count, energy = map(float, re.findall(r"([\d.]+) (?:per event|GeV measured)", line))
    # straight from the file: ECAL coarse cells without particle energy (cell_che + cell_nue = 0)
    low = uproot.open(path)["Low_Tree"].arrays(["cell_layer", "cell_e", "cell_che", "cell_nue"])
    noise = (low.cell_layer < 3) & (low.cell_che + low.cell_nue == 0)
    assert abs(count - float(ak.sum(noise)) / 60) <= 0.006 and count > 1  # printed to 2 decimals
    assert abs(energy - float(ak.sum(low.cell_e[noise])) / 60 / 1000) <= 0.0006
