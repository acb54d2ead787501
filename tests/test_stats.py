"""gradalign_engine.stats against published values, exact binomial sums, brute force and scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats
from scipy.optimize import brentq

from gradalign_engine.stats import (
    beta_interval,
    cluster_bootstrap_diff,
    cluster_bootstrap_mean,
    mann_whitney_greater,
    spearman,
    success_interval,
    wilson_interval,
)

# ------------------------------------------------------------------------------------------------
# Binomial intervals
# ------------------------------------------------------------------------------------------------

# Published 95% intervals to 4 decimals (81/263 is Newcombe's 1998 worked example; the others are
# standard table entries).
WILSON_KNOWN = {(0, 10): (0.0, 0.2775), (5, 10): (0.2366, 0.7634), (81, 263): (0.2553, 0.3662), (10, 10): (0.7225, 1.0)}
CLOPPER_PEARSON_KNOWN = {
    (0, 10): (0.0, 0.3085),
    (1, 10): (0.0025, 0.4450),
    (5, 10): (0.1871, 0.8129),
    (10, 10): (0.6915, 1.0),
}


@pytest.mark.parametrize("counts,expected", WILSON_KNOWN.items())
def test_wilson_known_values(counts: tuple[int, int], expected: tuple[float, float]) -> None:
    low, high = wilson_interval(*counts)
    assert low == pytest.approx(expected[0], abs=5e-5)
    assert high == pytest.approx(expected[1], abs=5e-5)


@pytest.mark.parametrize("counts,expected", CLOPPER_PEARSON_KNOWN.items())
def test_clopper_pearson_known_values(counts: tuple[int, int], expected: tuple[float, float]) -> None:
    low, high = beta_interval(*counts)
    assert low == pytest.approx(expected[0], abs=5e-5)
    assert high == pytest.approx(expected[1], abs=5e-5)


@pytest.mark.parametrize("successes,n", [(3, 17), (1, 4), (12, 40), (39, 40)])
@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_wilson_bounds_solve_the_score_equation(successes: int, n: int, confidence: float) -> None:
    # Wilson's interval is {p : |phat - p| <= z sqrt(p (1 - p) / n)}; find its ends by root finding.
    z = scipy_stats.norm.ppf(0.5 + confidence / 2)
    phat = successes / n

    def score(p: float) -> float:
        return (phat - p) ** 2 - z * z * p * (1 - p) / n

    low, high = wilson_interval(successes, n, confidence)
    assert low == pytest.approx(brentq(score, 1e-15, phat), abs=1e-10)
    assert high == pytest.approx(brentq(score, phat, 1 - 1e-15), abs=1e-10)


@pytest.mark.parametrize("successes,n", [(1, 10), (3, 17), (20, 21), (7, 7), (0, 3)])
def test_clopper_pearson_tails_are_exact_binomial_tails(successes: int, n: int) -> None:
    alpha = 0.05
    low, high = beta_interval(successes, n, 1 - alpha)
    if successes > 0:  # P(X >= x | low) = alpha / 2
        assert scipy_stats.binom.sf(successes - 1, n, low) == pytest.approx(alpha / 2, rel=1e-7)
    else:
        assert low == 0.0
    if successes < n:  # P(X <= x | high) = alpha / 2
        assert scipy_stats.binom.cdf(successes, n, high) == pytest.approx(alpha / 2, rel=1e-7)
    else:
        assert high == 1.0


@pytest.mark.parametrize("n", [1, 5, 10, 23, 50])
def test_clopper_pearson_coverage_is_at_least_nominal(n: int) -> None:
    confidence = 0.95
    bounds = [beta_interval(x, n, confidence) for x in range(n + 1)]
    pmf_grid = np.linspace(0.001, 0.999, 199)
    for p in pmf_grid:
        covered = [x for x, (low, high) in enumerate(bounds) if low <= p <= high]
        coverage = float(scipy_stats.binom.pmf(covered, n, p).sum())
        assert coverage >= confidence - 1e-12, (n, p, coverage)


def test_wilson_coverage_is_not_the_exact_method() -> None:
    # Wilson is approximate: somewhere on the grid it covers less than nominal (unlike Clopper-Pearson).
    n, confidence = 10, 0.95
    bounds = [wilson_interval(x, n, confidence) for x in range(n + 1)]
    coverages = [
        scipy_stats.binom.pmf([x for x, (lo, hi) in enumerate(bounds) if lo <= p <= hi], n, p).sum()
        for p in np.linspace(0.01, 0.99, 99)
    ]
    assert min(coverages) < confidence


def test_intervals_edge_cases_and_dispatch() -> None:
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert beta_interval(0, 0) == (0.0, 1.0)
    assert success_interval(3, 9, "wilson") == wilson_interval(3, 9)
    assert success_interval(3, 9, "beta", 0.9) == beta_interval(3, 9, 0.9)
    with pytest.raises(ValueError):
        success_interval(3, 9, "exact")
    with pytest.raises(ValueError):
        wilson_interval(5, 4)
    with pytest.raises(ValueError):
        beta_interval(1, 4, confidence=1.0)
    # Wider at higher confidence, and nested.
    lo90, hi90 = wilson_interval(4, 20, 0.9)
    lo99, hi99 = wilson_interval(4, 20, 0.99)
    assert lo99 < lo90 < 0.2 < hi90 < hi99


# ------------------------------------------------------------------------------------------------
# Mann-Whitney and Spearman
# ------------------------------------------------------------------------------------------------


def _u_brute_force(x: np.ndarray, y: np.ndarray) -> float:
    return float(sum((a > b) + 0.5 * (a == b) for a in x for b in y))


def test_mann_whitney_is_one_sided() -> None:
    rng = np.random.default_rng(0)
    low_values = rng.normal(0.0, 1.0, size=40)
    high_values = rng.normal(1.0, 1.0, size=35)
    u, p = mann_whitney_greater(high_values, low_values)
    assert u == pytest.approx(_u_brute_force(high_values, low_values))
    assert p < 1e-3
    u_rev, p_rev = mann_whitney_greater(low_values, high_values)
    assert u_rev == pytest.approx(_u_brute_force(low_values, high_values))
    assert p_rev > 0.99
    assert u + u_rev == pytest.approx(40 * 35)


def test_mann_whitney_small_exact_case_and_empty() -> None:
    # x entirely above y, no ties: the exact one-sided p is 1 / C(n_x + n_y, n_x).
    u, p = mann_whitney_greater([5.0, 6.0, 7.0], [1.0, 2.0, 3.0, 4.0])
    assert u == 12.0
    assert p == pytest.approx(1 / math.comb(7, 3))
    assert all(math.isnan(v) for v in mann_whitney_greater([], [1.0, 2.0]))
    assert all(math.isnan(v) for v in mann_whitney_greater([1.0], []))


def test_spearman_matches_scipy_and_handles_degenerate_input() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=30)
    y = 0.5 * x + rng.normal(size=30)
    rho, p = spearman(x, y)
    reference = scipy_stats.spearmanr(x, y)
    assert rho == pytest.approx(reference.statistic, rel=1e-12)
    assert p == pytest.approx(reference.pvalue, rel=1e-12)
    # Brute force: Pearson correlation of the ranks.
    assert rho == pytest.approx(np.corrcoef(scipy_stats.rankdata(x), scipy_stats.rankdata(y))[0, 1], rel=1e-12)
    # Non-finite pairs are dropped.
    x_nan, y_nan = np.append(x, np.nan), np.append(y, 3.0)
    assert spearman(x_nan, y_nan)[0] == pytest.approx(rho, rel=1e-12)
    assert all(math.isnan(v) for v in spearman([1.0, 2.0], [2.0, 1.0]))
    assert all(math.isnan(v) for v in spearman([1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 3.0, 4.0]))


# ------------------------------------------------------------------------------------------------
# Cluster bootstrap
# ------------------------------------------------------------------------------------------------


def _clustered_sample(
    rng: np.random.Generator, n_clusters: int, shift: float, cluster_sd: float = 1.0
) -> tuple[np.ndarray, list[str]]:
    """Nodes in clusters of random size sharing a cluster effect (correlated within a cluster)."""
    values, labels = [], []
    for c in range(n_clusters):
        effect = shift + rng.normal(0.0, cluster_sd)
        size = int(rng.integers(2, 9))
        values.extend(effect + rng.normal(0.0, 0.3, size=size))
        labels.extend([f"c{c}"] * size)
    return np.asarray(values), labels


def test_bootstrap_is_deterministic_and_seeded() -> None:
    values, labels = _clustered_sample(np.random.default_rng(2), 20, 0.0)
    first = cluster_bootstrap_mean(values, labels, n_boot=500, seed=7)
    assert first == cluster_bootstrap_mean(values, labels, n_boot=500, seed=7)
    assert first[1:] != cluster_bootstrap_mean(values, labels, n_boot=500, seed=8)[1:]
    assert first[0] == pytest.approx(values.mean(), rel=1e-12)
    assert first[1] < first[0] < first[2]
    # The order of the input does not change the draws (clusters are put in a canonical order).
    order = np.random.default_rng(0).permutation(values.size)
    shuffled = cluster_bootstrap_mean(values[order], [labels[i] for i in order], n_boot=500, seed=7)
    assert shuffled == pytest.approx(first, rel=1e-12)
    diff_first = cluster_bootstrap_diff(values, labels, values + 0.1, labels, n_boot=300, seed=3)
    assert diff_first == cluster_bootstrap_diff(values, labels, values + 0.1, labels, n_boot=300, seed=3)


def test_bootstrap_of_two_clusters_has_the_enumerable_extremes() -> None:
    # Two clusters: a resample is {A,A}, {A,B}, {B,A} or {B,B} with probability 1/4 each, so the 2.5% and
    # 97.5% quantiles of many draws are exactly the single-cluster means.
    values = [0.0, 1.0, 2.0, 10.0, 12.0]
    labels = ["a", "a", "a", "b", "b"]
    mean, low, high = cluster_bootstrap_mean(values, labels, n_boot=4000, seed=0)
    assert mean == pytest.approx(5.0)
    assert low == pytest.approx(1.0)
    assert high == pytest.approx(11.0)


def test_cluster_bootstrap_is_wider_than_node_bootstrap_under_cluster_correlation() -> None:
    values, labels = _clustered_sample(np.random.default_rng(4), 25, 0.0, cluster_sd=1.0)
    _, c_low, c_high = cluster_bootstrap_mean(values, labels, n_boot=2000, seed=1)
    _, n_low, n_high = cluster_bootstrap_mean(values, list(range(values.size)), n_boot=2000, seed=1)
    assert (c_high - c_low) > 1.5 * (n_high - n_low)


def test_bootstrap_diff_detects_a_true_shift() -> None:
    rng = np.random.default_rng(5)
    a, labels_a = _clustered_sample(rng, 40, 1.0)
    b, labels_b = _clustered_sample(rng, 40, 0.0)
    diff, low, high, p = cluster_bootstrap_diff(a, labels_a, b, labels_b, n_boot=2000, seed=0)
    assert diff == pytest.approx(a.mean() - b.mean(), rel=1e-12)
    assert 0.0 < low < diff < high
    assert p < 0.01
    assert p >= 1 / 2001  # the +1 correction: never exactly 0


def test_bootstrap_diff_does_not_detect_a_null_shift() -> None:
    # Under the null the one-sided p-value is roughly uniform: rejections at 5% should be rare.
    rejections = 0
    for trial in range(30):
        rng = np.random.default_rng(100 + trial)
        a, labels_a = _clustered_sample(rng, 15, 0.0)
        b, labels_b = _clustered_sample(rng, 15, 0.0)
        _, low, high, p = cluster_bootstrap_diff(a, labels_a, b, labels_b, n_boot=400, seed=trial)
        rejections += p < 0.05
    assert rejections <= 5
    # Identical groups: the observed difference is 0 and the p-value sits near one half.
    a, labels_a = _clustered_sample(np.random.default_rng(9), 30, 0.0)
    diff, low, high, p = cluster_bootstrap_diff(a, labels_a, a, labels_a, n_boot=2000, seed=1)
    assert diff == 0.0
    assert low < 0.0 < high
    assert 0.3 < p < 0.7


def test_bootstrap_edge_cases() -> None:
    mean, low, high = cluster_bootstrap_mean([1.0, 2.0, 4.0], ["x", "y", "y"], n_boot=0, seed=0)
    assert mean == pytest.approx(7 / 3) and math.isnan(low) and math.isnan(high)
    assert all(math.isnan(v) for v in cluster_bootstrap_mean([], [], n_boot=100, seed=0))
    diff, low, high, p = cluster_bootstrap_diff([1.0], ["x"], [0.5], ["y"], n_boot=0, seed=0)
    assert diff == 0.5 and math.isnan(low) and math.isnan(high) and math.isnan(p)
    assert all(math.isnan(v) for v in cluster_bootstrap_diff([], [], [0.5], ["y"], n_boot=10, seed=0))
    with pytest.raises(ValueError):
        cluster_bootstrap_mean([1.0, 2.0], ["x"], n_boot=10, seed=0)
    # Integer cluster arrays (the aggregator's fast path) give the same result as the equivalent labels.
    values = np.array([0.2, 0.4, -0.1, 0.9, 0.3])
    ints = np.array([3, 3, 1, 7, 1])
    strings = ["3", "3", "1", "7", "1"]
    assert cluster_bootstrap_mean(values, ints, 300, 4) == cluster_bootstrap_mean(values, strings, 300, 4)
