"""The server's transport: gRPC options, TLS files, the bearer-token check, exclusive binding, and the
gRPC server with the API, health and reflection registered.

Knows grpc and the generated service; knows nothing of the engine, the store or jobs.
"""

from __future__ import annotations

import hmac
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import structlog
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from gradalign_client._proto.gradalign.v1 import gradalign_pb2 as pb
from gradalign_client._proto.gradalign.v1 import gradalign_pb2_grpc as pb_grpc

from ._servicer import GradAlignServicer

__all__ = ["SERVICE_NAME", "TlsFiles", "host_of", "server_options"]

log = structlog.get_logger("gradalign.server")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GradAlign"].full_name  # "gradalign.v1.GradAlign"


def server_options(max_message_mb: int = 256) -> list[tuple[str, Any]]:
    """Channel arguments of the server.

    Requests are at most 16 MiB (the largest legitimate one, 10,000 tree ids, is under 1 MiB).
    Keepalive: a BuildTree can run for minutes without sending a byte. The server pings each client
    every 60 s and drops one that does not answer within 20 s, so a vanished client's call is
    cancelled and its engine job stops instead of running to the end. Clients (see
    ``gradalign_client.channel_options``) ping every 30 s to keep NATs and proxies from closing
    the idle connection; the server accepts pings as often as every 10 s, even with no data in
    flight, and never answers them with GOAWAY "too_many_pings".
    """
    return [
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.http2.max_ping_strikes", 0),
        ("grpc.max_send_message_length", max_message_mb * 1024 * 1024),
        ("grpc.max_receive_message_length", 16 * 1024 * 1024),
        # One server per port: with SO_REUSEPORT a second server on the same port would silently take
        # half of the new connections (and their bearer tokens).
        ("grpc.so_reuseport", 0),
    ]


@dataclass(frozen=True)
class TlsFiles:
    """PEM bytes of the server's certificate chain and key, and optionally the CA of client certificates.

    With ``client_ca`` the server requires and verifies a client certificate (mutual TLS).
    """

    cert_chain: bytes
    private_key: bytes
    client_ca: bytes | None = None

    @classmethod
    def read(cls, cert: str | Path, key: str | Path, client_ca: str | Path | None = None) -> TlsFiles:
        def pem(path, what: str) -> bytes:
            try:
                data = Path(path).read_bytes()
            except OSError as exc:
                raise OSError(f"cannot read the TLS {what} {path}: {exc.strerror}") from None
            if b"-----BEGIN" not in data:
                raise OSError(f"the TLS {what} {path} is not PEM")
            return data

        ca = pem(client_ca, "client CA") if client_ca else None
        return cls(pem(cert, "certificate"), pem(key, "key"), ca)

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.private_key, self.cert_chain)],
            root_certificates=self.client_ca,
            require_client_auth=self.client_ca is not None,
        )


class _TokenInterceptor(grpc.ServerInterceptor):
    """Require ``authorization: Bearer <token>``; health checks stay open for orchestrators."""

    _OPEN_PREFIXES = ("/grpc.health.v1.Health/",)

    def __init__(self, token: str):
        self._expected = f"Bearer {token}".encode()

        def deny(request, context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token (authorization metadata)")

        self._deny = grpc.unary_unary_rpc_method_handler(deny)

    def intercept_service(self, continuation, handler_call_details):
        if handler_call_details.method.startswith(self._OPEN_PREFIXES):
            return continuation(handler_call_details)
        metadata = dict(handler_call_details.invocation_metadata or ())
        given = str(metadata.get("authorization", "")).encode()
        if hmac.compare_digest(given, self._expected):
            return continuation(handler_call_details)
        log.warning("unauthenticated", method=handler_call_details.method)
        return self._deny


def _grpc_server(
    servicer: GradAlignServicer, token: str | None, workers: int
) -> tuple[grpc.Server, health.HealthServicer]:
    """The gRPC server with the API, health and reflection, behind the token check when there is one."""
    interceptors = [_TokenInterceptor(token)] if token else []
    grpc_server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="gradalign-rpc"),
        options=server_options(),
        interceptors=interceptors,
        # Calls beyond the threads are refused at once (RESOURCE_EXHAUSTED) instead of waiting unseen.
        maximum_concurrent_rpcs=workers,
    )
    pb_grpc.add_GradAlignServicer_to_server(servicer, grpc_server)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, grpc_server)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), grpc_server)
    return grpc_server, health_servicer


def host_of(address: str) -> str:
    """The host part of ``host:port`` (``[::1]:50051`` -> ``::1``)."""
    host = address.rsplit(":", 1)[0]
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def _bind(grpc_server: grpc.Server, address: str, tls: TlsFiles | None) -> int:
    """Bind exclusively (no SO_REUSEPORT); OSError naming the address when it is taken or invalid."""
    try:
        port = (
            grpc_server.add_secure_port(address, tls.credentials()) if tls else grpc_server.add_insecure_port(address)
        )
    except RuntimeError:
        port = 0
    if port == 0:
        raise OSError(f"cannot listen on {address}: the port is in use by another process, or the address is invalid")
    return port
