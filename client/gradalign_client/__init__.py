"""gradalign client SDK: talk to a gradalign server over gRPC.

Light by design: it needs grpcio and protobuf only and never imports torch, transformers or the
engine (a test enforces it). ``Client`` is synchronous, ``AsyncClient`` uses grpc.aio; both return
the plain dataclasses below and raise one exception type, :class:`GradalignError`.

    from gradalign_client import Client
    with Client("localhost:50051") as client:
        report = client.vet("questions.jsonl", teachers=["correct_demo", "summary"], limit=20)
"""

import importlib
from typing import TYPE_CHECKING

# Attributes resolve lazily (PEP 562): ``import gradalign_client.canonical`` stays free of grpc, so the
# engine can share the one JSON dialect without loading the transport.
_LAZY = {
    "AsyncClient": "._aio",
    "Client": "._client",
    "GradalignError": "._errors",
    "tls_credentials": "._core",
    "read_token": "._core",
    **{
        name: "._types"
        for name in (
            "AlignmentRecord",
            "AnalysisSettings",
            "BuildTreeResult",
            "Calibration",
            "Candidate",
            "CostEstimate",
            "Correlation",
            "Diagnostics",
            "GroupStats",
            "JobProgress",
            "ModelEntry",
            "Question",
            "QuestionStats",
            "RankEntry",
            "Report",
            "RolloutSettings",
            "ScreenedQuestion",
            "SplitComparison",
            "TreeSummary",
            "read_questions",
        )
    },
}

if TYPE_CHECKING:  # pragma: no cover
    from ._aio import AsyncClient  # noqa: F401
    from ._client import Client  # noqa: F401
    from ._errors import GradalignError  # noqa: F401


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    "ScreenedQuestion",
    "Report",
    "JobProgress",
    "CostEstimate",
    "Calibration",
    "read_questions",
    "tls_credentials",
    "read_token",
]
