"""Which events a model may be scored on: never those it trained or validated on."""

from __future__ import annotations

from pathlib import Path

import torch

from graphsr.inference.resolver import SuperResolver
from graphsr.io import file_digest


def seen_entries(resolver: SuperResolver, path: str | Path, split: str = "test") -> torch.Tensor | None:
    """The entries of one file that the model trained or validated (calibrated) on, once ``split`` may score the
    file at all; None for a file the model never saw.

    ``test``: the file must be one the model trained on (same content hash, whatever its name); ``all``: one it
    never saw. Anything else is refused (ValueError), so that training events are never scored as held-out ones.
    """
    if split not in ("test", "all"):
        raise ValueError(f"unknown split {split!r}: 'test' (a training file's held-out events) or 'all' (a file "
                         "the model never saw)")
    digest = file_digest(path)
    used = {part: next((f["entries"] for f in resolver.events.get(part, []) if f["sha256"] == digest), None)
            for part in ("train", "val")}
    if used["train"] is None:
        if split == "test":
            raise ValueError(f"{path} is not a file this model trained on (no file with its content hash in "
                             "the checkpoint), so it has no held-out test events: pass --split all to score all "
                             "its events")
        return None
    seen = torch.cat([used["train"], used["val"] if used["val"] is not None else used["train"][:0]])
    if split == "all":
        raise ValueError(f"{path} holds {len(used['train'])} training and {len(seen) - len(used['train'])} "
                         "validation events of this model: --split all would score them; use --split test")
    return seen


def unseen_events(resolver: SuperResolver, dataset, split: str = "test") -> tuple[torch.Tensor, str]:
    """The events of a :class:`~graphsr.datasets.CocoaDataset` (whole, any number of files) that ``split`` may
    score (:func:`seen_entries`), and a sentence saying which."""
    data = dataset.storage()[0]
    files, entries = data.file, data.event
    keep = torch.zeros(len(entries), dtype=torch.bool)
    said = []
    for i, path in enumerate(dataset.files):
        seen = seen_entries(resolver, path, split)
        mine = files == i
        if seen is None:
            keep |= mine
            said.append(f"all {int(mine.sum())} events of {path} (a file the model never saw)")
            continue
        unseen = mine & ~torch.isin(entries, seen)
        keep |= unseen
        said.append(f"the {int(unseen.sum())} events of {path} the model neither trained nor validated on")
    return torch.nonzero(keep).squeeze(1), "; ".join(said)
