"""What :class:`Client` and :class:`AsyncClient` share: the channel, the health codec, and the two
multi-call procedures (waiting for readiness, vetting a dataset) written once.

The procedures are generators that *yield* the calls they need (``("build_tree", kwargs)``,
``("health", kwargs)``, ``("sleep", seconds)``) and receive each result back; the sync client runs them
with plain calls, the asyncio client awaits each step. Requests and responses are built and read in
:mod:`._requests`. Depends on grpcio and protobuf only.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterable, Mapping
from pathlib import Path
from typing import Any

from ._errors import GradalignError
from ._proto.gradalign.v1 import gradalign_pb2_grpc as pb_grpc
from ._types import BuildTreeResult, Question, as_questions, read_questions

__all__ = ["ClientCore", "channel_options", "ProgressCallback", "HEALTH_STATUSES", "Step", "vet_steps", "ready_steps"]

#: ``progress(done, total, result)``: once with ``(0, total, None)`` before the first tree of a vet,
#: then after each tree with its :class:`BuildTreeResult`.
ProgressCallback = Callable[[int, int, "BuildTreeResult | None"], None]
#: grpc.health.v1 ServingStatus names by number.
HEALTH_STATUSES = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
#: A procedure step: (client method name, keyword arguments), or ("sleep", seconds).
Step = tuple[str, Any]


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


def encode_health_request(service: str) -> bytes:
    data = service.encode("utf-8")
    if not data:
        return b""
    if len(data) > 127:
        raise ValueError("service name too long")
    return b"\x0a" + bytes([len(data)]) + data  # field 1, length-delimited


def decode_health_response(data: bytes) -> str:
    # HealthCheckResponse { ServingStatus status = 1; }: one varint field (absent means UNKNOWN).
    if len(data) >= 2 and data[0] == 0x08:
        return HEALTH_STATUSES.get(data[1], "UNKNOWN")
    return "UNKNOWN"


def load_questions(dataset: str | Path | Iterable[Question | Mapping[str, Any]], limit: int | None) -> list[Question]:
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise GradalignError("INVALID_ARGUMENT", f"limit={limit!r}: must be a positive integer or None")
    try:
        if isinstance(dataset, (str, Path)):
            return list(read_questions(dataset, limit))
        questions = list(as_questions(dataset))
    except (OSError, ValueError) as exc:
        raise GradalignError("INVALID_ARGUMENT", f"dataset: {exc}") from None
    return questions[:limit] if limit is not None else questions


def tls_credentials(
    root_certificates: bytes | str | Path | None = None,
    certificate_chain: bytes | str | Path | None = None,
    private_key: bytes | str | Path | None = None,
):
    """Channel credentials for a TLS server: its CA (None: the system's roots), and for mutual TLS
    this client's certificate chain and key. Each argument is PEM bytes or a path to a PEM file."""
    import grpc

    def pem(value, what: str) -> bytes | None:
        if value is None or isinstance(value, bytes):
            return value
        try:
            return Path(value).read_bytes()
        except OSError as exc:
            raise GradalignError("INVALID_ARGUMENT", f"{what}={str(value)!r}: cannot read ({exc.strerror})") from None

    if (certificate_chain is None) != (private_key is None):
        raise GradalignError("INVALID_ARGUMENT", "a client certificate needs its key (and the key its certificate)")
    return grpc.ssl_channel_credentials(
        pem(root_certificates, "root_certificates"),
        pem(private_key, "private_key"),
        pem(certificate_chain, "certificate_chain"),
    )


def read_token(token: str | None = None, token_file: str | Path | None = None) -> str | None:
    """The bearer token: ``token``, else the contents of ``token_file``, else $GRADALIGN_TOKEN, else
    the file named by $GRADALIGN_TOKEN_FILE."""
    import os

    token_file = token_file or (
        None if token or os.environ.get("GRADALIGN_TOKEN") else os.environ.get("GRADALIGN_TOKEN_FILE")
    )
    if token:
        return token
    if token_file:
        try:
            text = Path(token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise GradalignError(
                "INVALID_ARGUMENT", f"token_file={str(token_file)!r}: cannot read ({exc.strerror})"
            ) from None
        if not text:
            raise GradalignError("INVALID_ARGUMENT", f"token_file={str(token_file)!r}: empty")
        return text
    return os.environ.get("GRADALIGN_TOKEN") or None


class ClientCore:
    """The channel, stub and health call of a client; ``channels`` is ``grpc`` or ``grpc.aio``."""

    def __init__(self, target: str, timeout: float | None, token: str | None, credentials, options, channels):
        self.target = target
        self.timeout = timeout
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        opts = channel_options() + list(options or [])
        if credentials is None:
            self._channel = channels.insecure_channel(target, options=opts)
        else:
            self._channel = channels.secure_channel(target, credentials, options=opts)
        self._stub = pb_grpc.GradAlignStub(self._channel)
        self._health = self._channel.unary_unary(
            HEALTH_CHECK, request_serializer=encode_health_request, response_deserializer=decode_health_response
        )

    def _deadline(self, timeout: float | None) -> float | None:
        return self.timeout if timeout is None else timeout


def ready_steps(target: str, timeout: float, interval: float) -> Generator[Step, Any, None]:
    """Health checks until SERVING; raises DEADLINE_EXCEEDED (with the last status or error) in time."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while True:
        try:
            status = yield ("health", {"timeout": max(0.1, min(5.0, deadline - time.monotonic()))})
            if status == "SERVING":
                return
            last = status
        except GradalignError as exc:
            last = str(exc)
        if time.monotonic() >= deadline:
            raise GradalignError("DEADLINE_EXCEEDED", f"server {target} not ready after {timeout:.0f} s: {last}")
        yield ("sleep", interval)


def vet_steps(
    dataset,
    teachers,
    methods,
    limit,
    progress: ProgressCallback | None,
    settings,
    analysis,
    seed,
    timeout,
    on_stage=None,
) -> Generator[Step, Any, Any]:
    """A tree per question, then one ScoreTeacher over all of them; returns the report.

    ``on_stage(question_id, JobProgress)`` receives each build's progress events (WatchBuildTree).
    """
    questions = load_questions(dataset, limit)
    if not questions:
        raise GradalignError("INVALID_ARGUMENT", f"dataset={str(dataset)!r}: no questions")
    if progress is not None:
        progress(0, len(questions), None)
    tree_ids = []
    for done, question in enumerate(questions, start=1):
        kwargs = {"settings": settings, "seed": seed, "target_teachers": teachers, "timeout": timeout}
        if on_stage is not None:
            kwargs["on_progress"] = lambda event, qid=question.id: on_stage(qid, event)
        result = yield ("build_tree", {"question": question, **kwargs})
        tree_ids.append(result.tree_id)
        if progress is not None:
            progress(done, len(questions), result)
    report = yield (
        "score_teacher",
        {
            "tree_ids": tree_ids,
            "teachers": teachers,
            "methods": methods,
            "analysis": analysis,
            "seed": seed,
            "timeout": timeout,
        },
    )
    return report


def run_steps(steps: Generator[Step, Any, Any], call: Callable[[str, dict], Any]) -> Any:
    """Drive a procedure with synchronous calls (``call(name, kwargs)``); return its value."""
    reply: Any = None
    error: BaseException | None = None
    while True:
        try:
            name, args = steps.throw(error) if error is not None else steps.send(reply)
        except StopIteration as stop:
            return stop.value
        reply, error = None, None
        try:
            reply = time.sleep(args) if name == "sleep" else call(name, args)
        except GradalignError as exc:
            error = exc


async def run_steps_async(steps: Generator[Step, Any, Any], call: Callable[[str, dict], Any]) -> Any:
    """Drive a procedure awaiting each call (``await call(name, kwargs)``); return its value."""
    import asyncio

    reply: Any = None
    error: BaseException | None = None
    while True:
        try:
            name, args = steps.throw(error) if error is not None else steps.send(reply)
        except StopIteration as stop:
            return stop.value
        reply, error = None, None
        try:
            reply = await asyncio.sleep(args) if name == "sleep" else await call(name, args)
        except GradalignError as exc:
            error = exc
