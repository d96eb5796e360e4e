"""Metrics as free functions: arrays or tensors in, ``(value, uncertainty)`` out.

Inputs are converted once at the boundary (:func:`as_numpy`). Uncertainties are standard errors (analytic where
there is a closed form, bootstrap otherwise, with a seed). A warning is raised when a sample is too small to trust.
"""

from __future__ import annotations

import warnings

import numpy as np

MIN_SAMPLE = 50


def as_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _check_size(n: int, what: str):
    if n < MIN_SAMPLE:
        warnings.warn(f"{what}: only {n} entries; the value and its uncertainty are not reliable", stacklevel=3)


def per_event_sum(values, event_index, num_events: int | None = None) -> np.ndarray:
    """Sum of per-cell ``values`` per event (``event_index``: the event of each cell, 0..E-1)."""
    event_index = np.asarray(as_numpy(event_index), dtype=np.int64)
    num_events = int(event_index.max()) + 1 if num_events is None else num_events
    return np.bincount(event_index, weights=as_numpy(values), minlength=num_events)


def relative_residual_spread(estimate, truth) -> tuple[float, float]:
    """Standard deviation of ``(estimate - truth) / truth`` over events, with its standard error.

    The headline figure of the published study: the event's ECAL energy from coarse or super-resolved cells
    against the fine truth (arXiv 2409.16052: 0.0057 coarse, 0.0034 super-resolved, single electrons).
    """
    estimate, truth = as_numpy(estimate), as_numpy(truth)
    residual = (estimate - truth) / truth
    n = len(residual)
    _check_size(n, "relative_residual_spread")
    spread = float(residual.std(ddof=1))
    return spread, spread / np.sqrt(2 * (n - 1))


def relative_residual_mean(estimate, truth) -> tuple[float, float]:
    """Mean of ``(estimate - truth) / truth`` (the bias), with its standard error."""
    residual = (as_numpy(estimate) - as_numpy(truth)) / as_numpy(truth)
    _check_size(len(residual), "relative_residual_mean")
    return float(residual.mean()), float(residual.std(ddof=1) / np.sqrt(len(residual)))


def cell_error(estimate, truth) -> tuple[float, float]:
    """Root-mean-square per-cell error (same units as the inputs), with a standard error."""
    squared = (as_numpy(estimate) - as_numpy(truth)) ** 2
    _check_size(len(squared), "cell_error")
    mse = squared.mean()
    rmse = float(np.sqrt(mse))
    # delta method: se(sqrt(m)) = se(m) / (2 sqrt(m))
    return rmse, float(squared.std(ddof=1) / np.sqrt(len(squared)) / (2 * max(rmse, 1e-300)))


def even_split(coarse_energy, fine_parent) -> np.ndarray:
    """Baseline: each coarse cell's energy shared evenly among its children."""
    fine_parent = np.asarray(as_numpy(fine_parent), dtype=np.int64)
    coarse_energy = as_numpy(coarse_energy)
    children = np.bincount(fine_parent, minlength=len(coarse_energy))
    return coarse_energy[fine_parent] / children[fine_parent]


def _bootstrap(statistic, arrays, seed: int = 0, rounds: int = 100) -> float:
    """Standard deviation of ``statistic(*resampled arrays)`` over bootstrap resamples of each array."""
    rng = np.random.default_rng(seed)
    values = [statistic(*(a[rng.integers(0, len(a), len(a))] for a in arrays)) for _ in range(rounds)]
    return float(np.std(values, ddof=1))


def wasserstein(a, b, *, seed: int = 0) -> tuple[float, float]:
    """Wasserstein-1 distance between two 1D samples (same units as the inputs), with a bootstrap error."""
    from scipy.stats import wasserstein_distance

    a, b = as_numpy(a), as_numpy(b)
    _check_size(min(len(a), len(b)), "wasserstein")
    return float(wasserstein_distance(a, b)), _bootstrap(wasserstein_distance, (a, b), seed)


def occupancy(estimate, truth, threshold: float) -> dict[str, float]:
    """Hit cells (energy > threshold): precision and recall of the estimate's hits against the truth's."""
    hit_est, hit_true = as_numpy(estimate) > threshold, as_numpy(truth) > threshold
    both = float(np.sum(hit_est & hit_true))
    return {"precision": both / max(hit_est.sum(), 1), "recall": both / max(hit_true.sum(), 1),
            "estimate_hits": float(hit_est.mean()), "truth_hits": float(hit_true.mean())}


def hallucinated_fraction(estimate, truth) -> float:
    """Fraction of the estimate's positive energy placed in cells whose true energy is zero."""
    estimate, truth = as_numpy(estimate), as_numpy(truth)
    positive = np.clip(estimate, 0, None)
    return float(positive[truth == 0].sum() / max(positive.sum(), 1e-300))


