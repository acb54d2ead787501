"""Every closed-form direction in gradalign_engine.gradients against an independent computation.

The references are torch autograd (float64) of each method's loss, written here from its definition
(TRL's generalized JSD is re-implemented from the formula with a logsumexp mixture), exact expectations
summed over every outcome, and brute-force loops; also the dispatcher, cosine, teacher advantage and
renormalisation. The full-vocabulary diagnostics are in test_gradient_diagnostics.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gradient_helpers import BETAS, SEEDS, _descent, _trl_generalized_jsd

from gradalign_engine import gradients as G

SIZES = (2, 3, 5, 17)
RTOL = 1e-9
ATOL = 1e-12


def _random_case(seed: int, size: int) -> tuple[torch.Tensor, np.ndarray, np.ndarray, np.ndarray]:
    """Student logits z (float64), p~ = softmax(z), a teacher q~ and success estimates v over S(u)."""
    gen = torch.Generator().manual_seed(seed * 1000 + size)
    z = torch.randn(size, dtype=torch.float64, generator=gen) * 1.5
    teacher_logits = torch.randn(size, dtype=torch.float64, generator=gen) * 1.5
    p = torch.softmax(z, dim=0).numpy()
    q = torch.softmax(teacher_logits, dim=0).numpy()
    v = torch.rand(size, dtype=torch.float64, generator=gen).numpy()
    return z, p, q, v


cases = pytest.mark.parametrize("seed,size", [(s, n) for s in SEEDS for n in SIZES])


# ------------------------------------------------------------------------------------------------
# Closed forms vs autograd
# ------------------------------------------------------------------------------------------------


@cases
def test_ideal_gradient_is_autograd_of_success_probability(seed: int, size: int) -> None:
    z, p, _, v = _random_case(seed, size)
    v_t = torch.from_numpy(v)
    ascent = -_descent(lambda zz: (torch.softmax(zz, 0) * v_t).sum(), z)
    np.testing.assert_allclose(G.ideal_gradient(p, v), ascent, rtol=RTOL, atol=ATOL)


@cases
def test_forward_kl_is_autograd(seed: int, size: int) -> None:
    z, p, q, _ = _random_case(seed, size)
    log_q = torch.from_numpy(np.log(q))
    expected = _descent(lambda zz: (log_q.exp() * (log_q - F.log_softmax(zz, 0))).sum(), z)
    np.testing.assert_allclose(G.forward_kl_direction(p, q), expected, rtol=RTOL, atol=ATOL)


@cases
def test_reverse_kl_is_autograd(seed: int, size: int) -> None:
    z, p, q, _ = _random_case(seed, size)
    log_q = torch.from_numpy(np.log(q))
    expected = _descent(lambda zz: (torch.softmax(zz, 0) * (F.log_softmax(zz, 0) - log_q)).sum(), z)
    np.testing.assert_allclose(G.reverse_kl_direction(p, q), expected, rtol=RTOL, atol=ATOL)


@cases
@pytest.mark.parametrize("beta", BETAS)
def test_jsd_is_autograd_of_trl_loss(seed: int, size: int, beta: float) -> None:
    z, p, q, _ = _random_case(seed, size)
    log_q = torch.from_numpy(np.log(q))
    expected = _descent(lambda zz: _trl_generalized_jsd(zz, log_q, beta), z)
    np.testing.assert_allclose(G.jsd_direction(p, q, beta), expected, rtol=RTOL, atol=ATOL)


def test_jsd_endpoints_are_the_kl_directions() -> None:
    _, p, q, _ = _random_case(5, 6)
    np.testing.assert_array_equal(G.jsd_direction(p, q, 0.0), G.forward_kl_direction(p, q))
    np.testing.assert_array_equal(G.jsd_direction(p, q, 1.0), G.reverse_kl_direction(p, q))
    # Interior betas differ from both endpoints (the special case is a real switch).
    assert not np.allclose(G.jsd_direction(p, q, 0.5), G.forward_kl_direction(p, q))
    with pytest.raises(ValueError):
        G.jsd_direction(p, q, 1.5)


@cases
def test_single_sample_is_autograd_of_per_sample_loss(seed: int, size: int) -> None:
    z, p, _, _ = _random_case(seed, size)
    advantage = -0.37 + 0.1 * seed
    for y in range(size):
        expected = _descent(lambda zz: -advantage * F.log_softmax(zz, 0)[y], z)
        np.testing.assert_allclose(G.single_sample_direction(p, y, advantage), expected, rtol=RTOL, atol=ATOL)


@cases
@pytest.mark.parametrize("single_step", [True, False])
def test_minillm_is_autograd_of_per_sample_loss(seed: int, size: int, single_step: bool) -> None:
    z, p, q, _ = _random_case(seed, size)
    log_q = torch.from_numpy(np.log(q))
    ret = 0.8 - 0.45 * seed

    def loss(zz: torch.Tensor, y: int) -> torch.Tensor:
        log_p = F.log_softmax(zz, 0)
        value = -ret * log_p[y]
        if single_step:
            value = value + (log_p.exp() * (log_p - log_q)).sum()
        return value

    for y in range(size):
        expected = _descent(lambda zz: loss(zz, y), z)
        np.testing.assert_allclose(G.minillm_direction(p, q, y, ret, single_step), expected, rtol=RTOL, atol=ATOL)


# ------------------------------------------------------------------------------------------------
# Exact expectations
# ------------------------------------------------------------------------------------------------


@cases
def test_dr_grpo_expectation_equals_ideal(seed: int, size: int) -> None:
    _, p, _, v = _random_case(seed, size)
    np.testing.assert_allclose(G.dr_grpo_expected_direction(p, v), G.ideal_gradient(p, v), rtol=RTOL, atol=ATOL)


@cases
def test_single_sample_expectation_equals_reverse_kl(seed: int, size: int) -> None:
    _, p, q, _ = _random_case(seed, size)
    expectation = sum(p[y] * G.single_sample_direction(p, y, math.log(q[y]) - math.log(p[y])) for y in range(size))
    np.testing.assert_allclose(expectation, G.reverse_kl_direction(p, q), rtol=RTOL, atol=ATOL)


def test_every_direction_sums_to_zero() -> None:
    # A logit shift common to all of S(u) changes nothing, so each update is orthogonal to ones.
    _, p, q, v = _random_case(7, 9)
    for d in (
        G.ideal_gradient(p, v),
        G.reverse_kl_direction(p, q),
        G.forward_kl_direction(p, q),
        G.jsd_direction(p, q, 0.3),
        G.single_sample_direction(p, 2, 0.7),
        G.minillm_direction(p, q, 4, -1.2, True),
    ):
        assert abs(d.sum()) < 1e-12


# ------------------------------------------------------------------------------------------------
# MiniLLM returns
# ------------------------------------------------------------------------------------------------


def _returns_brute_force(r: list[float], gamma: float, length_norm: bool, single_step: bool) -> list[float]:
    length = len(r)
    out = []
    for t in range(length):
        first = t + 1 if single_step else t
        terms = [gamma ** (s - first) * r[s] for s in range(first, length)]
        total = sum(terms)
        if length_norm:
            total = total / len(terms) if terms else 0.0
        out.append(total if terms else 0.0)
    return out


@pytest.mark.parametrize("length", [0, 1, 2, 7, 40])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 0.95, 1.0])
@pytest.mark.parametrize("length_norm", [True, False])
@pytest.mark.parametrize("single_step", [True, False])
def test_minillm_returns_match_brute_force(length: int, gamma: float, length_norm: bool, single_step: bool) -> None:
    r = np.random.default_rng(length).normal(size=length).tolist()
    got = G.minillm_returns(r, gamma, length_norm, single_step)
    assert got.shape == (length,)
    np.testing.assert_allclose(got, _returns_brute_force(r, gamma, length_norm, single_step), rtol=1e-10, atol=1e-12)


def test_minillm_returns_stay_finite_on_long_rollouts_with_small_gamma() -> None:
    r = np.random.default_rng(0).normal(size=5000)
    got = G.minillm_returns(r, 0.01, False, False)
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got[-3:], _returns_brute_force(r[-3:].tolist(), 0.01, False, False), rtol=1e-12)


# ------------------------------------------------------------------------------------------------
# Dispatcher, cosine, advantage, renormalisation
# ------------------------------------------------------------------------------------------------


def test_direction_dispatches_and_rejects_unknown_methods() -> None:
    _, p, q, _ = _random_case(3, 4)
    np.testing.assert_array_equal(G.direction("forward_kl", p, q), G.forward_kl_direction(p, q))
    np.testing.assert_array_equal(G.direction("reverse_kl", p, q), G.reverse_kl_direction(p, q))
    np.testing.assert_array_equal(G.direction("jsd", p, q, jsd_beta=0.3), G.jsd_direction(p, q, 0.3))
    np.testing.assert_array_equal(
        G.direction("single_sample", p, q, sampled_index=1, advantage=0.5), G.single_sample_direction(p, 1, 0.5)
    )
    np.testing.assert_array_equal(
        G.direction("minillm", p, q, sampled_index=2, return_to_go=-0.4, single_step=False),
        G.minillm_direction(p, q, 2, -0.4, False),
    )
    with pytest.raises(ValueError, match="'bogus'"):
        G.direction("bogus", p, q)
    with pytest.raises(ValueError):
        G.direction("jsd", p, q)
    with pytest.raises(ValueError):
        G.direction("single_sample", p, q, sampled_index=1)
    with pytest.raises(ValueError):
        G.single_sample_direction(p, 4, 1.0)


def test_cosine_values_and_none_cases() -> None:
    a, b = np.array([1.0, -2.0, 0.5]), np.array([0.3, 0.1, -4.0])
    expected = float(np.dot(a, b) / math.sqrt(np.dot(a, a) * np.dot(b, b)))
    assert G.cosine(a, b) == pytest.approx(expected, rel=1e-12)
    assert G.cosine(a, 3.0 * a) == pytest.approx(1.0, abs=1e-15)
    assert G.cosine(a, -a) == pytest.approx(-1.0, abs=1e-15)
    assert G.cosine(a, np.zeros(3)) is None
    assert G.cosine(np.zeros(3), b) is None
    assert G.cosine(a, np.array([np.nan, 0.0, 1.0])) is None
    assert G.cosine(np.array([np.inf, 0.0, 1.0]), b) is None


def test_teacher_advantage_and_renormalize() -> None:
    p, q, v = np.array([0.5, 0.3, 0.2]), np.array([0.2, 0.2, 0.6]), np.array([0.0, 0.5, 1.0])
    assert G.teacher_advantage(p, q, v) == pytest.approx((0.2 - 0.5) * 0 + (0.2 - 0.3) * 0.5 + (0.6 - 0.2) * 1.0)
    np.testing.assert_allclose(G.renormalize([2.0, 6.0]), [0.25, 0.75])
    for bad in ([0.0, 0.0], [1.0, -1.0], [-1.0, 0.5]):
        with pytest.raises(ValueError):
            G.renormalize(bad)


def test_zero_teacher_probability_gives_a_finite_reverse_kl() -> None:
    p, q = np.array([0.6, 0.4]), np.array([1.0, 0.0])
    d = G.reverse_kl_direction(p, q)
    assert np.all(np.isfinite(d))
    r = np.log(np.array([1.0, G.PROB_FLOOR])) - np.log(p)
    np.testing.assert_allclose(d, p * (r - np.dot(p, r)), rtol=RTOL)
    # A zero student probability contributes exactly zero (0 log 0 = 0), never nan.
    assert np.all(np.isfinite(G.reverse_kl_direction(np.array([1.0, 0.0]), np.array([0.5, 0.5]))))
    assert np.all(np.isfinite(G.jsd_direction(np.array([1.0, 0.0]), np.array([0.5, 0.5]), 0.5)))


def test_equal_values_give_an_exact_zero_ideal_gradient() -> None:
    # p sums to 1 only up to rounding: p . v - v then leaves ulp-sized noise whose cosine with any teacher
    # direction is O(1). All children equal carries no signal: g* must be exactly 0 so the node is skipped.
    p = np.array([0.912, 0.04, 0.019, 0.009, 0.019]) / 0.999
    for value in (1.0, 0.0, 0.3):
        g = G.ideal_gradient(p, np.full(5, value))
        assert np.all(g == 0.0)
        assert G.cosine(g, G.reverse_kl_direction(p, np.array([0.2, 0.2, 0.2, 0.2, 0.2]))) is None
