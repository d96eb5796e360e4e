"""Write COCOA events to ROOT files as TTrees that COCOA readers (and :mod:`graphsr.io.reader`) understand.

Layout. A super-resolution file holds ``Low_Tree`` (coarse cells, particles, topoclusters, the coarse -> fine
mapping) and ``High_Tree`` (fine cells); a plain file holds ``Out_Tree`` alone. One entry per event in every tree.
Every field of the input records becomes a branch of the same name, so branch names are exactly COCOA's
(``cell_e``, ``particle_pt``, ``low_cell_to_high_cell_edge``, ...). uproot writes a per-event list as a counter
branch plus a C array (``float[]``) instead of COCOA's ``std::vector<float>``; branches of one dimension share
one counter:

=========================  ==================================================================================
counter                    branches it counts
=========================  ==================================================================================
``ncell``                  ``cell_*`` per cell (``cell_layer`` ... ``cell_parent_idx``, ``cell_parent_*_counts``)
``nparticle``              ``particle_*`` per particle (including ``particle_to_node_*_counts``)
``ntopo``                  ``topo_*`` per topocluster (not ``topo_jet_*``)
``ncell_to_cell_edge``     ``cell_to_cell_edge_start``, ``cell_to_cell_edge_end``
``nlow_high_cell_edge``    ``low_cell_to_high_cell_edge``, ``high_cell_to_low_cell_edge``
``n<name>``                any other list branch ``<name>``: each its own (``ntopo_jet_pt``,
                           ``ncell_pflow_object_idx``, ``ncell_parent_list_flat``, ...)
=========================  ==================================================================================

COCOA writes some branches under these prefixes that count other things (``topo_jet_*``: one entry per jet,
``cell_pflow_object_idx``: one per matched particle-flow object): they get counters of their own, so every branch
COCOA writes can be written back.

uproot cannot write lists of lists (COCOA's ``vector<vector<float>>``: ``cell_parent_list``,
``cell_parent_energy``, ``particle_to_node_idx``, ``particle_to_node_weight``). Such a field ``<name>`` is
written flattened as two branches: ``<name>_flat``, every inner value of the event in order (counter
``n<name>_flat``), and ``<name>_counts`` (int32), the inner length of each outer element (counted by the outer
element's counter, e.g. ``ncell``). :mod:`graphsr.io.reader` turns both forms back into the same
``var * var`` awkward array.

A writer may record its provenance (what made the file, from what: :mod:`graphsr.provenance`) as a JSON string,
a ``TObjString`` named ``graphsr_provenance`` beside the trees; readers of the trees never see it.

Files are written atomically: into a hidden temporary file next to the target, moved into place only once
complete, so an interrupted run never leaves a partial file under the target name.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Mapping
from os import PathLike
from pathlib import Path

import awkward as ak
import numpy as np
import uproot

from graphsr.io.errors import CocoaFormatError

SR_TREES = ("Low_Tree", "High_Tree")
PLAIN_TREE = "Out_Tree"
MAPPING_BRANCHES = ("low_cell_to_high_cell_edge", "high_cell_to_low_cell_edge")
PROVENANCE_KEY = "graphsr_provenance"
FLAT_SUFFIX = "_flat"
COUNTS_SUFFIX = "_counts"
# events per TTree extend (one basket per branch each)
DEFAULT_STEP = 1000


# Branches of one COCOA object type hold one entry per object and share a counter. COCOA names a few branches
# with these prefixes that count something else: they come first, with a counter of their own (None).
SHARED_COUNTERS = (("cell_to_cell_edge_", "ncell_to_cell_edge"), ("cell_pflow_object_idx", None), ("topo_jet_", None),
                   ("cell_", "ncell"), ("particle_", "nparticle"), ("topo_", "ntopo"))


def counter_name(branch: str) -> str:
    """Name of the counter branch of the list branch ``branch`` (see the module docstring)."""
    if branch.endswith(FLAT_SUFFIX):
        return "n" + branch
    if branch in MAPPING_BRANCHES:
        return "nlow_high_cell_edge"
    for prefix, counter in SHARED_COUNTERS:
        if branch.startswith(prefix):
            return counter or "n" + branch
    return "n" + branch


def to_branches(events: ak.Array, *, tree: str | None = None) -> dict[str, ak.Array]:
    """Per-branch arrays of a tree, lists of lists flattened into ``<name>_flat`` / ``<name>_counts``.

    Args:
        events: ``[num_events]`` records, one field per COCOA branch: numbers, lists or lists of lists.
        tree: tree name, for error messages.

    Returns:
        Branch name -> ``[num_events, ...]`` array; empty lists of unknown type become ``float32``.
    """
    branches = {}
    for name in ak.fields(events):
        column = events[name]
        if ak.fields(column):
            raise CocoaFormatError("nested records cannot be written; give one field per branch",
                                   tree=tree, branch=name)
        if "unknown" in str(column.type.content):  # e.g. lists that are empty in every event
            column = ak.enforce_type(column, str(column.type.content).replace("unknown", "float32"))
        if column.ndim == 3:
            branches[name + FLAT_SUFFIX] = ak.flatten(column, axis=2)
            branches[name + COUNTS_SUFFIX] = ak.values_astype(ak.num(column, axis=2), np.int32)
        elif column.ndim in (1, 2):
            branches[name] = column
        else:
            raise CocoaFormatError(f"{column.ndim - 1} levels of lists per event; COCOA has at most 2",
                                   tree=tree, branch=name)
    if len(branches) != sum(1 + (events[name].ndim == 3) for name in ak.fields(events)):
        raise CocoaFormatError(f"field names collide with flattened names: {sorted(ak.fields(events))}", tree=tree)
    return branches


def _check_shared_counters(branches: dict[str, ak.Array], tree: str, first_event: int) -> None:
    """Branches sharing a counter must have equal lengths in every event."""
    reference: dict[str, tuple[str, np.ndarray]] = {}
    for name, column in branches.items():
        if column.ndim < 2:
            continue
        counts = ak.num(column, axis=1).to_numpy()
        counter = counter_name(name)
        if counter in branches:
            raise CocoaFormatError(f"a field is named like the counter branch {counter!r}", tree=tree, branch=name)
        if counter not in reference:
            reference[counter] = (name, counts)
            continue
        other, expected = reference[counter]
        bad = np.flatnonzero(counts != expected)
        if len(bad):
            event = bad[0]
            raise CocoaFormatError(
                f"{counts[event]} entries where {other!r} has {expected[event]}; both are counted by {counter!r}",
                tree=tree, branch=name, event=first_event + event)


def _check_trees(trees: Mapping[str, ak.Array]) -> None:
    if set(trees) not in (set(SR_TREES), {PLAIN_TREE}):
        raise ValueError(f"trees must be {' + '.join(SR_TREES)} (super-resolution) or {PLAIN_TREE} (plain), "
                         f"got {sorted(trees)}")
    lengths = {name: len(events) for name, events in trees.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"trees hold different numbers of events: {lengths}")


class CocoaWriter:
    """Stream events into a new COCOA ROOT file, chunk by chunk; the file appears at ``path`` on close.

    Use as a context manager; an exception inside the block discards everything written::

        with CocoaWriter("events.root") as writer:
            for chunk in chunks:  # {"Low_Tree": ak.Array, "High_Tree": ak.Array}
                writer.write(chunk)

    Args:
        path: target file.
        overwrite: replace an existing file at ``path`` (otherwise :class:`FileExistsError`).
        step: events per TTree extend (one basket per branch).
        provenance: JSON-ready dict stored as the ``graphsr_provenance`` string (:attr:`provenance` may be
            changed until the file is closed).
    """

    def __init__(self, path: str | PathLike, *, overwrite: bool = False, step: int = DEFAULT_STEP,
                 provenance: Mapping | None = None):
        self.path, self.overwrite, self.step = Path(path), overwrite, int(step)
        self.provenance = provenance
        if self.step < 1:
            raise ValueError(f"step must be >= 1, got {step}")
        if not self.path.parent.is_dir():
            raise FileNotFoundError(f"directory of {self.path} does not exist")
        self._refuse_existing()
        self._tmp = self.path.parent / f".{self.path.name}.{uuid.uuid4().hex[:12]}.tmp"
        self._file = uproot.recreate(self._tmp)
        self._trees: dict[str, uproot.writing.WritableTree] = {}
        self._branches: dict[str, list[str]] = {}
        self.num_events = 0

    def _refuse_existing(self) -> None:
        if not self.overwrite and self.path.exists():
            raise FileExistsError(f"{self.path} exists; pass overwrite=True to replace it")

    def write(self, trees: Mapping[str, ak.Array]) -> None:
        """Append events.

        Args:
            trees: tree name -> ``[num_events]`` records with one field per branch; the same trees and fields in
                every call (``Low_Tree`` + ``High_Tree``, or ``Out_Tree``).
        """
        if self._file is None:
            raise ValueError(f"writer of {self.path} is closed")
        _check_trees(trees)
        branches = {name: to_branches(events, tree=name) for name, events in trees.items()}
        for name, columns in branches.items():
            _check_shared_counters(columns, name, self.num_events)
        layout = {name: sorted(columns) for name, columns in branches.items()}
        if not self._trees:
            self._trees = {name: self._file.mktree(name, {b: c.type.content for b, c in columns.items()},
                                                   counter_name=counter_name)
                           for name, columns in branches.items()}
            self._branches = layout
        elif layout != self._branches:
            raise ValueError(f"trees or fields differ from the first chunk written to {self.path}: "
                             f"{layout} after {self._branches}")
        count = len(next(iter(trees.values())))
        for start in range(0, count, self.step):
            for name, columns in branches.items():
                self._trees[name].extend({b: c[start:start + self.step] for b, c in columns.items()})
        self.num_events += count

    def close(self) -> None:
        """Finish the file and move it to ``path``."""
        if self._file is None:
            return
        if self.provenance is not None and self._trees:
            self._file[PROVENANCE_KEY] = json.dumps(self.provenance, sort_keys=True, default=str)
        self._file.close()
        self._file = None
        try:
            if not self._trees:
                raise ValueError(f"nothing was written to {self.path}")
            if self.overwrite:
                os.replace(self._tmp, self.path)
            else:
                self._link_into_place()
        finally:
            self._tmp.unlink(missing_ok=True)

    def _link_into_place(self) -> None:
        # a hard link fails if the target appeared meanwhile, where os.replace would silently overwrite it
        try:
            os.link(self._tmp, self.path)
        except FileExistsError:
            raise FileExistsError(f"{self.path} exists; pass overwrite=True to replace it") from None
        except OSError:  # no hard links on this file system
            self._refuse_existing()
            os.replace(self._tmp, self.path)

    def abort(self) -> None:
        """Discard everything written; ``path`` is left untouched."""
        if self._file is not None:
            self._file.close()
            self._file = None
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> CocoaWriter:
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_cocoa(path: str | PathLike, trees: Mapping[str, ak.Array], *, overwrite: bool = False,
                step: int = DEFAULT_STEP, provenance: Mapping | None = None) -> Path:
    """Write events to a new COCOA ROOT file, atomically.

    Args:
        path: target file.
        trees: ``{"Low_Tree": ..., "High_Tree": ...}`` (super-resolution) or ``{"Out_Tree": ...}`` (plain); each
            ``[num_events]`` records with one field per COCOA branch (MeV, mm, rad).
        overwrite: replace an existing file at ``path`` (otherwise :class:`FileExistsError`).
        step: events per TTree extend.
        provenance: stored beside the trees (:class:`CocoaWriter`).

    Returns:
        ``path``.
    """
    with CocoaWriter(path, overwrite=overwrite, step=step, provenance=provenance) as writer:
        writer.write(trees)
    return writer.path
