"""The one exception raised for malformed COCOA ROOT files."""

from __future__ import annotations

from os import PathLike


class CocoaFormatError(ValueError):
    """A COCOA file (or a tree, branch or event in it) does not have the expected content.

    Args:
        message: what is wrong.
        file: path of the offending file.
        tree: name of the offending tree (``"Low_Tree"``, ``"High_Tree"`` or ``"Out_Tree"``).
        branch: name of the offending branch.
        event: entry number of the first offending event in its file.

    Every location given is named in the message, so the error reads well on its own.
    """

    def __init__(self, message: str, *, file: str | PathLike | None = None, tree: str | None = None,
                 branch: str | None = None, event: int | None = None):
        self.file = None if file is None else str(file)
        self.tree, self.branch = tree, branch
        self.event = None if event is None else int(event)
        self.reason = message
        where = [f"file {self.file}"] if self.file is not None else []
        where += [f"{kind} {value!r}" for kind, value in (("tree", tree), ("branch", branch)) if value is not None]
        where += [f"event {self.event}"] if self.event is not None else []
        super().__init__(f"{', '.join(where)}: {message}" if where else message)
