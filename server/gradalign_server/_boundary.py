"""The engine boundary the service layer is written against: typed Protocols, not ``Any``.

``EngineQueries`` are the light calls any front end answers (cache keys, question checks, models);
``EngineWorker`` the heavy ones a worker runs (build, score, estimate); ``EngineBoundary`` both, which
the in-process :class:`~gradalign_engine.pipeline.Engine` and the Ray executor's ``RemoteEngine``
satisfy. Knows nothing of gRPC, storage or jobs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from gradalign_engine.backends.base import CancelToken
from gradalign_engine.config import AnalysisConfig, RolloutConfig, RunConfig, SamplingConfig
from gradalign_engine.cost import CostEstimate
from gradalign_engine.data import Question
from gradalign_engine.records import AlignmentRecord
from gradalign_engine.resident import ModelEntry
from gradalign_engine.tree import RolloutTree

__all__ = ["EngineBoundary", "EngineQueries", "EngineWorker"]


class EngineQueries(Protocol):
    """The cheap engine queries the RPC threads make (``Engine``; ``RemoteEngine`` in ray mode)."""

    config: RunConfig

    def list_models(self) -> list[ModelEntry]: ...

    def receipt(self) -> dict: ...

    def tree_id(
        self,
        question: Question,
        rollouts: RolloutConfig | None = None,
        sampling: SamplingConfig | None = None,
        seed: int | None = None,
        target_teachers: Sequence[str] | None = None,
    ) -> str: ...

    def records_key(self, teacher: str, analysis: AnalysisConfig | None = None) -> str: ...

    def check_question(
        self, question: Question, sampling: SamplingConfig | None = None, target_teachers: Sequence[str] | None = None
    ) -> None: ...

    def close(self) -> None: ...


class EngineWorker(Protocol):
    """The engine work a job does on its worker (``Engine``; a ``RayWorker`` per actor in ray mode).

    ``student.counters.snapshot()["generated_tokens"]`` counts what this handle's engine sampled.
    """

    student: Any

    def estimate(
        self,
        questions: Sequence[Question],
        *,
        rollouts: RolloutConfig | None = None,
        sampling: SamplingConfig | None = None,
        target_teachers: Sequence[str] | None = None,
        teachers: Sequence[str] | None = None,
    ) -> CostEstimate: ...

    def build_tree(
        self,
        question: Question,
        *,
        rollouts: RolloutConfig | None = None,
        sampling: SamplingConfig | None = None,
        seed: int | None = None,
        target_teachers: Sequence[str] | None = None,
        cancel: CancelToken | None = None,
        progress: Callable[[str, int, int], None] | None = None,
    ) -> RolloutTree: ...

    def score_tree(
        self,
        tree: RolloutTree,
        teachers: Sequence[str],
        methods: Sequence[str],
        *,
        analysis: AnalysisConfig | None = None,
        cancel: CancelToken | None = None,
    ) -> list[AlignmentRecord]: ...


class EngineBoundary(EngineQueries, EngineWorker, Protocol):
    """Both faces in one object: the in-process ``gradalign_engine.pipeline.Engine``."""
