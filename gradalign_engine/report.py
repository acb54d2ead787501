"""The report's types: what aggregating alignment records produces (see :mod:`.aggregate`).

Plain dataclasses, JSON-safe through ``Report.to_dict`` (NaN becomes null, the one rule of
``gradalign_client.canonical``) and back through ``Report.from_dict``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from gradalign_client.canonical import json_safe

__all__ = ["GroupStats", "SplitComparison", "Correlation", "RankEntry", "QuestionStats", "ScreenedQuestion", "Report"]

_NAN = float("nan")


@dataclass
class GroupStats:
    """Alignment of one teacher and method over one rollout-outcome split."""

    teacher: str
    method: str
    split: str  # "correct", "incorrect", "mixed" or "all"
    nodes: int  # non-skipped nodes (records with a cosine)
    skipped: int  # skipped records
    rollouts: int  # distinct (tree_id, rollout) pairs through the non-skipped nodes
    questions: int  # distinct tree_id among the non-skipped nodes
    mean_cosine: float
    mean_ci_low: float  # percentile CI of the cluster bootstrap (nan without resamples)
    mean_ci_high: float
    weighted_cosine: float  # sum ||g*|| cos / sum ||g*||
    pooled_cosine: float  # cosine of all ideal vectors concatenated vs all distillation vectors
    fraction_positive: float  # fraction of nodes with cosine > 0
    mean_teacher_advantage: float  # over non-skipped nodes that have one
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
    diff: float  # mean_incorrect - mean_correct
    diff_ci_low: float
    diff_ci_high: float
    bootstrap_p: float  # one-sided, (#{bootstrap diffs <= 0} + 1) / (n_boot + 1)
    mann_whitney_u: float  # U of the incorrect-rollout cosines
    mann_whitney_p: float  # one-sided


@dataclass
class Correlation:
    """Spearman correlation of alignment with one diagnostic over a teacher's non-skipped nodes."""

    teacher: str
    method: str
    diagnostic: str
    rho: float
    p_value: float  # two-sided
    n: int  # nodes where both the cosine and the diagnostic are finite


@dataclass
class RankEntry:
    """One teacher's place for one method, by mean cosine over all rollouts (nan means last)."""

    method: str
    rank: int  # 1-based
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
    mean_cosine: float  # nan when every node was skipped
    nodes: int


@dataclass
class ScreenedQuestion:
    """A question the screening pre-pass left out: its success rate lay outside the band."""

    tree_id: str
    question_id: str
    rollouts: int  # screening rollouts
    successes: int  # of those, verified correct
    success_rate: float


@dataclass
class Report:
    """Everything aggregated from one set of records, with the settings that produced it."""

    records: int  # records read, skipped included
    seed: int
    bootstrap_unit: str
    bootstrap_samples: int
    confidence: float
    groups: list[GroupStats] = field(default_factory=list)
    comparisons: list[SplitComparison] = field(default_factory=list)
    correlations: list[Correlation] = field(default_factory=list)
    ranking: list[RankEntry] = field(default_factory=list)
    per_question: list[QuestionStats] = field(default_factory=list)
    screened_out: list[ScreenedQuestion] = field(default_factory=list)  # questions without nodes, with their rates

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-safe data: nan and infinities become None."""
        return json_safe(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Report:
        """Inverse of :meth:`to_dict` (None in a float field becomes nan again)."""
        data = dict(data)
        nested = {
            "groups": GroupStats,
            "comparisons": SplitComparison,
            "correlations": Correlation,
            "ranking": RankEntry,
            "per_question": QuestionStats,
            "screened_out": ScreenedQuestion,
        }
        for name, item_cls in nested.items():
            data[name] = [_from_plain(item_cls, item) for item in data.get(name, [])]
        return _from_plain(cls, data)


def _from_plain(cls: type, data: dict[str, Any]) -> Any:
    data = dict(data)
    for f in dataclasses.fields(cls):
        if f.type == "float" and data.get(f.name, 0.0) is None:
            data[f.name] = _NAN
    if "skip_reasons" in data:
        data["skip_reasons"] = dict(data["skip_reasons"])
    return cls(**data)
