"""The gradalign.v1.GradAlign servicer: validate, convert, delegate.

Each RPC checks its request (INVALID_ARGUMENT names the field), converts it to the engine's types
(:mod:`._wire`), calls the :class:`~._service.GradAlignService`, and converts the answer back. Every
RPC goes through :func:`_rpc`, which gives it a request id, a cancel token wired to the call (cancelled
when the client cancels or the deadline passes), the status mapping of :mod:`._errors`, one
structured log event and the latency histogram.
"""

from __future__ import annotations

import dataclasses
import functools
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import structlog

from gradalign_client._proto.gradalign.v1 import gradalign_pb2 as pb
from gradalign_client._proto.gradalign.v1 import gradalign_pb2_grpc as pb_grpc
from gradalign_engine.backends.base import CancelToken
from gradalign_engine.config import AnalysisConfig, RolloutConfig, SamplingConfig, canonical_method
from gradalign_engine.data import DatasetError
from gradalign_engine.errors import ConfigError

from . import _wire as wire
from ._errors import ServiceError, status_of
from ._service import GradAlignService, RecordFilter

__all__ = ["GradAlignServicer"]

log = structlog.get_logger("gradalign.server")

_ROLLOUT_FIELDS = {f.name for f in dataclasses.fields(RolloutConfig)}
_SAMPLING_FIELDS = {f.name for f in dataclasses.fields(SamplingConfig)}
_SPLITS = {
    pb.SPLIT_UNSPECIFIED: None,
    pb.SPLIT_CORRECT: "correct",
    pb.SPLIT_INCORRECT: "incorrect",
    pb.SPLIT_MIXED: "mixed",
}
_DEADLINE_MARGIN_S = 0.5  # a call ending this close to its deadline ended because of it
_PROGRESS_INTERVAL_S = 0.5  # WatchBuildTree sends at most two progress events a second per stage


class _Throttle:
    """Lets an event through when its stage changed or ``interval`` seconds passed."""

    def __init__(self, interval: float):
        self.interval, self.last, self.stage = interval, 0.0, None

    def due(self, stage: str) -> bool:
        now = time.monotonic()
        if stage != self.stage or now - self.last >= self.interval:
            self.stage, self.last = stage, now
            return True
        return False


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

    def count(self, key: str, n: int) -> None:
        self.fields[key] = self.fields.get(key, 0) + n


