"""Server assembly and lifecycle: ``create_server`` for tests and embedding, ``main`` for ``gradalign serve``.

Components and threads:
- a gRPC thread pool serving gradalign.v1.GradAlign, grpc.health.v1 and server reflection;
- one engine worker thread (:class:`~._jobs.JobManager`) that alone drives the models;
- a loader thread that builds the engine at start (health says NOT_SERVING until it is done);
- the Prometheus HTTP thread for ``/metrics``.

Lifecycle: bind and start -> load models (NOT_SERVING) -> SERVING -> on SIGTERM/SIGINT: health
NOT_SERVING, ``server.stop(grace)`` lets in-flight calls finish (cancelling the rest, which stops
their engine jobs), then the worker, the engine, the store and the metrics endpoint are closed, each
step logged.
"""

from __future__ import annotations

import argparse
import hmac
import os
import signal
import sys
import threading
from concurrent import futures
from pathlib import Path
from typing import Any, Callable

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from gradalign_client._proto.gradalign.v1 import gradalign_pb2 as pb
from gradalign_client._proto.gradalign.v1 import gradalign_pb2_grpc as pb_grpc

from ._jobs import JobManager
from ._metrics import Metrics
from ._servicer import EngineState, GradAlignServicer, ServiceLimits
from ._store import Store

__all__ = ["GradalignServer", "create_server", "main", "server_options", "SERVICE_NAME"]

log = structlog.get_logger("gradalign.server")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GradAlign"].full_name  # "gradalign.v1.GradAlign"


