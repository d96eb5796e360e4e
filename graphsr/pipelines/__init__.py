"""Whole steps as the command line runs them: train, then calibrate; distil, then calibrate; train a particle-flow
model, then score it on its held-out events. They sit above every layer they join (:mod:`graphsr.training`,
:mod:`graphsr.inference`, :mod:`graphsr.reco`, :mod:`graphsr.eval`), so that none of those imports another upward."""

from graphsr.pipelines.runs import calibrate, distill, train, train_reco

__all__ = ["calibrate", "distill", "train", "train_reco"]
