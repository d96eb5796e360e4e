"""One event as paired coarse / fine graphs."""

from __future__ import annotations

from typing import Any

from torch_geometric.data import Data

# How each index-valued key is offset when events are batched: by the number of fine or coarse nodes.
_FINE_INDEX_KEYS = {"fine_edge_index"}
_COARSE_INDEX_KEYS = {"coarse_edge_index", "fine_parent"}


class PairData(Data):
    r"""An event as two graphs: the coarse cells the detector measured and the fine cells they came from.

    Fine nodes are the graph's nodes (``num_nodes``, ``batch``); coarse nodes carry their own ``coarse_batch``.
    Energies are in GeV, angles in rad. Fine nodes are in block order: the children of each coarse node are
    consecutive, coarse nodes in order.

    Attributes:
        coarse_pos: [Nc, 2] cell centre (eta, phi), phi in (-pi, pi].
        coarse_layer: [Nc] layer index (0-2 ECAL, 3-5 HCAL).
        coarse_energy: [Nc] measured energy (with noise).
        coarse_cell: [Nc] cell id in the coarse :class:`~graphsr.detector.Geometry`.
        coarse_edge_index: [2, Ec] edges among coarse nodes (source, target).
        coarse_batch: [Nc] graph of each coarse node (zeros for one event; offset by batching).
        fine_pos, fine_layer, fine_cell: as above, for the fine nodes [Nf].
        fine_energy: [Nf] true fine-cell energy (noise-free); absent when only coarse cells are known.
        fine_parent: [Nf] index of each fine node's coarse parent.
        fine_edge_index: [2, Ef] edges among fine nodes.
        num_particles: [1] number of particles of the event.
        particle_kin: [P, 3] particle (energy GeV, eta, phi); particle_pdgid: [P].
        event: [1] entry of the event in its file.
        file: [1] index of that file in its dataset's file list (:class:`~graphsr.datasets.CocoaDataset`).
    """

    @property
    def num_nodes(self) -> int | None:
        if "fine_layer" in self._store:
            return self._store["fine_layer"].size(0)
        return super().num_nodes

    @property
    def num_coarse_nodes(self) -> int:
        return self.coarse_layer.size(0)

    def __inc__(self, key: str, value: Any, *args, **kwargs) -> Any:
        if key in _FINE_INDEX_KEYS:
            return self.fine_layer.size(0)
        if key in _COARSE_INDEX_KEYS:
            return self.coarse_layer.size(0)
        if key == "coarse_batch":
            return 1
        if key.endswith("_index"):
            raise KeyError(f"PairData does not know how to batch the index key {key!r}")
        return 0

    def __cat_dim__(self, key: str, value: Any, *args, **kwargs) -> Any:
        return -1 if key.endswith("edge_index") else 0

