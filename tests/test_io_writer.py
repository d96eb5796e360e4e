"""Writing COCOA TTrees: branch layout, exact round trips, atomic and non-clobbering writes.

``cocoa_events`` (also used by test_io_reader.py and test_io_validation.py) builds small COCOA-like events with
every branch of the real trees.
"""

from __future__ import annotations

from collections import defaultdict

import awkward as ak
import numpy as np
import pytest
import uproot

from graphsr.detector import Geometry
from graphsr.io import CocoaFormatError, CocoaWriter, check_roundtrip, compare_trees, read_cocoa, write_cocoa
from graphsr.io.writer import to_branches
from graphsr.simulation import SingleElectronGun, simulate_events
from graphsr.io.branches import (
    COCOA_TYPES,
    HIGH_TREE_BRANCHES,
    INT,
    LOW_TREE_BRANCHES,
    MAPPING_TYPES,
    NESTED,
    OPTIONAL_BRANCHES,
)



def _to_awkward(columns: dict[str, list]) -> ak.Array:
    """Records from per-event numpy arrays (or lists of numpy arrays for lists of lists), dtypes kept."""
    fields = {}
    for name, events in columns.items():
        dtype = np.int32 if COCOA_TYPES[name] == INT else np.float32
        if COCOA_TYPES[name] == NESTED:
            inner = [x for event in events for x in event]
            values = np.concatenate(inner + [np.zeros(0)]).astype(dtype)
            lists = ak.unflatten(values, np.array([len(x) for x in inner], np.int64))
            fields[name] = ak.unflatten(lists, np.array([len(event) for event in events], np.int64))
        else:
            fields[name] = ak.unflatten(np.concatenate(events + [np.zeros(0)]).astype(dtype),
                                        np.array([len(x) for x in events], np.int64))
    return ak.zip(fields, depth_limit=1)


def _cells(rng, columns, geometry, layer, ieta, iphi, num_particles):
    eta, phi = geometry.cell_center(layer, ieta, iphi)
    x, y, z = geometry.cell_position(layer, ieta, iphi)
    n = len(layer)
    energy = rng.exponential(200.0, n)
    parents = [rng.choice(max(num_particles, 1), rng.integers(0, min(num_particles, 2) + 1), replace=False)
               for _ in range(n)]
    for name, values in dict(cell_layer=layer, cell_x=x, cell_y=y, cell_z=z, cell_eta=eta, cell_phi=phi,
                             cell_e=energy, cell_che=0.6 * energy, cell_nue=0.3 * energy,
                             cell_topo_idx=np.ones(n), cell_parent_idx=[p[0] if len(p) else -1 for p in parents],
                             ).items():
        columns[name].append(np.asarray(values))
    columns["cell_parent_list"].append([p.astype(float) for p in parents])
    columns["cell_parent_energy"].append([rng.uniform(0, 1, len(p)) * e for p, e in zip(parents, energy)])
    edges = rng.integers(0, max(n, 1), (2, 2 * n))
    columns["cell_to_cell_edge_start"].append(edges[0])
    columns["cell_to_cell_edge_end"].append(edges[1])
    nodes = [rng.choice(n, min(n, 3), replace=False) for _ in range(num_particles)]
    columns["particle_to_node_idx"].append([c.astype(float) for c in nodes])
    columns["particle_to_node_weight"].append([rng.uniform(0, 1, len(c)) for c in nodes])