def server_options(max_message_mb: int = 256) -> list[tuple[str, Any]]:
    """Channel arguments of the server.

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
        ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ]


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


def _engine_factory(engine_or_config: Any) -> tuple[Any | None, Callable[[], Any] | None]:
    """(engine, None) for a ready engine; (None, factory) for a config, a TOML path or a callable."""
    if hasattr(engine_or_config, "build_tree") and hasattr(engine_or_config, "score_tree"):
        return engine_or_config, None
    if isinstance(engine_or_config, (str, Path)):
        path = engine_or_config

        def from_path():
            from gradalign_engine.config import load_run_config
            from gradalign_engine.pipeline import Engine

            return Engine(load_run_config(path))

        return None, from_path
    if callable(engine_or_config):
        return None, engine_or_config

    def from_config():
        from gradalign_engine.pipeline import Engine

        return Engine(engine_or_config)

    return None, from_config


class GradalignServer:
    """A running gradalign server (see :func:`create_server`)."""

    def __init__(self, grpc_server: grpc.Server, port: int, address: str, servicer: GradAlignServicer,
                 health_servicer: health.HealthServicer, owns_engine: bool):
        self.grpc_server = grpc_server
        self.port = port
        self.address = address
        self.servicer = servicer
        self.health = health_servicer
        self.metrics_port: int | None = None
        self._owns_engine = owns_engine
        self._loaded = threading.Event()
        self._stopped = False
        self._stop_lock = threading.Lock()

    @property
    def state(self) -> EngineState:
        return self.servicer.state

    @property
    def engine(self):
        return self.servicer.state.engine

    @property
    def store(self) -> Store:
        return self.servicer.store

    @property
    def jobs(self) -> JobManager:
        return self.servicer.jobs

    @property
    def metrics(self) -> Metrics:
        return self.servicer.metrics

    def _set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for service in ("", SERVICE_NAME):
            self.health.set(service, status)

    def _load(self, factory: Callable[[], Any], on_loaded: Callable[[BaseException | None], None] | None) -> None:
        error: BaseException | None = None
        try:
            log.info("loading_models")
            engine = factory()
            self._ready(engine)
        except BaseException as exc:  # noqa: BLE001 - reported through health, RPCs and on_loaded
            error = exc
            self.servicer.state.error = exc
            log.error("model_load_failed", error=str(exc), error_type=type(exc).__name__, code=getattr(exc, "code", None))
        finally:
            self._loaded.set()
            if on_loaded is not None:
                on_loaded(error)

    def _ready(self, engine: Any) -> None:
        self.servicer.state.ready(engine)
        self.metrics.set_models(self.state.models)
        if not self._stopped:
            self._set_serving(True)
        log.info("models_loaded", models=[m.name for m in self.state.models])

    def wait_until_ready(self, timeout: float | None = None) -> None:
        """Block until the models are loaded; re-raise the load error; TimeoutError after ``timeout``."""
        if not self._loaded.wait(timeout):
            raise TimeoutError(f"models not loaded after {timeout} s")
        if self.state.error is not None:
            raise self.state.error

    def serve_metrics(self, port: int, addr: str = "0.0.0.0") -> int:
        """Expose Prometheus ``/metrics`` on ``port`` (0: a free one); return the port."""
        self.metrics_port = self.metrics.serve_http(port, addr)
        log.info("metrics_listening", port=self.metrics_port, addr=addr)
        return self.metrics_port

    def stop(self, grace: float | None = 5.0) -> None:
        """Graceful stop: NOT_SERVING, drain in-flight calls for ``grace`` s, then release everything."""
        with self._stop_lock:
            if self._stopped:
                return
            self._stopped = True
        log.info("shutdown_begin", grace_s=grace, running=self.jobs.running, queued=self.jobs.queued)
        self.health.enter_graceful_shutdown()
        self.grpc_server.stop(grace).wait()
        log.info("shutdown_rpcs_stopped")
        self.jobs.shutdown(timeout=60.0)
        if self._owns_engine and self.engine is not None:
            self.engine.close()
            log.info("shutdown_engine_closed")
        self.store.close()
        self.metrics.close()
        log.info("shutdown_done")

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        return self.grpc_server.wait_for_termination(timeout)


def create_server(
    engine_or_config: Any,
    address: str = "127.0.0.1:0",
    db_path: str | Path = ":memory:",
    *,
    token: str | None = None,
    max_queue: int = 16,
    max_workers: int | None = None,
    limits: ServiceLimits | None = None,
    metrics_port: int | None = None,
    metrics_addr: str = "0.0.0.0",
    on_loaded: Callable[[BaseException | None], None] | None = None,
    close_engine: bool | None = None,
) -> tuple[GradalignServer, int]:
    """Build, bind and start a gradalign server.

    Parameters
    ----------
    engine_or_config : Engine, RunConfig, str, Path or callable
        A loaded engine (served at once), or what to load one from: a RunConfig, a TOML path, or a
        zero-argument callable returning an engine. Loading runs on a background thread while
        health reports NOT_SERVING and calls answer UNAVAILABLE; a load error is then the answer
        to every call (e.g. FAILED_PRECONDITION for a teacher whose tokenizer differs).
    address : str
        ``host:port`` to bind; port 0 picks a free one.
    db_path : str or Path
        SQLite store; ``":memory:"`` keeps nothing across restarts.
    token : str, optional
        Require ``authorization: Bearer <token>`` on every call except health checks.
    max_queue : int
        Engine jobs that may wait; more are refused with RESOURCE_EXHAUSTED.
    max_workers : int, optional
        gRPC threads (default ``max_queue + 8``: every queued caller holds one while it waits).
    limits : ServiceLimits, optional
        Per-request limits (worst-case tokens of a BuildTree, trees per request).
    metrics_port : int, optional
        Serve Prometheus ``/metrics`` on this port (0: a free one); None: do not serve.
    on_loaded : callable, optional
        ``on_loaded(error_or_None)`` once loading finished (not called for a ready engine).
    close_engine : bool, optional
        Close the engine on stop; default: only when this server loaded it.

    Returns
    -------
    (GradalignServer, int)
        The started server and the bound port.
    """
    engine, factory = _engine_factory(engine_or_config)
    metrics = Metrics()
    jobs = JobManager(max_queue=max_queue, on_change=metrics.set_jobs, on_done=lambda job, seconds, error: metrics.job_seconds.labels(
        kind=job.kind, outcome="ok" if error is None else getattr(error, "code", "error")).observe(seconds))
    store = Store(db_path)
    servicer = GradAlignServicer(EngineState(), jobs, store, metrics, limits or ServiceLimits())
    interceptors = [_TokenInterceptor(token)] if token else []
    grpc_server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers or max_queue + 8, thread_name_prefix="gradalign-rpc"),
        options=server_options(),
        interceptors=interceptors,
    )
    pb_grpc.add_GradAlignServicer_to_server(servicer, grpc_server)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, grpc_server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), grpc_server
    )
    port = grpc_server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"could not bind {address}")
    server = GradalignServer(
        grpc_server, port, address, servicer, health_servicer,
        owns_engine=close_engine if close_engine is not None else engine is None,
    )
    server._set_serving(False)
    grpc_server.start()
    log.info("grpc_listening", address=address, port=port, db=str(db_path), auth=bool(token), max_queue=max_queue)
    if metrics_port is not None:
        server.serve_metrics(metrics_port, metrics_addr)
    if engine is not None:
        server._ready(engine)
        server._loaded.set()
    else:
        threading.Thread(target=server._load, args=(factory, on_loaded), name="gradalign-loader", daemon=True).start()
    return server, port


def configure_logging(level: str = "info", json_logs: bool = True) -> None:
    """structlog to stderr: one JSON object per event (or console lines with ``json_logs=False``)."""
    import logging

    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer() if json_logs else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )


def _default_db() -> str:
    from gradalign_engine.models import cache_dir

    return str(cache_dir() / "server.sqlite")


def build_parser(prog: str = "gradalign serve") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Serve gradalign.v1.GradAlign: load the models once, serve many clients.")
    p.add_argument("--config", required=True, help="run configuration (TOML): student, teachers and default settings")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 for every interface; default %(default)s)")
    p.add_argument("--port", type=int, default=50051, help="gRPC port (0: a free one; default %(default)s)")
    p.add_argument("--metrics-port", type=int, default=9464, help="Prometheus /metrics port (0: a free one, logged; -1: off; default %(default)s)")
    p.add_argument("--db", default=None, help="SQLite store of trees, records and reports (default $GRADALIGN_CACHE/server.sqlite)")
    p.add_argument("--token", default=os.environ.get("GRADALIGN_TOKEN"), help="require 'authorization: Bearer TOKEN' (default $GRADALIGN_TOKEN; none: open)")
    p.add_argument("--max-queue", type=int, default=16, help="engine jobs that may wait before RESOURCE_EXHAUSTED (default %(default)s)")
    p.add_argument("--max-request-tokens", type=int, default=ServiceLimits.max_request_tokens, help="worst-case generated tokens one BuildTree may ask for (default %(default)s)")
    p.add_argument("--grace", type=float, default=30.0, help="seconds in-flight calls get to finish on SIGTERM (default %(default)s)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--console-logs", action="store_true", help="human-readable logs instead of JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    """``gradalign serve``: returns 0 after a clean shutdown, 1 when the models fail to load, 2 on a bad config."""
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level, json_logs=not args.console_logs)
    from gradalign_engine.config import load_run_config
    from gradalign_engine.errors import ConfigError

    try:
        config = load_run_config(args.config)
    except ConfigError as exc:
        print(f"gradalign serve: {args.config}: {exc}", file=sys.stderr)
        return 2
    wake, stop = threading.Event(), threading.Event()

    def on_signal(signum, frame):
        log.info("signal", signal=signal.Signals(signum).name)
        stop.set()
        wake.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        server, port = create_server(
            config, f"{args.host}:{args.port}", args.db or _default_db(), token=args.token, max_queue=args.max_queue,
            limits=ServiceLimits(max_request_tokens=args.max_request_tokens),
            metrics_port=None if args.metrics_port < 0 else args.metrics_port,
            on_loaded=lambda error: wake.set(),
        )
    except OSError as exc:
        print(f"gradalign serve: {exc}", file=sys.stderr)
        return 2
    wake.wait()
    if server.state.error is not None and not stop.is_set():
        server.stop(grace=0)
        print(f"gradalign serve: could not load the models: {server.state.error}", file=sys.stderr)
        return 1
    if not stop.is_set():
        log.info("serving", port=port, metrics_port=server.metrics_port)
        stop.wait()
    server.stop(grace=args.grace)
    return 0
