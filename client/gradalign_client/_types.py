"""The types the SDK returns and takes: the generated message dataclasses, with a few additions.

The message mirrors are generated from the proto's descriptors (``_wire_types.py``, by
``scripts/gen_client_types.py``): the proto is the one schema. This module adds what the wire does not
say: the dataset-style :class:`Question` (field ``question``, not ``text``), reading JSONL questions,
:class:`BuildTreeResult`, and helpers on records and reports. Optional values are ``None`` when the
server left them unset.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import _wire_types as _wire
from ._wire_types import (
    AnalysisSettings,
    Calibration,
    Candidate,
    Correlation,
    CostEstimate,
    Diagnostics,
    GroupStats,
    JobProgress,
    ModelEntry,
    QuestionStats,
    RankEntry,
    RolloutSettings,
    ScreenedQuestion,
    SplitComparison,
    TreeSummary,
)

__all__ = [
    "Question",
    "RolloutSettings",
    "AnalysisSettings",
    "ModelEntry",
    "TreeSummary",
    "BuildTreeResult",
    "Candidate",
    "Diagnostics",
    "AlignmentRecord",
    "GroupStats",
    "SplitComparison",
    "Correlation",
    "RankEntry",
    "QuestionStats",
    "ScreenedQuestion",
    "Report",
    "JobProgress",
    "Calibration",
    "CostEstimate",
    "read_questions",
]

_QUESTION_FIELDS = ("id", "question", "answer", "verifier", "choices", "solution")


@dataclass(frozen=True)
class Question:
    """One evaluation item, in the dataset's JSONL field names.

    The server validates it fully (``gradalign_engine.data.Question``) and answers
    INVALID_ARGUMENT naming the bad field.
    """

    id: str
    question: str
    answer: str
    verifier: str = "numeric"
    choices: tuple[str, ...] = ()
    solution: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Question:
        """Build from a JSON object; fields other than the six known ones go to ``extra``."""
        missing = [k for k in ("id", "question", "answer") if k not in data]
        if missing:
            raise ValueError(f"question record lacks required field {missing[0]!r}")
        answer = data["answer"]
        if isinstance(answer, (int, float)) and not isinstance(answer, bool):
            answer = str(answer)
        return cls(
            id=str(data["id"]),
            question=data["question"],
            answer=answer,
            verifier=data.get("verifier") or "numeric",
            choices=tuple(data.get("choices") or ()),
            solution=data.get("solution"),
            extra={k: v for k, v in data.items() if k not in _QUESTION_FIELDS},
        )


def read_questions(path: str | Path, limit: int | None = None) -> Iterator[Question]:
    """Yield the questions of a JSONL file (blank lines skipped), at most ``limit`` of them.

    Raises
    ------
    ValueError
        A line is not a JSON object with ``id``, ``question`` and ``answer``; the message names the
        file and line.
    OSError
        The file cannot be read.
    """
    count = 0
    with open(path, encoding="utf-8-sig") as fh:
        for line_no, line in enumerate(fh, start=1):
            if limit is not None and count >= limit:
                return
            if not line.strip():
                continue
            try:
                data = json.loads(line)
                if not isinstance(data, dict):
                    raise ValueError("not a JSON object")
                question = Question.from_dict(data)
            except ValueError as exc:
                raise ValueError(f"{path}:{line_no}: {exc}") from None
            count += 1
            yield question


@dataclass
class BuildTreeResult:
    """A built (or cached) tree: its content address and summary."""

    tree_id: str
    question_id: str
    summary: TreeSummary


class AlignmentRecord(_wire.AlignmentRecord):
    """Alignment of one teacher's update with the ideal one at one node (the gradalign.v1 message's fields)."""

    @property
    def skipped(self) -> bool:
        return self.cosine is None

    @property
    def outcome(self) -> str:
        """ "correct", "incorrect" or "mixed": which rollout outcomes the node lies on."""
        return {True: "correct", False: "incorrect"}.get(self.rollout_correct, "mixed")

    @property
    def rollouts(self) -> list[int]:
        """The base rollouts through the node."""
        return list(self.rollout_indices) or [self.rollout_index]

    def to_dict(self) -> dict[str, Any]:
        """Plain dict with the same keys as the engine's ``AlignmentRecord.to_dict``."""
        return dataclasses.asdict(self)


def as_questions(items: Iterable[Question | Mapping[str, Any]]) -> Iterator[Question]:
    """Accept Question objects or JSON-like mappings."""
    for item in items:
        yield item if isinstance(item, Question) else Question.from_dict(item)


@dataclass
class Report(_wire.Report):
    """The aggregate report (the gradalign.v1 Report message's fields).

    ``cache_hit`` and ``receipt`` come from the response around the report: whether the server
    served it from storage, and the models, hashes and settings that produced it.
    """

    cache_hit: bool = False
    receipt: dict[str, Any] = field(default_factory=dict)

    def group(self, teacher: str, method: str, split: str = "all") -> GroupStats | None:
        """The statistics of one (teacher, method, split), or None when absent."""
        for g in self.groups:
            if (g.teacher, g.method, g.split) == (teacher, method, split):
                return g
        return None

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (NaN stays a float; ``gradalign_client.canonical.json_line`` writes it as null)."""
        return dataclasses.asdict(self)
