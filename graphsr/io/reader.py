"""Read COCOA ROOT files, real or written by graphsr, chunk by chunk, with validation.

A file is either super-resolution (``Low_Tree`` with coarse cells, particles and the coarse -> fine mapping, plus
``High_Tree`` with fine cells) or plain (COCOA's default ``Out_Tree``, coarse-style branches only, no mapping).
Branches are named as in COCOA. Lists of lists (``cell_parent_list``, ``cell_parent_energy``,
``particle_to_node_idx``, ``particle_to_node_weight``) may be COCOA's ``vector<vector<float>>`` or graphsr's
flattened pair ``<name>_flat`` + ``<name>_counts`` (:mod:`graphsr.io.writer`); either way the reader returns the same
``var * var`` awkward array under ``<name>``. Counter branches (``ncell``, ...) are never returned.

Real COCOA output needs no conversion: pass its files to :func:`iter_cocoa` / :func:`read_cocoa`, e.g.
``iter_cocoa(sorted(Path("cocoa_out").glob("*.root")))``. Files from COCOA's super-resolution mode
(``"Use_high_granularity": true``) give paired coarse / fine events; plain files give coarse events only
(``chunk.high is None``).

Before any event is read, every requested branch that COCOA writes must have COCOA's form
(:data:`~graphsr.io.branches.COCOA_TYPES`), judged from the branch types in the file: a list of numbers per event (one
entry per cell, particle, ...), or of lists of numbers for COCOA's ``vector<vector<float>>``. Numbers of another
width are cast to COCOA's type when read (a ``double`` energy to ``float``, an ``int64`` layer to ``int32``; refused
where a value does not fit); a scalar where COCOA writes a list, a level of nesting more or less than COCOA's, values
that are no numbers (``bool``) and numbers that need not be whole where COCOA writes integers are refused.

Every chunk is validated before it is returned, with whole-chunk numpy passes (no loop over events), as far as
the branches read allow:

- branches holding one entry per object (``cell_*`` per cell, ``particle_*`` per particle, ``topo_*`` per
  topocluster, the parallel mapping arrays: :func:`~graphsr.io.writer.counter_name`) have equal lengths;
- energies are finite; the fine cells of ``High_Tree``, the noise-free truth, have no negative energy (unless
  graphsr generated them: :attr:`CocoaFile.generated_trees`);
- ``cell_layer`` is 0-5, ``cell_eta`` and ``cell_phi`` are finite, with |eta| < 3 and |phi| <= pi;
- the mapping lists every fine cell exactly once, pointing at an existing coarse cell, with the same ``factor**2``
  fine cells under every coarse cell, for one integer ``factor`` per file (``chunk.factor``); every fine cell
  lies inside the coarse cell it is assigned to;
- a plain file's granularity factor is read off its cell positions (a coarse cell's centre lies at a different
  place of COCOA's default grid for every factor), one per file;
- no two cells of a tree are the same cell of its grid;
- :func:`iter_cocoa` refuses files whose factor differs from the one expected (a model's, or the first file's).

A problem raises :class:`~graphsr.io.errors.CocoaFormatError` naming the file, tree, branch and the first offending
event (its entry number in the file).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path

import awkward as ak
import numpy as np
import uproot

from graphsr.detector.geometry import ETA_MAX, Geometry
from graphsr.io.branches import COCOA_TYPES
from graphsr.io.errors import CocoaFormatError
from graphsr.io.writer import (
    COUNTS_SUFFIX,
    FLAT_SUFFIX,
    MAPPING_BRANCHES,
    PLAIN_TREE,
    PROVENANCE_KEY,
    SR_TREES,
    counter_name,
    write_cocoa,
)

SUPER_RESOLUTION, PLAIN = "super-resolution", "plain"
ALL_BRANCHES = "all"
LOW_TO_HIGH, HIGH_TO_LOW = MAPPING_BRANCHES
# the true particles, which detector data (plain files) may lack
TRUTH_BRANCHES = ("particle_pdgid", "particle_e", "particle_pt", "particle_eta", "particle_phi")
# what the graph builder needs (graphsr.graphs.build)
GRAPH_BRANCHES_LOW = ("cell_layer", "cell_eta", "cell_phi", "cell_e", LOW_TO_HIGH, HIGH_TO_LOW, *TRUTH_BRANCHES)
GRAPH_BRANCHES_HIGH = ("cell_layer", "cell_eta", "cell_phi", "cell_e")
ENERGY_BRANCHES = ("cell_e", "cell_che", "cell_nue", "cell_parent_energy", "particle_e", "particle_pt",
                   "particle_dep_energy", "topo_e")
DEFAULT_STEP_SIZE = 1000

PathLikes = str | PathLike | Sequence[str | PathLike]


@dataclass(frozen=True)
class CocoaFile:
    """What :func:`open_cocoa` finds in a file (metadata only, no event data read).

    Attributes:
        path: the file.
        mode: ``"super-resolution"`` (``Low_Tree`` + ``High_Tree``) or ``"plain"`` (``Out_Tree``).
        num_events: entries per tree.
        branches: tree name -> branch names as the reader returns them (counters left out, flattened pairs
            under their COCOA name).
        nested: tree name -> {list-of-lists branch: ``"vector"`` (COCOA's ``vector<vector<float>>``) or
            ``"flattened"`` (``<name>_flat`` + ``<name>_counts``)}.
        provenance: what graphsr recorded about how it made the file (:mod:`graphsr.provenance`); None for files
            graphsr did not write.
        types: tree name -> {branch: awkward type of one event's entry as stored, e.g. ``"var * float32"``}, for
            every branch in the file and every list-of-lists branch under its COCOA name.
    """

    path: Path
    mode: str
    num_events: int
    branches: dict[str, tuple[str, ...]]
    nested: dict[str, dict[str, str]]
    provenance: dict | None = None
    types: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def generated_trees(self) -> tuple[str, ...]:
        """Trees whose cells graphsr generated (a super-resolved ``High_Tree`` is no noise-free truth)."""
        return tuple((self.provenance or {}).get("generated_trees", ()))

    @property
    def low_tree(self) -> str:
        """``"Low_Tree"`` or ``"Out_Tree"``: the tree with coarse cells."""
        return SR_TREES[0] if self.mode == SUPER_RESOLUTION else PLAIN_TREE

    @property
    def high_tree(self) -> str | None:
        """``"High_Tree"``, or None for plain files."""
        return SR_TREES[1] if self.mode == SUPER_RESOLUTION else None


@dataclass
class CocoaChunk:
    """Consecutive events of one file.

    Attributes:
        path: the file.
        low: ``[num_events]`` records of the requested coarse-tree branches (``Low_Tree`` or ``Out_Tree``).
        high: ``[num_events]`` records of the requested ``High_Tree`` branches; None for plain files or when
            none were requested.
        entry_start: entry number of the first event in its file.
        global_start: index of the first event among all events of the files iterated over.
        factor: the granularity factor of the coarse cells: fine cells per coarse cell per side, inferred from the
            mapping, or for plain files from the cell positions (coarse cells merge ``factor x factor`` cells of
            COCOA's default grid); constant over the file. None when neither was read or no event so far had cells.
    """

    path: Path
    low: ak.Array
    high: ak.Array | None
    entry_start: int
    global_start: int
    factor: int | None = None

    def __len__(self) -> int:
        return len(self.low)

    @property
    def entry_stop(self) -> int:
        return self.entry_start + len(self.low)


def _wrap_read_error(exc: Exception, path: Path, tree: str | None = None) -> CocoaFormatError:
    return CocoaFormatError(f"cannot be read, the file is truncated or corrupt ({type(exc).__name__}: {exc})",
                            file=path, tree=tree)


def _is_nested_vector(branch) -> bool:
    return "vector<vector<" in branch.typename.replace("std::", "").replace(" ", "")


def _branch_type(branch) -> str:
    """The awkward type of one event's entry of ``branch`` (``"var * float32"`` for ``vector<float>``)."""
    try:
        return str(branch.interpretation.awkward_form(branch.file).type)
    except Exception:  # a class uproot cannot interpret
        return f"uninterpretable ({branch.typename})"


def _tree_branches(tree) -> tuple[tuple[str, ...], dict[str, str], dict[str, str]]:
    """Branch names as returned by the reader, the form of each list-of-lists branch and the type of every branch
    (:attr:`CocoaFile.types`)."""
    names = list(tree.keys(recursive=False))
    counters = {tree[name].count_branch.name for name in names if tree[name].count_branch is not None}
    nested, logical = {}, []
    types = {name: _branch_type(tree[name]) for name in names}
    for name in names:
        base = name.removesuffix(FLAT_SUFFIX)
        if name in counters or (name.endswith(COUNTS_SUFFIX)
                                and name.removesuffix(COUNTS_SUFFIX) + FLAT_SUFFIX in names):
            continue
        if name.endswith(FLAT_SUFFIX) and base + COUNTS_SUFFIX in names:
            nested[base] = "flattened"
            logical.append(base)
            types[base] = f"var * {types[name]}"
            continue
        if _is_nested_vector(tree[name]):
            nested[name] = "vector"
        logical.append(name)
    return tuple(logical), nested, types


INTEGERS = ("int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64")
FLOATS = ("float32", "float64")
_CPP = {"float32": "float", "float64": "double", "int8": "char", "uint8": "unsigned char", "int16": "short",
        "uint16": "unsigned short", "int32": "int", "uint32": "unsigned int", "int64": "long",
        "uint64": "unsigned long", "bool": "bool"}


def _split_type(type_: str) -> tuple[int, str]:
    """``(levels of lists, element type)`` of an awkward type: ``"var * var * float32"`` -> ``(2, "float32")``."""
    depth = 0
    while type_.startswith("var * "):
        type_, depth = type_[len("var * "):], depth + 1
    return depth, type_


def _cpp_type(type_: str) -> str:
    depth, element = _split_type(type_)
    return "vector<" * depth + _CPP.get(element, element) + ">" * depth


def _type_problem(name: str, found: str) -> str | None:
    """Why a branch of COCOA's ``name`` stored as ``found`` (:func:`_branch_type`) cannot be read as COCOA's, or
    None when it can (cast if need be)."""
    expected = f"var * {COCOA_TYPES[name]}"
    depth, element = _split_type(found)
    want_depth, want_element = _split_type(expected)
    what = f"{found} ({_cpp_type(found)})"
    cocoa = f"COCOA's {expected} ({_cpp_type(expected)})"
    if found.startswith("uninterpretable"):
        return f"is {found}, not {cocoa}"
    per = counter_name(name)[1:].replace("_", " ")
    if depth == 0:
        return f"holds one {element} per event where {cocoa} holds one entry per {per}"
    if depth != want_depth:
        levels = abs(depth - want_depth)
        return (f"is {what}: {levels} level{'s' * (levels > 1)} of nesting {'more' if depth > want_depth else 'less'}"
                f" than {cocoa}")
    allowed = INTEGERS if want_element in INTEGERS else INTEGERS + FLOATS
    if element not in allowed:
        why = "not whole numbers" if element in FLOATS else "not numbers"
        return f"holds {element} values where {cocoa} holds {want_element}: {why}"
    return None


def _inspect(path: Path, file) -> CocoaFile:
    size = os.path.getsize(path)
    if size < file.file.fEND:
        raise CocoaFormatError(f"truncated: {size} bytes on disk, the ROOT header says {file.file.fEND}", file=path)
    names = {key.split(";")[0] for key, cls in file.classnames().items() if cls == "TTree"}
    if set(SR_TREES) <= names:
        mode, trees = SUPER_RESOLUTION, SR_TREES
    elif PLAIN_TREE in names:
        mode, trees = PLAIN, (PLAIN_TREE,)
    else:
        missing = next((t for t in SR_TREES if t not in names), None) if names & set(SR_TREES) else PLAIN_TREE
        raise CocoaFormatError(f"missing: expected {' + '.join(SR_TREES)} or {PLAIN_TREE}, found trees "
                               f"{sorted(names) or 'none'}", file=path, tree=missing)
    entries = {t: file[t].num_entries for t in trees}
    if len(set(entries.values())) > 1:
        raise CocoaFormatError(f"trees hold different numbers of events: {entries}", file=path, tree=trees[1])
    branches, nested, types = {}, {}, {}
    for t in trees:
        branches[t], nested[t], types[t] = _tree_branches(file[t])
    provenance = None
    if PROVENANCE_KEY in file:
        try:
            provenance = json.loads(str(file[PROVENANCE_KEY]))
        except json.JSONDecodeError as exc:
            raise CocoaFormatError(f"{PROVENANCE_KEY} is not JSON ({exc})", file=path) from exc
    return CocoaFile(path, mode, entries[trees[0]], branches, nested, provenance, types)


def _open(path: str | PathLike):
    """``(uproot file, CocoaFile)``; the caller closes the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"COCOA file not found: {path}")
    try:
        file = uproot.open(path, array_cache=None)  # chunks are read once: a cache only grows RSS
    except Exception as exc:  # uproot raises assorted types for foreign or damaged files
        raise CocoaFormatError(f"not a readable ROOT file ({type(exc).__name__}: {exc})", file=path) from exc
    try:
        return file, _inspect(path, file)
    except CocoaFormatError:
        file.close()
        raise
    except Exception as exc:
        file.close()
        raise _wrap_read_error(exc, path) from exc


def open_cocoa(path: str | PathLike) -> CocoaFile:
    """Inspect a COCOA file: mode, number of events, branches and the form of its list-of-lists branches.

    Raises:
        FileNotFoundError: no file at ``path``.
        CocoaFormatError: not a ROOT file, truncated, no COCOA trees, or ``Low_Tree`` / ``High_Tree`` of different
            lengths.
    """
    file, info = _open(path)
    file.close()
    return info


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _event_of(flat_index: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    return np.searchsorted(offsets, flat_index, side="right") - 1


@dataclass
class _TreeReader:
    """Reads chosen branches of one tree, joining flattened lists of lists back together; refuses branches of
    COCOA's whose type is not COCOA's form and casts those of another width to COCOA's type."""

    path: Path
    name: str
    tree: object
    branches: tuple[str, ...]
    nested: dict[str, str] = field(default_factory=dict)
    types: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        self.casts = {}  # branch -> numpy type COCOA writes it in
        for b in self.branches:
            counts = self.types.get(b + COUNTS_SUFFIX) if self.nested.get(b) == "flattened" else None
            if counts is not None and _split_type(counts) not in {(1, t) for t in INTEGERS}:
                raise CocoaFormatError(f"{b}{COUNTS_SUFFIX} is {counts}, not a list of integers (the inner lengths "
                                       f"of {b}{FLAT_SUFFIX})", file=self.path, tree=self.name, branch=b)
            if b not in COCOA_TYPES or b not in self.types:
                continue
            problem = _type_problem(b, self.types[b])
            if problem is not None:
                raise CocoaFormatError(problem, file=self.path, tree=self.name, branch=b)
            element, cocoa = _split_type(self.types[b])[1], _split_type(COCOA_TYPES[b])[1]
            if element != cocoa:
                self.casts[b] = np.dtype(cocoa)

    def physical(self) -> list[str]:
        names = []
        for b in self.branches:
            names += [b + FLAT_SUFFIX, b + COUNTS_SUFFIX] if self.nested.get(b) == "flattened" else [b]
        return names

    def read(self, start: int, stop: int) -> ak.Array:
        try:
            arrays = self.tree.arrays(self.physical(), entry_start=start, entry_stop=stop, library="ak")
        except Exception as exc:
            raise _wrap_read_error(exc, self.path, self.name) from exc
        columns = {}
        for b in self.branches:
            if self.nested.get(b) == "flattened":
                columns[b] = self._join(b, arrays[b + FLAT_SUFFIX], arrays[b + COUNTS_SUFFIX], start)
            else:
                columns[b] = arrays[b]
            if b in self.casts:
                columns[b] = self._cast(b, columns[b], start)
        return ak.zip(columns, depth_limit=1)

    def _cast(self, name: str, column: ak.Array, start: int) -> ak.Array:
        """``column`` in COCOA's type; integers must keep their value."""
        cast = ak.values_astype(column, self.casts[name])
        if self.casts[name].kind in "iu":  # COCOA's integer branches are lists of numbers, never of lists
            bad = ak.to_numpy(ak.any(cast != column, axis=1))
            if bad.any():
                raise CocoaFormatError(f"a value does not fit COCOA's type {self.casts[name]}", file=self.path,
                                       tree=self.name, branch=name, event=start + _first(bad))
        return cast

    def _join(self, name: str, flat: ak.Array, counts: ak.Array, start: int) -> ak.Array:
        """``var * var`` array from the values of each event and the inner lengths of its outer elements."""
        bad = ak.to_numpy(ak.sum(counts, axis=1)) != ak.to_numpy(ak.num(flat, axis=1))
        bad |= ak.to_numpy(ak.any(counts < 0, axis=1))
        if bad.any():
            raise CocoaFormatError(f"{name}{COUNTS_SUFFIX} is negative or does not sum to the length of "
                                   f"{name}{FLAT_SUFFIX}",
                                   file=self.path, tree=self.name, branch=name, event=start + _first(bad))
        inner = ak.unflatten(ak.flatten(flat, axis=1), ak.flatten(counts, axis=1))
        return ak.unflatten(inner, ak.num(counts, axis=1))


def _resolve(info: CocoaFile, tree: str, requested, *, optional: Sequence[str] = ()) -> tuple[str, ...]:
    available = info.branches[tree]
    if requested == ALL_BRANCHES:
        return available
    requested = (requested,) if isinstance(requested, str) else tuple(requested)
    for b in requested:
        if b not in available and b not in optional:
            raise CocoaFormatError(f"missing (the tree has {', '.join(available) or 'no branches'})",
                                   file=info.path, tree=tree, branch=b)
    return tuple(b for b in requested if b in available)


def _is_cell_branch(name: str) -> bool:
    return name.startswith("cell_") and not name.startswith("cell_to_cell_edge")


def _cell_counts(events: ak.Array | None) -> np.ndarray | None:
    """Cells per event, from any per-cell branch read."""
    name = next((f for f in ak.fields(events) if _is_cell_branch(f)), None) if events is not None else None
    return None if name is None else ak.to_numpy(ak.num(events[name], axis=1))


# factors of coarse grids that divide every layer of COCOA's default grid
GRANULARITY_FACTORS = (1, 2, 4, 8, 16, 32)
PHI_TOLERANCE = 1e-5  # float32 pi is 9e-8 above pi
CELL_REFERENCES = ("cell_to_cell_edge_start", "cell_to_cell_edge_end", "track_to_cell_edge_end")


def _flat(events: ak.Array, name: str, dtype=None) -> np.ndarray:
    values = ak.to_numpy(ak.flatten(events[name], axis=1))
    return values if dtype is None else values.astype(dtype, copy=False)


class _Cells:
    """Flat per-cell arrays of one tree's chunk (``cell_layer``, ``cell_eta``, ``cell_phi``), with the event of
    every cell."""

    def __init__(self, events: ak.Array):
        counts = ak.to_numpy(ak.num(events.cell_layer, axis=1))
        self.offsets = np.concatenate([[0], np.cumsum(counts)])
        self.event = np.repeat(np.arange(len(counts)), counts)
        self.layer = _flat(events, "cell_layer", np.int64)
        self.eta, self.phi = _flat(events, "cell_eta", np.float64), _flat(events, "cell_phi", np.float64)
        self._index = {}

    def index(self, geometry: Geometry) -> tuple[np.ndarray, np.ndarray]:
        """(ieta, iphi) of every cell in ``geometry``'s grid."""
        if geometry.factor not in self._index:
            self._index[geometry.factor] = geometry.cell_at(self.layer, self.eta, self.phi)
        return self._index[geometry.factor]


def granularity(layer: np.ndarray, eta: np.ndarray, phi: np.ndarray, fine: Geometry) -> np.ndarray:
    """The granularity factor of each cell: f when (eta, phi) is the centre of a cell of ``fine.coarsen(f)``, else 0.

    In units of fine cells, the centre of coarse cell i lies at ``i f + f / 2``: a half-integer for f = 1, an odd
    integer for f = 2, 2 mod 4 for f = 4, ...: the position tells the factor.
    """
    n = fine.n[layer]
    u_eta = (eta + ETA_MAX) / (2 * ETA_MAX) * n
    u_phi = np.mod(phi, 2 * np.pi) / (2 * np.pi) * n
    found = np.zeros(len(layer), dtype=np.int64)
    for f in GRANULARITY_FACTORS:
        at_centre = np.ones(len(layer), dtype=bool)
        for u in (u_eta, u_phi):
            x = (u - f / 2) / f
            at_centre &= np.abs(x - np.round(x)) < 1e-3
        found[at_centre & (found == 0)] = f
    return found


class _Validator:
    """Checks chunks of one file; remembers the granularity factor across them.

    Args:
        info: the file.
        expected_factor: refuse a file whose granularity factor differs (None: any).
        where_expected: what ``expected_factor`` comes from, for the message.
    """

    def __init__(self, info: CocoaFile, expected_factor: int | None = None, where_expected: str = ""):
        self.info, self.factor = info, None
        self.expected_factor, self.where_expected = expected_factor, where_expected
        self.fine = Geometry.cocoa()

    def error(self, message: str, tree: str, branch: str, event: int) -> CocoaFormatError:
        return CocoaFormatError(message, file=self.info.path, tree=tree, branch=branch, event=event)

    def check(self, low: ak.Array, high: ak.Array | None, start: int) -> None:
        cells = {}
        for tree, events in ((self.info.low_tree, low), (self.info.high_tree, high)):
            if events is None:
                continue
            self.check_lengths(events, tree, start)
            self.check_finite(events, tree, start)
            self.check_cell_references(events, tree, start)
            if {"cell_layer", "cell_eta", "cell_phi"} <= set(ak.fields(events)):
                cells[tree] = _Cells(events)
                self.check_positions(cells[tree], tree, start)
        if high is not None and "cell_e" in ak.fields(high) and self.info.high_tree not in self.info.generated_trees:
            self.check_noise_free(high, start)
        if LOW_TO_HIGH in ak.fields(low) and HIGH_TO_LOW in ak.fields(low):
            self.check_mapping(low, high, cells, start)
        elif self.info.mode == PLAIN and self.info.low_tree in cells:
            self.check_granularity(cells[self.info.low_tree], start)
        if self.factor is not None:
            for tree, tree_cells in cells.items():
                geometry = self.fine if tree == self.info.high_tree else self.fine.coarsen(self.factor)
                self.check_duplicates(tree_cells, geometry, tree, start)

    def check_lengths(self, events: ak.Array, tree: str, start: int) -> None:
        """Branches that hold one entry per object (cell, particle, ...) have equal lengths in every event."""
        groups: dict[str, list[str]] = {}
        for name in ak.fields(events):
            counter = counter_name(name)
            if events[name].ndim > 1 and counter != "n" + name:
                groups.setdefault(counter, []).append(name)
        for counter, names in groups.items():
            reference = ak.to_numpy(ak.num(events[names[0]], axis=1))
            for name in names[1:]:
                counts = ak.to_numpy(ak.num(events[name], axis=1))
                bad = counts != reference
                if bad.any():
                    e = _first(bad)
                    raise self.error(f"length differs: {counts[e]} entries where {names[0]!r} has {reference[e]} "
                                     f"(both hold one entry per {counter[1:].replace('_', ' ')})",
                                     tree, name, start + e)

    def check_cell_references(self, events: ak.Array, tree: str, start: int) -> None:
        """Edges to cells point at cells of their event."""
        num_cells = _cell_counts(events)
        for name in CELL_REFERENCES:
            if name in ak.fields(events) and num_cells is not None:
                counts = ak.to_numpy(ak.num(events[name], axis=1))
                index = ak.to_numpy(ak.flatten(events[name]))
                event = np.repeat(np.arange(len(counts)), counts)
                bad = (index < 0) | (index >= num_cells[event])
                if bad.any():
                    e = event[_first(bad)]
                    raise self.error(f"points at cell {index[_first(bad)]}, the event has {num_cells[e]} cells",
                                     tree, name, start + e)

    def check_finite(self, events: ak.Array, tree: str, start: int) -> None:
        for name in ENERGY_BRANCHES:
            if name not in ak.fields(events):
                continue
            bad = ~np.isfinite(events[name])
            while bad.ndim > 1:
                bad = ak.any(bad, axis=-1)
            bad = ak.to_numpy(bad)
            if bad.any():
                raise self.error("NaN or infinite energy", tree, name, start + _first(bad))

    def check_positions(self, cells: _Cells, tree: str, start: int) -> None:
        """Layers exist; eta and phi are finite and inside the calorimeter."""
        num_layers = self.fine.num_layers
        for name, values, bad in (
                ("cell_layer", cells.layer, (cells.layer < 0) | (cells.layer >= num_layers)),
                ("cell_eta", cells.eta, ~(np.abs(cells.eta) < ETA_MAX)),
                ("cell_phi", cells.phi, ~(np.abs(cells.phi) <= np.pi + PHI_TOLERANCE))):
            if bad.any():
                i = _first(bad)
                allowed = {"cell_layer": f"0-{num_layers - 1}", "cell_eta": f"|eta| < {ETA_MAX}",
                           "cell_phi": "|phi| <= pi"}[name]
                raise self.error(f"cell {i - cells.offsets[cells.event[i]]} has {name} = {values[i]}, outside "
                                 f"{allowed}", tree, name, start + cells.event[i])

    def check_noise_free(self, high: ak.Array, start: int) -> None:
        bad = ak.to_numpy(ak.any(high.cell_e < 0, axis=1))
        if bad.any():
            raise self.error("negative energy in the fine cells, which hold the noise-free truth",
                             self.info.high_tree, "cell_e", start + _first(bad))

    def set_factor(self, factor: int, tree: str, branch: str, event: int) -> None:
        if self.expected_factor is not None and factor != self.expected_factor:
            raise self.error(f"granularity factor {factor} (coarse cells of {factor}x{factor} cells of COCOA's "
                             f"default grid), expected {self.expected_factor}{self.where_expected}",
                             tree, branch, event)
        self.factor = factor

    def check_mapping(self, low: ak.Array, high: ak.Array | None, cells: dict, start: int) -> None:
        tree = self.info.low_tree
        pairs = ak.to_numpy(ak.num(low[LOW_TO_HIGH], axis=1))
        coarse = ak.to_numpy(ak.flatten(low[LOW_TO_HIGH])).astype(np.int64)
        fine = ak.to_numpy(ak.flatten(low[HIGH_TO_LOW])).astype(np.int64)
        event = np.repeat(np.arange(len(pairs)), pairs)
        num_coarse = _cell_counts(low)
        if num_coarse is None:  # no coarse cell branch read: coarse cells are those referenced
            num_coarse = ak.to_numpy(ak.fill_none(ak.max(low[LOW_TO_HIGH], axis=1), -1)).astype(np.int64) + 1
        bad = (coarse < 0) | (coarse >= num_coarse[event])
        if bad.any():
            raise self.error("points outside the coarse cells of its event", tree, LOW_TO_HIGH,
                             start + event[_first(bad)])
        num_fine = _cell_counts(high)
        if num_fine is not None:
            self.check_fine_cover(fine, event, pairs, num_fine, start)
        self.check_factor(coarse, event, num_coarse, start)
        if self.factor is not None and self.info.high_tree in cells and tree in cells:
            c, f = cells[tree], cells[self.info.high_tree]
            self.check_children_inside(c, f, coarse + c.offsets[event], fine + f.offsets[event], start)

    def check_fine_cover(self, fine: np.ndarray, event: np.ndarray, pairs: np.ndarray, num_fine: np.ndarray,
                         start: int) -> None:
        tree, high = self.info.low_tree, self.info.high_tree
        bad = (fine < 0) | (fine >= num_fine[event])
        if bad.any():
            raise self.error(f"points outside the fine cells of {high}", tree, HIGH_TO_LOW,
                             start + event[_first(bad)])
        bad = pairs != num_fine
        if bad.any():
            e = _first(bad)
            raise self.error(f"maps {pairs[e]} fine cells, {high} has {num_fine[e]}: every fine cell must appear "
                             "exactly once", tree, HIGH_TO_LOW, start + e)
        offsets = np.concatenate([[0], np.cumsum(num_fine)])
        times = np.bincount(fine + offsets[event], minlength=offsets[-1])
        bad = times != 1
        if bad.any():
            raise self.error("lists a fine cell more than once (and leaves another out)", tree, HIGH_TO_LOW,
                             start + int(_event_of(np.array([_first(bad)]), offsets)[0]))

    def check_factor(self, coarse: np.ndarray, event: np.ndarray, num_coarse: np.ndarray, start: int) -> None:
        offsets = np.concatenate([[0], np.cumsum(num_coarse)])
        if offsets[-1] == 0:
            return
        children = np.bincount(coarse + offsets[event], minlength=offsets[-1])
        if self.factor is None:
            # the most common count, so that the error below points at the odd coarse cells
            typical = int(np.bincount(children).argmax())
            factor = math.isqrt(typical)
            i = _first(children == typical)
            if factor < 1 or factor * factor != typical:
                raise self.error(f"{typical} fine cells under a coarse cell, not the square of an integer >= 1",
                                 self.info.low_tree, LOW_TO_HIGH, start + int(_event_of(np.array([i]), offsets)[0]))
            self.set_factor(factor, self.info.low_tree, LOW_TO_HIGH, start + int(_event_of(np.array([i]), offsets)[0]))
        bad = children != self.factor**2
        if bad.any():
            i = _first(bad)
            raise self.error(f"{children[i]} fine cells under a coarse cell where the file has {self.factor**2} "
                             f"(factor {self.factor})", self.info.low_tree, LOW_TO_HIGH,
                             start + int(_event_of(np.array([i]), offsets)[0]))

    def check_children_inside(self, coarse: _Cells, fine: _Cells, parent: np.ndarray, child: np.ndarray,
                              start: int) -> None:
        """Every fine cell lies inside the coarse cell the mapping assigns it to (``parent``, ``child``: flat
        indices of the pairs' cells)."""
        c_ieta, c_iphi = coarse.index(self.fine.coarsen(self.factor))
        f_ieta, f_iphi = fine.index(self.fine)
        f = self.factor
        bad = fine.layer[child] != coarse.layer[parent]
        bad |= (f_ieta[child] // f != c_ieta[parent]) | (f_iphi[child] // f != c_iphi[parent])
        if bad.any():
            k = _first(bad)
            i, j = child[k], parent[k]
            raise self.error(
                f"fine cell {i - fine.offsets[fine.event[i]]} (layer {fine.layer[i]}, eta {fine.eta[i]:.4f}, phi "
                f"{fine.phi[i]:.4f}) lies outside coarse cell {j - coarse.offsets[coarse.event[j]]} (layer "
                f"{coarse.layer[j]}, eta {coarse.eta[j]:.4f}, phi {coarse.phi[j]:.4f}) that {self.info.low_tree}'s "
                f"{LOW_TO_HIGH} assigns it to", self.info.high_tree, "cell_eta", start + fine.event[i])

    def check_granularity(self, cells: _Cells, start: int) -> None:
        """The granularity factor of a plain file's cells, from their positions."""
        if not len(cells.layer):
            return
        found = granularity(cells.layer, cells.eta, cells.phi, self.fine)
        votes = np.bincount(found)
        votes[0] = 0  # cells off every grid do not vote
        if self.factor is None and votes.any():
            factor = int(votes.argmax())
            self.set_factor(factor, self.info.low_tree, "cell_eta", start + cells.event[_first(found == factor)])
        bad = found != self.factor
        if bad.any():
            i = _first(bad)
            what = (f"the centre of a cell of granularity factor {found[i]}" if found[i] else
                    f"not the centre of a cell of COCOA's grid at any granularity factor {GRANULARITY_FACTORS}")
            raise self.error(f"cell {i - cells.offsets[cells.event[i]]} (layer {cells.layer[i]}, eta "
                             f"{cells.eta[i]:.5f}, phi {cells.phi[i]:.5f}) is {what}"
                             + (f"; the file's cells have factor {self.factor}" if self.factor else ""),
                             self.info.low_tree, "cell_eta", start + cells.event[i])

    def check_duplicates(self, cells: _Cells, geometry: Geometry, tree: str, start: int) -> None:
        """No two cells of an event are the same cell of ``geometry``."""
        key = cells.event * geometry.num_cells + geometry.cell_id(cells.layer, *cells.index(geometry))
        ordered = np.sort(key)  # events are the major key: the first repeat is in the first offending event
        same = np.flatnonzero(ordered[1:] == ordered[:-1])
        if len(same):
            j, i = np.flatnonzero(key == ordered[same[0]])[:2]
            e = cells.event[i]
            raise self.error(f"cells {j - cells.offsets[e]} and {i - cells.offsets[e]} are the same cell (layer "
                             f"{cells.layer[i]}, eta {cells.eta[i]:.4f}, phi {cells.phi[i]:.4f})", tree, "cell_eta",
                             start + e)


class _FileReader:
    """An open file with the branches to read from each tree."""

    def __init__(self, path: str | PathLike, low_branches, high_branches, factor: int | None = None,
                 where_factor: str = ""):
        self.file, self.info = _open(path)
        try:
            info = self.info
            # plain files have no mapping, and detector data no true particles
            optional = (*MAPPING_BRANCHES, *TRUTH_BRANCHES) if info.mode == PLAIN else ()
            self.low = _TreeReader(info.path, info.low_tree, self.file[info.low_tree],
                                   _resolve(info, info.low_tree, low_branches, optional=optional),
                                   info.nested[info.low_tree], info.types[info.low_tree])
            if not self.low.branches:
                raise ValueError(f"no branches to read from {info.low_tree} of {info.path}")
            self.high = None
            if info.high_tree is not None and high_branches is not None:
                self.high = _TreeReader(info.path, info.high_tree, self.file[info.high_tree],
                                        _resolve(info, info.high_tree, high_branches), info.nested[info.high_tree],
                                        info.types[info.high_tree])
                if not self.high.branches:
                    self.high = None
        except Exception:
            self.file.close()
            raise
        self.validator = _Validator(self.info, factor, where_factor)

    def read(self, start: int, stop: int, global_start: int) -> CocoaChunk:
        low = self.low.read(start, stop)
        high = self.high.read(start, stop) if self.high is not None else None
        self.validator.check(low, high, start)
        return CocoaChunk(self.info.path, low, high, start, global_start, self.validator.factor)

    def close(self) -> None:
        self.file.close()


def _as_paths(paths: PathLikes) -> list[Path]:
    return [Path(paths)] if isinstance(paths, (str, PathLike)) else [Path(p) for p in paths]


def iter_cocoa(paths: PathLikes, *, low_branches: Sequence[str] | str = GRAPH_BRANCHES_LOW,
               high_branches: Sequence[str] | str | None = None, step_size: int = DEFAULT_STEP_SIZE,
               entry_start: int | None = None, entry_stop: int | None = None,
               max_events: int | None = None, factor: int | None = None) -> Iterator[CocoaChunk]:
    """Stream validated chunks of events from COCOA files; only the current chunk is held in memory.

    Only the requested branches are read (plus the counters uproot needs). Both trees of a super-resolution file
    are read over the same entry range, so ``chunk.low[i]`` and ``chunk.high[i]`` are the same event.

    Args:
        paths: one file or several, read in order.
        low_branches: branches of ``Low_Tree`` (``Out_Tree`` for plain files), or ``"all"``. The mapping
            branches are skipped for plain files, which have none, and so are the particle branches of
            :data:`TRUTH_BRANCHES` (detector data have no true particles).
        high_branches: branches of ``High_Tree``, ``"all"``, or None to read none (plain files never have any).
        step_size: events per chunk (a chunk never spans two files).
        entry_start, entry_stop: range of events to read, counted over all files in order.
        max_events: read at most this many events of each file.
        factor: the granularity factor every file must have (:attr:`CocoaChunk.factor`); default: the first
            file's, so that the files of one iteration share it.

    Yields:
        :class:`CocoaChunk`.

    Raises:
        FileNotFoundError: a file is missing.
        CocoaFormatError: a file, tree, branch or event is malformed (see the module docstring), or a file's
            granularity factor differs from ``factor``.
    """
    if step_size < 1:
        raise ValueError(f"step_size must be >= 1, got {step_size}")
    first = 0  # global index of the current file's first event
    where_factor = ""
    for path in _as_paths(paths):
        reader = _FileReader(path, low_branches, high_branches, factor, where_factor)
        try:
            n = reader.info.num_events
            start = max(0, (entry_start or 0) - first)
            stop = n if entry_stop is None else min(n, max(0, entry_stop - first))
            if max_events is not None:
                stop = min(stop, start + max_events)
            for a in range(start, stop, step_size):
                yield reader.read(a, min(a + step_size, stop), first + a)
        finally:
            reader.close()
        if factor is None and reader.validator.factor is not None:
            factor, where_factor = reader.validator.factor, f" (the factor of {path}, read before)"
        first += n
        if entry_stop is not None and first >= entry_stop:
            return


def read_cocoa(path: str | PathLike, *, low_branches: Sequence[str] | str = ALL_BRANCHES,
               high_branches: Sequence[str] | str | None = ALL_BRANCHES, entry_start: int = 0,
               entry_stop: int | None = None) -> dict[str, ak.Array]:
    """Read (and validate) a whole COCOA file into memory, as the ``trees`` dict :func:`write_cocoa` takes.

    Args:
        path: the file.
        low_branches, high_branches: as :func:`iter_cocoa`; default every branch.
        entry_start, entry_stop: range of events.

    Returns:
        ``{"Low_Tree": ..., "High_Tree": ...}`` or ``{"Out_Tree": ...}`` (``High_Tree`` left out when
        ``high_branches`` is None), each ``[num_events]`` records.
    """
    reader = _FileReader(path, low_branches, high_branches)
    try:
        stop = reader.info.num_events if entry_stop is None else min(entry_stop, reader.info.num_events)
        chunk = reader.read(entry_start, max(entry_start, stop), entry_start)
    finally:
        reader.close()
    trees = {reader.info.low_tree: chunk.low}
    if chunk.high is not None:
        trees[reader.info.high_tree] = chunk.high
    return trees


def _differing_events(a: ak.Array, b: ak.Array) -> np.ndarray:
    """``[len(a)]`` bool: entries whose nested lists or values differ (NaN equals NaN)."""
    if a.ndim == 1:
        x, y = ak.to_numpy(a), ak.to_numpy(b)
        same = x == y
        if np.issubdtype(x.dtype, np.floating):
            same |= np.isnan(x) & np.isnan(y)
        return ~same
    counts_a, counts_b = ak.to_numpy(ak.num(a, axis=1)), ak.to_numpy(ak.num(b, axis=1))
    differs = counts_a != counts_b
    same = np.flatnonzero(~differs)
    inner = _differing_events(ak.flatten(a[same], axis=1), ak.flatten(b[same], axis=1))
    owner = np.repeat(np.arange(len(same)), counts_a[same])
    differs[same] = np.bincount(owner[inner], minlength=len(same)) > 0
    return differs


def compare_trees(expected: Mapping[str, ak.Array], actual: Mapping[str, ak.Array]) -> list[str]:
    """Differences between two sets of trees, field by field: types must match and values be exactly equal.

    Returns:
        One line per difference naming the tree, field and first differing event; empty when identical.
    """
    if set(expected) != set(actual):
        return [f"trees {sorted(expected)} != {sorted(actual)}"]
    problems = []
    for tree, events in expected.items():
        other = actual[tree]
        if len(events) != len(other):
            problems.append(f"{tree}: {len(events)} events != {len(other)}")
            continue
        if set(ak.fields(events)) != set(ak.fields(other)):
            problems.append(f"{tree}: fields {sorted(ak.fields(events))} != {sorted(ak.fields(other))}")
            continue
        for name in ak.fields(events):
            a, b = events[name], other[name]
            if str(a.type.content) != str(b.type.content):
                problems.append(f"{tree}.{name}: type {a.type.content} != {b.type.content}")
                continue
            differs = _differing_events(a, b)
            if differs.any():
                problems.append(f"{tree}.{name}: {int(differs.sum())} events differ, first {_first(differs)}")
    return problems


def check_roundtrip(path: str | PathLike, trees: Mapping[str, ak.Array], *, overwrite: bool = False,
                    **write_options) -> dict[str, ak.Array]:
    """Write ``trees`` to ``path``, read the file back and check it holds exactly the same events.

    Args:
        path: file to write.
        trees: as :func:`~graphsr.io.writer.write_cocoa`.
        overwrite, write_options: passed to :func:`~graphsr.io.writer.write_cocoa`.

    Returns:
        The trees read back.

    Raises:
        AssertionError: listing every field that differs.
    """
    write_cocoa(path, trees, overwrite=overwrite, **write_options)
    back = read_cocoa(path)
    problems = compare_trees(trees, back)
    if problems:
        raise AssertionError(f"{path} does not round-trip:\n  " + "\n  ".join(problems))
    return back