def coverage(samples, truth, level: float = 0.68) -> tuple[float, float]:
    """Fraction of ``truth`` values inside the ensemble's central ``level`` interval, with its binomial error.

    Args:
        samples: ``[K, N]`` K ensemble members for N quantities (cells or event energies).
        truth: ``[N]`` true values.

    A calibrated ensemble covers ``level`` of the truths (for large K; with K members the empirical interval is
    itself noisy and covers less).
    """
    samples, truth = as_numpy(samples), as_numpy(truth)
    lo, hi = np.quantile(samples, [(1 - level) / 2, (1 + level) / 2], axis=0)
    inside = (truth >= lo) & (truth <= hi)
    _check_size(len(inside), "coverage")
    p = float(inside.mean())
    return p, float(np.sqrt(p * (1 - p) / len(inside)))


def parent_sum_residual(fine_energy, fine_parent, coarse_energy) -> float:
    """Largest |sum of children - parent| relative to the largest |parent| (0 for a conserving generator)."""
    coarse_energy = as_numpy(coarse_energy)
    sums = np.bincount(np.asarray(as_numpy(fine_parent), np.int64), weights=as_numpy(fine_energy),
                       minlength=len(coarse_energy))
    return float(np.abs(sums - coarse_energy).max() / max(np.abs(coarse_energy).max(), 1e-300))


SHOWER_SHAPES = ("energy", "centroid_eta", "centroid_phi", "width_eta", "width_phi", "cells_above", "leading_fraction")


def shower_shapes(energy, eta, phi, event_index, num_events: int, threshold: float = 0.0,
                  window: float | None = None) -> dict[str, np.ndarray]:
    """Per-event shower shapes of one layer's cells (energy-weighted; negative energies count as zero).

    Returns ``[num_events]`` arrays: ``energy`` (sum), ``centroid_eta`` / ``centroid_phi`` (phi relative to the
    event's leading cell, so showers across the phi = pi line are not split), ``width_eta`` / ``width_phi``
    (weighted standard deviations), ``cells_above`` (cells with energy > threshold), ``leading_fraction`` (leading cell
    / sum). Events without energy give NaN centroids and widths. With ``window``, only the cells within ``window`` in
    eta and in phi of the event's leading cell count: the shower, without a noise-only cluster elsewhere in the
    detector, whose few hundred MeV would set the widths.
    """
    e = np.clip(as_numpy(energy), 0, None)
    eta, phi = as_numpy(eta), as_numpy(phi)
    event = np.asarray(as_numpy(event_index), dtype=np.int64)
    # eta and phi of each event's leading cell: the reference for wrapping phi and for the window
    order = np.lexsort((-e, event))
    first = np.ones(len(order), dtype=bool)
    first[1:] = event[order][1:] != event[order][:-1]
    ref, ref_eta = np.zeros(num_events), np.zeros(num_events)
    ref[event[order][first]] = phi[order][first]
    ref_eta[event[order][first]] = eta[order][first]
    dphi = np.mod(phi - ref[event] + np.pi, 2 * np.pi) - np.pi
    if window is not None:
        e = np.where((np.abs(eta - ref_eta[event]) <= window) & (np.abs(dphi) <= window), e, 0.0)
    total = np.bincount(event, weights=e, minlength=num_events)
    leading = np.zeros(num_events)
    np.maximum.at(leading, event, e)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = lambda x: np.bincount(event, weights=e * x, minlength=num_events) / total  # noqa: E731
        c_eta, c_dphi = mean(eta), mean(dphi)
        w_eta = np.sqrt(np.clip(mean(eta**2) - c_eta**2, 0, None))
        w_phi = np.sqrt(np.clip(mean(dphi**2) - c_dphi**2, 0, None))
        lead = leading / total
    c_phi = np.mod(c_dphi + ref + np.pi, 2 * np.pi) - np.pi
    return {"energy": total, "centroid_eta": c_eta, "centroid_phi": c_phi, "width_eta": w_eta, "width_phi": w_phi,
            "cells_above": np.bincount(event, weights=(e > threshold).astype(float), minlength=num_events),
            "leading_fraction": lead}


def frechet_distance(a, b) -> float:
    """Frechet distance between Gaussian fits of two samples ``[N, F]``:
    ``|mu_a - mu_b|^2 + Tr(C_a + C_b - 2 (C_a C_b)^(1/2))``. Biased upwards at finite N (by about c / N):
    :func:`frechet_physics_distance` removes that."""
    from scipy import linalg

    a, b = np.atleast_2d(as_numpy(a).T).T, np.atleast_2d(as_numpy(b).T).T
    mu = a.mean(0) - b.mean(0)
    ca, cb = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    root = linalg.sqrtm(ca @ cb)
    return float(mu @ mu + np.trace(ca + cb - 2 * np.real(root)))


