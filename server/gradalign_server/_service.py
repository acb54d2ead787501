"""The service layer: stored work, cache keys, jobs and metrics, between the servicer and the engine.

Plain Python: it takes and returns the engine's types (Question, settings dataclasses, records,
reports), never protobuf messages or gRPC contexts. For each operation it looks in the store first,
and otherwise hands the work to the :class:`~._jobs.JobManager`, whose worker threads each drive one
engine handle; then it stores the result and counts it in the metrics, in this process, after the
engine call returned (a worker lost mid-job leaves nothing half-written).

Two faces of the engine: :class:`EngineQueries` (``state.engine``: config, models, receipt, cache keys,
question checks; no sampling) answers on the RPC threads, :class:`EngineWorker` (the handle a job
receives: build, score, estimate) runs on a worker. In-process both are the one local Engine; with
the Ray executor the first is ``RemoteEngine`` (no models in this process) and the second a
``RayWorker`` per actor. Every cache key comes from the engine (tree ids, record keys) or from
``gradalign_engine.identity`` (report keys).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from gradalign_engine.aggregate import Report, build_report
from gradalign_engine.backends.base import CancelToken
from gradalign_engine.config import AnalysisConfig, RolloutConfig, SamplingConfig
from gradalign_engine.cost import CostEstimate
from gradalign_engine.data import Question
from gradalign_engine.errors import BudgetError, NotFoundError
from gradalign_engine.identity import report_key
from gradalign_engine.records import AlignmentRecord
from gradalign_engine.resident import ModelEntry
from gradalign_engine.tree import RolloutTree

from ._boundary import EngineBoundary, EngineQueries, EngineWorker
from ._jobs import JobManager
from ._metrics import Metrics
from ._store import Store

__all__ = [
    "EngineBoundary",
    "EngineQueries",
    "EngineWorker",
    "EngineState",
    "GradAlignService",
    "ServiceLimits",
    "RecordFilter",
    "check_budget",
    "redact_paths",
]


@dataclass(frozen=True)
class ServiceLimits:
    """What one request may ask of the server."""

    max_request_tokens: int = 50_000_000  # worst-case generated tokens of one BuildTree
    max_trees_per_request: int = 10_000
    max_text_chars: int = 200_000  # a question's text, solution and extra fields, each


def check_budget(rollouts: RolloutConfig, sampling: SamplingConfig, max_tokens: int) -> None:
    """Refuse a request whose worst-case generated tokens exceed ``max_tokens`` (RESOURCE_EXHAUSTED)."""
    worst = (
        rollouts.num_rollouts + rollouts.max_continuations + rollouts.adaptive_continuations
    ) * sampling.max_new_tokens
    if worst > max_tokens:
        raise BudgetError(
            f"worst case {worst} generated tokens (num_rollouts + max_continuations + adaptive_continuations) "
            f"x max_new_tokens "
            f"exceeds the server's limit of {max_tokens}"
        )


class EngineState:
    """The engine's queries and what is derived from them once loaded; ``error`` when loading failed."""

    def __init__(self) -> None:
        self.engine: EngineQueries | None = None
        self.error: BaseException | None = None
        self.models: list[ModelEntry] = []
        self.teachers: list[str] = []
        self.receipt: dict[str, Any] = {}

    def ready(self, engine: EngineQueries, expose_paths: bool = False) -> None:
        self.models = list(engine.list_models())
        self.teachers = [m.name for m in self.models if m.role == "teacher"]
        receipt = dict(engine.receipt())
        self.receipt = receipt if expose_paths else redact_paths(receipt)
        self.engine = engine


LOCAL_PATH = "<local path>"


