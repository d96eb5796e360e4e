"""PyG datasets over COCOA ROOT files."""

from graphsr.datasets.cocoa import CocoaDataset, CocoaStream, read_events

__all__ = ["CocoaDataset", "CocoaStream", "read_events"]
