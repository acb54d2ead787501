"""Adaptive allocation of continuations (method.md step 6): where does one more rollout help most?

Pure numpy over one node's children (student probabilities p~, visits n, successes s, and the
distillation directions d the tree will be scored against); the pipeline gathers the counts and
spends the continuations. Knows nothing of models, teachers or trees.

g*_j = p~_j (v_j - v_bar) is estimated from the counts; v_k has the Jeffreys Beta(s + 1/2, n - s + 1/2)
posterior, variance Var_k, and children whose outcome is fixed (the forced token ends the completion)
have none. The Jacobian of g* in v is J = diag(p~) - p~ p~^T, so the gradient of cos(g*, d) in v is
J^T e_d / ||g*|| with e_d = d^ - cos(g*, d) g*^ (the part of d^ across g*). The objective is the sum
over nodes and directions of the delta-method standard error

    sigma_d = sqrt(sum_k (J^T e_d)_k^2 Var_k / (||g*||^2 + N)),   N = trace Cov(g*_hat) = sum_k ||J[:, k]||^2 Var_k,

where ||g*||^2 + N (the expected squared norm of the estimate) replaces ||g*||^2 so that a node with no
signal yet does not absorb the budget; it is held at its value when a round is planned, so sigma_d only
falls as variances fall. A sum of sigmas, not of variances: the reported error is a mean of |errors|,
and minimising variances pours samples into nodes whose estimate stays noise whatever is spent.

One more batch on child k changes only Var_k (its outcomes are unknown, so the posterior mean is kept);
``NodeErrorModel.child_gains`` returns the drop of the node's objective for each k. ``EvenSpread`` is
the fallback when there is no direction to aim at (no target teacher): the least-visited child first.
A teacher-agnostic criterion (the angle error of g*) was measured on the exact toy and needed more
rollouts than uniform allocation for the same alignment error, so it is not offered.
"""

from __future__ import annotations

import numpy as np

JEFFREYS = 0.5


def posterior_mean_and_variance(visits: np.ndarray, successes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of v under the Jeffreys Beta posterior, per child."""
    n = np.asarray(visits, dtype=np.float64)
    s = np.asarray(successes, dtype=np.float64)
    a, b = s + JEFFREYS, n - s + JEFFREYS
    mean = a / (a + b)
    return mean, mean * (1.0 - mean) / (a + b + 1.0)


def ideal_jacobian(p: np.ndarray) -> np.ndarray:
    """J[j, k] = d g*_j / d v_k for g*_j = p_j (v_j - sum_i p_i v_i)."""
    p = np.asarray(p, dtype=np.float64)
    return np.diag(p) - np.outer(p, p)


def jacobian_column_norms(p: np.ndarray) -> np.ndarray:
    """||d g* / d v_k||^2 for each k."""
    p = np.asarray(p, dtype=np.float64)
    squares = p * p
    return squares * ((1.0 - p) ** 2 + (squares.sum() - squares))


class NodeErrorModel:
    """The error terms of one node; ``sigma`` now and ``child_gains`` for one more batch per child.

    ``scale`` is ||g*||^2 + N at construction. Without directions, ``sigma`` is sqrt(N / scale), the
    angle error of g* (used in tests to check N against sampling).
    """

    def __init__(self, p, visits, successes, determined, directions=None):
        self.p = np.asarray(p, dtype=np.float64)
        self.visits = np.asarray(visits, dtype=np.float64).copy()
        self.successes = np.asarray(successes, dtype=np.float64).copy()
        self.determined = np.asarray(determined, dtype=bool)
        self.mean, _ = posterior_mean_and_variance(self.visits, self.successes)
        g = self.p * (self.mean - float(self.p @ self.mean))
        self.signal = float(g @ g)
        self.noise_weights = jacobian_column_norms(self.p)  # [K]
        self.direction_weights = None  # [D, K]: (J^T e_d)_k^2
        # ||g*||^2 + N now: the alignment objective keeps it fixed while batches are planned, else
        # lowering noise that d does not see would shrink it and raise sigma_d.
        self.scale = self.signal + float(self.noise_weights @ self._variances(self.visits))
        if directions is not None and len(directions):
            d = np.asarray(directions, dtype=np.float64)
            norms = np.linalg.norm(d, axis=1, keepdims=True)
            d_hat = np.divide(d, norms, out=np.zeros_like(d), where=norms > 0)
            g_hat = g / np.sqrt(self.signal) if self.signal > 0 else np.zeros_like(g)
            e = d_hat - np.outer(d_hat @ g_hat, g_hat)
            self.direction_weights = (e @ ideal_jacobian(self.p)) ** 2

    def _variances(self, visits: np.ndarray) -> np.ndarray:
        return np.where(self.determined, 0.0, self.mean * (1.0 - self.mean) / (visits + 2 * JEFFREYS + 1.0))

    def _sigma(self, var: np.ndarray) -> np.ndarray:
        """Sum of sigmas for each column of ``var`` ([K] or [K, C])."""
        noise = np.maximum(self.noise_weights @ var, 0.0)
        total = self.signal + noise
        safe = np.where(total > 0, total, 1.0)
        if self.direction_weights is None:
            return np.where(total > 0, np.sqrt(noise / safe), 0.0)
        if self.scale <= 0:
            return np.zeros(var.shape[1:]) if var.ndim > 1 else np.float64(0.0)
        numer = np.maximum(self.direction_weights @ var, 0.0)  # [D] or [D, C]
        return np.sqrt(numer / self.scale).sum(axis=0)

    def sigma(self) -> float:
        return float(self._sigma(self._variances(self.visits)))

    def child_gains(self, extra: int) -> np.ndarray:
        """Drop of the node's sigma if child k got ``extra`` more continuations, per k (0 if fixed)."""
        var = self._variances(self.visits)
        after = np.repeat(var[:, None], len(var), axis=1)  # column k: child k has ``extra`` more
        idx = np.arange(len(var))
        after[idx, idx] = self._variances(self.visits + extra)[idx]
        gains = self.sigma() - self._sigma(after)
        return np.where(self.determined, 0.0, np.maximum(gains, 0.0))

    def add(self, k: int, extra: int) -> None:
        """Record ``extra`` planned continuations on child k, their outcomes at the posterior mean."""
        self.visits[k] += extra
        self.successes[k] += extra * self.mean[k]


def alignment_error(p, visits, successes, determined, directions) -> float:
    """Sum over ``directions`` of the delta-method error of cos(g*, d) at one node (module docstring)."""
    return NodeErrorModel(p, visits, successes, determined, directions).sigma()


class EvenSpread:
    """Fallback without directions: each batch goes to the least-visited child whose outcome is open."""

    def __init__(self, visits, determined):
        self.visits = np.asarray(visits, dtype=np.float64).copy()
        self.determined = np.asarray(determined, dtype=bool)

    def child_gains(self, extra: int) -> np.ndarray:
        return np.where(self.determined, 0.0, extra / (self.visits + 1.0))

    def add(self, k: int, extra: int) -> None:
        self.visits[k] += extra
