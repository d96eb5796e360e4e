"""Validation of chunks of COCOA events, with whole-chunk numpy passes (no loop over events); the checks are
listed in :mod:`graphsr.io.reader`.
"""

from __future__ import annotations

import math

import awkward as ak
import numpy as np

from graphsr.detector.geometry import ETA_MAX, Geometry
from graphsr.io.errors import CocoaFormatError
from graphsr.io.inspect import ENERGY_BRANCHES, HIGH_TO_LOW, LOW_TO_HIGH, PLAIN, CocoaFile, _event_of, _first
from graphsr.io.writer import counter_name


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
