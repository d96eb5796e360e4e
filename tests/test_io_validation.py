"""Malformed COCOA files raise CocoaFormatError naming the file, tree, branch and first offending event."""

from __future__ import annotations

import awkward as ak
import numpy as np
import pytest
import uproot
from conftest import make_toy_events
from test_io_writer import cocoa_events, write_raw

from graphsr.cli import main
from graphsr.datasets import CocoaDataset
from graphsr.io import (
    GRAPH_BRANCHES_HIGH,
    GRAPH_BRANCHES_LOW,
    CocoaFormatError,
    iter_cocoa,
    open_cocoa,
    read_cocoa,
    write_cocoa,
)
from graphsr.io.writer import to_branches

LOW_TO_HIGH, HIGH_TO_LOW = "low_cell_to_high_cell_edge", "high_cell_to_low_cell_edge"
SR_BRANCHES = dict(low_branches=["cell_e", LOW_TO_HIGH, HIGH_TO_LOW], high_branches=["cell_e"])


def replace_event(events: ak.Array, name: str, event: int, values) -> ak.Array:
    """``events`` with field ``name`` of one event replaced (dtype kept)."""
    column = events[name]
    lists = ak.to_list(column)
    lists[event] = list(values)
    dtype = ak.to_numpy(ak.flatten(column, axis=None)).dtype
    return ak.with_field(events, ak.values_astype(ak.Array(lists), dtype), name)


def read_all(path, **branches):
    return list(iter_cocoa(path, **(branches or SR_BRANCHES), step_size=2))


def expect_error(path, tree, branch, event, match, **branches):
    with pytest.raises(CocoaFormatError, match=match) as error:
        read_all(path, **branches)
    found = error.value
    assert (found.file, found.tree, found.branch, found.event) == (str(path), tree, branch, event)
    # the message names every location on its own
    for part in (str(path), tree, branch, f"event {event}"):
        assert part is None or part in str(found)
    return found


def test_message_names_everything():
    error = CocoaFormatError("bad", file="a.root", tree="Low_Tree", branch="cell_e", event=7)
    assert str(error) == "file a.root, tree 'Low_Tree', branch 'cell_e', event 7: bad"
    assert isinstance(error, ValueError) and str(CocoaFormatError("bad", file="a.root")) == "file a.root: bad"


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.root"):
        open_cocoa(tmp_path / "nowhere.root")
    with pytest.raises(FileNotFoundError, match="nowhere.root"):
        next(iter_cocoa([tmp_path / "nowhere.root"]))


def test_not_a_root_file(tmp_path):
    path = tmp_path / "notes.root"
    path.write_text("these are not the events you are looking for\n" * 10)
    with pytest.raises(CocoaFormatError, match="not a readable ROOT file") as error:
        open_cocoa(path)
    assert error.value.file == str(path)


@pytest.mark.parametrize("keep", [0.3, 0.9, 0.999])
def test_truncated_file(tmp_path, keep):
    path = write_cocoa(tmp_path / "sr.root", cocoa_events(20))
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])
    with pytest.raises(CocoaFormatError, match="truncated|not a readable") as error:
        read_cocoa(path)
    assert error.value.file == str(path)


def test_corrupt_basket_is_a_format_error(tmp_path):
    path = write_cocoa(tmp_path / "sr.root", cocoa_events(20))
    with uproot.open(path) as file:
        seek = int(file["High_Tree"]["cell_e"].member("fBasketSeek")[0])
    data = bytearray(path.read_bytes())
    data[seek + 80:seek + 120] = b"\xff" * 40  # inside the compressed payload of the first basket
    path.write_bytes(bytes(data))
    with pytest.raises(CocoaFormatError, match="truncated or corrupt") as error:
        read_cocoa(path)
    assert error.value.tree == "High_Tree"


