"""Statistics for success estimates and alignment aggregates: intervals, tests, cluster bootstrap.

- Binomial intervals for a Monte Carlo success estimate v_j = successes / n (Wilson score or exact
  Clopper-Pearson), as method.md asks for with every estimate.
- One-sided Mann-Whitney U (alignment on incorrect rollouts greater than on correct ones).
- A cluster bootstrap of the mean and of a difference of means: nodes of one rollout (or question) are
  correlated, so whole clusters are resampled with replacement, never single nodes.
- Spearman rank correlation.

This module knows nothing of records, teachers or trees: it takes numbers and cluster labels. Every
random choice comes from ``numpy.random.default_rng(seed)``, so the same inputs and seed give the same
result; cluster labels are put in a canonical order first (numeric for integer arrays, else by
``repr``), so reordering the input does not change which clusters a given draw picks.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

import numpy as np
from scipy import stats as scipy_stats

__all__ = [
    "wilson_interval",
    "beta_interval",
    "success_interval",
    "mann_whitney_greater",
    "cluster_bootstrap_mean",
    "cluster_bootstrap_diff",
    "spearman",
]

# Bootstrap draws are made in blocks of at most this many cluster indices, to bound memory when
# there are many clusters and many resamples. The block size depends only on the inputs, so it
# does not affect determinism.
_DRAW_BLOCK_ELEMENTS = 1 << 22


def _check_confidence(confidence: float) -> None:
    if not (0.0 < confidence < 1.0):
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def _check_counts(successes: int, n: int) -> None:
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")


# --------------------------------------------------------------------------------------------------
# Binomial intervals
# --------------------------------------------------------------------------------------------------


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion; (0, 1) when n == 0."""
    _check_counts(successes, n)
    _check_confidence(confidence)
    if n == 0:
        return 0.0, 1.0
    z = float(scipy_stats.norm.ppf(0.5 + confidence / 2.0))
    phat = successes / n
    z2_n = z * z / n
    center = (phat + z2_n / 2.0) / (1.0 + z2_n)
    half_width = z * math.sqrt(phat * (1.0 - phat) / n + z2_n / (4.0 * n)) / (1.0 + z2_n)
    # At successes == 0 or n the interval touches the boundary exactly; pin it against rounding.
    low = 0.0 if successes == 0 else max(0.0, center - half_width)
    high = 1.0 if successes == n else min(1.0, center + half_width)
    return low, high


def beta_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Clopper-Pearson (exact, Beta quantile) interval; (0, 1) when n == 0. Coverage >= confidence."""
    _check_counts(successes, n)
    _check_confidence(confidence)
    if n == 0:
        return 0.0, 1.0
    tail = (1.0 - confidence) / 2.0
    low = 0.0 if successes == 0 else float(scipy_stats.beta.ppf(tail, successes, n - successes + 1))
    high = 1.0 if successes == n else float(scipy_stats.beta.ppf(1.0 - tail, successes + 1, n - successes))
    return low, high


def success_interval(successes: int, n: int, method: str = "wilson", confidence: float = 0.95) -> tuple[float, float]:
    """The interval named by ``method``: 'wilson' or 'beta' (Clopper-Pearson)."""
    if method == "wilson":
        return wilson_interval(successes, n, confidence)
    if method == "beta":
        return beta_interval(successes, n, confidence)
    raise ValueError(f"unknown interval method {method!r}; choose 'wilson' or 'beta'")


# --------------------------------------------------------------------------------------------------
# Tests and correlations
# --------------------------------------------------------------------------------------------------


def mann_whitney_greater(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """One-sided Mann-Whitney U test, H1: x is stochastically greater than y. (nan, nan) if either is empty.

    Returns U of x (the number of pairs with x > y, ties counting one half) and the p-value.
    """
    x_arr, y_arr = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x_arr.size == 0 or y_arr.size == 0:
        return float("nan"), float("nan")
    result = scipy_stats.mannwhitneyu(x_arr, y_arr, alternative="greater")
    return float(result.statistic), float(result.pvalue)


def spearman(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Spearman's rho and its two-sided p-value over the pairs where both values are finite.

    (nan, nan) with fewer than 3 such pairs or when either side is constant (rho is undefined).
    """
    x_arr, y_arr = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x_arr.shape != y_arr.shape:
        raise ValueError(f"x and y must have the same length, got {x_arr.size} and {y_arr.size}")
    finite = np.isfinite(x_arr) & np.isfinite(y_arr)
    x_arr, y_arr = x_arr[finite], y_arr[finite]
    if x_arr.size < 3 or np.all(x_arr == x_arr[0]) or np.all(y_arr == y_arr[0]):
        return float("nan"), float("nan")
    result = scipy_stats.spearmanr(x_arr, y_arr)
    return float(result.statistic), float(result.pvalue)


