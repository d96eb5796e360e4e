"""PyG datasets over COCOA super-resolution ROOT files (simulated by graphsr or real).

:class:`CocoaDataset` reads the files once, builds every event's paired graphs and caches them; the cache
directory is keyed by every option that changes processing and by each file's size and modification time, so a
changed option or file is never served from a stale cache. :class:`CocoaStream` builds graphs chunk by chunk for
files that do not fit in memory; :func:`read_events` collects some events of a file (those to evaluate) the same
way.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info
from torch_geometric.data import InMemoryDataset

from graphsr.detector import Geometry
from graphsr.graphs.build import GraphOptions, build_storage, concat_storages, select_events
from graphsr.graphs.data import PairData
from graphsr.graphs.loader import collate_events
from graphsr.graphs.noise_cells import NoiseCells, dilute
from graphsr.io import GRAPH_BRANCHES_HIGH, GRAPH_BRANCHES_LOW, iter_cocoa, open_cocoa
from graphsr.training.checkpoint import save_checkpoint

# Bump when the graph layout changes, so old caches are rebuilt.
CACHE_VERSION = 2  # 2: events carry the index of their file
KNN_VERSION = 2  # 2: kNN ties broken by index (graphsr.ops.knn); a cache of "knn" / "radius" edges from 1 is stale
FRACTION_BRANCHES = ("particle_to_node_idx", "particle_to_node_weight")  # read when cells carry their fractions


def warn_if_noise_differs(path: str | Path, info=None) -> None:
    """Warn when ``graphsr simulate --coarse-noise`` made ``path`` (its provenance says so) with a coarse noise other
    than COCOA's fine sigma x factor, which graphsr's models take as the noise of every coarse cell
    (:func:`graphsr.models.sr3.noise_sigma`): their posterior of the true totals would be wrong. ``info``: the
    file's :func:`~graphsr.io.open_cocoa`, when already open."""
    record = (info or open_cocoa(path)).provenance or {}
    settings = record.get("config") or {}
    if record.get("command") != "simulate" or settings.get("coarse_noise") is None:
        return
    assumed = Geometry.cocoa().coarsen(int(settings["factor"])).noise
    if not np.allclose(settings["coarse_noise"], assumed):
        warnings.warn(f"{path} was simulated with coarse noise {settings['coarse_noise']} MeV per layer (graphsr "
                      f"simulate --coarse-noise); graphsr's models assume COCOA's fine sigma x {settings['factor']}, "
                      f"{assumed.tolist()} MeV: train and evaluate on files with that noise (data/README.md)",
                      stacklevel=2)


def _missing_files_error(paths: list[Path]) -> FileNotFoundError:
    listed = "\n  ".join(map(str, paths))
    return FileNotFoundError(
        f"COCOA file(s) not found:\n  {listed}\nSimulate the default data with `make data` (or `graphsr simulate`), "
        "or point graphsr at real COCOA super-resolution files (see data/README.md).")


