"""The gradalign.v1.GradAlign servicer: validate, convert proto <-> engine dataclasses, delegate.

Each RPC is a few steps: check the request (INVALID_ARGUMENT names the field), look in the store,
and otherwise hand engine work to the :class:`~gradalign_server._jobs.JobManager`, whose single
worker owns the engine. Conversions to and from protobuf happen only here; the engine never sees a
message and the store holds plain JSON.

Every RPC goes through :func:`_rpc`, which gives it a request id, a cancel token wired to the call
(cancelled when the client cancels or the deadline passes), the status mapping of
:mod:`._errors`, one structured log event and the latency histogram.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import time
import uuid
from typing import Any, Callable, Iterator

import grpc
import structlog
from google.protobuf import json_format

from gradalign_client._convert import dict_to_message, message_to_dict
from gradalign_client._proto.gradalign.v1 import gradalign_pb2 as pb
from gradalign_client._proto.gradalign.v1 import gradalign_pb2_grpc as pb_grpc
from gradalign_engine.aggregate import Report, build_report
from gradalign_engine.backends.base import CancelToken
from gradalign_engine.config import AnalysisConfig, RolloutConfig, SamplingConfig, canonical_method
from gradalign_engine.data import DatasetError, Question
from gradalign_engine.errors import ConfigError, NotFoundError
from gradalign_engine.pipeline import check_budget
from gradalign_engine.records import RECORD_SCHEMA_VERSION, AlignmentRecord
from gradalign_engine.tree import RolloutTree

from ._errors import ServiceError, status_of
from ._jobs import JobManager
from ._metrics import Metrics
from ._store import Store

__all__ = ["GradAlignServicer", "ServiceLimits", "EngineState"]

log = structlog.get_logger("gradalign.server")

_ROLLOUT_FIELDS = {f.name for f in dataclasses.fields(RolloutConfig)}
_SAMPLING_FIELDS = {f.name for f in dataclasses.fields(SamplingConfig)}
# Analysis settings the records depend on (the bootstrap ones only change the report).
_RECORD_ANALYSIS_FIELDS = ("jsd_beta", "minillm_gamma", "minillm_length_norm", "minillm_single_step", "teacher_temperature", "min_ideal_norm")
_SPLIT_FILTER = {pb.SPLIT_CORRECT: True, pb.SPLIT_INCORRECT: False, pb.SPLIT_MIXED: None}
_DEADLINE_MARGIN_S = 0.5  # a call ending this close to its deadline ended because of it


@dataclasses.dataclass(frozen=True)
class ServiceLimits:
    """What one request may ask of the server."""

    max_request_tokens: int = 50_000_000  # worst-case generated tokens of one BuildTree
    max_trees_per_request: int = 10_000


class EngineState:
    """The engine and what is derived from it once loaded; ``error`` when loading failed."""

    def __init__(self) -> None:
        self.engine: Any = None
        self.error: BaseException | None = None
        self.models: list = []
        self.teachers: list[str] = []
        self.receipt: dict[str, Any] = {}

    def ready(self, engine: Any) -> None:
        self.models = list(engine.list_models())
        self.teachers = [m.name for m in self.models if m.role == "teacher"]
        self.receipt = dict(engine.receipt())
        self.engine = engine


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _prefixed(prefix: str, exc: ConfigError | DatasetError) -> ConfigError:
    """Re-raise a setting's error with the request path of the field (``settings.num_rollouts``)."""
    reason = getattr(exc, "reason", None) or str(exc).split(": ", 1)[-1]
    return ConfigError(f"{prefix}.{exc.field_name}", exc.value, reason)


