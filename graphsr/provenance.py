"""Provenance: what made a checkpoint or a ROOT file, and from what.

Checkpoints carry it under ``"provenance"``; ROOT files graphsr writes carry it as the JSON string
``graphsr_provenance`` beside the trees (:class:`~graphsr.io.CocoaWriter`; read back with
``graphsr.io.open_cocoa(path).provenance``). It records the versions of graphsr, torch, PyG and Python, the
command, its configuration and seed, the git commit of the source tree, and a content hash of every input file.
Evaluation reports carry :func:`report_provenance` in their ``metrics.json``, which ``bench/results_page.py`` reads
to name the commit, config and command behind every table of ``docs/results.md``.
"""

from __future__ import annotations

import platform
import shlex
import subprocess
import sys
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from os import PathLike
from pathlib import Path

from graphsr.io.digest import file_digest


def file_hash(path: str | PathLike) -> str:
    """``"sha256:<hex>"`` of the file's bytes (:func:`graphsr.io.file_digest`, computed once per file version in a
    process)."""
    return f"sha256:{file_digest(path)}"


def git_commit(path: str | PathLike | None = None) -> str | None:
    """The commit checked out in the git work tree holding ``path`` (default: graphsr's source), or None where that
    is not a git checkout (an installed wheel) or git is missing."""
    where = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and commit else None


def git_dirty(path: str | PathLike | None = None) -> bool | None:
    """Whether tracked files of that work tree differ from :func:`git_commit` (then the commit alone does not name
    the code that ran); None where it is not a git checkout."""
    where = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        done = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                              capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return bool(done.stdout.strip()) if done.returncode == 0 else None


def command_line(argv: Sequence[str] | None = None) -> str:
    """``argv`` (default ``sys.argv``) as one shell-quoted line, the program named as a user types it
    (``graphsr ...``, not the virtualenv's path to the entry point)."""
    argv = list(sys.argv if argv is None else argv)
    if not argv:
        return ""
    program = Path(argv[0]).name
    program = "python -m graphsr" if program == "__main__.py" else program
    return " ".join([program, *map(shlex.quote, argv[1:])])


def option_value(argv: Sequence[str], option: str) -> str | None:
    """The value given to ``option`` in ``argv`` (``--option value`` or ``--option=value``), or None."""
    for i, arg in enumerate(argv):
        if arg == option and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(option + "="):
            return arg[len(option) + 1:]
    return None


def versions() -> dict[str, str]:
    """Versions of graphsr and of what its results depend on."""
    import torch
    import torch_geometric

    from graphsr import __version__

    # str(): torch.__version__ is a TorchVersion, which weights-only checkpoint loading refuses
    return {"graphsr": __version__, "torch": str(torch.__version__), "torch_geometric": torch_geometric.__version__,
            "python": platform.python_version()}


def provenance(command: str, *, config: dict | None = None, inputs: Iterable[str | PathLike] = (),
               seed: int | None = None, **extra) -> dict:
    """A JSON-ready record of a run.

    Args:
        command: what ran (``"simulate"``, ``"train"``, ``"sample"``).
        config: its configuration.
        inputs: files it read; each is recorded with :func:`file_hash`.
        seed: its random seed.
        extra: anything else worth keeping (JSON-ready).
    """
    return {"command": command, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "versions": versions(), "config": config, "seed": seed,
            "inputs": {str(path): file_hash(path) for path in inputs},
            "argv": list(sys.argv), "commit": git_commit(), **extra}


def report_provenance(argv: Sequence[str] | None = None, *, checkpoint: str | None = None,
                      config: str | None = None, training: dict | None = None) -> dict:
    """What made an evaluation report: the command line, the commit of graphsr's source, the checkpoint and the
    config file it was trained from.

    Args:
        argv: the command line (default ``sys.argv``).
        checkpoint: the evaluated checkpoint (default: the value of ``--checkpoint`` in ``argv``).
        config: the config file the checkpoint was trained from (default: ``--config`` in the training command
            recorded in ``training``).
        training: the checkpoint's own provenance record (:func:`provenance` of ``graphsr train``), if known.
    """
    argv = list(sys.argv if argv is None else argv)
    training = training or {}
    train_argv = training.get("argv") or []
    return {"command": command_line(argv), "commit": git_commit(), "dirty": git_dirty(),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "checkpoint": checkpoint or option_value(argv, "--checkpoint"),
            "config": config or option_value(train_argv, "--config"),
            "train_command": command_line(train_argv) if train_argv else None,
            "train_commit": training.get("commit")}
