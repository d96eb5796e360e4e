"""Batches straight from collated storage: gather many events' segments in one vectorised pass.

PyG's ``DataLoader`` works on graphsr datasets too, but it separates every event into its own ``Data`` object and
collates them again in Python. :class:`GraphLoader` gathers the chosen events' rows with index arithmetic on the
storage and offsets the index keys in one go, without the per-event objects (``bench/bench_loading.py`` compares
the two).
"""

from __future__ import annotations

import numpy as np
import torch
from torch_geometric.data import Batch

from graphsr.graphs.build import select_events
from graphsr.graphs.data import PairData


def _exclusive_cumsum(count: np.ndarray) -> np.ndarray:
    return np.cumsum(count) - count


def collate_events(data: PairData, slices: dict[str, torch.Tensor], events) -> Batch:
    """A PyG ``Batch`` of the given events of a collated storage, identical to ``Batch.from_data_list``."""
    sub, sub_slices = select_events(data, slices, events)
    num_graphs = len(sub_slices["event"]) - 1
    graphs = np.arange(num_graphs)
    num_fine, num_coarse = (np.diff(sub_slices[key].numpy()) for key in ("fine_layer", "coarse_layer"))
    per_graph_inc = {
        "fine_edge_index": _exclusive_cumsum(num_fine),
        "coarse_edge_index": _exclusive_cumsum(num_coarse),
        "fine_parent": _exclusive_cumsum(num_coarse),
        "coarse_batch": graphs,
    }
    batch = Batch(_base_cls=PairData)
    # PyG keeps one increment per graph for to_data_list(): the amount added to that graph's rows
    inc_dict, no_increment = {}, torch.zeros(num_graphs, dtype=torch.long)
    for key in sub_slices:
        value = sub[key]
        inc = per_graph_inc.get(key)
        if inc is not None:  # numpy: torch's threads cost more than they save here
            value.numpy()[...] += np.repeat(inc, np.diff(sub_slices[key].numpy()))
        batch[key] = value
        inc_dict[key] = torch.from_numpy(inc) if inc is not None else no_increment
    batch.batch = torch.from_numpy(np.repeat(graphs, num_fine))
    batch.ptr = sub_slices["fine_layer"]
    batch._slice_dict = sub_slices
    batch._inc_dict = inc_dict
    batch._num_graphs = num_graphs
    return batch


class GraphLoader:
    """Iterate over a graphsr dataset in batches of events.

    Args:
        dataset: a :class:`~graphsr.datasets.CocoaDataset` (or any InMemoryDataset of :class:`PairData`, or a
            ``(data, slices)`` pair).
        batch_size: events per batch.
        shuffle: draw events in a random order each epoch, from ``generator``.
        drop_last: skip the last incomplete batch.
        generator: torch.Generator for reproducible shuffling.
        pin_memory: put each batch in page-locked memory, so that ``batch.to("cuda", non_blocking=True)`` copies
            while the GPU computes (CUDA only).
        part: ``(rank, world_size)``: yield only this rank's consecutive share of every batch (distributed
            training; ``batch_size`` is then the global batch). Shares differ by at most one event; a rank gets
            none when a batch holds fewer events than there are ranks.

    No worker processes: a batch is gathered in about 2 ms (64 single-electron events), less than sending
    it from a worker would cost.
    """

    def __init__(self, dataset, batch_size: int = 32, shuffle: bool = False, drop_last: bool = False,
                 generator: torch.Generator | None = None, pin_memory: bool = False, part: tuple[int, int] = (0, 1)):
        if isinstance(dataset, tuple):
            (self.data, self.slices), self.indices, self.transform = dataset, None, None
        else:
            self.data, self.slices, self.transform = dataset._data, dataset.slices, dataset.transform
            self.indices = torch.as_tensor(dataset.indices()) if dataset._indices is not None else None
        self.batch_size, self.shuffle, self.drop_last, self.generator = batch_size, shuffle, drop_last, generator
        self.pin_memory, self.part = pin_memory, part

    def __len__(self) -> int:
        n = self._num_events()
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _num_events(self) -> int:
        return len(self.indices) if self.indices is not None else len(self.slices["event"]) - 1

    def __iter__(self):
        n = self._num_events()
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        if self.indices is not None:
            order = self.indices[order]
        for batch, _ in self.shares(order):
            yield batch

    def shares(self, order: torch.Tensor | None = None):
        """Like iterating, but yields ``(batch, share)``: this rank's part of each batch and where it sits in the
        whole batch, ``share = {"events": (first, stop, total), "fine": (first, stop, total), "coarse": ...}`` (node
        offsets within the whole batch's fine and coarse nodes), so that every rank can draw the whole batch's
        random numbers and keep its part of them."""
        if order is None:
            n = self._num_events()
            order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
            order = self.indices[order] if self.indices is not None else order
        rank, world = self.part
        fine_count = torch.diff(self.slices["fine_layer"])
        coarse_count = torch.diff(self.slices["coarse_layer"])
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            events = order[start:start + self.batch_size]
            size, extra = divmod(len(events), world)  # the first `extra` ranks take one event more
            first = rank * size + min(rank, extra)
            stop = first + size + (rank < extra)
            share = {"events": (first, stop, len(events))}
            for key, count in (("fine", fine_count[events]), ("coarse", coarse_count[events])):
                share[key] = (int(count[:first].sum()), int(count[:stop].sum()), int(count.sum()))
            batch = collate_events(self.data, self.slices, events[first:stop])
            batch = self.transform(batch) if self.transform is not None else batch
            yield (batch.pin_memory() if self.pin_memory else batch), share