class _Call:
    """Per-RPC bookkeeping: request id, cancel token, key figures for the log event."""

    def __init__(self, method: str, context: grpc.ServicerContext):
        metadata = dict(context.invocation_metadata() or ())
        self.method = method
        self.request_id = str(metadata.get("x-request-id") or uuid.uuid4().hex[:16])
        self.context = context
        self.cancel = CancelToken()
        self.fields: dict[str, Any] = {}
        self.started = time.perf_counter()
        self.done = False
        if not context.add_callback(self._on_terminated):
            self._on_terminated()

    def _on_terminated(self) -> None:
        # Runs when the RPC ends for any reason; only matters while work is still going on. A client
        # whose deadline passes cancels the stream a little before the server's own copy of that
        # deadline (which started later, on arrival), hence the margin.
        if not self.done:
            expired = self.context.time_remaining() <= _DEADLINE_MARGIN_S
            self.cancel.cancel("deadline_exceeded" if expired else "cancelled")


def _rpc(stream: bool = False) -> Callable:
    """Wrap a servicer method: call bookkeeping, status mapping, one log event, latency metric."""

    def decorate(fn: Callable) -> Callable:
        method = fn.__name__

        def finish(self: "GradAlignServicer", call: _Call, code: grpc.StatusCode, details: str = "") -> None:
            call.done = True
            seconds = time.perf_counter() - call.started
            self.metrics.rpc_seconds.labels(method=method, code=code.name).observe(seconds)
            event = dict(request_id=call.request_id, method=method, status=code.name, duration_ms=round(seconds * 1000, 1), **call.fields)
            if details and code != grpc.StatusCode.OK:
                event["details"] = details
            log.info("rpc", **event)

        def fail(self: "GradAlignServicer", call: _Call, context, exc: BaseException) -> None:
            code, details, bug = status_of(exc)
            if bug:
                log.error("rpc_internal_error", request_id=call.request_id, method=method, exc_info=exc)
            finish(self, call, code, details)
            context.abort(code, details)

        if stream:

            @functools.wraps(fn)
            def stream_wrapper(self, request, context):
                call = _Call(method, context)
                context.set_trailing_metadata((("x-request-id", call.request_id),))
                try:
                    self._check_ready()
                    yield from fn(self, request, context, call)
                except GeneratorExit:  # the client went away mid-stream
                    finish(self, call, grpc.StatusCode.CANCELLED)
                    raise
                except Exception as exc:  # noqa: BLE001 - mapped to a status, bugs logged
                    fail(self, call, context, exc)
                else:
                    finish(self, call, grpc.StatusCode.OK)

            return stream_wrapper

        @functools.wraps(fn)
        def unary_wrapper(self, request, context):
            call = _Call(method, context)
            context.set_trailing_metadata((("x-request-id", call.request_id),))
            try:
                self._check_ready()
                response = fn(self, request, context, call)
            except Exception as exc:  # noqa: BLE001 - mapped to a status, bugs logged
                fail(self, call, context, exc)
            finish(self, call, grpc.StatusCode.OK)
            return response

        return unary_wrapper

    return decorate