def test_missing_tree(tmp_path):
    trees = cocoa_events(3)
    path = write_raw(tmp_path / "low_only.root", {"Low_Tree": {"cell_e": trees["Low_Tree"].cell_e}})
    with pytest.raises(CocoaFormatError, match="missing") as error:
        open_cocoa(path)
    assert error.value.tree == "High_Tree"
    path = write_raw(tmp_path / "other.root", {"Events": {"cell_e": trees["Low_Tree"].cell_e}})
    with pytest.raises(CocoaFormatError, match="Events") as error:
        open_cocoa(path)
    assert error.value.tree == "Out_Tree"


def test_missing_branch(tmp_path):
    path = write_cocoa(tmp_path / "sr.root", cocoa_events(3))
    with pytest.raises(CocoaFormatError, match="missing") as error:
        read_all(path, low_branches=["cell_e"], high_branches=["cell_e", "cell_weight"])
    assert (error.value.tree, error.value.branch) == ("High_Tree", "cell_weight")
    # the mapping is required from super-resolution files (only plain files may lack it)
    trees = cocoa_events(3)
    low = trees["Low_Tree"]
    write_cocoa(tmp_path / "nomap.root", {"Low_Tree": low[[f for f in low.fields if "high_cell" not in f]],
                                          "High_Tree": trees["High_Tree"]})
    with pytest.raises(CocoaFormatError, match="missing") as error:
        read_all(tmp_path / "nomap.root", high_branches=GRAPH_BRANCHES_HIGH)
    assert (error.value.tree, error.value.branch) == ("Low_Tree", LOW_TO_HIGH)


def test_event_counts_differ(tmp_path):
    trees = cocoa_events(4)
    path = write_raw(tmp_path / "sr.root", {"Low_Tree": {"cell_e": trees["Low_Tree"].cell_e},
                                            "High_Tree": {"cell_e": trees["High_Tree"].cell_e[:3]}})
    with pytest.raises(CocoaFormatError, match="different numbers of events") as error:
        open_cocoa(path)
    assert error.value.file == str(path)


def test_fine_cell_listed_twice(tmp_path):
    trees = cocoa_events(5)
    mapping = ak.to_numpy(trees["Low_Tree"][HIGH_TO_LOW][3]).copy()
    mapping[1] = mapping[0]  # one fine cell twice, another never
    trees["Low_Tree"] = replace_event(trees["Low_Tree"], HIGH_TO_LOW, 3, mapping)
    path = write_cocoa(tmp_path / "sr.root", trees)
    expect_error(path, "Low_Tree", HIGH_TO_LOW, 3, "more than once")


def test_fine_cells_missing_from_mapping(tmp_path):
    trees = cocoa_events(5)
    for name in (LOW_TO_HIGH, HIGH_TO_LOW):  # drop the last pair of event 2, keeping the arrays parallel
        trees["Low_Tree"] = replace_event(trees["Low_Tree"], name, 2, ak.to_list(trees["Low_Tree"][name][2])[:-1])
    path = write_cocoa(tmp_path / "sr.root", trees)
    expect_error(path, "Low_Tree", HIGH_TO_LOW, 2, "exactly once")


def test_mapping_points_outside_the_cells(tmp_path):
    trees = cocoa_events(5)
    low = trees["Low_Tree"]
    num_coarse = len(low.cell_e[4])
    coarse = replace_event(low, LOW_TO_HIGH, 4, [num_coarse] + ak.to_list(low[LOW_TO_HIGH][4])[1:])
    path = write_cocoa(tmp_path / "coarse.root", {"Low_Tree": coarse, "High_Tree": trees["High_Tree"]})
    expect_error(path, "Low_Tree", LOW_TO_HIGH, 4, "outside the coarse cells")
    num_fine = len(trees["High_Tree"].cell_e[2])
    fine = replace_event(low, HIGH_TO_LOW, 2, [-1] + ak.to_list(low[HIGH_TO_LOW][2])[1:])
    path = write_cocoa(tmp_path / "fine.root", {"Low_Tree": fine, "High_Tree": trees["High_Tree"]})
    expect_error(path, "Low_Tree", HIGH_TO_LOW, 2, "outside the fine cells")
    fine = replace_event(low, HIGH_TO_LOW, 2, [num_fine] + ak.to_list(low[HIGH_TO_LOW][2])[1:])
    path = write_cocoa(tmp_path / "fine2.root", {"Low_Tree": fine, "High_Tree": trees["High_Tree"]})
    expect_error(path, "Low_Tree", HIGH_TO_LOW, 2, "outside the fine cells")


