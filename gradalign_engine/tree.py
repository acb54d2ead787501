"""The rollout tree of one question: every base rollout and continuation, with per-child counts.

The tree is stored as its sequences (each a completion's token ids with its verified outcome), and
counted through :class:`PrefixCounter`, which keeps the sequences sorted so that the visits and
successes of any prefix, and of each of its children, are two binary searches away. Any rollout or
continuation passing through a child counts toward that child's estimate, whatever node it was
forced from.

Plain data and counting only: no models, tensors or teachers.
"""

from __future__ import annotations

import bisect
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Sequence

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
    """A chosen position along a base rollout, the candidates forced there, or why it was skipped."""

    rollout_index: int
    depth: int
    window: int
    priority: float
    candidates: list[int]
    skip_reason: str | None = None


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


@dataclass(frozen=True)
class ChildCount:
    token_id: int
    visits: int
    successes: int


class PrefixCounter:
    """Visit and success counts of every prefix of a set of sequences (sorted-array prefix tree)."""

    def __init__(self, sequences: Iterable[tuple[Sequence[int], bool]] = ()):
        self._items: list[tuple[tuple[int, ...], bool]] = []
        self._dirty = False
        for tokens, ok in sequences:
            self.add(tokens, ok)

    def add(self, tokens: Sequence[int], correct: bool) -> None:
        self._items.append((tuple(tokens), bool(correct)))
        self._dirty = True

    def _refresh(self) -> None:
        if not self._dirty:
            return
        self._items.sort(key=lambda item: item[0])
        self._keys = [k for k, _ in self._items]
        self._cum = [0]
        for _, ok in self._items:
            self._cum.append(self._cum[-1] + ok)
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

    def counts(self, prefix: Sequence[int]) -> tuple[int, int]:
        """(visits, successes) of sequences that start with ``prefix``."""
        lo, hi = self._range(tuple(prefix))
        return hi - lo, self._cum[hi] - self._cum[lo]

    def children(self, prefix: Sequence[int]) -> list[ChildCount]:
        """Counts of every child token observed after ``prefix`` (sequences that end at it excluded)."""
        prefix = tuple(prefix)
        lo, hi = self._range(prefix)
        depth = len(prefix)
        out = []
        start = lo
        while start < hi:
            key = self._keys[start]
            if len(key) == depth:  # a sequence that ends exactly here has no child
                start += 1
                continue
            token = key[depth]
            _, end = self._range(prefix + (token,))
            out.append(ChildCount(token, end - start, self._cum[end] - self._cum[start]))
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

    def counter(self) -> PrefixCounter:
        """A fresh counter over base rollouts and continuations."""
        counter = PrefixCounter((r.tokens, r.correct) for r in self.rollouts)
        for c in self.continuations:
            counter.add(c.full_tokens(self.rollouts[c.rollout_index]), c.correct)
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
    def from_dict(cls, data: dict[str, Any]) -> "RolloutTree":
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
