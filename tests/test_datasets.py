import os
import warnings

import pytest
import torch

from graphsr.datasets import CocoaDataset, CocoaStream, read_events
from graphsr.graphs import GraphLoader, GraphOptions, build_storage
from graphsr.io import write_cocoa

from conftest import TOY_CELLS, make_toy_events


@pytest.fixture
def toy_file(tmp_path):
    low, high = make_toy_events(TOY_CELLS * 3)  # 9 events, 3 of them empty
    path = tmp_path / "toy.root"
    write_cocoa(path, {"Low_Tree": low, "High_Tree": high})
    return path


def test_dataset_matches_direct_build_and_caches(toy_file, tmp_path):
    cache = tmp_path / "cache"
    dataset = CocoaDataset([toy_file], root=cache, log=False)
    assert len(dataset) == 6  # empty events dropped
    assert dataset[0].fine_energy is not None and dataset.factor is None
    low, high = make_toy_events(TOY_CELLS * 3)
    direct = build_storage(low, high, drop_empty=True)[0]
    assert torch.allclose(dataset._data.fine_energy, direct.fine_energy)
    assert torch.equal(dataset._data.fine_edge_index, direct.fine_edge_index)
    assert dataset._data.event.tolist() == [0, 2, 3, 5, 6, 8]

    # same options: served from the cache; other options or a changed file: a new cache entry
    processed = sorted(os.listdir(cache / "processed"))
    CocoaDataset([toy_file], root=cache, log=False)
    assert sorted(os.listdir(cache / "processed")) == processed
    other = CocoaDataset([toy_file], root=cache, options=GraphOptions(k=2), log=False)
    assert other.processed_dir != dataset.processed_dir
    os.utime(toy_file, ns=(0, 0))
    assert CocoaDataset([toy_file], root=cache, log=False).processed_dir != dataset.processed_dir


def test_two_processes_building_one_cache_both_succeed(toy_file, tmp_path, monkeypatch):
    """Two trainings started together build the same cache: the second finishes its file while the first is between
    writing and renaming its own (here: forced by running the second inside the first's save). Both must end with
    the cache, and neither may lose the other's file (with one shared temporary name, the first rename failed)."""
    cache, real_save, other = tmp_path / "cache", torch.save, {}

    def save_then_let_another_process_finish(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        if "started" not in other:
            other["started"] = True
            other["dataset"] = CocoaDataset([toy_file], root=cache, log=False)

    monkeypatch.setattr(torch, "save", save_then_let_another_process_finish)
    first = CocoaDataset([toy_file], root=cache, log=False)
    assert len(first) == len(other["dataset"]) == 6
    assert not [f for f in os.listdir(cache / "processed" / first.key) if "tmp" in f]  # no temporary file left


def test_a_new_knn_invalidates_knn_caches_only(toy_file, tmp_path, monkeypatch):
    """Caches of kNN edges made before a change of graphsr.ops.knn's neighbour order are rebuilt; grid caches,
    which no kNN built, are kept."""
    import graphsr.datasets.cocoa as cocoa

    grid = CocoaDataset(toy_file, root=tmp_path, options=GraphOptions(edges="grid"), log=False)
    knn = CocoaDataset(toy_file, root=tmp_path, options=GraphOptions(edges="knn"), log=False)
    monkeypatch.setattr(cocoa, "KNN_VERSION", cocoa.KNN_VERSION + 1)
    assert grid.cache_key() == grid.key  # keys made before the change
    assert knn.cache_key() != knn.key


def test_missing_file_error_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nothere.root(.|\n)*make data"):
        CocoaDataset([tmp_path / "nothere.root"], root=tmp_path / "cache")
    with pytest.raises(FileNotFoundError, match="nothere.root"):
        CocoaStream([tmp_path / "nothere.root"])


def test_split_is_disjoint_and_reproducible(toy_file, tmp_path):
    dataset = CocoaDataset([toy_file], root=tmp_path / "cache", log=False)
    train, val, test = dataset.split((4, 1, 1), seed=3)
    ids = [set(part.indices()) for part in (train, val, test)]
    assert [len(i) for i in ids] == [4, 1, 1] and not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert [set(p.indices()) for p in dataset.split((4, 1, 1), seed=3)] == ids
    events = sorted(sum((b.event.tolist() for b in GraphLoader(train, 3)), []))
    assert events == sorted(int(dataset[i].event) for i in ids[0])


def test_stream_yields_the_same_events_chunk_by_chunk(toy_file, tmp_path):
    dataset = CocoaDataset([toy_file], root=tmp_path / "cache", log=False)
    batches = list(CocoaStream([toy_file], batch_size=2, step_size=4))
    assert [b.event.tolist() for b in batches] == [[0, 2], [3], [5, 6], [8]]
    streamed = torch.cat([b.fine_energy for b in batches])
    assert torch.equal(streamed, dataset._data.fine_energy)


def test_stream_workers_split_the_chunks(toy_file):
    from torch.utils.data import DataLoader

    stream = CocoaStream([toy_file], batch_size=8, step_size=3)
    events = [b.event.tolist() for b in DataLoader(stream, batch_size=None, num_workers=2)]
    assert sorted(sum(events, [])) == [0, 2, 3, 5, 6, 8]


def test_a_file_simulated_with_another_coarse_noise_is_flagged(tmp_path):
    # graphsr's models take the coarse noise as COCOA's fine sigma x factor (26, 68, 82 MeV in ECAL at 2x)
    from graphsr.cli import main as cli

    odd, usual = tmp_path / "odd.root", tmp_path / "usual.root"
    assert cli(["simulate", "--events", "4", "--output", str(odd), "--coarse-noise", "13,34,41,75,50,25"]) == 0
    assert cli(["simulate", "--events", "4", "--output", str(usual), "--coarse-noise", "26,68,82,150,100,50"]) == 0
    with pytest.warns(UserWarning, match=r"odd.root was simulated with coarse noise \[13.0, 34.0"):
        read_events(odd)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_events(usual)  # the same noise as assumed, given explicitly: no warning