# --------------------------------------------------------------------------------------------------
# Cluster bootstrap
# --------------------------------------------------------------------------------------------------


def _cluster_totals(values: Sequence[float], clusters: Sequence[Hashable]) -> tuple[np.ndarray, np.ndarray]:
    """Per-cluster sum of values and node count, clusters ordered by repr of their label."""
    values_arr = np.asarray(values, dtype=np.float64)
    if values_arr.ndim != 1 or len(clusters) != values_arr.size:
        raise ValueError(f"values and clusters must have the same length, got {values_arr.size} and {len(clusters)}")
    if isinstance(clusters, np.ndarray) and clusters.dtype.kind in "iub":
        # Fast path for integer labels (what the aggregator passes): numeric order is the sorted order.
        labels, cluster_index = np.unique(clusters, return_inverse=True)
        n_labels = labels.size
    else:
        ordered = sorted(set(clusters), key=repr)
        index_of = {label: i for i, label in enumerate(ordered)}
        cluster_index = np.fromiter((index_of[c] for c in clusters), dtype=np.int64, count=len(clusters))
        n_labels = len(ordered)
    sums = np.bincount(cluster_index, weights=values_arr, minlength=n_labels)
    counts = np.bincount(cluster_index, minlength=n_labels).astype(np.float64)
    return sums, counts


def _bootstrap_means(sums: np.ndarray, counts: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Node-level mean of each of n_boot resamples of whole clusters (with replacement)."""
    n_clusters = sums.size
    rows_per_block = max(1, _DRAW_BLOCK_ELEMENTS // n_clusters)
    means = np.empty(n_boot, dtype=np.float64)
    for start in range(0, n_boot, rows_per_block):
        stop = min(n_boot, start + rows_per_block)
        picks = rng.integers(0, n_clusters, size=(stop - start, n_clusters))
        means[start:stop] = sums[picks].sum(axis=1) / counts[picks].sum(axis=1)
    return means


def _percentile_interval(draws: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(draws, [tail, 1.0 - tail])
    return float(low), float(high)


def cluster_bootstrap_mean(
    values: Sequence[float],
    clusters: Sequence[Hashable],
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, float, float]:
    """(mean, lo, hi): node mean and its percentile CI from resampling whole clusters.

    (nan, nan, nan) for no values; (mean, nan, nan) when n_boot == 0.
    """
    _check_confidence(confidence)
    if n_boot < 0:
        raise ValueError(f"n_boot must be >= 0, got {n_boot}")
    sums, counts = _cluster_totals(values, clusters)
    if counts.sum() == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(sums.sum() / counts.sum())
    if n_boot == 0:
        return mean, float("nan"), float("nan")
    draws = _bootstrap_means(sums, counts, n_boot, np.random.default_rng(seed))
    low, high = _percentile_interval(draws, confidence)
    return mean, low, high


def cluster_bootstrap_diff(
    values_a: Sequence[float],
    clusters_a: Sequence[Hashable],
    values_b: Sequence[float],
    clusters_b: Sequence[Hashable],
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, float, float, float]:
    """(diff, lo, hi, p_value) for mean(a) - mean(b), clusters resampled independently within each group.

    p_value is one-sided for H1: mean(a) > mean(b): (#{bootstrap diffs <= 0} + 1) / (n_boot + 1).
    All nan when either group is empty; (diff, nan, nan, nan) when n_boot == 0.
    """
    _check_confidence(confidence)
    if n_boot < 0:
        raise ValueError(f"n_boot must be >= 0, got {n_boot}")
    sums_a, counts_a = _cluster_totals(values_a, clusters_a)
    sums_b, counts_b = _cluster_totals(values_b, clusters_b)
    if counts_a.sum() == 0 or counts_b.sum() == 0:
        return float("nan"), float("nan"), float("nan"), float("nan")
    diff = float(sums_a.sum() / counts_a.sum() - sums_b.sum() / counts_b.sum())
    if n_boot == 0:
        return diff, float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    # Group a's draws first, then b's, from one generator: deterministic and independent of each other.
    draws = _bootstrap_means(sums_a, counts_a, n_boot, rng) - _bootstrap_means(sums_b, counts_b, n_boot, rng)
    low, high = _percentile_interval(draws, confidence)
    p_value = (int(np.count_nonzero(draws <= 0.0)) + 1) / (n_boot + 1)
    return diff, low, high, p_value
