"""The full-vocabulary diagnostics in gradalign_engine.gradients (KL both ways, JS, L2, cosine,
entropies; batched, chunked, float32 and masked rows), GKD gradient norms against autograd of the
full-vocabulary JSD, and total variation, checked against scipy, numpy and brute force."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gradient_helpers import BETAS, SEEDS, _descent, _trl_generalized_jsd
from scipy.spatial.distance import jensenshannon
from scipy.special import rel_entr
from scipy.stats import entropy

from gradalign_engine import diagnostics
from gradalign_engine import gradients as G
from gradalign_engine.records import Diagnostics

# ------------------------------------------------------------------------------------------------
# Full-vocabulary diagnostics
# ------------------------------------------------------------------------------------------------


def _brute_force_diagnostics(p: np.ndarray, q: np.ndarray) -> Diagnostics:
    q_floor, p_floor = np.maximum(q, G.PROB_FLOOR), np.maximum(p, G.PROB_FLOOR)
    return Diagnostics(
        kl_pq=float(rel_entr(p, q_floor).sum()),
        kl_qp=float(rel_entr(q, p_floor).sum()),
        js=float(jensenshannon(p, q) ** 2),
        l2=float(math.sqrt(sum((a - b) ** 2 for a, b in zip(p, q)))),
        cos_pq=float(np.dot(p, q) / (np.linalg.norm(p) * np.linalg.norm(q))),
        student_entropy=float(entropy(p)),
        teacher_entropy=float(entropy(q)),
    )


def _assert_diagnostics_close(got: Diagnostics, expected: Diagnostics, rtol: float, atol: float = 1e-12) -> None:
    for name in Diagnostics.__dataclass_fields__:
        assert getattr(got, name) == pytest.approx(getattr(expected, name), rel=rtol, abs=atol), name


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("vocab", [2, 50, 1000])
def test_distribution_diagnostics_match_scipy(seed: int, vocab: int) -> None:
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(vocab, 0.5))
    q = rng.dirichlet(np.full(vocab, 0.5))
    _assert_diagnostics_close(G.distribution_diagnostics(p, q), _brute_force_diagnostics(p, q), rtol=1e-9)
    # torch input (float64) gives the same numbers
    _assert_diagnostics_close(
        G.distribution_diagnostics(torch.from_numpy(p), torch.from_numpy(q)), _brute_force_diagnostics(p, q), rtol=1e-9
    )


def test_distribution_diagnostics_with_zeros() -> None:
    p = np.array([0.5, 0.5, 0.0, 0.0])
    q = np.array([0.0, 0.25, 0.75, 0.0])
    got = G.distribution_diagnostics(p, q)
    _assert_diagnostics_close(got, _brute_force_diagnostics(p, q), rtol=1e-12)
    assert got.kl_pq == pytest.approx(0.5 * math.log(0.5 / G.PROB_FLOOR) + 0.5 * math.log(2.0))
    assert math.isfinite(got.kl_qp)
    identical = G.distribution_diagnostics(p, p)
    assert identical.kl_pq == 0.0 and identical.js == 0.0 and identical.l2 == 0.0


def _random_log_probs(
    rows: int, vocab: int, seed: int, dtype: torch.dtype = torch.float64
) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    logp = F.log_softmax(torch.randn(rows, vocab, generator=gen, dtype=torch.float64) * 3, dim=-1)
    logq = F.log_softmax(torch.randn(rows, vocab, generator=gen, dtype=torch.float64) * 3, dim=-1)
    return logp.to(dtype), logq.to(dtype)


def test_batched_diagnostics_match_per_row() -> None:
    logp, logq = _random_log_probs(6, 300, seed=11)
    # Masked entries (top-k/top-p sampling, underflow): -inf log-probabilities in both and in either.
    logp[0, :5] = -math.inf
    logq[0, 3:8] = -math.inf
    logp, logq = F.log_softmax(logp, -1), F.log_softmax(logq, -1)
    batched = G.batched_diagnostics(logp, logq)
    assert len(batched) == 6
    for row, got in enumerate(batched):
        expected = G.distribution_diagnostics(logp[row].exp().numpy(), logq[row].exp().numpy())
        _assert_diagnostics_close(got, expected, rtol=1e-9)
        assert all(math.isfinite(getattr(got, name)) for name in Diagnostics.__dataclass_fields__)


def test_batched_diagnostics_float32_and_chunking(monkeypatch: pytest.MonkeyPatch) -> None:
    logp64, logq64 = _random_log_probs(9, 257, seed=3)
    reference = G.batched_diagnostics(logp64, logq64)
    # Small chunks force several row blocks (including a ragged last one).
    monkeypatch.setattr(diagnostics, "CHUNK_ELEMENTS", 257 * 2)
    chunked = G.batched_diagnostics(logp64, logq64)
    for got, expected in zip(chunked, reference):
        _assert_diagnostics_close(got, expected, rtol=1e-12)
    from_float32 = G.batched_diagnostics(logp64.float(), logq64.float())
    computed_in_float32 = G.batched_diagnostics(logp64.float(), logq64.float(), compute_dtype=torch.float32)
    for got, low, expected in zip(from_float32, computed_in_float32, reference):
        _assert_diagnostics_close(got, expected, rtol=1e-5, atol=1e-6)
        _assert_diagnostics_close(low, expected, rtol=1e-4, atol=1e-5)
    assert G.batched_diagnostics(logp64[:0], logq64[:0]) == []


@pytest.mark.parametrize("beta", BETAS)
def test_gkd_gradient_norms_match_autograd_of_full_vocab_jsd(beta: float) -> None:
    gen = torch.Generator().manual_seed(21)
    student_logits = torch.randn(4, 64, generator=gen, dtype=torch.float64) * 2
    logq = F.log_softmax(torch.randn(4, 64, generator=gen, dtype=torch.float64) * 2, dim=-1)
    logp = F.log_softmax(student_logits, dim=-1)
    got = G.gkd_gradient_norms(logp, logq, beta)
    for row in range(4):
        descent = _descent(lambda zz: _trl_generalized_jsd(zz, logq[row], beta), student_logits[row])
        assert got[row].item() == pytest.approx(float(np.linalg.norm(descent)), rel=1e-9)
        # and it is the norm of the S(u) closed form applied to the whole vocabulary
        full = G.jsd_direction(logp[row].exp().numpy(), logq[row].exp().numpy(), beta)
        assert got[row].item() == pytest.approx(float(np.linalg.norm(full)), rel=1e-9)


def test_gkd_gradient_norms_float32_and_masked_entries(monkeypatch: pytest.MonkeyPatch) -> None:
    logp, logq = _random_log_probs(5, 100, seed=8)
    logp[1, :10] = -math.inf
    logq[2, :10] = -math.inf
    logp, logq = F.log_softmax(logp, -1), F.log_softmax(logq, -1)
    for beta in BETAS:
        reference = G.gkd_gradient_norms(logp, logq, beta)
        assert torch.isfinite(reference).all()
        monkeypatch.setattr(diagnostics, "CHUNK_ELEMENTS", 200)
        np.testing.assert_allclose(G.gkd_gradient_norms(logp, logq, beta).numpy(), reference.numpy(), rtol=1e-12)
        monkeypatch.undo()
        low = G.gkd_gradient_norms(logp.float(), logq.float(), beta)
        assert low.dtype == torch.float32
        np.testing.assert_allclose(low.double().numpy(), reference.numpy(), rtol=1e-4, atol=1e-6)


def test_total_variation_matches_numpy() -> None:
    logp, logq = _random_log_probs(7, 123, seed=4)
    expected = 0.5 * np.abs(logp.exp().numpy() - logq.exp().numpy()).sum(axis=1)
    np.testing.assert_allclose(G.total_variation(logp, logq).numpy(), expected, rtol=1e-12)
    assert torch.all(G.total_variation(logp, logp) == 0)
    with pytest.raises(ValueError):
        G.total_variation(logp, logq[:, :10])