def cocoa_events(num_events: int = 5, factor: int = 2, seed: int = 0, empty=(1,)) -> dict[str, ak.Array]:
    """``{"Low_Tree", "High_Tree"}`` of small events with every COCOA branch; events in ``empty`` have no cells.

    Each coarse cell has ``factor**2`` fine children; fine cells are stored in shuffled order, the mapping is ordered
    by coarse cell. Some cells have no parent particle (empty inner lists), some events no particles.
    """
    rng = np.random.default_rng(seed)
    fine = Geometry.cocoa()
    coarse = fine.coarsen(factor)
    low, high = defaultdict(list), defaultdict(list)
    for event in range(num_events):
        num_coarse = 0 if event in empty else int(rng.integers(1, 5))
        layer = rng.integers(0, 6, num_coarse)
        ieta = rng.integers(0, coarse.n[layer])
        iphi = rng.integers(0, coarse.n[layer])
        num_particles = int(rng.integers(0, 3))
        _cells(rng, low, coarse, layer, ieta, iphi, num_particles)
        f_layer, f_ieta, f_iphi = (a.reshape(-1) for a in coarse.children(fine, layer, ieta, iphi))
        stored_at = rng.permutation(len(f_layer))  # fine cell k of the block order is stored at stored_at[k]
        order = np.argsort(stored_at)
        _cells(rng, high, fine, f_layer[order], f_ieta[order], f_iphi[order], num_particles)
        low["low_cell_to_high_cell_edge"].append(np.repeat(np.arange(num_coarse), factor * factor))
        low["high_cell_to_low_cell_edge"].append(stored_at)
        for name, values in dict(particle_pdgid=rng.choice([11, 22], num_particles),
                                 particle_pt=rng.uniform(5e3, 5e4, num_particles),
                                 particle_e=rng.uniform(5e4, 1e5, num_particles),
                                 particle_eta=rng.uniform(-2.5, 2.5, num_particles),
                                 particle_phi=rng.uniform(-np.pi, np.pi, num_particles),
                                 particle_prod_x=np.zeros(num_particles), particle_prod_y=np.zeros(num_particles),
                                 particle_prod_z=np.zeros(num_particles),
                                 particle_dep_energy=rng.uniform(0, 5e4, num_particles),
                                 particle_track_idx=-np.ones(num_particles)).items():
            low[name].append(values)
        for name in ("topo_idx", "topo_bary_eta", "topo_bary_phi", "topo_bary_rho", "topo_bary_sigma_eta",
                     "topo_bary_sigma_phi", "topo_e"):
            low[name].append(np.zeros(0))
    for name in ("cell_parent_list", "cell_parent_energy"):  # High_Tree carries cell, track and graph branches
        del high[name]
    return {"Low_Tree": _to_awkward(low), "High_Tree": _to_awkward(high)}


# branches of one object type have the same length in an event; names not listed count something of their own
_OBJECTS = ("track_to_cell_edge_", "node_edge_", "track_", "node_", "conv_el_", "pflow_jet_", "topo_jet_",
            "true_jet_", "pflow_", "supercluster_")


def with_every_cocoa_branch(trees: dict[str, ak.Array], seed: int = 0) -> dict[str, ak.Array]:
    """``trees`` plus random content for every branch COCOA writes (:mod:`graphsr.io.branches`) they lack: tracks,
    truth graph, jets (``topo_jet_*`` filled while the ``topo_*`` clusters are empty, as in super-resolution mode),
    particle flow, superclusters."""
    rng = np.random.default_rng(seed)
    out = {}
    for tree, events in trees.items():
        wanted = {**LOW_TREE_BRANCHES, **OPTIONAL_BRANCHES} if tree == "Low_Tree" else HIGH_TREE_BRANCHES
        lengths = {"cell_": ak.num(events.cell_e).to_numpy(),
                   "particle_": ak.num(events.particle_to_node_idx).to_numpy()}
        columns = {name: [] for name in wanted if name not in events.fields}
        for name in columns:
            group = "mapping" if name in MAPPING_TYPES else next(
                (p for p in ("cell_", "particle_", *_OBJECTS)
                 if name.startswith(p) and "constituents" not in name and "pflow_object" not in name), name)
            if group not in lengths:
                lengths[group] = rng.integers(0, 4, len(events))
                if group == "track_to_cell_edge_":  # edges to existing cells
                    lengths[group][lengths["cell_"] == 0] = 0
            for n, cells in zip(lengths[group], lengths["cell_"]):
                if COCOA_TYPES[name] == NESTED:
                    columns[name].append([rng.normal(size=rng.integers(0, 3)) for _ in range(n)])
                elif name in ("track_to_cell_edge_end", "cell_to_cell_edge_start", "cell_to_cell_edge_end"):
                    columns[name].append(rng.integers(0, max(cells, 1), n))
                else:
                    columns[name].append(rng.integers(-1, 5, n) if COCOA_TYPES[name] == INT else rng.normal(size=n))
        extra = _to_awkward(columns)
        out[tree] = ak.zip({**{f: events[f] for f in events.fields}, **{f: extra[f] for f in extra.fields}},
                           depth_limit=1)
    return out


