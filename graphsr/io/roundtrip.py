"""Round-trip checks: write trees, read them back, and name what differs.
"""

from __future__ import annotations

from collections.abc import Mapping
from os import PathLike

import awkward as ak
import numpy as np

from graphsr.io.inspect import _first
from graphsr.io.reader import read_cocoa
from graphsr.io.writer import write_cocoa


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
