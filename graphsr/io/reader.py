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

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path

import awkward as ak
import numpy as np

from graphsr.io.branches import COCOA_TYPES
from graphsr.io.errors import CocoaFormatError
# what a file holds, and the branch sets: importable from here too
from graphsr.io.inspect import (ALL_BRANCHES, DEFAULT_STEP_SIZE, ENERGY_BRANCHES, GRAPH_BRANCHES_HIGH,  # noqa: F401
                                GRAPH_BRANCHES_LOW, HIGH_TO_LOW, INTEGERS, LOW_TO_HIGH, PLAIN, SUPER_RESOLUTION,
                                TRUTH_BRANCHES, CocoaFile, PathLikes, _first, _open, _split_type, _type_problem,
                                _wrap_read_error, open_cocoa)
from graphsr.io.validation import _Validator
from graphsr.io.writer import COUNTS_SUFFIX, FLAT_SUFFIX, MAPPING_BRANCHES


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
