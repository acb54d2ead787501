"""Closed-form update directions at one analysis node, and full-vocabulary comparisons of p and q.

Role: given the student's distribution p and a teacher's distribution q over the candidate set S(u)
(already renormalised, see ``renormalize``) and the Monte Carlo success estimates v, compute
- the ideal update g* (the gradient of the success probability; an ASCENT direction of success),
- each distillation method's DESCENT direction d = -dLoss/dz (forward KL, reverse KL, TRL's
  generalized JSD, the single-sample estimator, MiniLLM),
- their cosine and the teacher advantage,
all with respect to the student's logits z restricted to S(u), p~ = softmax(z). Every closed form here
is checked against torch autograd of its loss in ``tests/test_gradients.py``.

It also computes full-vocabulary diagnostics of p and q (KL both ways, JS, L2, cosine, entropies),
per node in numpy and batched in torch for the node-selection hot path, plus the batched JSD gradient
norm and total variation used to prioritise nodes.

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
from typing import Sequence

import numpy as np
import torch
from scipy.signal import lfilter

from .records import Diagnostics

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

#: Floor of a probability inside a logarithm when the probability is 0 but its weight is not.
PROB_FLOOR = 1e-30
_LOG_PROB_FLOOR = math.log(PROB_FLOOR)
#: Method names understood by :func:`direction` (the same as ``config.METHODS``).
METHOD_NAMES = ("forward_kl", "reverse_kl", "jsd", "single_sample", "minillm")
# Full-vocabulary torch paths work on row chunks of about this many elements: a batch of 256 rows x
# 150k vocabulary then needs no gigabytes of temporaries, and on a CPU the chunk's temporaries stay in
# cache (measured about 1.5x faster than 4M-element chunks at 256 x 50k).
_CHUNK_ELEMENTS = 1 << 18


# --------------------------------------------------------------------------------------------------
# Helpers over S(u)
# --------------------------------------------------------------------------------------------------


def _vector(x: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D vector, got shape {arr.shape}")
    return arr


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


def _floored_log(x: np.ndarray) -> np.ndarray:
    return np.log(np.maximum(x, PROB_FLOOR))


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


def single_sample_direction(
    p: Sequence[float] | np.ndarray, sampled_index: int, advantage: float
) -> np.ndarray:
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


# --------------------------------------------------------------------------------------------------
# Full-vocabulary diagnostics
# --------------------------------------------------------------------------------------------------


def _as_float64_numpy(x: torch.Tensor | np.ndarray | Sequence[float], name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to(device="cpu", dtype=torch.float64).numpy()
    return _vector(x, name)


def distribution_diagnostics(
    p_full: torch.Tensor | np.ndarray | Sequence[float], q_full: torch.Tensor | np.ndarray | Sequence[float]
) -> Diagnostics:
    """KL both ways, JS (natural log, m = (p + q)/2), L2, cosine and entropies of two probability vectors.

    The inputs are taken as given (not renormalised). Computed in float64; 0 log 0 = 0 and a zero
    probability under a positive weight is floored at ``PROB_FLOOR`` inside the logarithm.
    """
    p, q = _as_float64_numpy(p_full, "p_full"), _as_float64_numpy(q_full, "q_full")
    if p.shape != q.shape:
        raise ValueError(f"p_full and q_full must have the same length, got {p.shape[0]} and {q.shape[0]}")
    p_support, q_support = p > 0, q > 0
    log_p, log_q = _floored_log(p), _floored_log(q)
    kl_pq = float(np.sum(np.where(p_support, p * (log_p - log_q), 0.0)))
    kl_qp = float(np.sum(np.where(q_support, q * (log_q - log_p), 0.0)))
    log_m = _floored_log(0.5 * (p + q))  # m > 0 wherever p or q is, so the floor never bites there
    js = 0.5 * float(np.sum(np.where(p_support, p * (log_p - log_m), 0.0))) + 0.5 * float(
        np.sum(np.where(q_support, q * (log_q - log_m), 0.0))
    )
    norm_p, norm_q = float(np.linalg.norm(p)), float(np.linalg.norm(q))
    cos_pq = float(np.dot(p, q)) / (norm_p * norm_q) if norm_p > 0 and norm_q > 0 else float("nan")
    return Diagnostics(
        kl_pq=kl_pq,
        kl_qp=kl_qp,
        js=js,
        l2=float(np.linalg.norm(p - q)),
        cos_pq=cos_pq,
        student_entropy=-float(np.sum(np.where(p_support, p * log_p, 0.0))),
        teacher_entropy=-float(np.sum(np.where(q_support, q * log_q, 0.0))),
    )


def _check_log_prob_pair(logp: torch.Tensor, logq: torch.Tensor) -> None:
    if logp.ndim != 2 or logp.shape != logq.shape:
        raise ValueError(f"logp and logq must both be [N, V], got {tuple(logp.shape)} and {tuple(logq.shape)}")


def _row_slices(rows: int, vocab: int) -> list[slice]:
    step = max(1, _CHUNK_ELEMENTS // max(1, vocab))
    return [slice(start, min(rows, start + step)) for start in range(0, rows, step)]


@torch.no_grad()
def batched_diagnostics(
    logp: torch.Tensor, logq: torch.Tensor, compute_dtype: torch.dtype = torch.float64
) -> list[Diagnostics]:
    """:func:`distribution_diagnostics` for every row of [N, V] LOG-probabilities, vectorised in torch.

    Default float64 on the inputs' device: these are memory-bound reductions, so it costs about twice
    float32 on a GPU (about 0.2 s for 256 x 50k on two CPU cores) and keeps small divergences between
    near-identical distributions exact; pass ``compute_dtype=torch.float32`` where float64 is slow
    (consumer GPUs). Rows are processed in cache-sized chunks; one transfer to the host at the end.
    """
    _check_log_prob_pair(logp, logq)
    rows, vocab = logp.shape
    chunk_stats = []
    for rows_slice in _row_slices(rows, vocab):
        lp, lq = logp[rows_slice].to(compute_dtype), logq[rows_slice].to(compute_dtype)
        p, q = lp.exp(), lq.exp()
        # Floored logs are finite, so p * log p is exactly 0 where p = 0 without a mask; the floor is
        # the one of the numpy path (see the module docstring).
        lp_floor, lq_floor = lp.clamp_min(_LOG_PROB_FLOOR), lq.clamp_min(_LOG_PROB_FLOOR)
        log_m = ((p + q) * 0.5).log().clamp_min(_LOG_PROB_FLOOR)
        log_ratio = lp_floor - lq_floor
        chunk_stats.append(
            torch.stack(
                [
                    (p * log_ratio).sum(dim=-1),
                    -(q * log_ratio).sum(dim=-1),
                    0.5 * ((p * (lp_floor - log_m)).sum(dim=-1) + (q * (lq_floor - log_m)).sum(dim=-1)),
                    (p - q).norm(dim=-1),
                    (p * q).sum(dim=-1) / (p.norm(dim=-1) * q.norm(dim=-1)),
                    -(p * lp_floor).sum(dim=-1),
                    -(q * lq_floor).sum(dim=-1),
                ],
                dim=-1,
            )
        )
    if not chunk_stats:
        return []
    table = torch.cat(chunk_stats).to(device="cpu", dtype=torch.float64).tolist()
    return [Diagnostics(*row) for row in table]


@torch.no_grad()
def gkd_gradient_norms(logp: torch.Tensor, logq: torch.Tensor, beta: float) -> torch.Tensor:
    """[N] L2 norm of the full-vocabulary descent direction of TRL's generalized JSD at each row.

    Same closed forms as :func:`jsd_direction` (forward KL at beta = 0, reverse KL at beta = 1), on
    LOG-probabilities; computed in at least float32 (it only ranks nodes), in row chunks.
    """
    _check_log_prob_pair(logp, logq)
    if not (0.0 <= beta <= 1.0):
        raise ValueError(f"jsd beta must be in [0, 1], got {beta}")
    dtype = torch.promote_types(logp.dtype, torch.float32)
    rows, vocab = logp.shape
    norms = []
    for rows_slice in _row_slices(rows, vocab):
        lp, lq = logp[rows_slice].to(dtype), logq[rows_slice].to(dtype)
        p = lp.exp()
        if beta == 0.0:
            norms.append((lq.exp() - p).norm(dim=-1))
            continue
        support = p > 0
        if beta == 1.0:
            f = lq.clamp_min(_LOG_PROB_FLOOR) - lp
        else:
            log_m = torch.logaddexp(lp + math.log1p(-beta), lq + math.log(beta))
            f = (1.0 - beta) * (lp - log_m)
        f = torch.where(support, f, torch.zeros_like(f))
        f_mean = (p * f).sum(dim=-1, keepdim=True)
        norms.append((p * (f - f_mean)).norm(dim=-1))
    if not norms:
        return torch.zeros(0, dtype=dtype, device=logp.device)
    return torch.cat(norms)


@torch.no_grad()
def total_variation(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """[N] total variation 0.5 * sum_j |p_j - q_j| of each row pair of LOG-probabilities."""
    _check_log_prob_pair(logp, logq)
    dtype = torch.promote_types(logp.dtype, torch.float32)
    rows, vocab = logp.shape
    parts = []
    for rows_slice in _row_slices(rows, vocab):
        lp, lq = logp[rows_slice].to(dtype), logq[rows_slice].to(dtype)
        parts.append(0.5 * (lp.exp() - lq.exp()).abs().sum(dim=-1))
    if not parts:
        return torch.zeros(0, dtype=dtype, device=logp.device)
    return torch.cat(parts)
