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