class CocoaDataset(InMemoryDataset):
    """Paired coarse / fine graphs of every event in some COCOA files, held in memory.

    Args:
        files: ROOT files, super-resolution (``Low_Tree`` + ``High_Tree``) or plain (``Out_Tree``, coarse only:
            the graphs have no ``fine_energy``).
        root: cache directory (processed graphs go to ``root/processed/<key>``).
        options: layers and edges (:class:`~graphsr.graphs.GraphOptions`).
        factor: fine cells per coarse cell per side, which every file must have; default: read off the files
            (the mapping, or a plain file's cell positions), the same for all.
        max_events: read at most this many events per file.
        drop_empty: leave out events with no cell in the chosen layers.
        transform: applied to each event or batch on access.
        step_size: events read per chunk.
        noise_cells: add noise-only coarse cells to every event (:mod:`graphsr.graphs.noise_cells`; training
            events of the pyramid); None: the events as they are.
        fractions: with ``K`` > 0, every cell also carries the energy fractions of its event's first ``K``
            particles (``coarse_fraction``, ``fine_fraction``: :func:`~graphsr.graphs.build.cell_fractions`), read
            from ``particle_to_node_idx`` / ``_weight`` of both trees; the incidence targets of the particle-flow
            model. Files without them are refused.
    """

    def __init__(self, files, root: str | Path = "data/cache", options: GraphOptions = GraphOptions(), *,
                 factor: int | None = None, max_events: int | None = None, drop_empty: bool = True,
                 transform=None, step_size: int = 2000, geometry: Geometry | None = None, log: bool = True,
                 noise_cells: NoiseCells | None = None, fractions: int = 0):
        self.files = [Path(f).resolve() for f in ([files] if isinstance(files, (str, Path)) else files)]
        self.options, self.factor, self.max_events, self.drop_empty = options, factor, max_events, drop_empty
        if noise_cells is not None and fractions:
            raise ValueError("noise-only cells and particle fractions cannot be combined: the added cells have none")
        self.noise_cells, self.fractions = noise_cells, fractions
        self.step_size, self.geometry = step_size, geometry or Geometry.cocoa()
        self.key = self.cache_key()  # fixed now: a file changing later must not redirect this dataset
        for path in self.files:
            warn_if_noise_differs(path)
        super().__init__(str(root), transform, log=log)
        data, slices = torch.load(self.processed_paths[0], weights_only=True)
        self._data, self.slices = PairData.from_dict(data), slices

    @property
    def raw_paths(self) -> list[str]:
        return [str(f) for f in self.files]

    @property
    def raw_file_names(self) -> list[str]:
        return [f.name for f in self.files]

    @property
    def processed_dir(self) -> str:
        return os.path.join(self.root, "processed", self.key)

    @property
    def processed_file_names(self) -> list[str]:
        return ["graphs.pt"]

    def cache_key(self) -> str:
        missing = [f for f in self.files if not f.exists()]
        if missing:
            raise _missing_files_error(missing)
        stats = [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in self.files]
        version = CACHE_VERSION if self.options.edges == "grid" else (CACHE_VERSION, KNN_VERSION)
        settings = (version, self.options, self.factor, self.max_events, self.drop_empty, self.geometry, stats)
        if self.noise_cells is not None:  # keys of the events as they are stay those of earlier versions
            settings += (self.noise_cells,)
        if self.fractions:
            settings += (("fractions", self.fractions),)
        text = repr(settings)
        return hashlib.sha1(text.encode()).hexdigest()[:16]

    def download(self):
        raise _missing_files_error([f for f in self.files if not f.exists()])

    def process(self):
        parts = []
        extra = FRACTION_BRANCHES if self.fractions else ()
        for chunk in iter_cocoa(self.files, low_branches=(*GRAPH_BRANCHES_LOW, *extra),
                                high_branches=(*GRAPH_BRANCHES_HIGH, *extra), step_size=self.step_size,
                                max_events=self.max_events, factor=self.factor):
            low, high = chunk.low, chunk.high
            if self.noise_cells is not None:
                if high is None:
                    raise ValueError(f"{chunk.path}: noise-only cells are added to super-resolution files (Low_Tree "
                                     "and High_Tree) only")
                file_index = self.files.index(Path(chunk.path).resolve())
                rng = np.random.default_rng([self.noise_cells.seed, file_index, chunk.entry_start])
                low, high = dilute(low, high, self.noise_cells, self.factor or chunk.factor, self.options.layers,
                                   rng, self.geometry)
            data, slices = build_storage(low, high, self.options, factor=self.factor or chunk.factor,
                                         geometry=self.geometry, first_event=chunk.entry_start,
                                         drop_empty=self.drop_empty, fractions=self.fractions)
            # which of self.files each event comes from (with ``event``, its entry there): the record of what a
            # model trained on
            data.file = torch.full_like(data.event, self.files.index(Path(chunk.path).resolve()))
            slices["file"] = slices["event"]
            parts.append((data, slices))
        if not parts:
            raise ValueError(f"no events in {', '.join(map(str, self.files))}")
        data, slices = concat_storages(parts)
        # a unique temporary file and an atomic rename: processes building the same cache at once (two trainings
        # started together) each write a whole file, and the last rename wins
        save_checkpoint((data.to_dict(), slices), self.processed_paths[0])

    def split(self, fractions=(0.8, 0.1, 0.1), seed: int = 0):
        """Disjoint random subsets with the given fractions (deterministic for a seed)."""
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
        bounds = torch.tensor([0.0, *fractions]).cumsum(0) / sum(fractions) * len(self)
        return [self.index_select(order[int(a):int(b)]) for a, b in zip(bounds[:-1], bounds[1:])]

    def storage(self, events: torch.Tensor | None = None):
        """The collated ``(data, slices)`` of all events, or of a subset."""
        if events is None:
            return self._data, self.slices
        return select_events(self._data, self.slices, events)

    def set_cell_values(self, key: str, values: torch.Tensor, like: str) -> None:
        """Store ``values`` (one row per cell of the storage's ``like`` tensor, e.g. ``fine_layer``) as ``key`` of
        every event, sliced as ``like``; the dataset and every subset of it share the storage."""
        if values.size(0) != self._data[like].size(0):
            raise ValueError(f"{key}: {values.size(0)} rows for {self._data[like].size(0)} cells of {like}")
        self._data[key] = values
        self.slices[key] = self.slices[like]


