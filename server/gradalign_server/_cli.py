"""``gradalign serve``: the command line of the server (flags, logging, signals).

Builds the server with :func:`~._server.create_server` and runs it until SIGTERM or SIGINT; exit codes:
0 after a shutdown, 1 when the models fail to load (or the Ray workers do not start), 2 on a bad
config, address, port in use, TLS file or executor flag.

``--executor ray`` keeps the API, the store and the metrics here and the models in Ray actors
(``--ray-address``, ``--ray-workers``, ``--ray-gpus-per-worker``; see README "Scaling out").

Shutdown is bounded: the process exits within ``--grace`` seconds plus a few, whatever a job is
doing. If a job is still inside the engine after it was cancelled, the process exits without
waiting for it (SQLite writes are transactions, so stored work is never half-written).
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import sys
import threading
from pathlib import Path

import structlog

from gradalign_engine.ray_executor import add_executor_arguments, executor_from_args

from ._server import WORKER_STOP_S, TlsFiles, create_server, host_of
from ._service import ServiceLimits

__all__ = ["main", "build_parser", "configure_logging", "install_stop_signals", "serve_until_stopped"]

log = structlog.get_logger("gradalign.server")


def configure_logging(level: str = "info", json_logs: bool = True) -> None:
    """structlog to stderr: one JSON object per event (or console lines with ``json_logs=False``).

    With JSON logs, stderr carries JSON only: the standard library's loggers (transformers, vLLM,
    torch) go through the same renderer, and progress bars of the libraries are switched off.
    """
    import logging

    renderer = (
        structlog.processors.JSONRenderer() if json_logs else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    if json_logs:
        _json_stdlib_logging(shared, renderer, level)


def _json_stdlib_logging(shared, renderer, level: str) -> None:
    import logging

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")  # vLLM logs through the root logger below
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(getattr(logging, level.upper()), logging.INFO))
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.disable_default_handler()
        hf_logging.enable_propagation()
    except ImportError:  # the server always has transformers; tools embedding it may not
        pass


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
    p.add_argument("--metrics-host", default=None, help="address /metrics binds (default: the same as --host)")
    p.add_argument(
        "--db", default=None, help="SQLite store of trees, records and reports (default $GRADALIGN_CACHE/server.sqlite)"
    )
    p.add_argument(
        "--token-file",
        default=os.environ.get("GRADALIGN_TOKEN_FILE"),
        help="file holding the bearer token every call must carry (default $GRADALIGN_TOKEN_FILE)",
    )
    p.add_argument(
        "--token",
        default=None,
        help="the bearer token itself: visible in the process list, prefer --token-file or $GRADALIGN_TOKEN",
    )
    p.add_argument("--tls-cert", default=None, metavar="PEM", help="serve TLS with this certificate chain")
    p.add_argument("--tls-key", default=None, metavar="PEM", help="private key of --tls-cert")
    p.add_argument(
        "--tls-client-ca",
        default=None,
        metavar="PEM",
        help="require client certificates signed by this CA (mutual TLS)",
    )
    p.add_argument(
        "--expose-model-paths", action="store_true", help="show local model paths in receipts (default: hidden)"
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
    add_executor_arguments(p)
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--console-logs", action="store_true", help="human-readable logs instead of JSON")
    return p


def _token(args) -> str | None:
    if args.token_file:
        try:
            token = Path(args.token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise OSError(f"cannot read --token-file {args.token_file}: {exc.strerror}") from None
        if not token:
            raise OSError(f"--token-file {args.token_file} is empty")
        return token
    return args.token or os.environ.get("GRADALIGN_TOKEN") or None


def _tls(args) -> TlsFiles | None:
    if not (args.tls_cert or args.tls_key or args.tls_client_ca):
        return None
    if not (args.tls_cert and args.tls_key):
        raise OSError("--tls-cert and --tls-key go together (and --tls-client-ca needs both)")
    return TlsFiles.read(args.tls_cert, args.tls_key, args.tls_client_ca)


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def main(argv: list[str] | None = None) -> int:
    """``gradalign serve``: 0 after a shutdown, 1 when the models fail to load, 2 on a bad config or address."""
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level, json_logs=not args.console_logs)
    from gradalign_engine.config import load_run_config
    from gradalign_engine.errors import ConfigError

    try:
        config = load_run_config(args.config)
        token, tls = _token(args), _tls(args)
        executor = executor_from_args(args)
    except (ConfigError, OSError) as exc:
        print(f"gradalign serve: {exc}", file=sys.stderr)
        return 2
    if args.token:
        log.warning("token_on_command_line", hint="visible in the process list; use --token-file or $GRADALIGN_TOKEN")
    if token and tls is None and not _loopback(args.host):
        log.warning("token_without_tls", host=args.host, hint="the bearer token travels in clear; add --tls-cert")
    wake = threading.Event()
    stop = install_stop_signals(wake)
    try:
        server, port = create_server(
            config,
            f"{args.host}:{args.port}",
            args.db or _default_db(),
            token=token,
            max_queue=args.max_queue,
            limits=ServiceLimits(max_request_tokens=args.max_request_tokens),
            metrics_port=None if args.metrics_port < 0 else args.metrics_port,
            metrics_addr=args.metrics_host or host_of(f"{args.host}:{args.port}"),
            on_loaded=lambda error: wake.set(),
            tls=tls,
            expose_paths=args.expose_model_paths,
            executor=executor,
        )
    except OSError as exc:
        print(f"gradalign serve: {exc}", file=sys.stderr)
        return 2
    wake.wait()
    if server.state.error is not None and not stop.is_set():
        server.stop(grace=0)
        print(f"gradalign serve: could not load the models: {server.state.error}", file=sys.stderr)
        return 1
    return serve_until_stopped(server, stop, args.grace)


def install_stop_signals(wake: threading.Event | None = None) -> threading.Event:
    """SIGTERM and SIGINT set the returned event (and ``wake``); a second signal exits at once."""
    stop = threading.Event()

    def on_signal(signum, frame):
        log.info("signal", signal=signal.Signals(signum).name)
        if stop.is_set():
            os._exit(1)
        stop.set()
        if wake is not None:
            wake.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return stop


def serve_until_stopped(server, stop: threading.Event, grace: float) -> int:
    """Serve until ``stop`` is set (a signal), then shut down within ``grace`` + a few seconds."""
    if not stop.is_set():
        log.info("serving", port=server.port, metrics_port=server.metrics_port)
        stop.wait()
    return _shut_down(server, grace)


def _shut_down(server, grace: float) -> int:
    """Stop within ``grace`` + a few seconds, whatever a job is doing.

    A daemon watchdog ends the process (os._exit) at the deadline, even if interpreter exit would
    wait on a thread; a job left inside the engine ends it at once.
    """
    deadline = grace + WORKER_STOP_S + 5.0
    watchdog = threading.Timer(deadline, _exit_now, args=("shutdown_watchdog", deadline))
    watchdog.daemon = True
    watchdog.start()
    if not server.stop(grace=grace):
        _exit_now("shutdown_left_a_running_job", deadline)
    return 0


def _exit_now(event: str, deadline: float, **fields) -> None:
    log.warning(event, deadline_s=deadline, **fields)
    sys.stderr.flush()
    os._exit(0)
