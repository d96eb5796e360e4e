"""Super-resolve whole COCOA files, one output file per input, chunk by chunk."""

from __future__ import annotations

import glob
from pathlib import Path

import torch
from tqdm import tqdm

from graphsr.datasets.cocoa import warn_if_noise_differs
from graphsr.graphs import build_storage
from graphsr.inference.resolver import SuperResolver
from graphsr.inference.trees import output_trees
from graphsr.io import ALL_BRANCHES, GRAPH_BRANCHES_HIGH, CocoaWriter, iter_cocoa, open_cocoa
from graphsr.provenance import file_hash, provenance


def super_resolve_file(resolver: SuperResolver, input_path: str | Path, output_path: str | Path, *,
                       overwrite: bool = False, step_size: int = 1000,
                       max_events: int | None = None, progress: bool = True, **sample_args) -> int:
    """Super-resolve every event of a COCOA file (``Low_Tree`` + ``High_Tree`` or plain ``Out_Tree``) into a
    new file (:func:`output_trees`), one output entry per input entry. ``Low_Tree`` keeps every branch of the
    input's coarse tree (particles, topoclusters, jets, tracks, ...) for the coarse cells used; the input's
    ``High_Tree`` is replaced by the generated one. Returns the number of events written.

    ``sample_args`` go to :meth:`SuperResolver.__call__` (sampler, steps, ensemble, seed, mode, eta). Warns when
    events lie outside the model's training range (:meth:`SuperResolver.warn_if_outside`).
    """
    info = open_cocoa(input_path)
    warn_if_noise_differs(input_path, info)
    high_branches = GRAPH_BRANCHES_HIGH if info.high_tree else None
    written = 0
    # the generated High_Tree is no noise-free truth (graphsr.io.reader accepts its negative energies)
    record = provenance("sample", config=resolver.config.to_dict(), inputs=[input_path],
                        seed=sample_args.get("seed", 0), generated_trees=["High_Tree"],
                        checkpoint={"path": str(resolver.checkpoint), "hash": file_hash(resolver.checkpoint),
                                    "step": resolver.step},
                        sampling={k: v for k, v in sample_args.items() if v is not None})
    with CocoaWriter(output_path, overwrite=overwrite, provenance=record) as writer, \
            tqdm(total=min(info.num_events, max_events or info.num_events), unit="event",
                 disable=None if progress else True, desc="super-resolving") as bar:
        for chunk in iter_cocoa(input_path, low_branches=ALL_BRANCHES, high_branches=high_branches,
                                step_size=step_size, max_events=max_events, factor=resolver.factor):
            data, slices = build_storage(chunk.low, chunk.high, resolver.graph_options, factor=resolver.factor,
                                         first_event=chunk.entry_start)
            resolver.warn_if_outside((data, slices), torch.arange(len(chunk)),
                                     f"{input_path}, entries {chunk.entry_start}-{chunk.entry_stop - 1}")
            parts = {"estimate": [], "mean": [], "spread": []}
            ensemble = sample_args.get("ensemble") or resolver.config.sample.ensemble
            for _, events in resolver.chunks((data, slices), torch.arange(len(chunk)), ensemble):
                result = resolver((data, slices), events, **sample_args)
                for key, values in parts.items():
                    values.append(result[key].cpu())
                bar.update(len(events))
            writer.write(output_trees(data, slices, *(torch.cat(parts[k]) for k in ("estimate", "mean", "spread")),
                                      inputs=chunk.low, layers=resolver.graph_options.layers))
            written += len(chunk)
    return written


def expand_inputs(patterns) -> list[Path]:
    """Files named by paths and glob patterns (``data/run_*.root``), in the order given, each pattern's matches
    sorted, each file once. FileNotFoundError names a missing file or a pattern that matches nothing."""
    files, resolved = [], set()
    for pattern in map(str, patterns):
        magic = glob.has_magic(pattern)
        matches = [m for m in sorted(glob.glob(pattern)) if Path(m).is_file()] if magic else [pattern]
        if not matches or not Path(matches[0]).is_file():
            raise FileNotFoundError(f"no file matches {pattern}" if magic else f"no file {pattern}")
        for path in map(Path, matches):
            if path.resolve() not in resolved:
                files.append(path)
                resolved.add(path.resolve())
    return files


def shard_outputs(inputs, output_dir: str | Path, *, overwrite: bool = False) -> list[Path]:
    """The output of each input in ``output_dir``: a file of the same name. Refuses (ValueError or
    FileExistsError, naming the files) two inputs of the same name, an output that is one of the inputs, and,
    without ``overwrite``, an output that exists, so that a refused call writes nothing."""
    inputs = [Path(p) for p in inputs]
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"{output_dir} is a file: with several inputs, the output must be a directory")
    outputs, named = [], {}
    for path in inputs:
        if path.name in named:
            raise ValueError(f"{named[path.name]} and {path} would both be written to {output_dir / path.name}")
        named[path.name] = path
        outputs.append(output_dir / path.name)
    for path, out in zip(inputs, outputs):
        if out.exists() and out.resolve() in {p.resolve() for p in inputs}:
            raise ValueError(f"{out} is an input: its output would replace it; choose another output directory")
        if out.exists() and not overwrite:
            raise FileExistsError(f"{out} (the output of {path}) exists; pass --overwrite to replace it")
    return outputs


def super_resolve_files(resolver: SuperResolver, inputs, output_dir: str | Path, *, overwrite: bool = False,
                        **kwargs) -> dict[Path, int]:
    """Super-resolve several COCOA files, one output each in ``output_dir`` (:func:`shard_outputs`; created if
    missing), one file at a time (:func:`super_resolve_file`, with ``kwargs``). Every input is opened and every
    output checked before anything is written. Returns the events written per output."""
    inputs = [Path(p) for p in inputs]
    outputs = shard_outputs(inputs, output_dir, overwrite=overwrite)
    for path in inputs:
        open_cocoa(path)  # a missing or malformed input is refused before any output exists
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    return {out: super_resolve_file(resolver, path, out, overwrite=overwrite, **kwargs)
            for path, out in zip(inputs, outputs)}
