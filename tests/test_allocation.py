"""Adaptive allocation math (gradalign_engine/allocation.py) against independent computations."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from gradalign_engine import allocation as A
from gradalign_engine import gradients as G


def _explicit_jacobian(p: np.ndarray) -> np.ndarray:
    """d g*_j / d v_k by finite differences of gradients.ideal_gradient (which is linear in v)."""
    size = len(p)
    base = G.ideal_gradient(p, np.zeros(size))
    return np.stack([G.ideal_gradient(p, np.eye(size)[k]) - base for k in range(size)], axis=1)


@pytest.mark.parametrize("seed", range(5))
def test_jacobian_column_norms_match_the_ideal_gradient(seed: int) -> None:
    p = np.random.default_rng(seed).dirichlet(np.ones(4 + seed))
    assert A.ideal_jacobian(p) == pytest.approx(_explicit_jacobian(p), abs=1e-15)
    assert A.jacobian_column_norms(p) == pytest.approx((_explicit_jacobian(p) ** 2).sum(axis=0), rel=1e-12, abs=1e-15)


def test_posterior_is_the_jeffreys_beta() -> None:
    from scipy.stats import beta

    mean, var = A.posterior_mean_and_variance(np.array([0.0, 3.0, 40.0]), np.array([0.0, 1.0, 39.0]))
    for m, v, (a, b) in zip(mean, var, [(0.5, 0.5), (1.5, 2.5), (39.5, 1.5)]):
        assert m == pytest.approx(beta(a, b).mean(), rel=1e-12)
        assert v == pytest.approx(beta(a, b).var(), rel=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_noise_trace_matches_monte_carlo_over_the_posterior(seed: int) -> None:
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.ones(5))
    visits = rng.integers(2, 40, size=5).astype(float)
    successes = np.floor(visits * rng.random(5))
    mean, _ = A.posterior_mean_and_variance(visits, successes)
    draws = rng.beta(successes + 0.5, visits - successes + 0.5, size=(200_000, 5))
    g_draws = draws * p - np.outer(draws @ p, p)  # g*_j = p_j (v_j - p.v), row by row
    noise = np.trace(np.cov(g_draws.T))
    g_mean = G.ideal_gradient(p, mean)
    expected = np.sqrt(noise / (g_mean @ g_mean + noise))
    assert A.NodeErrorModel(p, visits, successes, np.zeros(5, bool)).sigma() == pytest.approx(expected, rel=0.02)


def test_gains_skip_fixed_children_and_shrink_with_visits() -> None:
    p = np.array([0.5, 0.3, 0.2])
    determined = np.array([False, False, True])
    few = A.NodeErrorModel(p, np.array([2.0, 2.0, 2.0]), np.array([1.0, 0.0, 2.0]), determined).child_gains(4)
    many = A.NodeErrorModel(p, np.array([200.0, 200.0, 2.0]), np.array([100.0, 0.0, 2.0]), determined).child_gains(4)
    assert few[2] == 0.0 and many[2] == 0.0
    assert np.all(few[:2] > 0) and np.all(many[:2] >= 0)
    assert np.all(few[:2] > many[:2])
    # A fixed child contributes no noise: with every child fixed the direction is known exactly.
    assert A.NodeErrorModel(p, np.array([1.0, 1.0, 1.0]), np.array([1.0, 0.0, 1.0]), np.ones(3, bool)).sigma() == 0.0


def test_no_signal_node_gains_less_than_an_informative_one() -> None:
    # Same p and visits: one node whose children all failed (no direction to refine yet), one whose
    # children disagree. The allocation should prefer refining the second.
    p = np.array([0.6, 0.4])
    determined = np.zeros(2, bool)
    silent = A.NodeErrorModel(p, np.array([30.0, 30.0]), np.array([0.0, 0.0]), determined).child_gains(4).max()
    split = A.NodeErrorModel(p, np.array([6.0, 6.0]), np.array([5.0, 1.0]), determined).child_gains(4).max()
    assert split > silent


@pytest.mark.parametrize("seed", range(3))
def test_alignment_error_matches_the_spread_of_the_cosine_over_the_posterior(seed: int) -> None:
    # Many visits: the delta method holds, so sigma_d should be the standard deviation of cos(g*(v), d)
    # with v drawn from the posterior, computed here by sampling and gradients.cosine.
    rng = np.random.default_rng(10 + seed)
    p = rng.dirichlet(np.ones(4) * 2)
    visits = np.full(4, 4000.0)
    successes = np.floor(visits * np.array([0.1, 0.5, 0.3, 0.8]))
    d = G.reverse_kl_direction(p, rng.dirichlet(np.ones(4)))
    draws = rng.beta(successes + 0.5, visits - successes + 0.5, size=(20_000, 4))
    cosines = np.array([G.cosine(G.ideal_gradient(p, v), d) for v in draws])
    sigma = A.alignment_error(p, visits, successes, np.zeros(4, bool), [d])
    assert sigma == pytest.approx(cosines.std(), rel=0.05)


def test_gains_are_the_drop_of_sigma_after_adding_the_batch() -> None:
    p = np.array([0.5, 0.3, 0.2])
    visits, successes = np.array([4.0, 9.0, 2.0]), np.array([1.0, 6.0, 0.0])
    d = [G.forward_kl_direction(p, np.array([0.2, 0.5, 0.3]))]
    for directions in (None, d):
        model = A.NodeErrorModel(p, visits, successes, np.zeros(3, bool), directions)
        gains = model.child_gains(5)
        for k in range(3):
            after = copy.deepcopy(model)
            after.add(k, 5)
            assert np.allclose(after.mean, model.mean)  # outcomes planned at the posterior mean
            assert gains[k] == pytest.approx(model.sigma() - after.sigma(), rel=1e-9)
    # Without directions the model is memoryless: planning a batch = a fresh model with those counts.
    planned = A.NodeErrorModel(p, visits, successes, np.zeros(3, bool))
    planned.add(1, 5)
    fresh = A.NodeErrorModel(
        p, visits + np.array([0, 5, 0]), successes + np.array([0, 5 * planned.mean[1], 0]), np.zeros(3, bool)
    )
    assert planned.sigma() == pytest.approx(fresh.sigma(), rel=1e-12)


def test_even_spread_fills_the_least_visited_open_child_first() -> None:
    spread = A.EvenSpread(np.array([10.0, 2.0, 0.0]), np.array([False, False, True]))
    order = []
    for _ in range(5):
        k = int(np.argmax(spread.child_gains(4)))
        order.append(k)
        spread.add(k, 4)
    assert order == [1, 1, 0, 1, 0]  # child 1 catches up (2 -> 6 -> 10), then they alternate, ties to the first
    assert spread.child_gains(4)[2] == 0.0  # a fixed outcome never gets a batch