def _rpc(stream: bool = False) -> Callable:
    """Wrap a servicer method: call bookkeeping, status mapping, one log event, latency metric."""

    def decorate(fn: Callable) -> Callable:
        method = fn.__name__

        def finish(self: GradAlignServicer, call: _Call, code: grpc.StatusCode, details: str = "") -> None:
            call.done = True
            seconds = time.perf_counter() - call.started
            self.service.metrics.rpc_seconds.labels(method=method, code=code.name).observe(seconds)
            event = dict(
                request_id=call.request_id,
                method=method,
                status=code.name,
                duration_ms=round(seconds * 1000, 1),
                **call.fields,
            )
            if details and code != grpc.StatusCode.OK:
                event["details"] = details
            log.info("rpc", **event)

        def fail(self: GradAlignServicer, call: _Call, context, exc: BaseException) -> None:
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
    """Serves gradalign.v1.GradAlign over a :class:`GradAlignService`."""

    def __init__(self, service: GradAlignService):
        self.service = service

    @property
    def state(self):
        return self.service.state

    def _check_ready(self) -> None:
        state = self.service.state
        if state.error is not None:  # e.g. FAILED_PRECONDITION: a teacher's tokenizer differs
            code, _, bug = status_of(state.error)
            raise ServiceError(
                "UNAVAILABLE" if bug else code.name, f"the server could not load its models: {state.error}"
            )
        if state.engine is None:
            raise ServiceError("UNAVAILABLE", "the server is loading its models; retry shortly (health: NOT_SERVING)")

    # ------------------------------------------------------------------ request reading
    def _question(self, request):
        if not request.HasField("question"):
            raise ConfigError("question", None, "required")
        self._check_sizes(request.question)
        try:
            return wire.question_from_message(request.question)
        except DatasetError as exc:
            field = {"question": "text"}.get(exc.field_name, exc.field_name)
            raise ConfigError(f"question.{field}", exc.value, exc.reason) from None

    def _check_sizes(self, question) -> None:
        """Bound every text a question carries before anything reads it (tokenizing a megabyte takes time)."""
        limit = self.service.limits.max_text_chars
        texts = [("id", question.id, 256), ("text", question.text, limit), ("answer", question.answer, 10_000)]
        texts += [("solution", question.solution, limit), ("verifier", question.verifier, 64)]
        texts += [(f"choices[{i}]", c, 10_000) for i, c in enumerate(question.choices)]
        for name, text, most in texts:
            if len(text) > most:
                raise ConfigError(f"question.{name}", f"{len(text)} characters", f"at most {most}")
        if len(question.choices) > 26:
            raise ConfigError("question.choices", f"{len(question.choices)} options", "at most 26")
        extra = question.extra.ByteSize() if question.HasField("extra") else 0
        if extra > limit:
            raise ConfigError("question.extra", f"{extra} bytes", f"at most {limit}")

    def _rollout_settings(self, request) -> tuple[RolloutConfig, SamplingConfig]:
        config = self.service.engine.config
        given = wire.given_fields(request.settings)
        try:
            rollouts = dataclasses.replace(config.rollouts, **{k: v for k, v in given.items() if k in _ROLLOUT_FIELDS})
            sampling = dataclasses.replace(config.sampling, **{k: v for k, v in given.items() if k in _SAMPLING_FIELDS})
        except ConfigError as exc:
            raise _prefixed("settings", exc) from None
        return rollouts, sampling

    def _analysis(self, request) -> AnalysisConfig:
        base = self.service.engine.config.analysis
        overrides = wire.given_fields(request.analysis) if request.HasField("analysis") else {}
        methods = tuple(dict.fromkeys(canonical_method(m) for m in request.methods)) or tuple(base.methods)
        try:
            return dataclasses.replace(base, methods=methods, include_prefix_ids=True, **overrides)
        except ConfigError as exc:
            raise _prefixed("analysis", exc) from None

    @staticmethod
    def _seed(request) -> int | None:
        if not request.HasField("seed"):
            return None
        if request.seed >= 2**63:
            raise ConfigError("seed", request.seed, "must be an integer in [0, 2^63)")
        return int(request.seed)

    @staticmethod
    def _names(field: str, names) -> list[str]:
        if len(names) > 256:
            raise ConfigError(field, f"{len(names)} names", "at most 256")
        for name in names:
            if not name or len(name) > 128:
                raise ConfigError(field, name, "not a teacher name")
        return list(names)

    def _tree_ids(self, ids) -> list[str]:
        ids = list(dict.fromkeys(ids))
        if not ids:
            raise ConfigError("tree_ids", [], "at least one tree id is required")
        limit = self.service.limits.max_trees_per_request
        if len(ids) > limit:
            raise ConfigError("tree_ids", f"{len(ids)} ids", f"at most {limit} per request")
        for tree_id in ids:
            if not tree_id or len(tree_id) > 128:
                raise ConfigError("tree_ids", tree_id, "not a tree id")
        return ids

    # ------------------------------------------------------------------ RPCs
    @_rpc()
    def ListModels(self, request, context, call):
        response = pb.ListModelsResponse()
        for model in self.state.models:
            wire.to_message(model, response.models.add())
        response.receipt.update(wire.json_safe(self.state.receipt))
        call.fields["models"] = len(self.state.models)
        return response

    def _build_request(self, request):
        question = self._question(request)
        rollouts, sampling = self._rollout_settings(request)
        seed = self._seed(request)
        names = self._names("target_teachers", request.target_teachers)
        targets = self.service.teachers(names) if names else None
        return question, rollouts, sampling, seed, targets

    @staticmethod
    def _build_response(call, question, tree_id: str, summary: dict) -> pb.BuildTreeResponse:
        call.fields.update(tree_id=tree_id, question_id=question.id)
        keys = ("rollouts", "correct", "nodes_analysed", "continuations", "tokens_generated", "cache_hit")
        call.fields.update({k: summary[k] for k in keys})
        response = pb.BuildTreeResponse(tree_id=tree_id, question_id=question.id)
        wire.summary_to_message(summary, response.summary)
        return response

    @_rpc()
    def BuildTree(self, request, context, call):
        question, rollouts, sampling, seed, targets = self._build_request(request)
        tree_id, summary = self.service.build_tree(question, rollouts, sampling, seed, targets, call.cancel)
        return self._build_response(call, question, tree_id, summary)

    @_rpc(stream=True)
    def WatchBuildTree(self, request, context, call) -> Iterator[pb.BuildTreeEvent]:
        question, rollouts, sampling, seed, targets = self._build_request(request)
        events: queue.Queue = queue.Queue()

        def work() -> None:
            try:
                result = self.service.build_tree(
                    question,
                    rollouts,
                    sampling,
                    seed,
                    targets,
                    call.cancel,
                    on_progress=lambda **event: events.put(("progress", event)),
                )
                events.put(("result", result))
            except BaseException as exc:  # noqa: BLE001 - re-raised on the RPC thread, mapped to a status
                events.put(("error", exc))

        # The build waits on its own thread, so that this one can send progress while it runs.
        threading.Thread(target=work, name="gradalign-watch", daemon=True).start()
        throttle = _Throttle(_PROGRESS_INTERVAL_S)
        while True:
            kind, value = events.get()
            if kind == "error":
                raise value
            if kind == "result":
                response = self._build_response(call, question, *value)
                yield pb.BuildTreeEvent(
                    progress=pb.JobProgress(
                        stage="done",
                        tokens_generated=response.summary.tokens_generated,
                        seconds=response.summary.seconds,
                    )
                )
                yield pb.BuildTreeEvent(result=response)
                return
            if throttle.due(value.get("stage", "")):
                call.count("progress_events", 1)
                yield pb.BuildTreeEvent(progress=pb.JobProgress(**value))

    @_rpc()
    def EstimateCost(self, request, context, call):
        if not request.questions:
            raise ConfigError("questions", [], "at least one question is required")
        if len(request.questions) > 10_000:
            raise ConfigError("questions", f"{len(request.questions)} questions", "at most 10000")
        questions = []
        for i, message in enumerate(request.questions):
            try:
                questions.append(self._question(pb.BuildTreeRequest(question=message)))
            except ConfigError as exc:
                raise ConfigError(f"questions[{i}].{exc.field_name.split('.', 1)[-1]}", exc.value, exc.reason) from None
        rollouts, sampling = self._rollout_settings(request)
        targets = (
            self.service.teachers(self._names("target_teachers", request.target_teachers))
            if request.target_teachers
            else None
        )
        teachers = self.service.teachers(self._names("teachers", request.teachers))
        estimate = self.service.estimate(questions, rollouts, sampling, targets, teachers, call.cancel)
        call.fields.update(questions=len(questions), seconds_expected=round(estimate.seconds, 1))
        response = pb.EstimateCostResponse()
        wire.to_message(estimate, response.estimate)
        return response

    @_rpc()
    def ScoreTeacher(self, request, context, call):
        tree_ids = self._tree_ids(request.tree_ids)
        analysis = self._analysis(request)
        seed = self._seed(request)
        seed = self.service.engine.config.seed if seed is None else seed
        confidence = (
            request.confidence if request.HasField("confidence") else self.service.engine.config.rollouts.confidence
        )
        if not 0.0 < confidence < 1.0:
            raise ConfigError("confidence", confidence, "must be in (0, 1)")
        teachers = self.service.teachers(self._names("teachers", request.teachers))
        call.fields.update(trees=len(tree_ids), teachers=",".join(teachers), methods=",".join(analysis.methods))
        report, cache_hit = self.service.score(
            tree_ids,
            teachers,
            analysis,
            seed,
            confidence,
            call.cancel,
            on_scored=lambda n: call.count("records_scored", n),
        )
        call.fields.update(records=report.records, cache_hit=cache_hit)
        response = pb.ScoreTeacherResponse(cache_hit=cache_hit)
        wire.to_message(report, response.report)
        receipt = {
            **self.state.receipt,
            "analysis": dataclasses.asdict(analysis),
            "seed": seed,
            "confidence": confidence,
            "tree_ids": tree_ids,
        }
        receipt["analysis"].pop("include_prefix_ids", None)
        response.receipt.update(wire.json_safe(receipt))
        return response

    @_rpc(stream=True)
    def StreamAlignments(self, request, context, call) -> Iterator[pb.StreamAlignmentsResponse]:
        tree_ids = self._tree_ids(request.tree_ids)
        analysis = self._analysis(request)
        min_depth = request.min_depth if request.HasField("min_depth") else None
        max_depth = request.max_depth if request.HasField("max_depth") else None
        if min_depth is not None and max_depth is not None and min_depth > max_depth:
            raise ConfigError("max_depth", max_depth, f"must be >= min_depth ({min_depth})")
        if request.split not in _SPLITS:
            raise ConfigError(
                "split", request.split, f"unknown split; use one of {sorted(_SPLITS)} (gradalign.v1.Split)"
            )
        keep = RecordFilter(_SPLITS[request.split], request.include_skipped, min_depth, max_depth)
        teachers = self.service.teachers(self._names("teachers", request.teachers))
        call.fields.update(trees=len(tree_ids), teachers=",".join(teachers), methods=",".join(analysis.methods))
        for record in self.service.stream(
            tree_ids, teachers, analysis, keep, call.cancel, on_scored=lambda n: call.count("records_scored", n)
        ):
            if not request.include_prefix_ids:
                record = dataclasses.replace(record, prefix_token_ids=None)
            response = pb.StreamAlignmentsResponse()
            wire.to_message(record, response.record)
            call.count("records_sent", 1)
            yield response
