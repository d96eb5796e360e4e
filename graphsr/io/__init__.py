"""ROOT I/O for COCOA events: write TTrees with uproot, read real or graphsr files chunk by chunk, validate.

See :mod:`graphsr.io.writer` for the file layout and branch names, :mod:`graphsr.io.reader` for reading real COCOA
files.
"""

from graphsr.io.digest import file_digest
from graphsr.io.errors import CocoaFormatError
from graphsr.io.reader import (
    ALL_BRANCHES,
    GRAPH_BRANCHES_HIGH,
    GRAPH_BRANCHES_LOW,
    CocoaChunk,
    CocoaFile,
    check_roundtrip,
    compare_trees,
    iter_cocoa,
    open_cocoa,
    read_cocoa,
)
from graphsr.io.writer import CocoaWriter, counter_name, write_cocoa

__all__ = [
    "ALL_BRANCHES",
    "GRAPH_BRANCHES_HIGH",
    "GRAPH_BRANCHES_LOW",
    "CocoaChunk",
    "CocoaFile",
    "CocoaFormatError",
    "CocoaWriter",
    "check_roundtrip",
    "compare_trees",
    "counter_name",
    "file_digest",
    "iter_cocoa",
    "open_cocoa",
    "read_cocoa",
    "write_cocoa",
]
