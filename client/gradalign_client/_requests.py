"""Request builders and response readers shared by :class:`Client` and :class:`AsyncClient`.

Each public SDK method is "build request, call, read response"; this module holds the first and the
last step so the sync and asyncio clients differ only in how they call.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ._convert import dict_to_message, from_dict, message_to_dict
from ._errors import GradalignError
from ._proto.gradalign.v1 import gradalign_pb2 as pb
from ._types import (
    AlignmentRecord,
    AnalysisSettings,
    BuildTreeResult,
    CostEstimate,
    JobProgress,
    ModelEntry,
    Question,
    Report,
    RolloutSettings,
)

__all__ = [
    "question_message",
    "list_models_request",
    "build_tree_request",
    "score_teacher_request",
    "stream_alignments_request",
    "read_models",
    "read_build_tree",
    "read_report",
    "read_record",
    "estimate_cost_request",
    "read_progress",
    "read_estimate",
]

_SPLITS = {
    None: pb.SPLIT_UNSPECIFIED,
    "all": pb.SPLIT_UNSPECIFIED,
    "correct": pb.SPLIT_CORRECT,
    "incorrect": pb.SPLIT_INCORRECT,
    "mixed": pb.SPLIT_MIXED,
}


def _invalid(field: str, value: Any, reason: str) -> GradalignError:
    return GradalignError("INVALID_ARGUMENT", f"{field}={value!r}: {reason}")


def _names(field: str, values: Iterable[str] | str | None) -> list[str]:
    """A list of names; a comma-separated string is split (CLI style)."""
    if values is None:
        return []
    if isinstance(values, str):
        values = [v for v in values.split(",")]
    out = [v.strip() for v in values]
    if any(not v for v in out):
        raise _invalid(field, list(values), "names must be non-empty")
    return out


def _settings(field: str, cls: type, value: Any, target) -> None:
    if value is None:
        return
    if dataclasses.is_dataclass(value):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if not isinstance(value, Mapping):
        raise _invalid(field, value, f"must be a {cls.__name__} or a mapping")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise _invalid(
            f"{field}.{unknown[0]}", value[unknown[0]], f"unknown setting; known: {', '.join(sorted(known))}"
        )
    target.SetInParent()
    try:
        dict_to_message(value, target, strict=True)
    except (TypeError, ValueError) as exc:
        raise _invalid(field, value, str(exc)) from None


def question_message(question: Question | Mapping[str, Any]) -> pb.Question:
    """The wire form of a question (a Question or a JSONL-style mapping)."""
    if not isinstance(question, Question):
        try:
            question = Question.from_dict(question)
        except (TypeError, ValueError) as exc:
            raise _invalid("question", question, str(exc)) from None
    msg = pb.Question(
        id=question.id,
        text=question.question,
        answer=question.answer,
        verifier=question.verifier or "",
        choices=list(question.choices),
        solution=question.solution or "",
    )
    if question.extra:
        dict_to_message({"extra": dict(question.extra)}, msg)
    return msg


def list_models_request() -> pb.ListModelsRequest:
    return pb.ListModelsRequest()


def build_tree_request(
    question: Question | Mapping[str, Any],
    settings: RolloutSettings | Mapping[str, Any] | None = None,
    seed: int | None = None,
    target_teachers: Iterable[str] | str | None = None,
) -> pb.BuildTreeRequest:
    req = pb.BuildTreeRequest(
        question=question_message(question), target_teachers=_names("target_teachers", target_teachers)
    )
    _settings("settings", RolloutSettings, settings, req.settings)
    if seed is not None:
        req.seed = _seed(seed)
    return req


def estimate_cost_request(
    questions: Iterable[Question | Mapping[str, Any]],
    settings: RolloutSettings | Mapping[str, Any] | None = None,
    target_teachers: Iterable[str] | str | None = None,
    teachers: Iterable[str] | str | None = None,
) -> pb.EstimateCostRequest:
    req = pb.EstimateCostRequest(
        questions=[question_message(q) for q in questions],
        target_teachers=_names("target_teachers", target_teachers),
        teachers=_names("teachers", teachers),
    )
    _settings("settings", RolloutSettings, settings, req.settings)
    return req


def _seed(seed: Any) -> int:
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63:
        raise _invalid("seed", seed, "must be an integer in [0, 2^63)")
    return seed


def _tree_ids(tree_ids: Sequence[str] | str) -> list[str]:
    ids = _names("tree_ids", tree_ids)
    if not ids:
        raise _invalid("tree_ids", list(ids), "at least one tree id is required")
    return ids


def score_teacher_request(
    tree_ids: Sequence[str] | str,
    teachers: Iterable[str] | str | None = None,
    methods: Iterable[str] | str | None = None,
    analysis: AnalysisSettings | Mapping[str, Any] | None = None,
    seed: int | None = None,
    confidence: float | None = None,
) -> pb.ScoreTeacherRequest:
    req = pb.ScoreTeacherRequest(
        tree_ids=_tree_ids(tree_ids), teachers=_names("teachers", teachers), methods=_names("methods", methods)
    )
    _settings("analysis", AnalysisSettings, analysis, req.analysis)
    if seed is not None:
        req.seed = _seed(seed)
    if confidence is not None:
        req.confidence = float(confidence)
    return req


def stream_alignments_request(
    tree_ids: Sequence[str] | str,
    teachers: Iterable[str] | str | None = None,
    methods: Iterable[str] | str | None = None,
    *,
    split: str | None = None,
    include_skipped: bool = False,
    min_depth: int | None = None,
    max_depth: int | None = None,
    include_prefix_ids: bool = False,
    analysis: AnalysisSettings | Mapping[str, Any] | None = None,
) -> pb.StreamAlignmentsRequest:
    if split not in _SPLITS:
        raise _invalid("split", split, "must be 'correct', 'incorrect', 'mixed', 'all' or None")
    req = pb.StreamAlignmentsRequest(
        tree_ids=_tree_ids(tree_ids),
        teachers=_names("teachers", teachers),
        methods=_names("methods", methods),
        split=_SPLITS[split],
        include_skipped=bool(include_skipped),
        include_prefix_ids=bool(include_prefix_ids),
    )
    if min_depth is not None:
        req.min_depth = int(min_depth)
    if max_depth is not None:
        req.max_depth = int(max_depth)
    _settings("analysis", AnalysisSettings, analysis, req.analysis)
    return req


def read_models(resp: pb.ListModelsResponse) -> list[ModelEntry]:
    return [from_dict(ModelEntry, message_to_dict(m)) for m in resp.models]


def read_receipt(resp: pb.ListModelsResponse) -> dict[str, Any]:
    return message_to_dict(resp)["receipt"] or {}


def read_build_tree(resp: pb.BuildTreeResponse) -> BuildTreeResult:
    return from_dict(BuildTreeResult, message_to_dict(resp))


def read_progress(message: pb.JobProgress) -> JobProgress:
    return from_dict(JobProgress, message_to_dict(message))


def read_estimate(resp: pb.EstimateCostResponse) -> CostEstimate:
    return from_dict(CostEstimate, message_to_dict(resp.estimate))


def read_report(resp: pb.ScoreTeacherResponse) -> Report:
    data = message_to_dict(resp.report)
    data["cache_hit"] = resp.cache_hit
    data["receipt"] = message_to_dict(resp)["receipt"] or {}
    return from_dict(Report, data)


def read_record(resp: pb.StreamAlignmentsResponse) -> AlignmentRecord:
    data = message_to_dict(resp.record)
    data["extra"] = data["extra"] or {}
    return from_dict(AlignmentRecord, data)
