"""PyG datasets over COCOA ROOT files."""

from graphsr.datasets.cocoa import CocoaDataset, CocoaStream

__all__ = ["CocoaDataset", "CocoaStream"]