def frechet_physics_distance(a, b, *, points: int = 10, batches: int = 20, min_size: int | None = None,
                             max_size: int | None = None, seed: int = 0) -> tuple[float, float]:
    """Frechet physics distance (FPD, Kansal et al., arXiv 2211.10295), extrapolated to infinite sample size.

    The Frechet distance of samples of N events grows like FD_inf + c / N. For ``points`` sizes N at regular
    intervals of 1 / N between ``min_size`` and ``max_size`` (default: a quarter of the smaller sample, and all of
    it), the mean distance of ``batches`` random draws (with replacement) of N events from each sample is measured;
    a straight-line fit against 1 / N, intercept and slope kept >= 0 as in the paper, gives FD_inf (the intercept)
    and its error (from the fit). Features should be standardised first (e.g. by the truth's mean and std).

    Returns:
        (FPD, its standard error).
    """
    from scipy.optimize import curve_fit

    a, b = np.atleast_2d(as_numpy(a).T).T, np.atleast_2d(as_numpy(b).T).T
    _check_size(min(len(a), len(b)), "frechet_physics_distance")
    max_size = max_size or min(len(a), len(b))
    if max_size < a.shape[1] + 2:  # covariances of fewer events than features are singular
        warnings.warn(f"frechet_physics_distance: {max_size} events for {a.shape[1]} features; no value",
                      stacklevel=2)
        return float("nan"), float("nan")
    min_size = min(min_size or max(max_size // 4, a.shape[1] + 2), max_size)
    sizes = (1 / np.linspace(1 / min_size, 1 / max_size, points)).astype(np.int64)
    rng = np.random.default_rng(seed)
    means = [np.mean([frechet_distance(a[rng.integers(0, len(a), n)], b[rng.integers(0, len(b), n)])
                      for _ in range(batches)]) for n in sizes]
    (intercept, _), cov = curve_fit(lambda x, c0, c1: c0 + c1 * x, 1 / sizes, means,
                                    bounds=([0, 0], [np.inf, np.inf]))
    return float(intercept), float(np.sqrt(cov[0, 0]))


def mmd_polynomial(a, b, degree: int = 4) -> float:
    """Unbiased estimate of the squared maximum mean discrepancy with the polynomial kernel
    ``k(x, y) = (x . y / F + 1)^degree`` (``F`` features) between samples ``[N, F]`` and ``[M, F]``."""
    features = a.shape[1]

    def kernel(x, y):
        base = x @ y.T / features + 1
        k = base.copy()
        for _ in range(degree - 1):  # in place: several times faster than ** on large matrices
            k *= base
        return k

    off_diagonal = lambda k: (k.sum() - np.trace(k)) / (len(k) * (len(k) - 1))  # noqa: E731
    return float(off_diagonal(kernel(a, a)) + off_diagonal(kernel(b, b)) - 2 * kernel(a, b).mean())


def kernel_physics_distance(a, b, *, batches: int = 10, batch_size: int = 5000, seed: int = 0) -> tuple[float, float]:
    """Kernel physics distance (KPD, Kansal et al., arXiv 2211.10295): :func:`mmd_polynomial` of degree 4 on
    ``batches`` random batches, reported as the median and half the 16-84% range of the batch values.

    Zero in expectation for samples of one distribution. Batches are drawn without replacement (repeated events
    would bias the unbiased estimator) and hold at most half of the smaller sample, so that they differ. Features
    should be standardised first.

    Returns:
        (median KPD, half its 16-84% range).
    """
    a, b = np.atleast_2d(as_numpy(a).T).T, np.atleast_2d(as_numpy(b).T).T
    _check_size(min(len(a), len(b)), "kernel_physics_distance")
    n = max(2, min(batch_size, len(a) // 2, len(b) // 2))
    rng = np.random.default_rng(seed)
    values = [mmd_polynomial(a[rng.choice(len(a), n, replace=False)], b[rng.choice(len(b), n, replace=False)])
              for _ in range(batches)]
    low, high = np.percentile(values, [16, 84])
    return float(np.median(values)), float((high - low) / 2)


def classifier_auc(truth_features, generated_features, *, seed: int = 0) -> tuple[float, float]:
    """ROC AUC of a gradient-boosted classifier separating truth from generated events (CaloChallenge-style),
    on a held-out half, with the Hanley-McNeil standard error. 0.5: indistinguishable; 1: fully separable."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import train_test_split

    x = np.concatenate([as_numpy(truth_features), as_numpy(generated_features)])
    y = np.concatenate([np.zeros(len(truth_features)), np.ones(len(generated_features))])
    _check_size(len(x) // 2, "classifier_auc")
    x = np.nan_to_num(np.atleast_2d(x.T).T)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.5, random_state=seed, stratify=y)
    classifier = HistGradientBoostingClassifier(max_iter=100, random_state=seed).fit(x_train, y_train)
    auc = float(roc_auc_score(y_test, classifier.predict_proba(x_test)[:, 1]))
    n1, n0 = y_test.sum(), len(y_test) - y_test.sum()
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    se = np.sqrt((auc * (1 - auc) + (n1 - 1) * (q1 - auc**2) + (n0 - 1) * (q2 - auc**2)) / (n0 * n1))
    return auc, float(se)