def write_raw(path, trees: dict[str, dict[str, ak.Array]]):
    """A file as a foreign tool could write it: one counter per list branch, no checks."""
    with uproot.recreate(path) as file:
        for name, branches in trees.items():
            file.mktree(name, {b: a.type.content for b, a in branches.items()}).extend(branches)
    return path


def test_roundtrip_is_exact_for_every_branch(tmp_path):
    trees = cocoa_events(6)
    back = check_roundtrip(tmp_path / "sr.root", trees, step=4)
    assert compare_trees(trees, back) == []
    # float32 stays float32, int32 stays int32, lists of lists come back as lists of lists
    assert str(back["Low_Tree"].cell_e.type.content) == "var * float32"
    assert str(back["Low_Tree"].cell_layer.type.content) == "var * int32"
    assert str(back["High_Tree"].particle_to_node_weight.type.content) == "var * var * float32"
    assert ak.all(back["Low_Tree"].cell_e == trees["Low_Tree"].cell_e)


def _edit(events: ak.Array, name: str, event: int, edit) -> ak.Array:
    """``events`` with ``edit`` applied to the list of field ``name`` in one event (element type kept)."""
    lists = ak.to_list(events[name])
    lists[event] = edit(lists[event])
    dtype = ak.to_numpy(ak.flatten(events[name], axis=None)).dtype
    return ak.with_field(events, ak.values_astype(ak.Array(lists), dtype), name)


def test_compare_trees_reports_a_changed_value_a_missing_branch_and_a_changed_length(tmp_path):
    trees = cocoa_events(5)  # event 1 has no cells
    back = read_cocoa(write_cocoa(tmp_path / "sr.root", trees))
    assert compare_trees(trees, back) == []
    low = back["Low_Tree"]
    with_low = lambda events: {**back, "Low_Tree": events}  # noqa: E731
    # one value: the last cell energy of event 3, by 1 MeV of a few hundred (float32 resolves it)
    changed = _edit(low, "cell_e", 3, lambda e: e[:-1] + [e[-1] + 1.0])
    assert compare_trees(trees, with_low(changed)) == ["Low_Tree.cell_e: 1 events differ, first 3"]
    # values in two events, and one inside a list of lists (a cell's parent energies): each named once
    changed = _edit(_edit(changed, "cell_e", 4, lambda e: [-v for v in e]), "cell_parent_energy", 2,
                    lambda cells: [[v + 1.0 for v in c] if c else [5.0] for c in cells])
    assert compare_trees(trees, with_low(changed)) == ["Low_Tree.cell_e: 2 events differ, first 3",
                                                       "Low_Tree.cell_parent_energy: 1 events differ, first 2"]
    # a missing branch, and a missing tree
    assert compare_trees(trees, with_low(low[[f for f in low.fields if f != "cell_x"]])) == [
        f"Low_Tree: fields {sorted(low.fields)} != {sorted(set(low.fields) - {'cell_x'})}"]
    assert compare_trees(trees, {"Low_Tree": low}) == ["trees ['High_Tree', 'Low_Tree'] != ['Low_Tree']"]
    # a changed length: one cell fewer in event 2, one event fewer
    assert compare_trees(trees, with_low(_edit(low, "cell_layer", 2, lambda e: e[:-1]))) == [
        "Low_Tree.cell_layer: 1 events differ, first 2"]
    assert compare_trees(trees, with_low(low[:4])) == ["Low_Tree: 5 events != 4"]
    # the same values in another type, and NaN equal to NaN
    assert compare_trees(trees, with_low(ak.with_field(low, ak.values_astype(low.cell_e, np.float64), "cell_e"))) == [
        "Low_Tree.cell_e: type var * float32 != var * float64"]
    nan = _edit(low, "cell_e", 0, lambda e: [float("nan")] + e[1:])
    assert compare_trees({"Low_Tree": nan}, {"Low_Tree": nan}) == []


