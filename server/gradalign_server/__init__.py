"""gradalign server: the gradalign.v1.GradAlign gRPC service over the engine.

Needs the ``server`` extra (``pip install 'gradalign[server]'``): the engine (torch, transformers),
grpcio-health-checking, grpcio-reflection, prometheus-client and structlog. The wire types come
from ``gradalign_client._proto``: the server depends on the client's stubs, never the reverse.

    from gradalign_server import create_server
    server, port = create_server("config.toml", "127.0.0.1:0", db_path="gradalign.sqlite")
    server.wait_until_ready()
    ...
    server.stop(grace=5)
"""

from ._cli import configure_logging, install_stop_signals, main, serve_until_stopped
from ._server import SERVICE_NAME, GradalignServer, TlsFiles, create_server, server_options
from ._service import ServiceLimits, redact_paths

__all__ = [
    "create_server",
    "GradalignServer",
    "ServiceLimits",
    "TlsFiles",
    "main",
    "install_stop_signals",
    "configure_logging",
    "serve_until_stopped",
    "redact_paths",
    "server_options",
    "SERVICE_NAME",
]
