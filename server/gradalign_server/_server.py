"""Server assembly and lifecycle: ``create_server`` for tests and embedding, ``main`` for ``gradalign serve``.

The command line (``gradalign serve``) is in :mod:`._cli`. Components and threads:
- a gRPC thread pool serving gradalign.v1.GradAlign, grpc.health.v1 and server reflection;
- engine worker threads (:class:`~._jobs.JobManager`), one per engine handle: in-process one thread
  that alone drives the local models; with the Ray executor one per actor, each driving its actor;
- a loader thread that builds the engine at start, or starts the actors and waits until they loaded
  their models (health says NOT_SERVING until it is done);
- the Prometheus HTTP thread for ``/metrics``.

With the Ray executor (:mod:`._ray`) this process holds no model weights: it keeps the API, the store
and the metrics, and the actors keep the models.

Lifecycle: bind and start -> load models (NOT_SERVING) -> SERVING -> on SIGTERM/SIGINT: health
NOT_SERVING, ``server.stop(grace)`` lets in-flight calls finish (cancelling the rest, which stops
their engine jobs), then the worker, the engine, the store and the metrics endpoint are closed, each
step logged.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import structlog
from grpc_health.v1 import health, health_pb2

from . import _wire
from ._jobs import JobManager
from ._metrics import Metrics
from ._ray import remote_engine_factory
from ._service import EngineState, GradAlignService, ServiceLimits
from ._servicer import GradAlignServicer
from ._store import Store
from ._transport import SERVICE_NAME, TlsFiles, _bind, _grpc_server, host_of, server_options

__all__ = ["GradalignServer", "TlsFiles", "create_server", "server_options", "SERVICE_NAME", "WORKER_STOP_S"]

log = structlog.get_logger("gradalign.server")

WORKER_STOP_S = 5.0  # after the grace period, how long a cancelled job gets to reach its next check


def _engine_factory(engine_or_config: Any, executor: Any = None) -> tuple[Any | None, Callable[[], Any] | None]:
    """(engine, None) for a ready engine; (None, factory) for a config, a TOML path or a callable.

    With ``executor`` (a RayExecutorConfig) the factory starts Ray actors from the config or path.
    """
    if executor is not None:
        from gradalign_engine.config import RunConfig

        if not isinstance(engine_or_config, (str, Path, RunConfig)):
            raise ValueError("the ray executor needs a RunConfig or a TOML path to start its actors from")
        return None, remote_engine_factory(engine_or_config, executor)
    if hasattr(engine_or_config, "build_tree") and hasattr(engine_or_config, "score_tree"):
        return engine_or_config, None
    if isinstance(engine_or_config, (str, Path)):
        path = engine_or_config

        def from_path():
            from gradalign_engine.config import load_run_config
            from gradalign_engine.pipeline import Engine

            return Engine(load_run_config(path), on_loaded=_log_loaded)

        return None, from_path
    if callable(engine_or_config):
        return None, engine_or_config

    def from_config():
        from gradalign_engine.pipeline import Engine

        return Engine(engine_or_config, on_loaded=_log_loaded)

    return None, from_config


def _log_loaded(role: str, name: str, seconds: float) -> None:
    log.info("model_loaded", role=role, name=name, seconds=round(seconds, 1))


class GradalignServer:
    """A running gradalign server (see :func:`create_server`)."""

    def __init__(
        self,
        grpc_server: grpc.Server,
        port: int,
        address: str,
        servicer: GradAlignServicer,
        health_servicer: health.HealthServicer,
        owns_engine: bool,
        expose_paths: bool = False,
    ):
        self.expose_paths = expose_paths
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
    def service(self) -> GradAlignService:
        return self.servicer.service

    @property
    def state(self) -> EngineState:
        return self.service.state

    @property
    def engine(self):
        return self.service.state.engine

    @property
    def store(self) -> Store:
        return self.service.store

    @property
    def jobs(self) -> JobManager:
        return self.service.jobs

    @property
    def metrics(self) -> Metrics:
        return self.service.metrics

    def _set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for service in ("", SERVICE_NAME):
            self.health.set(service, status)

    def _load(self, factory: Callable[[], Any], on_loaded: Callable[[BaseException | None], None] | None) -> None:
        error: BaseException | None = None
        try:
            log.info("loading_models")
            engine = factory()
            if self._stopped:  # stopped while loading: stop() found nothing to close
                if self._owns_engine:
                    engine.close()
                return
            self._ready(engine)
        except BaseException as exc:  # noqa: BLE001 - reported through health, RPCs and on_loaded
            error = exc
            self.service.state.error = exc
            log.error(
                "model_load_failed", error=str(exc), error_type=type(exc).__name__, code=getattr(exc, "code", None)
            )
        finally:
            self._loaded.set()
            if on_loaded is not None:
                on_loaded(error)

    def _ready(self, engine: Any) -> None:
        self.service.state.ready(engine, expose_paths=self.expose_paths)
        # Ray: one worker per actor; in-process: the engine is its own (single) worker.
        self.jobs.start(engine.worker_handles() if hasattr(engine, "worker_handles") else [engine])
        self.metrics.set_models(self.state.models)
        if not self._stopped:
            self._set_serving(True)
        log.info("models_loaded", models=[m.name for m in self.state.models], workers=self.jobs.workers)

    def wait_until_ready(self, timeout: float | None = None) -> None:
        """Block until the models are loaded; re-raise the load error; TimeoutError after ``timeout``."""
        if not self._loaded.wait(timeout):
            raise TimeoutError(f"models not loaded after {timeout} s")
        if self.state.error is not None:
            raise self.state.error

    def serve_metrics(self, port: int, addr: str = "127.0.0.1") -> int:
        """Expose Prometheus ``/metrics`` on ``port`` (0: a free one); return the port."""
        self.metrics_port = self.metrics.serve_http(port, addr)
        log.info("metrics_listening", port=self.metrics_port, addr=addr)
        return self.metrics_port

    def stop(self, grace: float | None = 5.0) -> bool:
        """Graceful stop, bounded in time: NOT_SERVING, drain in-flight calls for ``grace`` s, cancel the rest.

        Then the running jobs are cancelled and get :data:`WORKER_STOP_S` to reach their next check
        (a Ray worker stops waiting at once and cancels its actor's job); the engine is closed (the
        actors stopped) only if they did (a job still inside the engine keeps it). Returns True when
        every component stopped, False when a job was left running (the caller may exit anyway:
        stored work is never half-written).
        """
        with self._stop_lock:
            if self._stopped:
                return True
            self._stopped = True
        log.info("shutdown_begin", grace_s=grace, running=self.jobs.running, queued=self.jobs.queued)
        self.health.enter_graceful_shutdown()
        self.grpc_server.stop(grace).wait()
        log.info("shutdown_rpcs_stopped")
        worker_stopped = self.jobs.shutdown(timeout=WORKER_STOP_S)
        if not worker_stopped:
            log.warning("shutdown_job_still_running", waited_s=WORKER_STOP_S)
        elif self._owns_engine and self.engine is not None:
            self.engine.close()
            log.info("shutdown_engine_closed")
        if worker_stopped:
            self.store.close()
        self.metrics.close()
        log.info("shutdown_done", clean=worker_stopped)
        return worker_stopped

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        return self.grpc_server.wait_for_termination(timeout)


def _service(db_path: str | Path, max_queue: int, limits: ServiceLimits) -> GradAlignService:
    """The service layer with its store, job queue and metrics."""
    metrics = Metrics()

    def on_done(job, seconds: float, error: BaseException | None) -> None:
        outcome = "ok" if error is None else getattr(error, "code", "error")
        metrics.job_seconds.labels(kind=job.kind, outcome=outcome).observe(seconds)

    jobs = JobManager(max_queue=max_queue, on_change=metrics.set_jobs, on_done=on_done)
    store = Store(db_path)
    return GradAlignService(EngineState(), jobs, store, metrics, limits, _wire.encode_records, _wire.decode_records)


def _start(server: GradalignServer, service, log_fields: dict, metrics_port: int | None, metrics_host: str) -> None:
    """Start serving (NOT_SERVING until the engine is ready), log it, then open /metrics if asked."""
    server._set_serving(False)
    server.grpc_server.start()
    log.info("grpc_listening", address=server.address, port=server.port, **log_fields)
    if metrics_port is not None:
        try:
            server.serve_metrics(metrics_port, metrics_host)
        except OSError:
            server.grpc_server.stop(0)
            service.store.close()
            raise


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
    metrics_addr: str | None = None,
    on_loaded: Callable[[BaseException | None], None] | None = None,
    close_engine: bool | None = None,
    tls: TlsFiles | None = None,
    expose_paths: bool = False,
    executor: Any = None,
) -> tuple[GradalignServer, int]:
    """Build, bind and start a gradalign server; returns it and the bound port.

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
        gRPC threads (default ``max_queue + 7 + engine workers``: every queued or running caller holds
        one while it waits).
    limits : ServiceLimits, optional
        Per-request limits (worst-case tokens of a BuildTree, trees per request).
    metrics_port : int, optional
        Serve Prometheus ``/metrics`` on this port (0: a free one); None: do not serve.
    metrics_addr : str, optional
        Interface of ``/metrics``; default: the host of ``address``.
    on_loaded : callable, optional
        ``on_loaded(error_or_None)`` once loading finished (not called for a ready engine).
    close_engine : bool, optional
        Close the engine on stop; default: only when this server loaded it.
    tls : TlsFiles, optional
        Serve over TLS (mutual TLS when it has a client CA); None: plaintext.
    expose_paths : bool
        Show the server's local model paths in receipts (default: replaced by ``"<local path>"``).
    executor : RayExecutorConfig, optional
        Run the models in Ray actors (``gradalign_engine.ray_executor``), one engine worker each;
        ``engine_or_config`` must then be a RunConfig or a TOML path. None: in this process.
    """
    engine, factory = _engine_factory(engine_or_config, executor)
    service = _service(db_path, max_queue, limits or ServiceLimits())
    servicer = GradAlignServicer(service)
    engine_workers = executor.workers if executor is not None else 1
    grpc_server, health_servicer = _grpc_server(servicer, token, max_workers or max_queue + 7 + engine_workers)
    port = _bind(grpc_server, address, tls)
    server = GradalignServer(
        grpc_server,
        port,
        address,
        servicer,
        health_servicer,
        owns_engine=close_engine if close_engine is not None else engine is None,
        expose_paths=expose_paths,
    )
    log_fields = dict(db=str(db_path), auth=bool(token), tls="mutual" if tls and tls.client_ca else bool(tls))
    log_fields.update(max_queue=max_queue, executor="ray" if executor is not None else "inprocess")
    _start(server, service, log_fields, metrics_port, metrics_addr or host_of(address))
    if engine is not None:
        server._ready(engine)
        server._loaded.set()
    else:
        threading.Thread(target=server._load, args=(factory, on_loaded), name="gradalign-loader", daemon=True).start()
    return server, port