def test_every_branch_cocoa_writes_reads_and_writes_back(tmp_path):
    trees = with_every_cocoa_branch(cocoa_events(6), seed=2)
    low = trees["Low_Tree"]
    assert set(LOW_TREE_BRANCHES) | set(OPTIONAL_BRANCHES) <= set(low.fields)
    assert ak.all(ak.num(low.topo_e) == 0) and ak.sum(ak.num(low.topo_jet_pt)) > 0
    # laid out as COCOA does: every branch on its own, lists of lists stored flattened (uproot cannot write them)
    cocoa = write_raw(tmp_path / "cocoa.root", {name: to_branches(events) for name, events in trees.items()})
    back = check_roundtrip(tmp_path / "again.root", read_cocoa(cocoa))
    assert compare_trees(trees, back) == []
    with uproot.open(tmp_path / "again.root") as file:
        low = file["Low_Tree"]
        assert low["topo_jet_pt"].count_branch.name == "ntopo_jet_pt"
        assert low["cell_pflow_object_idx"].count_branch.name == "ncell_pflow_object_idx"
        assert low["topo_idx"].count_branch.name == "ntopo" and low["topo_idx"].typename == "float[]"


def test_simulated_files_have_cocoa_types(tmp_path):
    path = write_cocoa(tmp_path / "sim.root", simulate_events(SingleElectronGun(), 3, factor=2, seed=0))
    for tree, events in read_cocoa(path).items():
        shared = [name for name in events.fields if name in COCOA_TYPES]
        assert len(shared) >= 14
        for name in shared:
            assert str(events[name].type.content) == f"var * {COCOA_TYPES[name]}", (tree, name)


def test_branch_names_and_counters(tmp_path):
    path = write_cocoa(tmp_path / "sr.root", cocoa_events(3))
    with uproot.open(path) as file:
        low, high = file["Low_Tree"], file["High_Tree"]
        counters = {name: low[name].count_branch.name for name in low.keys() if low[name].count_branch is not None}
        assert counters["cell_e"] == counters["cell_layer"] == counters["cell_parent_list_counts"] == "ncell"
        assert counters["particle_pt"] == counters["particle_to_node_idx_counts"] == "nparticle"
        assert counters["topo_e"] == "ntopo"
        assert counters["cell_to_cell_edge_start"] == counters["cell_to_cell_edge_end"] == "ncell_to_cell_edge"
        assert counters["low_cell_to_high_cell_edge"] == counters["high_cell_to_low_cell_edge"] \
            == "nlow_high_cell_edge"
        assert counters["cell_parent_energy_flat"] == "ncell_parent_energy_flat"
        assert "cell_parent_list" not in low.keys() and "cell_parent_list_flat" in low.keys()
        assert low["cell_e"].typename == "float[]" and low["cell_layer"].typename == "int32_t[]"
        assert set(high.keys()) >= {"ncell", "cell_e", "particle_to_node_weight_flat", "particle_to_node_weight_counts"}
        # the flattened form really is flat values + inner lengths
        flat = high["particle_to_node_weight_flat"].array()
        counts = high["particle_to_node_weight_counts"].array()
        assert ak.all(ak.sum(counts, axis=1) == ak.num(flat, axis=1))