class GradAlignServicer(pb_grpc.GradAlignServicer):
    """Serves gradalign.v1.GradAlign over an engine owned by a job manager's worker."""

    def __init__(self, state: EngineState, jobs: JobManager, store: Store, metrics: Metrics, limits: ServiceLimits = ServiceLimits()):
        self.state = state
        self.jobs = jobs
        self.store = store
        self.metrics = metrics
        self.limits = limits

    # ------------------------------------------------------------------ helpers

    def _check_ready(self) -> None:
        if self.state.error is not None:  # e.g. FAILED_PRECONDITION: a teacher's tokenizer differs
            code, _, bug = status_of(self.state.error)
            raise ServiceError("UNAVAILABLE" if bug else code.name, f"the server could not load its models: {self.state.error}")
        if self.state.engine is None:
            raise ServiceError("UNAVAILABLE", "the server is loading its models; retry shortly (health: NOT_SERVING)")

    @property
    def engine(self):
        return self.state.engine

    def _teachers(self, names) -> list[str]:
        names = list(dict.fromkeys(names))
        for name in names:
            if name not in self.state.teachers:
                raise NotFoundError("teacher", name, self.state.teachers)
        return names or list(self.state.teachers)

    def _methods(self, names) -> tuple[str, ...]:
        return tuple(dict.fromkeys(canonical_method(m) for m in names)) or tuple(self.engine.config.analysis.methods)

    def _analysis(self, request) -> AnalysisConfig:
        base = self.engine.config.analysis
        overrides = {k: v for k, v in message_to_dict(request.analysis).items() if v is not None} if request.HasField("analysis") else {}
        try:
            return dataclasses.replace(base, methods=self._methods(request.methods), include_prefix_ids=True, **overrides)
        except ConfigError as exc:
            if exc.field_name == "methods":
                raise
            raise _prefixed("analysis", exc) from None

    def _tree_ids(self, ids) -> list[str]:
        ids = list(dict.fromkeys(ids))
        if not ids:
            raise ConfigError("tree_ids", [], "at least one tree id is required")
        if len(ids) > self.limits.max_trees_per_request:
            raise ConfigError("tree_ids", f"{len(ids)} ids", f"at most {self.limits.max_trees_per_request} per request")
        for tree_id in ids:
            if not tree_id or len(tree_id) > 128:
                raise ConfigError("tree_ids", tree_id, "not a tree id")
        return ids

    def _load_tree(self, tree_id: str) -> RolloutTree:
        data = self.store.get_tree(tree_id)
        if data is None:
            raise NotFoundError("tree", tree_id)
        return RolloutTree.from_dict(data)

    def _records_key(self, teacher: str, analysis: AnalysisConfig) -> str:
        config = self.engine.config
        model = next(m for m in self.state.models if m.name == teacher)
        return _digest(
            {
                "schema": RECORD_SCHEMA_VERSION,
                "analysis": {k: getattr(analysis, k) for k in _RECORD_ANALYSIS_FIELDS},
                "teacher": dataclasses.asdict(config.teacher(teacher)),
                "teacher_model": model.model_hash,
                "prompt": dataclasses.asdict(config.prompt),
            }
        )

    def _records(self, tree_id: str, teachers: list[str], methods: tuple[str, ...], analysis: AnalysisConfig, call: _Call) -> list[dict]:
        """Record dicts of one tree for teachers x methods: from the store, scoring what is missing."""
        keys = {t: self._records_key(t, analysis) for t in teachers}
        found: dict[tuple[str, str], list[dict]] = {}
        missing_teachers = []
        for teacher in teachers:
            for method in methods:
                stored = self.store.get_records(tree_id, teacher, method, keys[teacher])
                if stored is None:
                    missing_teachers.append(teacher)
                    break
                found[(teacher, method)] = stored
        if missing_teachers:
            tree = self._load_tree(tree_id)
            records = self.jobs.run(
                "score_tree",
                lambda cancel: self.engine.score_tree(tree, missing_teachers, list(methods), analysis=analysis, cancel=cancel),
                call.cancel,
            )
            grouped: dict[tuple[str, str], list[dict]] = {(t, m): [] for t in missing_teachers for m in methods}
            for record in records:
                grouped.setdefault((record.teacher, record.method), []).append(record.to_dict())
            for (teacher, method), dicts in grouped.items():
                self.store.put_records(tree_id, teacher, method, keys[teacher], dicts)
                found[(teacher, method)] = dicts
            scored_rollouts = {n.rollout_index for n in tree.nodes}
            tokens = sum(len(tree.rollouts[i].tokens) for i in scored_rollouts) * len(missing_teachers)
            self.metrics.teacher_tokens_scored.labels(phase="score").inc(tokens)
            self.metrics.records_scored.inc(len(records))
            call.fields["records_scored"] = call.fields.get("records_scored", 0) + len(records)
        else:
            self.metrics.cache_hits.labels(kind="records").inc()
        return [r for t in teachers for m in methods for r in found[(t, m)]]

    # ------------------------------------------------------------------ RPCs

    @_rpc()
    def ListModels(self, request, context, call):
        response = pb.ListModelsResponse()
        for model in self.state.models:
            dict_to_message(model, response.models.add())
        dict_to_message({"receipt": self.state.receipt}, response)
        call.fields["models"] = len(self.state.models)
        return response

    @_rpc()
    def BuildTree(self, request, context, call):
        question = self._question(request)
        rollouts, sampling = self._rollout_settings(request)
        seed = self._seed(request)
        targets = self._teachers(request.target_teachers) if request.target_teachers else None
        check_budget(rollouts, sampling, self.limits.max_request_tokens)
        tree_id = self.engine.tree_id(question, rollouts, sampling, seed, targets)
        call.fields.update(tree_id=tree_id, question_id=question.id)

        summary = self.store.get_tree_summary(tree_id)
        if summary is not None:
            summary = {**summary, "cache_hit": True}
        else:
            summary = self.jobs.run("build_tree", lambda cancel: self._build(question, rollouts, sampling, seed, targets, tree_id, cancel), call.cancel)
        if summary.get("cache_hit"):
            self.metrics.cache_hits.labels(kind="tree").inc()
        call.fields.update({k: summary[k] for k in ("rollouts", "correct", "nodes_analysed", "continuations", "tokens_generated", "cache_hit")})
        response = pb.BuildTreeResponse(tree_id=tree_id, question_id=question.id)
        dict_to_message(summary, response.summary)
        return response

    def _build(self, question, rollouts, sampling, seed, targets, tree_id, cancel) -> dict:
        """Worker side of BuildTree: build unless an earlier job stored the same tree meanwhile."""
        stored = self.store.get_tree_summary(tree_id)
        if stored is not None:
            return {**stored, "cache_hit": True}
        tree = self.engine.build_tree(question, rollouts=rollouts, sampling=sampling, seed=seed, target_teachers=targets, cancel=cancel)
        summary = dataclasses.asdict(tree.summary)
        self.store.put_tree(tree.tree_id, question.id, summary, tree.to_dict())
        m = self.metrics
        m.trees_built.inc()
        m.rollouts.inc(summary["rollouts"])
        m.continuations.inc(summary["continuations"])
        m.tokens_generated.inc(summary["tokens_generated"])
        m.nodes_analysed.inc(summary["nodes_analysed"])
        n_targets = len(targets) if targets is not None else len(self.state.teachers)
        m.teacher_tokens_scored.labels(phase="build").inc(sum(len(r.tokens) for r in tree.rollouts) * n_targets)
        return {**summary, "cache_hit": False}

    def _question(self, request) -> Question:
        if not request.HasField("question"):
            raise ConfigError("question", None, "required")
        q = request.question
        try:
            return Question(
                id=q.id,
                question=q.text,
                answer=q.answer,
                verifier=q.verifier or "numeric",
                choices=tuple(q.choices),
                solution=q.solution or None,
                extra=json_format.MessageToDict(q.extra) if q.HasField("extra") else {},
            )
        except DatasetError as exc:
            field = {"question": "text"}.get(exc.field_name, exc.field_name)
            raise ConfigError(f"question.{field}", exc.value, exc.reason) from None

    def _rollout_settings(self, request) -> tuple[RolloutConfig, SamplingConfig]:
        config = self.engine.config
        given = {k: v for k, v in message_to_dict(request.settings).items() if v is not None}
        try:
            rollouts = dataclasses.replace(config.rollouts, **{k: v for k, v in given.items() if k in _ROLLOUT_FIELDS})
            sampling = dataclasses.replace(config.sampling, **{k: v for k, v in given.items() if k in _SAMPLING_FIELDS})
        except ConfigError as exc:
            raise _prefixed("settings", exc) from None
        return rollouts, sampling

    @staticmethod
    def _seed(request) -> int | None:
        if not request.HasField("seed"):
            return None
        if request.seed >= 2**63:
            raise ConfigError("seed", request.seed, "must be an integer in [0, 2^63)")
        return int(request.seed)

    @_rpc()
    def ScoreTeacher(self, request, context, call):
        tree_ids = self._tree_ids(request.tree_ids)
        teachers = self._teachers(request.teachers)
        analysis = self._analysis(request)
        seed = self._seed(request)
        seed = self.engine.config.seed if seed is None else seed
        confidence = request.confidence if request.HasField("confidence") else self.engine.config.rollouts.confidence
        if not 0.0 < confidence < 1.0:
            raise ConfigError("confidence", confidence, "must be in (0, 1)")
        missing = [t for t in tree_ids if self.store.get_tree_summary(t) is None]
        if missing:
            raise NotFoundError("tree", missing[0])
        call.fields.update(trees=len(tree_ids), teachers=",".join(teachers), methods=",".join(analysis.methods))

        report_request = {
            "tree_ids": sorted(tree_ids),
            "teachers": sorted(teachers),
            "methods": list(analysis.methods),
            "records": {t: self._records_key(t, analysis) for t in teachers},
            "analysis": {k: v for k, v in dataclasses.asdict(analysis).items() if k != "include_prefix_ids"},
            "seed": seed,
            "confidence": confidence,
        }
        report_key = _digest(report_request)
        stored = self.store.get_report(report_key)
        cache_hit = stored is not None
        if cache_hit:
            report = Report.from_dict(stored)
            self.metrics.cache_hits.labels(kind="report").inc()
        else:
            dicts: list[dict] = []
            for tree_id in tree_ids:
                call.cancel.raise_if_cancelled()
                dicts.extend(self._records(tree_id, teachers, analysis.methods, analysis, call))
            summaries = [{**self.store.get_tree_summary(t), "tree_id": t} for t in tree_ids]
            report = build_report([AlignmentRecord.from_dict(d) for d in dicts], analysis, seed, confidence, trees=summaries)
            self.store.put_report(report_key, report_request, report.to_dict())
        call.fields.update(records=report.records, cache_hit=cache_hit)
        response = pb.ScoreTeacherResponse(cache_hit=cache_hit)
        dict_to_message(report, response.report)
        receipt = {**self.state.receipt, "analysis": dataclasses.asdict(analysis), "seed": seed, "confidence": confidence, "tree_ids": tree_ids}
        receipt["analysis"].pop("include_prefix_ids", None)
        dict_to_message({"receipt": receipt}, response)
        return response

    @_rpc(stream=True)
    def StreamAlignments(self, request, context, call) -> Iterator[pb.StreamAlignmentsResponse]:
        tree_ids = self._tree_ids(request.tree_ids)
        teachers = self._teachers(request.teachers)
        analysis = self._analysis(request)
        split_filter = request.split in _SPLIT_FILTER
        want_correct = _SPLIT_FILTER.get(request.split)
        min_depth = request.min_depth if request.HasField("min_depth") else None
        max_depth = request.max_depth if request.HasField("max_depth") else None
        if min_depth is not None and max_depth is not None and min_depth > max_depth:
            raise ConfigError("max_depth", max_depth, f"must be >= min_depth ({min_depth})")
        missing = [t for t in tree_ids if self.store.get_tree_summary(t) is None]
        if missing:
            raise NotFoundError("tree", missing[0])
        call.fields.update(trees=len(tree_ids), teachers=",".join(teachers), methods=",".join(analysis.methods))
        sent = 0
        for tree_id in tree_ids:  # tree by tree, so the first records flow before the last tree is scored
            records = self._records(tree_id, teachers, analysis.methods, analysis, call)
            for record in records:
                if split_filter and record["rollout_correct"] != want_correct:
                    continue
                if record["cosine"] is None and not request.include_skipped:
                    continue
                if (min_depth is not None and record["depth"] < min_depth) or (max_depth is not None and record["depth"] > max_depth):
                    continue
                if not request.include_prefix_ids:
                    record = {**record, "prefix_token_ids": None}
                response = pb.StreamAlignmentsResponse()
                dict_to_message(record, response.record)
                sent += 1
                call.fields["records_sent"] = sent
                yield response
        call.fields["records_sent"] = sent
