"""The synchronous SDK client: typed calls over the generated gradalign.v1 stubs.

Depends on grpcio and protobuf only; never imports torch, transformers or the engine.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import grpc

from . import _requests as rq
from ._errors import GradalignError, from_rpc_error
from ._proto.gradalign.v1 import gradalign_pb2_grpc as pb_grpc
from ._types import (
    AlignmentRecord,
    AnalysisSettings,
    BuildTreeResult,
    ModelEntry,
    Question,
    Report,
    RolloutSettings,
    as_questions,
    read_questions,
)

__all__ = ["Client", "channel_options", "ProgressCallback", "HEALTH_STATUSES"]

#: ``progress(done, total, result)``: once with ``(0, total, None)`` before the first tree of
#: :meth:`Client.vet`, then after each tree with its :class:`BuildTreeResult`.
ProgressCallback = Callable[[int, int, "BuildTreeResult | None"], None]
#: grpc.health.v1 ServingStatus names by number.
HEALTH_STATUSES = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}
_HEALTH_CHECK = "/grpc.health.v1.Health/Check"


def channel_options(max_message_mb: int = 256) -> list[tuple[str, Any]]:
    """Channel arguments shared by both clients.

    A BuildTree on a CPU can run for minutes without a data frame, and NATs and load balancers drop
    idle TCP connections: the client pings every 30 s while a call is open (the server permits
    pings every 10 s) and gives up on a peer that does not answer within 20 s. Reports of many
    trees can exceed gRPC's default 4 MiB message limit, hence the larger receive limit.
    """
    return [
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.keepalive_permit_without_calls", 0),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.max_receive_message_length", max_message_mb * 1024 * 1024),
        ("grpc.max_send_message_length", max_message_mb * 1024 * 1024),
    ]


def _encode_health_request(service: str) -> bytes:
    data = service.encode("utf-8")
    if not data:
        return b""
    if len(data) > 127:
        raise ValueError("service name too long")
    return b"\x0a" + bytes([len(data)]) + data  # field 1, length-delimited


def _decode_health_response(data: bytes) -> str:
    # HealthCheckResponse { ServingStatus status = 1; }: one varint field (absent means UNKNOWN).
    if len(data) >= 2 and data[0] == 0x08:
        return HEALTH_STATUSES.get(data[1], "UNKNOWN")
    return "UNKNOWN"


def _load_questions(dataset: str | Path | Iterable[Question | Mapping[str, Any]], limit: int | None) -> list[Question]:
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise GradalignError("INVALID_ARGUMENT", f"limit={limit!r}: must be a positive integer or None")
    try:
        if isinstance(dataset, (str, Path)):
            return list(read_questions(dataset, limit))
        questions = list(as_questions(dataset))
    except (OSError, ValueError) as exc:
        raise GradalignError("INVALID_ARGUMENT", f"dataset: {exc}") from None
    return questions[:limit] if limit is not None else questions


def _records(call) -> Iterator[AlignmentRecord]:
    try:
        for resp in call:
            yield rq.read_record(resp)
    except grpc.RpcError as exc:
        raise from_rpc_error(exc) from None
    finally:
        call.cancel()  # no-op when the stream already ended; stops the server when left early


class Client:
    """A connection to a gradalign server.

    Thread-safe: one Client may serve many threads. Use it as a context manager, or call
    :meth:`close`.

    Parameters
    ----------
    target : str
        ``host:port`` of the server.
    timeout : float or None
        Default deadline of each call in seconds (a stream's deadline covers the whole stream);
        ``None`` waits forever. Every method takes its own ``timeout`` too.
    token : str or None
        Sent as ``authorization: Bearer <token>`` when the server was started with ``--token``.
    credentials : grpc.ChannelCredentials or None
        TLS credentials; ``None`` opens an insecure (plaintext) channel.
    options : list of (str, value) or None
        Extra channel arguments, appended to :func:`channel_options`.

    Examples
    --------
    >>> with Client("localhost:50051") as client:          # doctest: +SKIP
    ...     report = client.vet("questions.jsonl", teachers=["correct_demo", "summary"])
    ...     print(report.ranking[0].teacher)
    """

    def __init__(
        self,
        target: str,
        timeout: float | None = 600.0,
        token: str | None = None,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        options: list[tuple[str, Any]] | None = None,
    ):
        self.target = target
        self.timeout = timeout
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        opts = channel_options() + list(options or [])
        if credentials is None:
            self._channel = grpc.insecure_channel(target, options=opts)
        else:
            self._channel = grpc.secure_channel(target, credentials, options=opts)
        self._stub = pb_grpc.GradAlignStub(self._channel)
        self._health = self._channel.unary_unary(
            _HEALTH_CHECK, request_serializer=_encode_health_request, response_deserializer=_decode_health_response
        )

    # -- lifecycle ------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the channel; calls in flight are cancelled."""
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, method, request, timeout):
        try:
            return method(request, timeout=self.timeout if timeout is None else timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    # -- calls ------------------------------------------------------------------------------------

    def health(self, service: str = "", *, timeout: float | None = 5.0) -> str:
        """The server's grpc.health.v1 status.

        Parameters
        ----------
        service : str
            Service name; ``""`` is the whole server, ``"gradalign.v1.GradAlign"`` the API.
        timeout : float or None
            Deadline in seconds.

        Returns
        -------
        str
            ``"SERVING"``, ``"NOT_SERVING"`` (loading models or shutting down) or ``"UNKNOWN"``.

        Raises
        ------
        GradalignError
            ``UNAVAILABLE`` when no server answers, ``NOT_FOUND`` for an unknown service.
        """
        try:
            return self._health(service, timeout=timeout)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    def wait_ready(self, timeout: float = 60.0, interval: float = 0.1) -> None:
        """Block until the server reports SERVING.

        Parameters
        ----------
        timeout : float
            Seconds to wait in total.
        interval : float
            Seconds between checks.

        Raises
        ------
        GradalignError
            ``DEADLINE_EXCEEDED`` when the server is not SERVING in time (the last error or status is
            in the details).
        """
        deadline = time.monotonic() + timeout
        last = "no answer"
        while True:
            try:
                status = self.health(timeout=max(0.1, min(5.0, deadline - time.monotonic())))
                if status == "SERVING":
                    return
                last = status
            except GradalignError as exc:
                last = str(exc)
            if time.monotonic() >= deadline:
                raise GradalignError("DEADLINE_EXCEEDED", f"server {self.target} not ready after {timeout:.0f} s: {last}")
            time.sleep(interval)

    def list_models(self, *, timeout: float | None = None) -> list[ModelEntry]:
        """The loaded student and teachers.

        Returns
        -------
        list of ModelEntry
            The student first (role ``"student"``), then the teachers.

        Raises
        ------
        GradalignError
            On any failed call (``UNAVAILABLE`` while models load).
        """
        return rq.read_models(self._call(self._stub.ListModels, rq.list_models_request(), timeout))

    def receipt(self, *, timeout: float | None = None) -> dict[str, Any]:
        """The engine's receipt: model and tokenizer hashes, dtype, backend, seed and default settings.

        Raises
        ------
        GradalignError
            On any failed call.
        """
        return rq.read_receipt(self._call(self._stub.ListModels, rq.list_models_request(), timeout))

    def build_tree(
        self,
        question: Question | Mapping[str, Any],
        *,
        settings: RolloutSettings | Mapping[str, Any] | None = None,
        seed: int | None = None,
        target_teachers: Iterable[str] | str | None = None,
        timeout: float | None = None,
    ) -> BuildTreeResult:
        """Build the rollout tree of one question, or fetch it when already built.

        Parameters
        ----------
        question : Question or mapping
            The question, or a JSONL-style dict (``id``, ``question``, ``answer``, ...).
        settings : RolloutSettings or mapping, optional
            Rollout and sampling settings; unset ones take the server's defaults.
        seed : int, optional
            Seed of every random choice; default the server's seed.
        target_teachers : list of str, optional
            Teachers whose distributions steer node and candidate choice; default all.
        timeout : float, optional
            Deadline in seconds; default the client's. When it passes the server stops generating.

        Returns
        -------
        BuildTreeResult
            ``tree_id`` (content address) and the summary; ``summary.cache_hit`` is true when the
            tree came from storage.

        Raises
        ------
        GradalignError
            ``INVALID_ARGUMENT`` (names the field), ``NOT_FOUND`` (unknown teacher),
            ``RESOURCE_EXHAUSTED`` (queue full or over budget), ``DEADLINE_EXCEEDED``, ``CANCELLED``.
        """
        req = rq.build_tree_request(question, settings, seed, target_teachers)
        return rq.read_build_tree(self._call(self._stub.BuildTree, req, timeout))

    def score_teacher(
        self,
        tree_ids: Sequence[str] | str,
        teachers: Iterable[str] | str | None = None,
        methods: Iterable[str] | str | None = None,
        *,
        analysis: AnalysisSettings | Mapping[str, Any] | None = None,
        seed: int | None = None,
        confidence: float | None = None,
        timeout: float | None = None,
    ) -> Report:
        """Score teachers on built trees and aggregate the alignment.

        Parameters
        ----------
        tree_ids : list of str
            Ids returned by :meth:`build_tree`.
        teachers : list of str, optional
            Teachers to score; default every loaded teacher.
        methods : list of str, optional
            Distillation methods (forward_kl, reverse_kl, jsd, single_sample, minillm); default the
            server's.
        analysis : AnalysisSettings or mapping, optional
            Overrides of the server's analysis settings.
        seed : int, optional
            Bootstrap seed; default the server's.
        confidence : float, optional
            Level of every interval; default the server's.
        timeout : float, optional
            Deadline in seconds; default the client's.

        Returns
        -------
        Report
            Groups, comparisons, correlations, ranking and per-question figures, with ``receipt``.

        Raises
        ------
        GradalignError
            ``NOT_FOUND`` (unknown tree or teacher), ``INVALID_ARGUMENT``, ``FAILED_PRECONDITION``,
            ``RESOURCE_EXHAUSTED``, ``DEADLINE_EXCEEDED``, ``CANCELLED``.
        """
        req = rq.score_teacher_request(tree_ids, teachers, methods, analysis, seed, confidence)
        return rq.read_report(self._call(self._stub.ScoreTeacher, req, timeout))

    def stream_alignments(
        self,
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
        timeout: float | None = None,
    ) -> Iterator[AlignmentRecord]:
        """Iterate over per-node alignment records (scoring the trees first when needed).

        Parameters
        ----------
        tree_ids, teachers, methods, analysis
            As in :meth:`score_teacher`.
        split : {"correct", "incorrect", "all", None}
            Only records of correct or incorrect rollouts; default both.
        include_skipped : bool
            Also yield skipped nodes (``cosine is None``, ``skip_reason`` set).
        min_depth, max_depth : int, optional
            Only nodes with ``min_depth <= depth <= max_depth``.
        include_prefix_ids : bool
            Fill ``prefix_token_ids``.
        timeout : float, optional
            Deadline of the whole stream in seconds; default the client's.

        Returns
        -------
        iterator of AlignmentRecord
            Lazily; leaving the loop early cancels the stream.

        Raises
        ------
        GradalignError
            As :meth:`score_teacher`, raised while iterating.
        """
        req = rq.stream_alignments_request(
            tree_ids, teachers, methods, split=split, include_skipped=include_skipped, min_depth=min_depth,
            max_depth=max_depth, include_prefix_ids=include_prefix_ids, analysis=analysis,
        )
        call = self._stub.StreamAlignments(req, timeout=self.timeout if timeout is None else timeout, metadata=self._metadata)
        return _records(call)

    def vet(
        self,
        dataset: str | Path | Iterable[Question | Mapping[str, Any]],
        teachers: Iterable[str] | str | None = None,
        methods: Iterable[str] | str | None = None,
        limit: int | None = None,
        progress: ProgressCallback | None = None,
        *,
        settings: RolloutSettings | Mapping[str, Any] | None = None,
        analysis: AnalysisSettings | Mapping[str, Any] | None = None,
        seed: int | None = None,
        timeout: float | None = None,
    ) -> Report:
        """Build a tree per question of a dataset, then score the teachers on all of them.

        Parameters
        ----------
        dataset : path or iterable
            A JSONL file (one question per line) or Question objects / dicts.
        teachers : list of str, optional
            Teachers to vet (also the trees' target teachers); default every loaded teacher.
        methods : list of str, optional
            Distillation methods; default the server's.
        limit : int, optional
            Use only the first ``limit`` questions.
        progress : callable, optional
            ``progress(done, total, result)``: ``(0, total, None)`` first, then after each tree.
        settings, analysis, seed
            As in :meth:`build_tree` and :meth:`score_teacher`.
        timeout : float, optional
            Deadline of each call in seconds; default the client's.

        Returns
        -------
        Report
            The aggregate report over every tree.

        Raises
        ------
        GradalignError
            ``INVALID_ARGUMENT`` for an unreadable dataset (names file and line), and any error of
            :meth:`build_tree` or :meth:`score_teacher`.
        """
        questions = _load_questions(dataset, limit)
        if not questions:
            raise GradalignError("INVALID_ARGUMENT", f"dataset={str(dataset)!r}: no questions")
        if progress is not None:
            progress(0, len(questions), None)
        tree_ids = []
        for done, question in enumerate(questions, start=1):
            result = self.build_tree(question, settings=settings, seed=seed, target_teachers=teachers, timeout=timeout)
            tree_ids.append(result.tree_id)
            if progress is not None:
                progress(done, len(questions), result)
        return self.score_teacher(tree_ids, teachers, methods, analysis=analysis, seed=seed, timeout=timeout)
