"""Evaluation: metrics as free functions (arrays or tensors in, value and uncertainty out) and the report."""

from graphsr.eval.metrics import (
    SHOWER_SHAPES,
    cell_error,
    classifier_auc,
    coverage,
    even_split,
    frechet_distance,
    frechet_physics_distance,
    hallucinated_fraction,
    kernel_physics_distance,
    mmd_polynomial,
    occupancy,
    parent_sum_residual,
    per_event_sum,
    relative_residual_mean,
    relative_residual_spread,
    shower_shapes,
    wasserstein,
)

__all__ = ["SHOWER_SHAPES", "cell_error", "classifier_auc", "coverage", "even_split", "frechet_distance",
           "frechet_physics_distance", "hallucinated_fraction", "kernel_physics_distance", "mmd_polynomial",
           "occupancy", "parent_sum_residual", "per_event_sum", "relative_residual_mean", "relative_residual_spread",
           "shower_shapes", "wasserstein"]
