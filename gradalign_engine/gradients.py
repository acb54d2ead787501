"""Closed-form update directions at one analysis node, and full-vocabulary comparisons of p and q.

Role: given the student's distribution p and a teacher's distribution q over the candidate set S(u)
(already renormalised, see ``renormalize``) and the Monte Carlo success estimates v, compute
- the ideal update g* (the gradient of the success probability; an ASCENT direction of success),
- each distillation method's DESCENT direction d = -dLoss/dz (forward KL, reverse KL, TRL's
  generalized JSD, the single-sample estimator, MiniLLM),
- their cosine and the teacher advantage,
all with respect to the student's logits z restricted to S(u), p~ = softmax(z). Every closed form here
is checked against torch autograd of its loss in ``tests/test_gradients.py``.

The full-vocabulary diagnostics of p and q (KL both ways, JS, L2, cosine, entropies) and the
node-choice priorities live in :mod:`.diagnostics`; they are re-exported here.

This module knows nothing of trees, rollouts, teachers, records' provenance or storage: it takes
arrays and returns arrays (or :class:`~gradalign_engine.records.Diagnostics`). The S(u) vectors are a
handful of entries, so they are plain numpy float64; only the full-vocabulary paths use torch.

Zeros: 0 log 0 is taken as 0. A teacher probability inside a logarithm, and every probability inside
the full-vocabulary diagnostics' logarithms, is floored at ``PROB_FLOOR`` = 1e-30, so KL(p||q) with
q_j = 0 < p_j, or r_j = log q_j - log p_j with q_j = 0, stays finite: float32 teachers underflow to
exactly 0 on tokens they find implausible, and an infinite divergence would carry no ranking
information. The floor changes nothing for probabilities above 1e-30 and is the same in the numpy and
torch paths. The student's own log p~ over S(u) is not floored (its entries with p~_j = 0 contribute 0).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.signal import lfilter

# The full-vocabulary comparisons are re-exported: they share PROB_FLOOR with the closed forms here.
from .diagnostics import batched_diagnostics, distribution_diagnostics, gkd_gradient_norms, total_variation
from .floors import PROB_FLOOR
from .floors import floored_log as _floored_log
from .floors import vector as _vector

__all__ = [
    "PROB_FLOOR",
    "METHOD_NAMES",
    "renormalize",
    "ideal_gradient",
    "forward_kl_direction",
    "reverse_kl_direction",
    "jsd_direction",
    "single_sample_direction",
    "minillm_returns",
    "minillm_direction",
    "teacher_advantage",
    "cosine",
    "dr_grpo_expected_direction",
    "direction",
    "distribution_diagnostics",
    "batched_diagnostics",
    "gkd_gradient_norms",
    "total_variation",
]

#: Method names understood by :func:`direction` (the same as ``config.METHODS``).
METHOD_NAMES = ("forward_kl", "reverse_kl", "jsd", "single_sample", "minillm")


# --------------------------------------------------------------------------------------------------
# Helpers over S(u)
# --------------------------------------------------------------------------------------------------


def _pair(p: Sequence[float] | np.ndarray, q: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p_arr, q_arr = _vector(p, "p"), _vector(q, "q")
    if p_arr.shape != q_arr.shape:
        raise ValueError(f"p and q must have the same length, got {p_arr.shape[0]} and {q_arr.shape[0]}")
    return p_arr, q_arr


def _centered_by_p(p: np.ndarray, f: np.ndarray) -> np.ndarray:
    """p_j (f_j - sum_k p_k f_k): the shared local structure of every update (softmax Jacobian).

    Entries with p_j = 0 are exactly 0 (the softmax Jacobian row vanishes), even where f_j is infinite.
    """
    support = p > 0
    f_on_support = np.where(support, f, 0.0)
    values = f_on_support[support]
    if values.size and np.all(values == values[0]):
        # A constant f gives exactly 0; computing it would leave rounding noise (sum p != 1 by an ulp)
        # whose direction a cosine would then report as if it were signal.
        return np.zeros_like(p, dtype=np.float64)
    f_mean = float(np.dot(p[support], f_on_support[support]))
    return np.where(support, p * (f_on_support - f_mean), 0.0)


def _one_hot(size: int, index: int) -> np.ndarray:
    if not 0 <= index < size:
        raise ValueError(f"sampled_index={index} is outside the candidate set of size {size}")
    e = np.zeros(size, dtype=np.float64)
    e[index] = 1.0
    return e


# --------------------------------------------------------------------------------------------------
# Directions over S(u)
# --------------------------------------------------------------------------------------------------


def renormalize(x: Sequence[float] | np.ndarray) -> np.ndarray:
    """x / sum(x) in float64: p~ or q~ over S(u). Raises ValueError when the sum is not positive."""
    arr = _vector(x, "x")
    total = float(arr.sum())
    if not (math.isfinite(total) and total > 0):
        raise ValueError(f"cannot renormalise a vector whose sum is {total}")
    return arr / total


def ideal_gradient(p: Sequence[float] | np.ndarray, v: Sequence[float] | np.ndarray) -> np.ndarray:
    """g*_j = p_j (v_j - v_bar): gradient of sum_k p~_k(z) v_k, the ascent direction of success."""
    p_arr, v_arr = _pair(p, v)
    return _centered_by_p(p_arr, v_arr)


def forward_kl_direction(p: Sequence[float] | np.ndarray, q: Sequence[float] | np.ndarray) -> np.ndarray:
    """q - p: descent direction of KL(q~ || p~(z))."""
    p_arr, q_arr = _pair(p, q)
    return q_arr - p_arr


def reverse_kl_direction(p: Sequence[float] | np.ndarray, q: Sequence[float] | np.ndarray) -> np.ndarray:
    """p_j (r_j - r_bar), r = log q - log p: descent direction of KL(p~(z) || q~)."""
    p_arr, q_arr = _pair(p, q)
    with np.errstate(divide="ignore"):
        log_ratio = _floored_log(q_arr) - np.log(p_arr)
    return _centered_by_p(p_arr, log_ratio)


def jsd_direction(p: Sequence[float] | np.ndarray, q: Sequence[float] | np.ndarray, beta: float) -> np.ndarray:
    """Descent direction of TRL's ``generalized_jsd_loss`` on S(u).

    m = (1 - beta) p + beta q and J = beta KL(q || m) + (1 - beta) KL(p || m). Differentiating in p
    (the terms from m cancel against the +1 of d(p log p)) gives dJ/dp_j = a_j = (1 - beta) log(p_j/m_j),
    so dJ/dz_j = p_j (a_j - a_bar) and the descent is its negative. TRL special-cases the endpoints:
    beta = 0 is KL(q || p) (forward KL) and beta = 1 is KL(p || q) (reverse KL); the mixture formula
    itself would vanish at beta = 0, so the endpoints are not its limits.
    """
    if not (0.0 <= beta <= 1.0):
        raise ValueError(f"jsd beta must be in [0, 1], got {beta}")
    if beta == 0.0:
        return forward_kl_direction(p, q)
    if beta == 1.0:
        return reverse_kl_direction(p, q)
    p_arr, q_arr = _pair(p, q)
    mixture = (1.0 - beta) * p_arr + beta * q_arr
    with np.errstate(divide="ignore", invalid="ignore"):
        a = (1.0 - beta) * (np.log(p_arr) - np.log(mixture))
    return -_centered_by_p(p_arr, a)


def single_sample_direction(p: Sequence[float] | np.ndarray, sampled_index: int, advantage: float) -> np.ndarray:
    """A (e_y - p): descent of the per-sample loss -A * log p~_y(z) with A held fixed.

    A = log q_y - log p_y is computed by the caller (on the full distributions, as the on-policy
    distillation recipe does); with A = log q~_y - log p~_y its expectation over y ~ p~ is the
    reverse-KL direction.
    """
    p_arr = _vector(p, "p")
    return float(advantage) * (_one_hot(p_arr.shape[0], sampled_index) - p_arr)


def minillm_returns(
    log_ratios: Sequence[float] | np.ndarray, gamma: float, length_norm: bool, single_step: bool
) -> np.ndarray:
    """Return-to-go R_t of r_s = log q(y_s) - log p(y_s) at every position t = 0..T-1 of a rollout.

    single_step: R_t = sum_{s=t+1}^{T-1} gamma^(s-t-1) r_s (the sampled step itself is replaced by its
    exact expectation in :func:`minillm_direction`); otherwise R_t = sum_{s=t}^{T-1} gamma^(s-t) r_s.
    length_norm divides by the number of summed terms (0 terms give R_t = 0).
    """
    r = _vector(log_ratios, "log_ratios")
    if not (0.0 <= gamma <= 1.0):
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    length = r.shape[0]
    if length == 0:
        return np.zeros(0, dtype=np.float64)
    # Discounted suffix sums G_t = r_t + gamma G_{t+1}: a first-order IIR filter run backwards, in C and
    # without the gamma^-t rescaling that would overflow for long rollouts and small gamma.
    suffix = lfilter([1.0], [1.0, -gamma], r[::-1])[::-1]
    if single_step:
        returns = np.concatenate([suffix[1:], [0.0]])
        terms = np.arange(length - 1, -1, -1, dtype=np.float64)  # T - t - 1
    else:
        returns = suffix
        terms = np.arange(length, 0, -1, dtype=np.float64)  # T - t
    if length_norm:
        returns = np.divide(returns, terms, out=np.zeros_like(returns), where=terms > 0)
    return np.ascontiguousarray(returns)


def minillm_direction(
    p: Sequence[float] | np.ndarray,
    q: Sequence[float] | np.ndarray,
    sampled_index: int,
    return_to_go: float,
    single_step: bool,
) -> np.ndarray:
    """R_t (e_y - p) [+ reverse-KL direction when single_step].

    Descent of the per-sample loss L = -R.detach() * log p~_y(z) + [single_step] KL(p~(z) || q~).
    """
    p_arr, q_arr = _pair(p, q)
    update = float(return_to_go) * (_one_hot(p_arr.shape[0], sampled_index) - p_arr)
    if single_step:
        update = update + reverse_kl_direction(p_arr, q_arr)
    return update


def teacher_advantage(
    p: Sequence[float] | np.ndarray, q: Sequence[float] | np.ndarray, v: Sequence[float] | np.ndarray
) -> float:
    """sum_j (q~_j - p~_j) v_j: how much more success mass the teacher puts on S(u) than the student."""
    p_arr, q_arr = _pair(p, q)
    v_arr = _vector(v, "v")
    if v_arr.shape != p_arr.shape:
        raise ValueError(f"v must have the length of p ({p_arr.shape[0]}), got {v_arr.shape[0]}")
    return float(np.dot(q_arr - p_arr, v_arr))


def cosine(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float | None:
    """cos(a, b), or None when either norm is 0 or anything is non-finite (the node is then skipped)."""
    a_arr, b_arr = _vector(a, "a"), _vector(b, "b")
    if a_arr.shape != b_arr.shape:
        raise ValueError(f"vectors must have the same length, got {a_arr.shape[0]} and {b_arr.shape[0]}")
    norm_a, norm_b = float(np.linalg.norm(a_arr)), float(np.linalg.norm(b_arr))
    if not (math.isfinite(norm_a) and math.isfinite(norm_b)) or norm_a == 0.0 or norm_b == 0.0:
        return None
    value = float(np.dot(a_arr, b_arr)) / (norm_a * norm_b)
    if not math.isfinite(value):
        return None
    return min(1.0, max(-1.0, value))  # rounding can step just outside [-1, 1]


def dr_grpo_expected_direction(p: Sequence[float] | np.ndarray, v: Sequence[float] | np.ndarray) -> np.ndarray:
    """E_{y~p~}[(v_y - b)(e_y - p~)] with b = sum p~ v, computed as the exact sum over y.

    Dr. GRPO's per-sample update without length normalisation; its expectation equals
    :func:`ideal_gradient`, which the tests check. Kept as an explicit sum so that check is not circular.
    """
    p_arr, v_arr = _pair(p, v)
    baseline = float(np.dot(p_arr, v_arr))
    size = p_arr.shape[0]
    expectation = np.zeros(size, dtype=np.float64)
    for y in range(size):
        expectation += p_arr[y] * (v_arr[y] - baseline) * (_one_hot(size, y) - p_arr)
    return expectation


def direction(
    method: str,
    p: Sequence[float] | np.ndarray,
    q: Sequence[float] | np.ndarray,
    *,
    sampled_index: int | None = None,
    advantage: float | None = None,
    return_to_go: float | None = None,
    jsd_beta: float | None = None,
    single_step: bool = True,
) -> np.ndarray:
    """The descent direction of ``method`` over S(u); raises ValueError for an unknown method or a
    missing argument that the method needs (sampled_index/advantage, return_to_go, jsd_beta)."""
    if method == "forward_kl":
        return forward_kl_direction(p, q)
    if method == "reverse_kl":
        return reverse_kl_direction(p, q)
    if method == "jsd":
        if jsd_beta is None:
            raise ValueError("method 'jsd' needs jsd_beta")
        return jsd_direction(p, q, jsd_beta)
    if method == "single_sample":
        if sampled_index is None or advantage is None:
            raise ValueError("method 'single_sample' needs sampled_index and advantage")
        return single_sample_direction(p, sampled_index, advantage)
    if method == "minillm":
        if sampled_index is None or return_to_go is None:
            raise ValueError("method 'minillm' needs sampled_index and return_to_go")
        return minillm_direction(p, q, sampled_index, return_to_go, single_step)
    raise ValueError(f"unknown distillation method {method!r}; choose from {', '.join(METHOD_NAMES)}")
