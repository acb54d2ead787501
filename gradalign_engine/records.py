"""The per-node alignment record: the one schema shared by JSONL output, storage and the gRPC stream.

A record describes one (analysis node, teacher, method) triple: where the node is, the candidate set
S(u) with p, q and the Monte Carlo success estimates, the ideal and distillation vectors over S(u),
their cosine (or why the node was skipped), the teacher advantage and the distribution diagnostics.

A node is a distinct prefix, analysed once (docs/method.md, "Distinct nodes"): its record lists every
base rollout through it (``rollout_indices``) and how many of them are correct; ``rollout_correct``
is True or False when they all agree and None when the node lies on correct and incorrect rollouts.
A self-distillation teacher's demonstration never comes from a rollout through the node; the record
names where it came from (``demo_source``: "dataset" or "rollout:<i>").

Plain data only: no tensors, no protobuf. ``to_dict``/``from_dict`` round-trip exactly through JSON.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Candidate", "Diagnostics", "AlignmentRecord", "SkipReason", "RECORD_SCHEMA_VERSION"]

RECORD_SCHEMA_VERSION = 2


class SkipReason:
    """Why a node has no cosine. Strings, so they travel unchanged through JSON and protobuf."""

    TOO_FEW_CANDIDATES = "too_few_candidates"  # |S(u)| < 2
    IDEAL_NORM_BELOW_THRESHOLD = "ideal_norm_below_threshold"  # ||g*|| = 0 or < min_ideal_norm
    ZERO_DISTILL_NORM = "zero_distillation_norm"  # the teacher's update vanishes on S(u)
    NO_CONTEXT = "teacher_context_unavailable"  # no demonstration outside the node's rollouts, nor in the data set
    SCREENED_OUT = "context_failed_screening"  # the teacher fails the question with its context
    BUDGET_EXHAUSTED = "budget_exhausted"  # the continuation budget ran out before this node
    CONTEXT_TOO_LONG = "teacher_context_too_long"  # the teacher's prompt + completion exceed its context length


@dataclass
class Candidate:
    """One child j of node u."""

    token_id: int
    token_text: str
    p: float  # student probability (full vocabulary, at the sampling temperature)
    q: float  # teacher probability (full vocabulary)
    p_renorm: float  # p~_j over S(u) (0 when the child is outside S(u))
    q_renorm: float  # q~_j over S(u)
    visits: int  # rollouts and continuations through u.j
    successes: int  # of those, verified correct
    estimate: float  # v_j = successes / visits (nan when visits == 0)
    ci_low: float
    ci_high: float
    sampled: bool  # some base rollout through u sampled this token
    forced: bool  # continuations were forced through this token
    in_support: bool  # member of S(u) (visits >= min_child_samples)


@dataclass
class Diagnostics:
    """Full-vocabulary comparisons of p and q at node u."""

    kl_pq: float  # KL(p || q)
    kl_qp: float  # KL(q || p)
    js: float  # Jensen-Shannon divergence (natural log)
    l2: float  # ||p - q||_2
    cos_pq: float  # cosine of the probability vectors
    student_entropy: float  # H(p), nats
    teacher_entropy: float  # H(q), nats


@dataclass
class AlignmentRecord:
    """Alignment of one teacher's update with the ideal update at one node."""

    question_id: str
    tree_id: str
    rollout_index: int  # the base rollout that represents the node (one of rollout_indices; its tokens and passes)
    rollout_correct: bool | None  # every rollout through the node correct (True), incorrect (False), or mixed (None)
    depth: int  # t: tokens of the completion before node u
    path_length: int  # T: completion length of the representative rollout
    normalized_depth: float  # mean of t / T_r over the rollouts r through the node
    teacher: str
    method: str
    candidates: list[Candidate]
    ideal: list[float]  # g* over S(u), in the order of the in-support candidates
    distill: list[float]  # the teacher's descent direction d over S(u), same order
    cosine: float | None  # cos(g*, d); None when skipped
    skip_reason: str | None
    ideal_norm: float
    distill_norm: float
    teacher_advantage: float | None  # sum_j (q~_j - p~_j) v_j
    diagnostics: Diagnostics | None
    sampled_token_id: int  # the token the representative rollout sampled at u
    prefix_token_ids: list[int] | None = None  # completion tokens before u, on request
    rollout_indices: list[int] = field(default_factory=list)  # every base rollout through u (empty: [rollout_index])
    rollouts_correct: int | None = None  # how many of them are verified correct
    demo_source: str | None = None  # the demonstration in the teacher's context: "dataset", "rollout:<i>" or None
    wrong_source: str | None = None  # the wrong demonstration (correct_and_wrong), same form
    schema_version: int = RECORD_SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def skipped(self) -> bool:
        return self.cosine is None

    @property
    def outcome(self) -> str:
        """ "correct", "incorrect" or "mixed": which rollout outcomes the node lies on."""
        return {True: "correct", False: "incorrect"}.get(self.rollout_correct, "mixed")

    @property
    def rollouts(self) -> list[int]:
        """The base rollouts through the node (records of older schemas list only the representative)."""
        return list(self.rollout_indices) or [self.rollout_index]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AlignmentRecord:
        data = dict(data)
        data["candidates"] = [Candidate(**c) for c in data.get("candidates", [])]
        if data.get("diagnostics") is not None:
            data["diagnostics"] = Diagnostics(**data["diagnostics"])
        return cls(**data)