def test_plain_out_tree(tmp_path):
    low = cocoa_events(4)["Low_Tree"]
    plain = low[[f for f in low.fields if "high_cell" not in f]]
    back = check_roundtrip(tmp_path / "plain.root", {"Out_Tree": plain})
    assert list(back) == ["Out_Tree"] and len(back["Out_Tree"]) == 4


def test_streaming_writer_equals_one_write(tmp_path):
    trees = cocoa_events(7)
    with CocoaWriter(tmp_path / "stream.root", step=2) as writer:
        for start in (0, 3, 5):
            writer.write({name: events[start:start + (3 if start == 0 else 2)] for name, events in trees.items()})
    assert writer.num_events == 7
    assert compare_trees(trees, read_cocoa(tmp_path / "stream.root")) == []
    with uproot.open(tmp_path / "stream.root") as file:
        assert file["Low_Tree"]["cell_e"].num_baskets > 1


def test_refuses_to_overwrite(tmp_path):
    path = tmp_path / "sr.root"
    path.write_bytes(b"precious")
    with pytest.raises(FileExistsError, match=str(path)):
        write_cocoa(path, cocoa_events(2))
    assert path.read_bytes() == b"precious"
    write_cocoa(path, cocoa_events(2), overwrite=True)
    assert len(read_cocoa(path)["Low_Tree"]) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["sr.root"]


def test_failed_write_leaves_nothing(tmp_path):
    path = tmp_path / "sr.root"
    trees = cocoa_events(4)
    with pytest.raises(RuntimeError):
        with CocoaWriter(path) as writer:
            writer.write({name: events[:2] for name, events in trees.items()})
            raise RuntimeError("simulated crash")
    assert list(tmp_path.iterdir()) == []
    # an existing file survives a failed overwrite untouched
    write_cocoa(path, trees)
    before = path.read_bytes()
    with pytest.raises(ValueError, match="differ from the first chunk"):
        with CocoaWriter(path, overwrite=True) as writer:
            writer.write(trees)
            writer.write({"Low_Tree": trees["Low_Tree"][["cell_e"]], "High_Tree": trees["High_Tree"]})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["sr.root"]


def test_rejects_inconsistent_input(tmp_path):
    trees = cocoa_events(4)
    with pytest.raises(ValueError, match="Low_Tree"):
        write_cocoa(tmp_path / "a.root", {"Low_Tree": trees["Low_Tree"]})
    with pytest.raises(ValueError, match="different numbers of events"):
        write_cocoa(tmp_path / "b.root", {"Low_Tree": trees["Low_Tree"], "High_Tree": trees["High_Tree"][:3]})
    low = trees["Low_Tree"]
    # cell_x of event 2 one entry short: cell_* branches share the counter ncell
    shorter = ak.concatenate([low.cell_x[:2], low.cell_x[2:3, :-1], low.cell_x[3:]])
    bad = {"Low_Tree": ak.with_field(low, shorter, "cell_x"), "High_Tree": trees["High_Tree"]}
    with pytest.raises(CocoaFormatError, match="ncell") as error:
        write_cocoa(tmp_path / "c.root", bad)
    assert (error.value.tree, error.value.branch, error.value.event) == ("Low_Tree", "cell_x", 2)
    assert list(tmp_path.iterdir()) == []


def test_scalar_and_untyped_fields(tmp_path):
    low = cocoa_events(3)["Low_Tree"]
    plain = ak.zip({"cell_e": low.cell_e, "event_number": np.arange(3, dtype=np.int64),
                    "topo_e": ak.Array([[], [], []])}, depth_limit=1)  # empty lists of unknown type
    back = read_cocoa(write_cocoa(tmp_path / "plain.root", {"Out_Tree": plain}))["Out_Tree"]
    assert ak.to_numpy(back.event_number).tolist() == [0, 1, 2]
    assert str(back.topo_e.type.content) == "var * float32" and ak.all(ak.num(back.topo_e) == 0)
