"""gradalign client SDK: talk to a gradalign server over gRPC.

Light by design: it needs grpcio and protobuf only and never imports torch, transformers or the
engine (a test enforces it). ``Client`` is synchronous, ``AsyncClient`` uses grpc.aio; both return
the plain dataclasses below and raise one exception type, :class:`GradalignError`.

    from gradalign_client import Client
    with Client("localhost:50051") as client:
        report = client.vet("questions.jsonl", teachers=["correct_demo", "summary"], limit=20)
"""

from ._aio import AsyncClient
from ._client import Client
from ._errors import GradalignError
from ._types import (
    AlignmentRecord,
    AnalysisSettings,
    BuildTreeResult,
    Candidate,
    Correlation,
    Diagnostics,
    GroupStats,
    ModelEntry,
    Question,
    QuestionStats,
    RankEntry,
    Report,
    RolloutSettings,
    SplitComparison,
    TreeSummary,
    read_questions,
)

__all__ = [
    "Client",
    "AsyncClient",
    "GradalignError",
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
    "Report",
    "read_questions",
]
