"""The rollout tree of one question: every base rollout and continuation, with per-child counts.

The tree is stored as its sequences (each a completion's token ids with its verified outcome), and
counted through :class:`PrefixCounter`, which keeps the sequences sorted so that the visits and
successes of any prefix, and of each of its children, are two binary searches away. Every base
rollout and every continuation that reached a child by sampling (or was forced exactly there)
counts toward that child's estimate, whichever node it was forced from.

Plain data and counting only: no models, tensors or teachers.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .data import Question

__all__ = ["Rollout", "Continuation", "AnalysisNode", "TreeSummary", "RolloutTree", "PrefixCounter", "ChildCount"]


@dataclass
class Rollout:
    """A base rollout y ~ p(. | x)."""

    index: int
    tokens: list[int]
    text: str
    correct: bool
    extracted: str | None = None
    reason: str | None = None  # why the verifier found no single answer (None when it found one)


@dataclass
class Continuation:
    """A student continuation forced through ``forced`` at node (rollout ``rollout_index``, ``depth``)."""

    rollout_index: int
    depth: int
    forced: int
    tokens: list[int]  # sampled after the forced token
    correct: bool
    adaptive: bool = False  # spent by the adaptive allocation (method.md step 6)

    def full_tokens(self, base: Rollout) -> list[int]:
        return base.tokens[: self.depth] + [self.forced] + self.tokens


@dataclass
class AnalysisNode:
    """A distinct prefix chosen for analysis, the candidates forced there, or why it was skipped.

    The prefix is ``rollouts[rollout_index].tokens[:depth]``; ``rollout_index`` is the lowest-index
    base rollout through it and ``rollouts`` lists every base rollout through it (a rollout passes
    through a node when its completion starts with the prefix and goes on past it).
    """

    rollout_index: int
    depth: int
    window: int
    priority: float
    candidates: list[int]
    skip_reason: str | None = None
    rollouts: list[int] = field(default_factory=list)  # empty in trees of older versions: [rollout_index]

    def through(self) -> list[int]:
        """The base rollouts through the node."""
        return list(self.rollouts) or [self.rollout_index]


@dataclass
class TreeSummary:
    tree_id: str
    question_id: str
    rollouts: int
    correct: int
    accuracy: float
    nodes_analysed: int
    nodes_skipped: int
    continuations: int
    tokens_generated: int
    seconds: float
    cache_hit: bool = False
    screened_out: bool = False  # the screening pre-pass found the success rate outside its band: no nodes
    screen_rollouts: int = 0  # rollouts of the screening pre-pass (0: screening off)
    screen_successes: int = 0  # of those, verified correct


@dataclass(frozen=True)
class ChildCount:
    token_id: int
    visits: int
    successes: int


class PrefixCounter:
    """Visit and success counts of prefixes of a set of sequences (a sorted-array prefix tree).

    Each sequence carries ``free_from``: the first position from which all its tokens were sampled
    by the student (0 for a base rollout, depth + 1 for a continuation forced at depth). A sequence
    counts toward child j of node u (depth t) only if it reached u.j by sampling or by being forced
    exactly there (free_from <= t + 1). Continuations forced deeper along the same path share u's
    sampled child by construction, not by sampling: counting them would bias v_j toward that one
    path and treat one correlated cluster as independent draws.
    """

    def __init__(self, sequences: Iterable[tuple[Sequence[int], bool, int]] = ()):
        self._items: list[tuple[tuple[int, ...], bool, int]] = []
        self._dirty = False
        for tokens, ok, free_from in sequences:
            self.add(tokens, ok, free_from)

    def add(self, tokens: Sequence[int], correct: bool, free_from: int = 0) -> None:
        self._items.append((tuple(tokens), bool(correct), int(free_from)))
        self._dirty = True

    def _refresh(self) -> None:
        if not self._dirty:
            return
        import numpy as np

        self._items.sort(key=lambda item: item[0])
        self._keys = [k for k, _, _ in self._items]
        self._correct = np.fromiter((ok for _, ok, _ in self._items), dtype=bool, count=len(self._items))
        self._free = np.fromiter((f for _, _, f in self._items), dtype=np.int64, count=len(self._items))
        self._dirty = False

    def __len__(self) -> int:
        return len(self._items)

    def _range(self, prefix: tuple[int, ...]) -> tuple[int, int]:
        self._refresh()
        lo = bisect.bisect_left(self._keys, prefix)
        if not prefix:
            return lo, len(self._keys)
        upper = prefix[:-1] + (prefix[-1] + 1,)
        return lo, bisect.bisect_left(self._keys, upper, lo)

    def _count(self, lo: int, hi: int, max_free: int) -> tuple[int, int]:
        ok = self._free[lo:hi] <= max_free
        return int(ok.sum()), int((ok & self._correct[lo:hi]).sum())

    def counts(self, prefix: Sequence[int]) -> tuple[int, int]:
        """(visits, successes) of sequences sampled through ``prefix`` (free_from <= len(prefix))."""
        prefix = tuple(prefix)
        lo, hi = self._range(prefix)
        return self._count(lo, hi, len(prefix))

    def children(self, prefix: Sequence[int]) -> list[ChildCount]:
        """Counts of each child token after ``prefix``; sequences ending at the prefix have no child."""
        prefix = tuple(prefix)
        lo, hi = self._range(prefix)
        depth = len(prefix)
        out = []
        start = lo
        while start < hi:
            key = self._keys[start]
            if len(key) == depth:
                start += 1
                continue
            token = key[depth]
            _, end = self._range(prefix + (token,))
            visits, successes = self._count(start, end, depth + 1)
            if visits:
                out.append(ChildCount(token, visits, successes))
            start = end
        return out


@dataclass
class RolloutTree:
    """Everything BuildTree produced for one question; JSON-safe through to_dict/from_dict."""

    tree_id: str
    question: Question
    prompt_ids: list[int]
    rollouts: list[Rollout]
    continuations: list[Continuation] = field(default_factory=list)
    nodes: list[AnalysisNode] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    summary: TreeSummary | None = None

    def rollouts_through(self, prefix: Sequence[int]) -> list[int]:
        """Indices of the base rollouts whose completion starts with ``prefix`` and goes on past it."""
        prefix, depth = list(prefix), len(prefix)
        return [r.index for r in self.rollouts if len(r.tokens) > depth and r.tokens[:depth] == prefix]

    def counter(self) -> PrefixCounter:
        """A fresh counter over base rollouts and continuations."""
        counter = PrefixCounter((r.tokens, r.correct, 0) for r in self.rollouts)
        for c in self.continuations:
            counter.add(c.full_tokens(self.rollouts[c.rollout_index]), c.correct, c.depth + 1)
        return counter

    def to_dict(self) -> dict[str, Any]:
        return {
            "tree_id": self.tree_id,
            "question": self.question.to_dict(),
            "prompt_ids": list(self.prompt_ids),
            "rollouts": [asdict(r) for r in self.rollouts],
            "continuations": [asdict(c) for c in self.continuations],
            "nodes": [asdict(n) for n in self.nodes],
            "settings": self.settings,
            "summary": asdict(self.summary) if self.summary else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RolloutTree:
        return cls(
            tree_id=data["tree_id"],
            question=Question.from_dict(data["question"]),
            prompt_ids=list(data["prompt_ids"]),
            rollouts=[Rollout(**r) for r in data["rollouts"]],
            continuations=[Continuation(**c) for c in data.get("continuations", [])],
            nodes=[AnalysisNode(**n) for n in data.get("nodes", [])],
            settings=dict(data.get("settings", {})),
            summary=TreeSummary(**data["summary"]) if data.get("summary") else None,
        )
