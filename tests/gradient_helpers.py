"""Shared pieces of the gradient tests: seeds, JSD betas, descent directions by torch autograd, and
TRL's generalized JSD loss re-implemented from its formula (imported by test_gradients.py and
test_gradient_diagnostics.py)."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

SEEDS = (0, 1, 2)
BETAS = (0.0, 0.3, 0.5, 1.0)


def _descent(loss_fn, z: torch.Tensor) -> np.ndarray:
    """-dLoss/dz by autograd."""
    z = z.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss_fn(z), z)
    return -grad.numpy()


def _trl_generalized_jsd(student_logits: torch.Tensor, teacher_log_probs: torch.Tensor, beta: float) -> torch.Tensor:
    """TRL's generalized_jsd_loss for one position, from its definition (endpoints special-cased)."""
    s = F.log_softmax(student_logits, dim=-1)
    t = teacher_log_probs
    if beta == 0.0:
        return (t.exp() * (t - s)).sum(-1)  # KL(q || p)
    if beta == 1.0:
        return (s.exp() * (s - t)).sum(-1)  # KL(p || q)
    m = torch.logsumexp(torch.stack([s + math.log1p(-beta), t + math.log(beta)]), dim=0)
    kl_teacher = (t.exp() * (t - m)).sum(-1)
    kl_student = (s.exp() * (s - m)).sum(-1)
    return beta * kl_teacher + (1.0 - beta) * kl_student
