"""Plain dataclasses the SDK returns: mirrors of the gradalign.v1 messages (not engine classes).

Field names and meanings follow ``protos/gradalign/v1/gradalign.proto``, which in turn mirrors the
engine's ``records.py``, ``tree.py`` and ``aggregate.py``; tests keep the three in step. Optional
values are ``None`` when the server left them unset.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

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
    def from_dict(cls, data: Mapping[str, Any]) -> "Question":
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
class RolloutSettings:
    """Rollout and sampling settings of one tree; ``None`` takes the server's default."""

    num_rollouts: int | None = None
    nodes_per_window: int | None = None
    nodes_per_path: int | None = None
    priority: str | None = None
    candidate_top_k: int | None = None
    min_token_prob: float | None = None
    continuations: int | None = None
    min_child_samples: int | None = None
    max_continuations: int | None = None
    adaptive_continuations: int | None = None
    adaptive_batch: int | None = None
    interval: str | None = None
    confidence: float | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    max_new_tokens: int | None = None
    screen_rollouts: int | None = None
    screen_min_success: float | None = None
    screen_max_success: float | None = None


@dataclass
class AnalysisSettings:
    """Overrides of the server's analysis settings; ``None`` takes the server's default."""

    jsd_beta: float | None = None
    minillm_gamma: float | None = None
    minillm_length_norm: bool | None = None
    minillm_single_step: bool | None = None
    teacher_temperature: float | None = None
    min_ideal_norm: float | None = None
    bootstrap_samples: int | None = None
    bootstrap_unit: str | None = None


@dataclass
class ModelEntry:
    """A loaded model: the student or a teacher."""

    name: str
    role: str
    kind: str
    context: str
    backend: str
    dtype: str
    device: str
    tokenizer_hash: str
    model_hash: str


@dataclass
class TreeSummary:
    """What building one tree did."""

    rollouts: int = 0
    correct: int = 0
    accuracy: float = 0.0
    nodes_analysed: int = 0
    nodes_skipped: int = 0
    continuations: int = 0
    tokens_generated: int = 0
    seconds: float = 0.0
    cache_hit: bool = False
    screened_out: bool = False
    screen_rollouts: int = 0
    screen_successes: int = 0


@dataclass
class BuildTreeResult:
    """A built (or cached) tree: its content address and summary."""

    tree_id: str
    question_id: str
    summary: TreeSummary


@dataclass
class Candidate:
    """One child j of an analysis node u (mirrors ``records.Candidate``)."""

    token_id: int
    token_text: str
    p: float
    q: float
    p_renorm: float
    q_renorm: float
    visits: int
    successes: int
    estimate: float
    ci_low: float
    ci_high: float
    sampled: bool
    forced: bool
    in_support: bool


@dataclass
class Diagnostics:
    """Full-vocabulary comparisons of p and q at a node (mirrors ``records.Diagnostics``)."""

    kl_pq: float
    kl_qp: float
    js: float
    l2: float
    cos_pq: float
    student_entropy: float
    teacher_entropy: float


@dataclass
class AlignmentRecord:
    """Alignment of one teacher's update with the ideal one at one node (mirrors ``records.AlignmentRecord``)."""

    question_id: str
    tree_id: str
    rollout_index: int
    rollout_correct: bool | None
    depth: int
    path_length: int
    normalized_depth: float
    teacher: str
    method: str
    candidates: list[Candidate]
    ideal: list[float]
    distill: list[float]
    cosine: float | None
    skip_reason: str | None
    ideal_norm: float
    distill_norm: float
    teacher_advantage: float | None
    diagnostics: Diagnostics | None
    sampled_token_id: int
    prefix_token_ids: list[int] | None = None
    rollout_indices: list[int] = field(default_factory=list)
    rollouts_correct: int | None = None
    demo_source: str | None = None
    wrong_source: str | None = None
    schema_version: int = 2
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def skipped(self) -> bool:
        return self.cosine is None

    @property
    def outcome(self) -> str:
        """"correct", "incorrect" or "mixed": which rollout outcomes the node lies on."""
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
class GroupStats:
    """Alignment of one teacher and method over one rollout-outcome split (NaN where undefined)."""

    teacher: str
    method: str
    split: str  # "correct", "incorrect", "mixed" or "all"
    nodes: int
    skipped: int
    rollouts: int
    questions: int
    mean_cosine: float
    mean_ci_low: float
    mean_ci_high: float
    weighted_cosine: float
    pooled_cosine: float
    fraction_positive: float
    mean_teacher_advantage: float
    skip_reasons: dict[str, int] = field(default_factory=dict)


@dataclass
class SplitComparison:
    """Incorrect minus correct rollouts for one teacher and method (H1: incorrect > correct)."""

    teacher: str
    method: str
    nodes_incorrect: int
    nodes_correct: int
    mean_incorrect: float
    mean_correct: float
    diff: float
    diff_ci_low: float
    diff_ci_high: float
    bootstrap_p: float
    mann_whitney_u: float
    mann_whitney_p: float


@dataclass
class Correlation:
    """Spearman correlation of alignment with one diagnostic."""

    teacher: str
    method: str
    diagnostic: str
    rho: float
    p_value: float
    n: int


@dataclass
class RankEntry:
    """One teacher's place for one method, by mean cosine over all rollouts."""

    method: str
    rank: int
    teacher: str
    mean_cosine: float
    mean_ci_low: float
    mean_ci_high: float
    nodes: int


@dataclass
class QuestionStats:
    """Mean alignment of one teacher and method on one question's tree."""

    tree_id: str
    question_id: str
    teacher: str
    method: str
    mean_cosine: float
    nodes: int


@dataclass
class ScreenedQuestion:
    """A question the screening pre-pass left out, with its success rate."""

    tree_id: str
    question_id: str
    rollouts: int
    successes: int
    success_rate: float


@dataclass
class Report:
    """The aggregate report (mirrors ``gradalign_engine.aggregate.Report``).

    ``cache_hit`` and ``receipt`` come from the response around the report: whether the server
    served it from storage, and the models, hashes and settings that produced it.
    """

    records: int = 0
    seed: int = 0
    bootstrap_unit: str = ""
    bootstrap_samples: int = 0
    confidence: float = 0.95
    groups: list[GroupStats] = field(default_factory=list)
    comparisons: list[SplitComparison] = field(default_factory=list)
    correlations: list[Correlation] = field(default_factory=list)
    ranking: list[RankEntry] = field(default_factory=list)
    per_question: list[QuestionStats] = field(default_factory=list)
    screened_out: list[ScreenedQuestion] = field(default_factory=list)
    cache_hit: bool = False
    receipt: dict[str, Any] = field(default_factory=dict)

    def group(self, teacher: str, method: str, split: str = "all") -> GroupStats | None:
        """The statistics of one (teacher, method, split), or None when absent."""
        for g in self.groups:
            if (g.teacher, g.method, g.split) == (teacher, method, split):
                return g
        return None

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (NaN stays a float; ``json.dumps`` writes it as NaN)."""
        return dataclasses.asdict(self)
