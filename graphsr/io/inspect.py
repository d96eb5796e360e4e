"""What a COCOA ROOT file holds, without reading its events: its mode (super-resolution or plain), trees,
events, branches and their types, checked against COCOA's (:data:`~graphsr.io.branches.COCOA_TYPES`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path

import numpy as np
import uproot

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
