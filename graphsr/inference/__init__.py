"""Super-resolve events with a trained checkpoint: the resolver (:mod:`.resolver`), the point estimate and the
ensemble's spread (:mod:`.estimate`), the calibration (:mod:`.calibration`), the guards that keep training events out
of scores (:mod:`.guards`) and COCOA output trees (:mod:`.trees`). Whole files: :mod:`graphsr.pipelines.super_resolve`.
"""

from graphsr.inference.calibration import central_coverage, fit_calibration, fit_occupancy, occupancy_text
from graphsr.inference.estimate import ensemble_summary, inflate, point_estimate, spread_totals
from graphsr.inference.guards import seen_entries, unseen_events
from graphsr.inference.resolver import PRETRAINED, PyramidResolver, SuperResolver, load_resolver, pretrained_path
from graphsr.inference.trees import output_trees
from graphsr.units import HIT_THRESHOLD

__all__ = ["HIT_THRESHOLD", "PRETRAINED", "PyramidResolver", "SuperResolver", "central_coverage", "ensemble_summary",
           "fit_calibration", "fit_occupancy", "inflate", "load_resolver", "occupancy_text", "output_trees",
           "point_estimate", "pretrained_path", "seen_entries", "spread_totals", "unseen_events"]
