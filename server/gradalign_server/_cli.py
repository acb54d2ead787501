"""``gradalign serve``: the command line of the server (flags, logging, signals).

Builds the server with :func:`~._server.create_server` and runs it until SIGTERM or SIGINT; exit codes:
0 after a clean shutdown, 1 when the models fail to load, 2 on a bad config or address.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

import structlog

from ._server import create_server
from ._service import ServiceLimits

__all__ = ["main", "build_parser", "configure_logging"]

log = structlog.get_logger("gradalign.server")


def configure_logging(level: str = "info", json_logs: bool = True) -> None:
    """structlog to stderr: one JSON object per event (or console lines with ``json_logs=False``)."""
    import logging

    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer()
            if json_logs
            else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )


def _default_db() -> str:
    from gradalign_engine.models import cache_dir

    return str(cache_dir() / "server.sqlite")


def build_parser(prog: str = "gradalign serve") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog, description="Serve gradalign.v1.GradAlign: load the models once, serve many clients."
    )
    p.add_argument("--config", required=True, help="run configuration (TOML): student, teachers and default settings")
    p.add_argument(
        "--host", default="127.0.0.1", help="address to bind (0.0.0.0 for every interface; default %(default)s)"
    )
    p.add_argument("--port", type=int, default=50051, help="gRPC port (0: a free one; default %(default)s)")
    p.add_argument(
        "--metrics-port",
        type=int,
        default=9464,
        help="Prometheus /metrics port (0: a free one, logged; -1: off; default %(default)s)",
    )
    p.add_argument(
        "--db", default=None, help="SQLite store of trees, records and reports (default $GRADALIGN_CACHE/server.sqlite)"
    )
    p.add_argument(
        "--token",
        default=os.environ.get("GRADALIGN_TOKEN"),
        help="require 'authorization: Bearer TOKEN' (default $GRADALIGN_TOKEN; none: open)",
    )
    p.add_argument(
        "--max-queue",
        type=int,
        default=16,
        help="engine jobs that may wait before RESOURCE_EXHAUSTED (default %(default)s)",
    )
    p.add_argument(
        "--max-request-tokens",
        type=int,
        default=ServiceLimits.max_request_tokens,
        help="worst-case generated tokens one BuildTree may ask for (default %(default)s)",
    )
    p.add_argument(
        "--grace",
        type=float,
        default=30.0,
        help="seconds in-flight calls get to finish on SIGTERM (default %(default)s)",
    )
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
            config,
            f"{args.host}:{args.port}",
            args.db or _default_db(),
            token=args.token,
            max_queue=args.max_queue,
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