class CocoaStream(IterableDataset):
    """Batches of paired graphs built chunk by chunk from COCOA files: only one chunk is ever in memory.

    With a ``torch.utils.data.DataLoader(stream, batch_size=None, num_workers=n)``, workers take turns over chunks.

    Args:
        files, options, factor, drop_empty, geometry: as :class:`CocoaDataset`.
        batch_size: events per batch.
        shuffle: shuffle events within each chunk, from ``seed``.
        step_size: events read per chunk.
    """

    def __init__(self, files, options: GraphOptions = GraphOptions(), *, batch_size: int = 32,
                 factor: int | None = None, drop_empty: bool = True, shuffle: bool = False, seed: int = 0,
                 step_size: int = 2000, geometry: Geometry | None = None, transform=None):
        self.files = [Path(f) for f in ([files] if isinstance(files, (str, Path)) else files)]
        missing = [f for f in self.files if not f.exists()]
        if missing:
            raise _missing_files_error(missing)
        for path in self.files:
            warn_if_noise_differs(path)
        self.options, self.factor, self.drop_empty = options, factor, drop_empty
        self.batch_size, self.shuffle, self.seed, self.step_size = batch_size, shuffle, seed, step_size
        self.geometry, self.transform = geometry or Geometry.cocoa(), transform

    def _chunk_ranges(self) -> list[tuple[int, int]]:
        """Global [start, stop) event ranges of the chunks (a chunk never spans two files)."""
        ranges, first = [], 0
        for path in self.files:
            n = open_cocoa(path).num_events
            ranges += [(first + a, first + min(a + self.step_size, n)) for a in range(0, n, self.step_size)]
            first += n
        return ranges

    def __iter__(self):
        worker = get_worker_info()
        generator = torch.Generator().manual_seed(self.seed + (worker.id if worker else 0))
        ranges = self._chunk_ranges()
        if worker is not None:  # workers take turns, each reading only its own chunks
            ranges = ranges[worker.id::worker.num_workers]
        for start, stop in ranges:
            for chunk in iter_cocoa(self.files, low_branches=GRAPH_BRANCHES_LOW, high_branches=GRAPH_BRANCHES_HIGH,
                                    step_size=self.step_size, entry_start=start, entry_stop=stop,
                                    factor=self.factor):
                data, slices = build_storage(chunk.low, chunk.high, self.options,
                                             factor=self.factor or chunk.factor, geometry=self.geometry,
                                             first_event=chunk.entry_start, drop_empty=self.drop_empty)
                n = len(slices["event"]) - 1
                order = torch.randperm(n, generator=generator) if self.shuffle else torch.arange(n)
                for begin in range(0, n, self.batch_size):
                    batch = collate_events(data, slices, order[begin:begin + self.batch_size])
                    yield self.transform(batch) if self.transform is not None else batch


def read_events(path: str | Path, options: GraphOptions = GraphOptions(), *, exclude=None,
                max_events: int | None = None, factor: int | None = None, drop_empty: bool = True,
                step_size: int = 2000, geometry: Geometry | None = None):
    """The collated graphs ``(data, slices)`` of the events of one COCOA file, in entry order, without caching.

    Reads chunk by chunk and stops once it has ``max_events``, so memory grows with the events kept, not with the
    file (:class:`CocoaDataset` builds and holds every event of its files).

    Args:
        path: the file.
        options, factor, drop_empty, geometry, step_size: as :class:`CocoaDataset`.
        exclude: entries to leave out (e.g. those a model trained on: :func:`graphsr.inference.seen_entries`).
        max_events: keep at most this many events (the first ones, in entry order, not excluded).
    """
    path = Path(path)
    if not path.exists():
        raise _missing_files_error([path])
    warn_if_noise_differs(path)
    exclude = torch.as_tensor([] if exclude is None else exclude, dtype=torch.long)
    parts, kept = [], 0
    for chunk in iter_cocoa(path, low_branches=GRAPH_BRANCHES_LOW, high_branches=GRAPH_BRANCHES_HIGH,
                            step_size=step_size, factor=factor):
        data, slices = build_storage(chunk.low, chunk.high, options, factor=factor or chunk.factor,
                                     geometry=geometry or Geometry.cocoa(), first_event=chunk.entry_start,
                                     drop_empty=drop_empty)
        wanted = torch.nonzero(~torch.isin(data.event, exclude)).squeeze(1)
        if max_events is not None:
            wanted = wanted[:max_events - kept]
        if len(wanted):
            parts.append(select_events(data, slices, wanted))
            kept += len(wanted)
        if max_events is not None and kept >= max_events:
            break
    if not parts:
        raise ValueError(f"no events to read in {path}: every entry is excluded or has no cell in the layers "
                         f"{options.layers}")
    return concat_storages(parts)
