"""Reading COCOA files: inspection, chunked lockstep streaming, branch selection, both list-of-lists forms."""

from __future__ import annotations

import awkward as ak
import numpy as np
import pytest
import uproot
from test_io_writer import cocoa_events

from graphsr.io import (
    GRAPH_BRANCHES_HIGH,
    GRAPH_BRANCHES_LOW,
    compare_trees,
    iter_cocoa,
    open_cocoa,
    read_cocoa,
    write_cocoa,
)


@pytest.fixture
def two_files(tmp_path):
    trees = [cocoa_events(5, seed=1, empty=(1,)), cocoa_events(4, seed=2, empty=(0, 3))]
    paths = [write_cocoa(tmp_path / f"part{i}.root", t) for i, t in enumerate(trees)]
    return paths, trees


def test_open_cocoa_describes_the_file(two_files, tmp_path):
    (path, _), (trees, _) = two_files
    info = open_cocoa(path)
    assert info.mode == "super-resolution" and info.num_events == 5
    assert (info.low_tree, info.high_tree) == ("Low_Tree", "High_Tree")
    assert set(info.branches["Low_Tree"]) == set(trees["Low_Tree"].fields)  # no counters, no _flat / _counts
    assert info.nested["High_Tree"] == {"particle_to_node_idx": "flattened", "particle_to_node_weight": "flattened"}
    plain = write_cocoa(tmp_path / "plain.root", {"Out_Tree": trees["Low_Tree"][["cell_e", "cell_layer"]]})
    info = open_cocoa(plain)
    assert (info.mode, info.low_tree, info.high_tree) == ("plain", "Out_Tree", None)


def test_chunks_stream_in_lockstep_across_files(two_files):
    paths, trees = two_files
    chunks = list(iter_cocoa(paths, high_branches=GRAPH_BRANCHES_HIGH, step_size=2))
    assert [len(c) for c in chunks] == [2, 2, 1, 2, 2]
    assert [c.entry_start for c in chunks] == [0, 2, 4, 0, 2]
    assert [c.global_start for c in chunks] == [0, 2, 4, 5, 7]
    assert [c.path for c in chunks] == [paths[0]] * 3 + [paths[1]] * 2
    assert all(c.factor == 2 for c in chunks)
    for chunk in chunks:
        assert chunk.low.fields == list(GRAPH_BRANCHES_LOW) and chunk.high.fields == list(GRAPH_BRANCHES_HIGH)
        # same events: the mapping of each low event lists exactly the fine cells of its high event
        assert ak.all(ak.num(chunk.low.high_cell_to_low_cell_edge) == ak.num(chunk.high.cell_e))
    low = ak.concatenate([c.low for c in chunks])
    expected = ak.concatenate([t["Low_Tree"][list(GRAPH_BRANCHES_LOW)] for t in trees])
    assert compare_trees({"Low_Tree": expected}, {"Low_Tree": low}) == []


def test_entry_range_is_global_and_max_events_per_file(two_files):
    paths, trees = two_files
    chunks = list(iter_cocoa(paths, low_branches=["cell_e"], entry_start=3, entry_stop=7, step_size=10))
    assert [(c.entry_start, c.entry_stop, c.global_start) for c in chunks] == [(3, 5, 3), (0, 2, 5)]
    got = ak.concatenate([c.low.cell_e for c in chunks])
    want = ak.concatenate([trees[0]["Low_Tree"].cell_e[3:], trees[1]["Low_Tree"].cell_e[:2]])
    assert ak.array_equal(got, want)
    chunks = list(iter_cocoa(paths, low_branches=["cell_e"], max_events=2))
    assert [(c.entry_start, c.entry_stop) for c in chunks] == [(0, 2), (0, 2)]
    assert chunks[0].high is None


def test_reads_only_requested_branches_and_ranges(two_files, monkeypatch):
    calls = []
    original = uproot.behaviors.TBranch.HasBranches.arrays

    def spy(self, expressions=None, *args, **kwargs):
        calls.append((self.name, tuple(expressions), kwargs["entry_start"], kwargs["entry_stop"]))
        return original(self, expressions, *args, **kwargs)

    monkeypatch.setattr(uproot.behaviors.TBranch.HasBranches, "arrays", spy)
    iterator = iter_cocoa(two_files[0][0], low_branches=["cell_e", "cell_parent_energy"],
                          high_branches=["cell_layer"], step_size=3)
    first = next(iterator)  # lazy: one chunk read, not the file
    assert calls == [("Low_Tree", ("cell_e", "cell_parent_energy_flat", "cell_parent_energy_counts"), 0, 3),
                     ("High_Tree", ("cell_layer",), 0, 3)]
    assert first.low.fields == ["cell_e", "cell_parent_energy"]
    list(iterator)
    assert [c[2:] for c in calls[2:]] == [(3, 5), (3, 5)]


def test_flattened_form_gives_the_original_nested_arrays(tmp_path):
    trees = cocoa_events(6, empty=(0, 5))  # empty first/last events: zero-length lists at chunk edges
    original = trees["Low_Tree"].cell_parent_list
    assert ak.any(ak.num(original, axis=2) == 0)  # cells without parents exist
    path = write_cocoa(tmp_path / "sr.root", trees)
    for step in (1, 4, 6):
        chunks = list(iter_cocoa(path, low_branches=["cell_parent_list", "cell_parent_energy"], step_size=step))
        back = ak.concatenate([c.low.cell_parent_list for c in chunks])
        assert str(back.type) == str(original.type) == "6 * var * var * float32"
        assert ak.array_equal(back, original)
    # what a vector<vector<float>> branch reads as is exactly the original var * var array
    with uproot.open(path) as file:
        flat, counts = (file["High_Tree"][f"particle_to_node_weight_{s}"].array() for s in ("flat", "counts"))
    rebuilt = ak.unflatten(ak.unflatten(ak.flatten(flat), ak.flatten(counts)), ak.num(counts))
    assert ak.array_equal(rebuilt, trees["High_Tree"].particle_to_node_weight)
    assert ak.array_equal(read_cocoa(path)["High_Tree"].particle_to_node_weight, rebuilt)


def test_plain_file_reads_coarse_only(tmp_path):
    low = cocoa_events(4)["Low_Tree"]
    plain = low[[f for f in low.fields if "high_cell" not in f]]
    path = write_cocoa(tmp_path / "plain.root", {"Out_Tree": plain})
    # the graph branch set includes the mapping, which plain files do not have: it is skipped, not an error
    (chunk,) = iter_cocoa(path, high_branches=GRAPH_BRANCHES_HIGH)
    assert chunk.high is None and chunk.factor == 2  # read off the coarse cells' positions
    assert "low_cell_to_high_cell_edge" not in chunk.low.fields
    assert np.array_equal(ak.to_numpy(ak.num(chunk.low.cell_e)), ak.to_numpy(ak.num(low.cell_e)))
    assert list(read_cocoa(path)) == ["Out_Tree"]


def test_read_cocoa_selects_branches_and_events(two_files):
    (path, _), (trees, _) = two_files
    back = read_cocoa(path, low_branches=["cell_e"], high_branches=None, entry_start=1, entry_stop=4)
    assert list(back) == ["Low_Tree"] and back["Low_Tree"].fields == ["cell_e"]
    assert ak.array_equal(back["Low_Tree"].cell_e, trees["Low_Tree"].cell_e[1:4])
