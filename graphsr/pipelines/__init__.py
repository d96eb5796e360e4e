"""Whole steps as the command line runs them: train, then calibrate; distil, then calibrate; train a particle-flow
model, then score it on its held-out events; super-resolve whole files. They sit above every layer they join (:mod:`graphsr.training`,
:mod:`graphsr.inference`, :mod:`graphsr.reco`, :mod:`graphsr.eval`), so that none of those imports another upward."""

from graphsr.pipelines.runs import calibrate, distill, train, train_reco
from graphsr.pipelines.super_resolve import expand_inputs, shard_outputs, super_resolve_file, super_resolve_files

__all__ = ["calibrate", "distill", "expand_inputs", "shard_outputs", "super_resolve_file", "super_resolve_files",
           "train", "train_reco"]
