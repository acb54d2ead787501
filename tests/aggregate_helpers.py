"""Shared pieces of the build_report tests: a record whose cosine and norms are computed from its
vectors, and the default analysis settings (imported by test_aggregate.py and test_aggregate_scenarios.py)."""

from __future__ import annotations

import math

from gradalign_engine.config import AnalysisConfig
from gradalign_engine.records import AlignmentRecord, Candidate, Diagnostics


def make_record(
    *,
    teacher: str,
    ideal: list[float],
    distill: list[float],
    method: str = "reverse_kl",
    tree_id: str = "t0",
    rollout_index: int = 0,
    correct: bool | None = True,
    rollouts: list[int] | None = None,
    depth: int = 0,
    path_length: int = 10,
    skip_reason: str | None = None,
    advantage: float | None = 0.0,
    diagnostics: Diagnostics | None = None,
) -> AlignmentRecord:
    """One record whose cosine and norms are computed from its vectors (None cosine when skipped)."""
    ideal_norm = math.sqrt(sum(x * x for x in ideal))
    distill_norm = math.sqrt(sum(x * x for x in distill))
    cosine = None
    if skip_reason is None:
        cosine = sum(a * b for a, b in zip(ideal, distill)) / (ideal_norm * distill_norm)
    candidates = [
        Candidate(
            token_id=j,
            token_text=f"tok{j}",
            p=0.1,
            q=0.1,
            p_renorm=1 / len(ideal),
            q_renorm=1 / len(ideal),
            visits=4,
            successes=j % 4,
            estimate=(j % 4) / 4,
            ci_low=0.0,
            ci_high=1.0,
            sampled=j == 0,
            forced=j > 0,
            in_support=True,
        )
        for j in range(len(ideal))
    ]
    return AlignmentRecord(
        question_id=f"q-{tree_id}",
        tree_id=tree_id,
        rollout_index=rollout_index,
        rollout_correct=correct,
        depth=depth,
        path_length=path_length,
        normalized_depth=depth / path_length,
        teacher=teacher,
        method=method,
        candidates=candidates,
        ideal=list(ideal),
        distill=list(distill),
        cosine=cosine,
        skip_reason=skip_reason,
        ideal_norm=ideal_norm,
        distill_norm=distill_norm,
        teacher_advantage=advantage,
        diagnostics=diagnostics,
        sampled_token_id=0,
        rollout_indices=list(rollouts or []),
    )


ANALYSIS = AnalysisConfig(bootstrap_samples=300, bootstrap_unit="rollout")