def test_parallel_mapping_arrays_of_different_length(tmp_path):
    trees = cocoa_events(5)
    low = trees["Low_Tree"]
    shorter = replace_event(low, HIGH_TO_LOW, 3, ak.to_list(low[HIGH_TO_LOW][3])[:-1])
    branches = {name: shorter[name] for name in ("cell_e", LOW_TO_HIGH, HIGH_TO_LOW)}
    path = write_raw(tmp_path / "sr.root", {"Low_Tree": branches, "High_Tree": {"cell_e": trees["High_Tree"].cell_e}})
    expect_error(path, "Low_Tree", HIGH_TO_LOW, 3, "length differs")
    # graphsr's writer refuses to write such a file in the first place
    with pytest.raises(CocoaFormatError, match="nlow_high_cell_edge"):
        write_cocoa(tmp_path / "refused.root", {"Low_Tree": shorter, "High_Tree": trees["High_Tree"]})


@pytest.mark.parametrize("tree, branch, event, value", [
    ("High_Tree", "cell_e", 3, np.nan),
    ("Low_Tree", "cell_e", 2, np.inf),
    ("Low_Tree", "particle_e", 4, -np.inf),
])
def test_non_finite_energy(tmp_path, tree, branch, event, value):
    trees = cocoa_events(5, seed=3)
    values = ak.to_list(trees[tree][branch][event])
    assert values, "the chosen event must have entries"
    trees[tree] = replace_event(trees[tree], branch, event, [*values[:-1], value])
    path = write_cocoa(tmp_path / "sr.root", trees)
    expect_error(path, tree, branch, event, "NaN or infinite", low_branches=["cell_e", "particle_e"],
                 high_branches=["cell_e"])


def test_non_finite_energy_in_nested_branch(tmp_path):
    trees = cocoa_events(5, seed=3)
    low = trees["Low_Tree"]
    nested = ak.to_list(low.cell_parent_energy)
    event = next(e for e in range(5) if any(len(x) for x in nested[e]))
    cell = next(i for i, x in enumerate(nested[event]) if len(x))
    nested[event][cell][0] = float("nan")
    trees["Low_Tree"] = ak.with_field(low, ak.values_astype(ak.Array(nested), np.float32), "cell_parent_energy")
    path = write_cocoa(tmp_path / "sr.root", trees)
    expect_error(path, "Low_Tree", "cell_parent_energy", event, "NaN", low_branches=["cell_parent_energy"],
                 high_branches=None)


@pytest.mark.parametrize("factor", [1, 2, 4])
def test_factor_is_inferred(tmp_path, factor):
    path = write_cocoa(tmp_path / "sr.root", cocoa_events(4, factor=factor))
    assert {chunk.factor for chunk in read_all(path)} == {factor}


