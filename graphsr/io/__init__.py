"""ROOT I/O for COCOA events: write TTrees with uproot, read real or graphsr files chunk by chunk, validate.

See :mod:`graphsr.io.writer` for the file layout and branch names, :mod:`graphsr.io.reader` for reading real COCOA
files (:mod:`~graphsr.io.inspect` what a file holds, :mod:`~graphsr.io.validation` the checks on every chunk,
:mod:`~graphsr.io.roundtrip` write-and-read-back checks).
"""

from graphsr.io.digest import file_digest
from graphsr.io.errors import CocoaFormatError
from graphsr.io.inspect import ALL_BRANCHES, GRAPH_BRANCHES_HIGH, GRAPH_BRANCHES_LOW, CocoaFile, open_cocoa
from graphsr.io.reader import CocoaChunk, iter_cocoa, read_cocoa
from graphsr.io.roundtrip import check_roundtrip, compare_trees
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
