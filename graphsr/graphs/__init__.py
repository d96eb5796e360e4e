"""COCOA events as paired coarse / fine PyG graphs."""

from graphsr.graphs.build import GraphOptions, build_storage, concat_storages, neighbour_edges, select_events
from graphsr.graphs.cells import CellGraph, cell_graph, cells_of
from graphsr.graphs.data import PairData
from graphsr.graphs.loader import GraphLoader, collate_events

__all__ = ["CellGraph", "GraphLoader", "GraphOptions", "PairData", "build_storage", "cell_graph", "cells_of",
           "collate_events", "concat_storages", "neighbour_edges", "select_events"]