def test_children_not_a_square(tmp_path):
    trees = cocoa_events(5)
    low = trees["Low_Tree"]
    # every coarse cell with 3 children: regroup event 0's pairs as (3, 3, ...) over fewer coarse cells
    pairs = len(low[LOW_TO_HIGH][0])
    low = replace_event(low, LOW_TO_HIGH, 0, np.arange(pairs) // 3)
    for e in range(2, 5):
        low = replace_event(low, LOW_TO_HIGH, e, np.arange(len(low[LOW_TO_HIGH][e])) // 3)
    path = write_raw(tmp_path / "sr.root", {
        "Low_Tree": {name: low[name] for name in ("cell_e", LOW_TO_HIGH, HIGH_TO_LOW)},
        "High_Tree": {"cell_e": trees["High_Tree"].cell_e}})
    found = expect_error(path, "Low_Tree", LOW_TO_HIGH, 0, "not the square", low_branches=[LOW_TO_HIGH, HIGH_TO_LOW])
    assert "3 fine cells" in str(found)


def test_factor_changes_within_a_file(tmp_path):
    two, three = cocoa_events(3, factor=2, seed=1, empty=()), cocoa_events(3, factor=4, seed=2, empty=())
    trees = {name: ak.concatenate([two[name], three[name]]) for name in two}
    path = write_cocoa(tmp_path / "sr.root", trees)
    expect_error(path, "Low_Tree", LOW_TO_HIGH, 3, "where the file has 4")  # across chunks
    with pytest.raises(CocoaFormatError, match="where the file has") as error:
        list(iter_cocoa(path, **SR_BRANCHES, step_size=6))  # within one chunk
    assert error.value.event in (0, 3)


def test_uneven_children_in_one_event(tmp_path):
    trees = cocoa_events(5)
    low = trees["Low_Tree"]
    event = next(e for e in range(5) if len(low.cell_e[e]) >= 2)
    mapping = ak.to_numpy(low[LOW_TO_HIGH][event]).copy()
    mapping[0] = 1  # coarse cell 0 now has 3 children, coarse cell 1 has 5
    trees["Low_Tree"] = replace_event(low, LOW_TO_HIGH, event, mapping)
    path = write_cocoa(tmp_path / "sr.root", trees)
    expect_error(path, "Low_Tree", LOW_TO_HIGH, event, "fine cells under a coarse cell")


def test_empty_events(tmp_path):
    path = write_cocoa(tmp_path / "empty.root", cocoa_events(4, empty=range(4)))
    chunks = read_all(path, low_branches="all", high_branches="all")
    assert sum(len(c) for c in chunks) == 4 and all(c.factor is None for c in chunks)
    assert ak.sum(ak.num(chunks[0].low.cell_e)) == 0
    # a file with no events at all
    path = write_cocoa(tmp_path / "none.root", {name: events[:0] for name, events in cocoa_events(2).items()})
    assert open_cocoa(path).num_events == 0 and read_all(path) == []
    assert len(read_cocoa(path)["High_Tree"]) == 0


@pytest.mark.parametrize("negative", [False, True])
def test_flattened_counts_inconsistent(tmp_path, negative):
    trees = cocoa_events(4)
    low = trees["Low_Tree"]
    counts = ak.values_astype(ak.num(low.cell_parent_energy, axis=2), np.int32)
    flat = ak.flatten(low.cell_parent_energy, axis=2)
    event = next(e for e in range(4) if len(counts[e]) >= 2)
    wrong = ak.to_list(counts[event])
    if negative:  # same sum, but an impossible length
        wrong[0], wrong[1] = -1, wrong[1] + wrong[0] + 1
    else:
        wrong[-1] += 1
    bad = replace_event(ak.zip({"c": counts}, depth_limit=1), "c", event, wrong).c
    path = write_raw(tmp_path / "sr.root", {
        "Low_Tree": {"cell_e": low.cell_e, "cell_parent_energy_flat": flat, "cell_parent_energy_counts": bad},
        "High_Tree": {"cell_e": trees["High_Tree"].cell_e}})
    assert open_cocoa(path).nested["Low_Tree"] == {"cell_parent_energy": "flattened"}
    expect_error(path, "Low_Tree", "cell_parent_energy", event, "negative or does not sum",
                 low_branches="cell_parent_energy", high_branches=None)


# ------------------------------------------------------------------------ branch types and nesting
def write_changed(path, tree: str, replace: dict, num_events: int = 4):
    """A file of :func:`cocoa_events` laid out as COCOA does, with branches of ``tree`` replaced (None: removed)."""
    trees = cocoa_events(num_events)
    raw = {name: to_branches(events) for name, events in trees.items()}
    for name, values in replace.items():
        raw[tree].pop(name, None)
        if values is not None:
            raw[tree][name] = values
    return write_raw(path, raw), trees


def expect_type_error(path, tree, branch, match, **branches):
    """Refused before any event is read: the error names the file, tree and branch, and no event."""
    with pytest.raises(CocoaFormatError, match=match) as error:
        read_all(path, **branches)
    found = error.value
    assert (found.file, found.tree, found.branch, found.event) == (str(path), tree, branch, None)
    assert str(found).startswith(f"file {path}, tree {tree!r}, branch {branch!r}: ")
    return found


def test_other_widths_of_numbers_are_read_in_cocoas_types(tmp_path):
    trees = cocoa_events(4)
    low, high = trees["Low_Tree"], trees["High_Tree"]
    wide_high, _ = write_changed(tmp_path / "high.root", "High_Tree", {
        "cell_e": ak.values_astype(high.cell_e, np.float64) * (1 + 1e-12)})  # below float32's resolution
    wide_low, _ = write_changed(tmp_path / "low.root", "Low_Tree", {
        "cell_layer": ak.values_astype(low.cell_layer, np.int64),
        "cell_eta": ak.values_astype(low.cell_eta, np.float64),
        "cell_parent_energy_flat": ak.values_astype(ak.flatten(low.cell_parent_energy, axis=2), np.float64)})
    assert open_cocoa(wide_high).types["High_Tree"]["cell_e"] == "var * float64"
    assert open_cocoa(wide_low).types["Low_Tree"]["cell_parent_energy"] == "var * var * float64"
    for path, tree, names in ((wide_high, "High_Tree", ["cell_e"]),
                              (wide_low, "Low_Tree", ["cell_layer", "cell_eta", "cell_parent_energy"])):
        back = read_cocoa(path)[tree]
        for name in names:  # COCOA's types, and the values of the original float32 / int32 events
            assert str(back[name].type.content) == str(trees[tree][name].type.content), name
            assert ak.array_equal(back[name], trees[tree][name]), name


def test_an_integer_that_does_not_fit_cocoas_type(tmp_path):
    layer = ak.to_list(cocoa_events(4)["Low_Tree"].cell_layer)
    layer[2][0] += 2**32  # the same layer modulo 2^32: a cast without a check would take it
    path, _ = write_changed(tmp_path / "big.root", "Low_Tree",
                            {"cell_layer": ak.values_astype(ak.Array(layer), np.int64)})
    expect_error(path, "Low_Tree", "cell_layer", 2, "does not fit COCOA's type int32", **GRAPH)


def as_int32(array):
    return ak.values_astype(array, np.int32)


FLOAT_VECTOR, INT_VECTOR = r"var \* float32 \(vector<float>\)", r"var \* int32 \(vector<int>\)"
NESTED = r"var \* var \* float32 \(vector<vector<float>>\)"


@pytest.mark.parametrize("tree,branch,replace,match", [
    # one number per event where COCOA writes one per cell
    ("High_Tree", "cell_e", lambda e: {"cell_e": ak.Array(np.ones(4, np.float32))},
     f"holds one float32 per event where COCOA's {FLOAT_VECTOR} holds one entry per cell"),
    # no numbers, and numbers that need not be whole where COCOA writes integers
    ("Low_Tree", "cell_e", lambda e: {"cell_e": e.cell_e > 100},
     f"holds bool values where COCOA's {FLOAT_VECTOR} holds float32: not numbers"),
    ("Low_Tree", "cell_layer", lambda e: {"cell_layer": ak.values_astype(e.cell_layer, np.float32) + 0.5},
     f"holds float32 values where COCOA's {INT_VECTOR} holds int32: not whole numbers"),
    # one level of nesting too many: vector<vector<float>> for COCOA's vector<float> (in graphsr's flattened form)
    ("Low_Tree", "cell_e", lambda e: {"cell_e": None, "cell_e_flat": e.cell_e,
                                      "cell_e_counts": as_int32(ak.ones_like(e.cell_e))},
     f"is {NESTED}: 1 level of nesting more than COCOA's {FLOAT_VECTOR}"),
    # one too few: vector<float> for COCOA's vector<vector<float>>
    ("Low_Tree", "cell_parent_energy", lambda e: {
        "cell_parent_energy_flat": None, "cell_parent_energy_counts": None,
        "cell_parent_energy": ak.flatten(e.cell_parent_energy, axis=2)},
     f"is {FLOAT_VECTOR}: 1 level of nesting less than COCOA's {NESTED}"),
    ("Low_Tree", "cell_parent_energy", lambda e: {
        "cell_parent_energy_counts": ak.values_astype(ak.num(e.cell_parent_energy, axis=2), np.float32)},
     r"cell_parent_energy_counts is var \* float32, not a list of integers"),
])
def test_branches_of_another_type_or_nesting_are_refused(tmp_path, tree, branch, replace, match):
    path, _ = write_changed(tmp_path / "odd.root", tree, replace(cocoa_events(4)[tree]))
    expect_type_error(path, tree, branch, match, low_branches="all", high_branches="all")
    with pytest.raises(CocoaFormatError, match=match):
        read_cocoa(path)
    # refused where it is read: the other tree's branches, or the other branches of its tree, read as before
    other = (dict(low_branches=["cell_layer"], high_branches=None) if tree == "High_Tree" else
             dict(low_branches=["particle_e"], high_branches=["cell_e"]))
    assert sum(len(chunk) for chunk in read_all(path, **other)) == 4


# ------------------------------------------------------------------------ cells: lengths, positions, granularity
GRAPH = dict(low_branches=GRAPH_BRANCHES_LOW, high_branches=GRAPH_BRANCHES_HIGH)


def test_per_cell_branches_of_different_lengths(tmp_path):
    """COCOA writes every branch as its own vector: nothing but the reader stops cell_eta being one short."""
    trees = cocoa_events(5)
    low = replace_event(trees["Low_Tree"], "cell_eta", 3, ak.to_list(trees["Low_Tree"].cell_eta[3])[:-1])
    path = write_raw(tmp_path / "sr.root", {"Low_Tree": to_branches(low), "High_Tree": to_branches(trees["High_Tree"])})
    found = expect_error(path, "Low_Tree", "cell_eta", 3, "length differs", **GRAPH)
    assert "one entry per cell" in str(found)
    high = replace_event(trees["High_Tree"], "cell_e", 2, ak.to_list(trees["High_Tree"].cell_e[2]) + [1.0])
    path = write_raw(tmp_path / "sr2.root", {"Low_Tree": to_branches(trees["Low_Tree"]),
                                             "High_Tree": to_branches(high)})
    expect_error(path, "High_Tree", "cell_e", 2, "length differs", **GRAPH)


def test_per_particle_branches_of_different_lengths(tmp_path):
    trees = cocoa_events(5, seed=3)
    low = trees["Low_Tree"]
    event = next(e for e in range(5) if len(low.particle_e[e]))
    low = replace_event(low, "particle_phi", event, ak.to_list(low.particle_phi[event])[1:])
    path = write_raw(tmp_path / "sr.root", {"Low_Tree": to_branches(low), "High_Tree": to_branches(trees["High_Tree"])})
    expect_error(path, "Low_Tree", "particle_phi", event, "one entry per particle", **GRAPH)


@pytest.mark.parametrize("tree, branch, value, match", [
    ("Low_Tree", "cell_eta", np.nan, "cell_eta = nan"),
    ("Low_Tree", "cell_eta", 3.2, "outside |eta| < 3"),
    ("High_Tree", "cell_eta", -3.5, "outside |eta| < 3"),
    ("Low_Tree", "cell_phi", 4.0, "outside |phi| <= pi"),
    ("High_Tree", "cell_phi", np.inf, "cell_phi = inf"),
    ("Low_Tree", "cell_layer", 6, "outside 0-5"),
    ("High_Tree", "cell_layer", -1, "outside 0-5"),
])
def test_cell_positions_out_of_range(tmp_path, tree, branch, value, match):
    trees = cocoa_events(5)
    values = ak.to_list(trees[tree][branch][2])
    trees[tree] = replace_event(trees[tree], branch, 2, [*values[:-1], value])
    path = write_cocoa(tmp_path / "sr.root", trees)
    expect_error(path, tree, branch, 2, match, **GRAPH)


def test_fine_cell_outside_its_coarse_cell(tmp_path):
    trees = cocoa_events(5)
    high = trees["High_Tree"]
    eta = ak.to_numpy(high.cell_eta[4]).copy()
    eta[0] += 2 * 6 / 256  # two fine cells along eta: inside the next coarse cell (factor 2)
    trees["High_Tree"] = replace_event(high, "cell_eta", 4, eta)
    path = write_cocoa(tmp_path / "sr.root", trees)
    found = expect_error(path, "High_Tree", "cell_eta", 4, "lies outside coarse cell", **GRAPH)
    assert "fine cell 0 " in str(found)


def test_negative_energy_in_the_fine_truth(tmp_path):
    trees = cocoa_events(5)
    energy = ak.to_numpy(trees["High_Tree"].cell_e[3]).copy()
    energy[1] = -20.0
    trees["High_Tree"] = replace_event(trees["High_Tree"], "cell_e", 3, energy)
    path = write_cocoa(tmp_path / "sr.root", trees)
    expect_error(path, "High_Tree", "cell_e", 3, "negative energy", **GRAPH)
    # fine cells graphsr generated (a super-resolved ensemble mean) are no truth: negative values are allowed
    path = write_cocoa(tmp_path / "generated.root", trees, provenance={"generated_trees": ["High_Tree"]})
    assert open_cocoa(path).generated_trees == ("High_Tree",) and len(read_all(path, **GRAPH)) == 3


def test_two_coarse_cells_at_the_same_place(tmp_path):
    low, high = make_toy_events([[(0, 60, 0), (1, 60, 4)], [(0, 60, 2), (1, 60, 5), (0, 60, 2)]])
    path = write_cocoa(tmp_path / "sr.root", {"Low_Tree": low, "High_Tree": high})
    found = expect_error(path, "Low_Tree", "cell_eta", 1, "same cell", **GRAPH)
    assert "cells 0 and 2" in str(found)


def test_two_fine_cells_at_the_same_place(tmp_path):
    low, high = make_toy_events([[(0, 60, 0), (1, 60, 4)], [(0, 60, 2)]])
    # a fine cell moved onto its sibling: still inside its parent, but the same cell twice
    sibling = {name: ak.to_list(high[name][1]) for name in ("cell_eta", "cell_phi")}
    for name in sibling:
        sibling[name][1] = sibling[name][0]
        high = replace_event(high, name, 1, sibling[name])
    path = write_cocoa(tmp_path / "sr.root", {"Low_Tree": low, "High_Tree": high})
    expect_error(path, "High_Tree", "cell_eta", 1, "same cell", **GRAPH)


def plain_file(path, events: ak.Array, fields=("cell_layer", "cell_eta", "cell_phi", "cell_e")):
    """An ``Out_Tree`` of the given cell branches only, as detector data would have."""
    return write_cocoa(path, {"Out_Tree": events[list(fields)]})


@pytest.mark.parametrize("factor", [1, 2, 4])
def test_plain_file_granularity_is_read_off_the_positions(tmp_path, factor):
    low, high = make_toy_events([[(0, 30, 0), (1, 30, 3), (3, 7, 7)], [], [(2, 5, 5)]], factor=factor)
    path = plain_file(tmp_path / "plain.root", low)
    assert {chunk.factor for chunk in read_all(path, **GRAPH)} == {factor}
    # COCOA's default (fine) grid is factor 1
    assert {c.factor for c in read_all(plain_file(tmp_path / "fine.root", high), **GRAPH)} == {1}


def test_plain_file_at_another_granularity_than_expected(tmp_path):
    _, high = make_toy_events([[], [(0, 30, 0), (1, 30, 3)]], factor=2)
    path = plain_file(tmp_path / "fine.root", high)  # COCOA's default granularity, fed to a 2x model
    with pytest.raises(CocoaFormatError, match="granularity factor 1 .*expected 2") as error:
        list(iter_cocoa(path, **GRAPH, factor=2))
    assert (error.value.tree, error.value.branch, error.value.event) == ("Out_Tree", "cell_eta", 1)


def test_plain_file_with_cells_of_two_granularities(tmp_path):
    two, _ = make_toy_events([[(0, 30, 0)], [(1, 30, 3)]], factor=2)
    four, _ = make_toy_events([[(0, 10, 0)], [(1, 10, 3)], [(1, 12, 3)]], factor=4)
    path = plain_file(tmp_path / "mixed.root", ak.concatenate([two[list(GRAPH_BRANCHES_HIGH)],
                                                                four[list(GRAPH_BRANCHES_HIGH)]]))
    found = expect_error(path, "Out_Tree", "cell_eta", 2, "granularity factor 4", **GRAPH)
    assert "the file's cells have factor 2" in str(found)
    off_grid = replace_event(two, "cell_eta", 1, [0.123])
    expect_error(plain_file(tmp_path / "off.root", off_grid), "Out_Tree", "cell_eta", 1, "not the centre", **GRAPH)


def test_files_with_different_factors_in_one_dataset(tmp_path):
    paths = [write_cocoa(tmp_path / f"x{f}.root", cocoa_events(3, factor=f, seed=f)) for f in (2, 4)]
    with pytest.raises(CocoaFormatError, match=f"granularity factor 4 .*expected 2 .*{paths[0]}") as error:
        list(iter_cocoa(paths, **GRAPH))
    assert error.value.file == str(paths[1])
    plain = [plain_file(tmp_path / f"p{f}.root", make_toy_events([[(0, 8, 8)]], factor=f)[0]) for f in (4, 2)]
    with pytest.raises(CocoaFormatError, match="granularity factor 2 .*expected 4"):
        CocoaDataset(plain, root=tmp_path / "cache", log=False)


def test_summary_command_names_the_bad_event(tmp_path, capsys):
    trees = cocoa_events(5)
    trees["Low_Tree"] = replace_event(trees["Low_Tree"], "cell_layer", 2, [9] * len(trees["Low_Tree"].cell_e[2]))
    path = write_cocoa(tmp_path / "sr.root", trees)
    assert main(["summary", "--input", str(path), "--cache", str(tmp_path / "cache"),
                 "--plot", str(tmp_path / "display.png")]) == 1
    error = capsys.readouterr().err
    assert all(part in error for part in (str(path), "'Low_Tree'", "'cell_layer'", "event 2", "outside 0-5"))
    assert not (tmp_path / "display.png").exists()


@pytest.mark.parametrize("branch", ["cell_to_cell_edge_start", "cell_to_cell_edge_end"])
def test_edges_to_cells_that_do_not_exist(tmp_path, branch):
    trees = cocoa_events(5)
    low = trees["Low_Tree"]
    values = ak.to_list(low[branch][3])
    trees["Low_Tree"] = replace_event(low, branch, 3, [len(low.cell_e[3])] + values[1:])
    path = write_cocoa(tmp_path / "sr.root", trees)
    expect_error(path, "Low_Tree", branch, 3, f"points at cell {len(low.cell_e[3])}",
                 low_branches=["cell_e", branch], high_branches=None)
