"""Provenance: what made a checkpoint or a ROOT file, and from what.

Checkpoints carry it under ``"provenance"``; ROOT files graphsr writes carry it as the JSON string
``graphsr_provenance`` beside the trees (:class:`~graphsr.io.CocoaWriter`; read back with
``graphsr.io.open_cocoa(path).provenance``). It records the versions of graphsr, torch, PyG and Python, the
command, its configuration and seed, and a content hash of every input file.
"""

from __future__ import annotations

import platform
from collections.abc import Iterable
from datetime import datetime, timezone
from os import PathLike

from graphsr.io.digest import file_digest


def file_hash(path: str | PathLike) -> str:
    """``"sha256:<hex>"`` of the file's bytes (:func:`graphsr.io.file_digest`, computed once per file version in a
    process)."""
    return f"sha256:{file_digest(path)}"


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
            "inputs": {str(path): file_hash(path) for path in inputs}, **extra}