def redact_paths(value: Any, key: str | None = None) -> Any:
    """The receipt without the server's file-system paths (model digests identify the models).

    A ``path`` value, or a ``model`` value that names a file or folder rather than a built-in name,
    becomes ``"<local path>"``.
    """
    if isinstance(value, dict):
        return {k: redact_paths(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_paths(v) for v in value]
    if isinstance(value, str) and key in ("path", "model", "db", "dataset") and _looks_like_path(value):
        return LOCAL_PATH
    return value


def _looks_like_path(text: str) -> bool:
    # A hub name ("org/model") is not a path unless a file or folder of that name exists here.
    return os.path.isabs(text) or text.startswith(("~", "./", "../")) or os.path.exists(text)


@dataclass(frozen=True)
class RecordFilter:
    """Which records a stream sends: split ("correct", "incorrect", "mixed" or None), skipped, depths."""

    split: str | None = None
    include_skipped: bool = False
    min_depth: int | None = None
    max_depth: int | None = None

    def keeps(self, record: AlignmentRecord) -> bool:
        if self.split is not None and record.outcome != self.split:
            return False
        if record.cosine is None and not self.include_skipped:
            return False
        if self.min_depth is not None and record.depth < self.min_depth:
            return False
        return self.max_depth is None or record.depth <= self.max_depth


class GradAlignService:
    """BuildTree, ScoreTeacher and StreamAlignments over a store, a job queue and an engine."""

    def __init__(
        self,
        state: EngineState,
        jobs: JobManager,
        store: Store,
        metrics: Metrics,
        limits: ServiceLimits,
        encode: Callable[[list[AlignmentRecord]], bytes],
        decode: Callable[[bytes], list[AlignmentRecord]],
    ):
        self.state, self.jobs, self.store, self.metrics, self.limits = state, jobs, store, metrics, limits
        self._encode, self._decode = encode, decode

    @property
    def engine(self) -> EngineQueries:
        return self.state.engine

    def teachers(self, names: Sequence[str]) -> list[str]:
        """The named teachers (NOT_FOUND for an unknown one), or every loaded teacher."""
        names = list(dict.fromkeys(names))
        for name in names:
            if name not in self.state.teachers:
                raise NotFoundError("teacher", name, self.state.teachers)
        return names or list(self.state.teachers)

    def require_trees(self, tree_ids: Sequence[str]) -> None:
        missing = [t for t in tree_ids if self.store.get_tree_summary(t) is None]
        if missing:
            raise NotFoundError("tree", missing[0])

    # ------------------------------------------------------------------ BuildTree
    def build_tree(
        self,
        question: Question,
        rollouts: RolloutConfig,
        sampling: SamplingConfig,
        seed: int | None,
        targets: list[str] | None,
        cancel: CancelToken,
        on_progress: Callable[..., None] | None = None,
    ) -> tuple[str, dict[str, Any]]:
        """(tree id, summary dict with ``cache_hit``): from the store, or built on an engine worker.

        Identical concurrent requests (same tree id) share one build. ``on_progress(**event)`` gets
        the build's JobProgress fields (stage, done, total, tokens_generated, seconds, queued_ahead).
        """
        self.engine.check_question(question, sampling, targets)
        check_budget(rollouts, sampling, self.limits.max_request_tokens)
        tree_id = self.engine.tree_id(question, rollouts, sampling, seed, targets)
        summary = self.store.get_tree_summary(tree_id)
        if summary is None:
            summary = self.jobs.run(
                "build_tree",
                lambda engine, c, notify: self._build(
                    engine, question, rollouts, sampling, seed, targets, tree_id, c, notify
                ),
                cancel,
                key=("tree", tree_id),
                listener=on_progress,
            )
        else:
            summary = {**summary, "cache_hit": True}
        if summary.get("cache_hit"):
            self.metrics.cache_hits.labels(kind="tree").inc()
        return tree_id, summary

    def _build(self, engine, question, rollouts, sampling, seed, targets, tree_id, cancel, notify) -> dict[str, Any]:
        """Worker side of BuildTree: build unless an earlier job stored the same tree meanwhile."""
        stored = self.store.get_tree_summary(tree_id)
        if stored is not None:
            return {**stored, "cache_hit": True}
        counters, started = engine.student.counters, time.monotonic()
        before = counters.snapshot()["generated_tokens"]

        def progress(stage: str, done: int, total: int) -> None:
            generated = counters.snapshot()["generated_tokens"] - before
            notify(stage=stage, done=done, total=total, tokens_generated=generated, seconds=time.monotonic() - started)

        tree = engine.build_tree(
            question,
            rollouts=rollouts,
            sampling=sampling,
            seed=seed,
            target_teachers=targets,
            cancel=cancel,
            progress=progress,
        )
        summary = dataclasses.asdict(tree.summary)
        self.store.put_tree(tree.tree_id, question.id, summary, tree.to_dict())
        self.metrics.count_tree(
            summary,
            sum(len(r.tokens) for r in tree.rollouts) * len(targets if targets is not None else self.state.teachers),
        )
        return {**summary, "cache_hit": False}

    # ------------------------------------------------------------------ EstimateCost
    def estimate(self, questions, rollouts, sampling, targets, teachers, cancel) -> CostEstimate:
        """The expected cost of building and scoring ``questions``: a calibration on an engine worker."""
        for question in questions:
            self.engine.check_question(question, sampling, targets)
        check_budget(rollouts, sampling, self.limits.max_request_tokens)
        return self.jobs.run(
            "estimate",
            lambda engine, c, _notify: engine.estimate(
                questions, rollouts=rollouts, sampling=sampling, target_teachers=targets, teachers=teachers
            ),
            cancel,
        )

    # ------------------------------------------------------------------ records
    def records(
        self,
        tree_id: str,
        teachers: list[str],
        analysis: AnalysisConfig,
        cancel: CancelToken,
        on_scored: Callable[[int], None] = lambda n: None,
    ) -> list[AlignmentRecord]:
        """Records of one tree for teachers x ``analysis.methods``: from the store, scoring what is missing."""
        keys = {t: self.engine.records_key(t, analysis) for t in teachers}
        found: dict[tuple[str, str], list[AlignmentRecord]] = {}
        missing = []
        for teacher in teachers:
            stored = [self.store.get_records(tree_id, teacher, m, keys[teacher]) for m in analysis.methods]
            if any(blob is None for blob in stored):
                missing.append(teacher)
            else:
                found.update({(teacher, m): self._decode(blob) for m, blob in zip(analysis.methods, stored)})
        if missing:
            found.update(self._score(tree_id, missing, analysis, keys, cancel))
            on_scored(sum(len(found[(t, m)]) for t in missing for m in analysis.methods))
        else:
            self.metrics.cache_hits.labels(kind="records").inc()
        return [r for t in teachers for m in analysis.methods for r in found[(t, m)]]

    def _score(self, tree_id: str, teachers: list[str], analysis: AnalysisConfig, keys: dict[str, str], cancel):
        """Score on a worker, then store the records (here, once scoring returned); identical requests share a job."""
        key = ("records", tree_id, tuple(teachers), tuple(analysis.methods), tuple(keys[t] for t in teachers))
        return self.jobs.run(
            "score_tree",
            lambda engine, c, _notify: self._score_on_worker(engine, tree_id, teachers, analysis, keys, c),
            cancel,
            key=key,
        )

    def _score_on_worker(self, engine, tree_id, teachers, analysis, keys, cancel) -> dict[tuple[str, str], list]:
        tree = RolloutTree.from_dict(self.store.get_tree(tree_id) or _missing_tree(tree_id))
        records = engine.score_tree(tree, teachers, list(analysis.methods), analysis=analysis, cancel=cancel)
        grouped: dict[tuple[str, str], list[AlignmentRecord]] = {(t, m): [] for t in teachers for m in analysis.methods}
        for record in records:
            grouped.setdefault((record.teacher, record.method), []).append(record)
        for (teacher, method), group in grouped.items():
            self.store.put_records(tree_id, teacher, method, keys[teacher], self._encode(group), len(group))
        scored_rollouts = {n.rollout_index for n in tree.nodes}
        self.metrics.count_records(
            len(records), sum(len(tree.rollouts[i].tokens) for i in scored_rollouts) * len(teachers)
        )
        return grouped

    # ------------------------------------------------------------------ ScoreTeacher
    def score(
        self,
        tree_ids: list[str],
        teachers: list[str],
        analysis: AnalysisConfig,
        seed: int,
        confidence: float,
        cancel: CancelToken,
        on_scored: Callable[[int], None] = lambda n: None,
    ) -> tuple[Report, bool]:
        """(report, cache_hit) of teachers on trees."""
        self.require_trees(tree_ids)
        key, request = report_key(
            tree_ids,
            {t: self.engine.records_key(t, analysis) for t in teachers},
            analysis.methods,
            analysis,
            seed,
            confidence,
        )
        stored = self.store.get_report(key)
        if stored is not None:
            self.metrics.cache_hits.labels(kind="report").inc()
            return Report.from_dict(stored), True
        records: list[AlignmentRecord] = []
        for tree_id in tree_ids:
            cancel.raise_if_cancelled()
            records.extend(self.records(tree_id, teachers, analysis, cancel, on_scored))
        summaries = [{**self.store.get_tree_summary(t), "tree_id": t} for t in tree_ids]
        report = build_report(records, analysis, seed, confidence, trees=summaries)
        self.store.put_report(key, request, report.to_dict())
        return report, False

    # ------------------------------------------------------------------ StreamAlignments
    def stream(
        self,
        tree_ids: list[str],
        teachers: list[str],
        analysis: AnalysisConfig,
        keep: RecordFilter,
        cancel: CancelToken,
        on_scored: Callable[[int], None] = lambda n: None,
    ) -> Iterator[AlignmentRecord]:
        """Records tree by tree, so the first ones flow before the last tree is scored."""
        self.require_trees(tree_ids)
        for tree_id in tree_ids:
            for record in self.records(tree_id, teachers, analysis, cancel, on_scored):
                if keep.keeps(record):
                    yield record


def _missing_tree(tree_id: str) -> dict:
    raise NotFoundError("tree", tree_id)
